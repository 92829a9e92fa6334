package proxy

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/callpipe/callpipe/schema"
)

// DefaultMaxEventBytes keeps an encoded event, with its NATS headers, within
// NATS's default max_payload and the collector's schema.DefaultMaxEventBytes.
const DefaultMaxEventBytes = schema.DefaultMaxEventBytes - 4<<10

// sanitize makes client-controlled strings acceptable to schema.Validate.
func sanitize(ev *schema.Event) {
	if ev.TraceID != ev.ID && (!utf8.ValidString(ev.TraceID) || utf8.RuneCountInString(ev.TraceID) > schema.MaxIDChars) {
		ev.TraceID = ev.ID
	}
	for _, s := range []*string{&ev.SessionID, &ev.Model, &ev.User, &ev.Error} {
		*s = strings.ToValidUTF8(*s, "\uFFFD")
	}
	// The call happened whatever the client named: cut names to the schema's
	// limit instead of losing the event.
	for _, s := range []*string{&ev.SessionID, &ev.Model, &ev.User} {
		*s = schema.ClipChars(*s, schema.MaxNameChars)
	}
	ev.Endpoint = schema.ClipChars(ev.Endpoint, schema.MaxEndpointChars)
	if ev.Model == "" {
		ev.Model = "unknown" // schema v1 requires a model; the request named none
	}
}

// fit shrinks the event's request and response until it encodes within max
// bytes: the longest strings inside them are cut first (base64 images,
// embeddings as text, long prompts), keeping the JSON's structure. It
// reports whether the request or response had to be cut.
func fit(ev *schema.Event, max int) (reqCut, respCut bool) {
	if sizeBound(ev) <= max {
		return false, false // the common case: no need to encode to know
	}
	for range 6 {
		b, err := json.Marshal(ev)
		if err != nil || len(b) <= max {
			return reqCut, respCut
		}
		over := len(b) - max
		// Take from the larger of the two first.
		if len(ev.Response) >= len(ev.Request) {
			ev.Response = shrinkJSON(ev.Response, len(ev.Response)-over-64)
			respCut = true
		} else {
			ev.Request = shrinkJSON(ev.Request, len(ev.Request)-over-64)
			reqCut = true
		}
	}
	// Still too large (metadata, a huge error text): keep only sizes.
	if b, err := json.Marshal(ev); err == nil && len(b) > max {
		ev.Request = summary("", "", int64(len(ev.Request)))
		ev.Response = summary("", "", int64(len(ev.Response)))
		ev.Error = clip(ev.Error, 1024)
		reqCut, respCut = true, true
	}
	return reqCut, respCut
}

// sizeBound is an upper bound of the event's encoded size: a string can
// grow sixfold when escaped (\u00XX), raw JSON only shrinks when compacted.
func sizeBound(ev *schema.Event) int {
	n := 1024 // field names, times, numbers, punctuation
	for _, s := range []string{ev.ID, ev.TraceID, ev.SessionID, ev.Endpoint, ev.Model, ev.Instance, ev.User,
		ev.APIKey, ev.APIKeyHash, ev.APIKeyPrefix, ev.Error, ev.Source, ev.BatchID} {
		n += 6 * len(s)
	}
	n += len(ev.Request) + len(ev.Response)
	for k, v := range ev.Metadata {
		n += 6*len(k) + len(v) + 8
	}
	for _, t := range ev.Tags {
		n += 6*len(t) + 3
	}
	return n
}

// shrinkJSON returns raw, a JSON value, in at most about target bytes by
// capping every string inside it at one common length.
func shrinkJSON(raw json.RawMessage, target int) json.RawMessage {
	if target < 64 {
		return summary("", "", int64(len(raw)))
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return summary("", "", int64(len(raw)))
	}
	holder := []any{v} // so that a bare top-level string is capped too
	var lens []int
	walkStrings(holder, func(s *string) { lens = append(lens, len(*s)) })
	if len(lens) == 0 {
		return summary("", "", int64(len(raw)))
	}
	slices.Sort(lens)
	sum := 0
	for _, l := range lens {
		sum += l
	}
	// Capping every string at c makes the size about
	// len(raw) - sum + Σ min(l, c) (+ a marker per cut string).
	budget := target - (len(raw) - sum + len(lens)*len(cutMarker))
	if budget <= 0 {
		return summary("", "", int64(len(raw)))
	}
	limit, below := lens[len(lens)-1], 0
	for i, l := range lens {
		n := len(lens) - i // strings at least l long
		if below+l*n > budget {
			limit = (budget - below) / n
			break
		}
		below += l
	}
	walkStrings(holder, func(s *string) {
		if len(*s) > limit {
			*s = cutUTF8(*s, limit) + cutMarker
		}
	})
	v = holder[0]
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if enc.Encode(v) != nil {
		return summary("", "", int64(len(raw)))
	}
	return bytes.TrimRight(out.Bytes(), "\n")
}

const cutMarker = "…[cut by callpipe]"

func walkStrings(v any, f func(*string)) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok {
				f(&s)
				x[k] = s
			} else {
				walkStrings(e, f)
			}
		}
	case []any:
		for i, e := range x {
			if s, ok := e.(string); ok {
				f(&s)
				x[i] = s
			} else {
				walkStrings(e, f)
			}
		}
	}
}
