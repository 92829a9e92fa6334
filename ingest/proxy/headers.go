package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/callpipe/callpipe/schema"
)

// Request headers a caller sets to describe its call to callpipe. They are
// callpipe's alone: the proxy removes every X-Callpipe-* request header
// before the upstream.
const (
	// HeaderSource is "online" (default) or "batch".
	HeaderSource = "X-Callpipe-Source"
	// HeaderBatchID names the batch job of the call; it implies
	// source batch when HeaderSource is absent.
	HeaderBatchID = "X-Callpipe-Batch-Id"
	// HeaderTags is a comma-separated list of tags (several header lines
	// add up).
	HeaderTags = "X-Callpipe-Tags"
)

// callpipePrefix is the canonical prefix of the headers the upstream never sees.
const callpipePrefix = "X-Callpipe-"

// callerAttrs are what a caller's X-Callpipe-* headers say about its call.
type callerAttrs struct {
	traceID, session string
	source, batchID  string
	tags             []string
}

// headerError is a caller header the proxy refuses, with the reason.
type headerError struct {
	header, reason string
}

func (e *headerError) Error() string { return e.header + ": " + e.reason }

// readCallerHeaders parses and checks the caller's X-Callpipe-* headers
// against the schema's limits. A call is refused (not forwarded) rather than
// recorded under a name its caller did not give.
func readCallerHeaders(h http.Header) (callerAttrs, *headerError) {
	var a callerAttrs
	var err *headerError
	name := func(header string, limit int) string {
		v := strings.TrimSpace(h.Get(header))
		if err == nil {
			err = checkHeaderValue(header, v, limit)
		}
		return v
	}
	a.traceID = name(HeaderTraceID, schema.MaxIDChars)
	a.session = name(HeaderSessionID, schema.MaxNameChars)
	a.batchID = name(HeaderBatchID, schema.MaxNameChars)
	src := strings.ToLower(name(HeaderSource, schema.MaxNameChars))
	if err != nil {
		return a, err
	}
	switch src {
	case "":
		a.source = schema.SourceOnline
		if a.batchID != "" {
			a.source = schema.SourceBatch
		}
	case schema.SourceOnline, schema.SourceBatch:
		a.source = src
	default:
		return a, &headerError{HeaderSource, `must be "online" or "batch", got ` + strconv.Quote(clip(h.Get(HeaderSource), 64))}
	}
	if a.batchID != "" && a.source != schema.SourceBatch {
		return a, &headerError{HeaderBatchID, "allowed only with " + HeaderSource + ": batch"}
	}
	tags, terr := parseTags(h.Values(HeaderTags))
	if terr != nil {
		return a, terr
	}
	a.tags = tags
	return a, nil
}

// checkHeaderValue checks one caller header value: valid UTF-8, no control
// characters, at most limit characters.
func checkHeaderValue(header, v string, limit int) *headerError {
	switch {
	case !utf8.ValidString(v):
		return &headerError{header, "not valid UTF-8"}
	case strings.IndexFunc(v, unicode.IsControl) >= 0:
		return &headerError{header, "contains a control character"}
	}
	if n := utf8.RuneCountInString(v); n > limit {
		return &headerError{header, fmt.Sprintf("%d characters, limit %d", n, limit)}
	}
	return nil
}

// parseTags splits comma-separated tag lists, trimming blanks and dropping
// empty and repeated tags (Langfuse keeps a set of tags per trace).
func parseTags(lines []string) ([]string, *headerError) {
	var tags []string
	seen := map[string]bool{}
	for _, line := range lines {
		for _, t := range strings.Split(line, ",") {
			t = strings.TrimSpace(t)
			if t == "" || seen[t] {
				continue
			}
			if err := checkHeaderValue(HeaderTags, t, schema.MaxTagChars); err != nil {
				err.reason = "tag " + strconv.Quote(clip(t, 64)) + ": " + err.reason
				return nil, err
			}
			seen[t] = true
			tags = append(tags, t)
		}
	}
	if len(tags) > schema.MaxTags {
		return nil, &headerError{HeaderTags, fmt.Sprintf("%d tags, limit %d", len(tags), schema.MaxTags)}
	}
	return tags, nil
}

// stripCallerHeaders removes the X-Callpipe-* headers from a request bound
// for the upstream.
func stripCallerHeaders(h http.Header) {
	for k := range h {
		if strings.HasPrefix(k, callpipePrefix) {
			delete(h, k)
		}
	}
}

// refuseHeader answers a call whose caller headers the proxy refuses, in
// OpenAI's error shape, naming the header and the reason.
func refuseHeader(w http.ResponseWriter, e *headerError) {
	body, _ := json.Marshal(map[string]any{"error": map[string]any{
		"message": "callpipe proxy: " + e.Error(),
		"type":    "invalid_request_error",
		"param":   e.header,
		"code":    http.StatusBadRequest,
	}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	w.Write(body)
}

// Keys of the request body's metadata object that name the trace, session,
// user and tags, as Langfuse's OpenAI integration reads them.
const (
	maxBodyMetadata = 16 << 10

	metaTraceID   = "langfuse_trace_id"
	metaSessionID = "langfuse_session_id"
	metaUserID    = "langfuse_user_id"
	metaTags      = "langfuse_tags"
)

// applyBodyAttrs completes ev from the request body's metadata object:
// langfuse_trace_id, langfuse_session_id and langfuse_user_id fill what the
// headers (and the body's user field) left empty, langfuse_tags add to the
// header's tags, and every other member becomes a metadata key of the call
// (callpipe's own "proxy" key excepted). The call already happened, so
// values the schema cannot take are cut, not refused (see sanitize). A
// metadata object over maxBodyMetadata bytes gives its langfuse_* members
// only: the request keeps all of it, and fit can shrink the request but not
// the event's metadata.
func applyBodyAttrs(ev *schema.Event, fields map[string]json.RawMessage) {
	var meta map[string]json.RawMessage
	raw, ok := fields["metadata"]
	if !ok || json.Unmarshal(raw, &meta) != nil {
		return
	}
	copyOthers := len(raw) <= maxBodyMetadata
	for k, v := range meta {
		switch k {
		case metaTraceID:
			if s := jsonString(v); s != "" && ev.TraceID == "" {
				ev.TraceID = s
			}
		case metaSessionID:
			if s := jsonString(v); s != "" && ev.SessionID == "" {
				ev.SessionID = s
			}
		case metaUserID:
			if s := jsonString(v); s != "" && ev.User == "" {
				ev.User = s
			}
		case metaTags:
			var tags []string
			if json.Unmarshal(v, &tags) != nil {
				continue
			}
			for _, t := range tags {
				t = schema.ClipChars(strings.ToValidUTF8(strings.TrimSpace(t), "\uFFFD"), schema.MaxTagChars)
				if t != "" && !slices.Contains(ev.Tags, t) && len(ev.Tags) < schema.MaxTags {
					ev.Tags = append(ev.Tags, t)
				}
			}
		case "proxy":
		default:
			if !copyOthers {
				continue
			}
			if ev.Metadata == nil {
				ev.Metadata = map[string]json.RawMessage{}
			}
			ev.Metadata[k] = v
		}
	}
}
