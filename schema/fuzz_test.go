package schema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzDecode: Decode never panics; what it accepts is valid JSON and valid
// UTF-8, passes Validate, and survives a round trip: json.Marshal of the
// Event decodes to an equal Event, and marshalling that gives the same bytes;
// DecodeShared gives what Decode gives.
//
// Seeds: every fixture, plus regression seeds in testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	for _, fx := range loadFixtures(f) {
		f.Add(fx.data)
	}
	// Round-trip edge cases: HTML characters (json.Marshal escapes them),
	// U+2028, NUL, year 0000 across an offset, a leap second, every number
	// notation, escaped keys.
	for _, s := range []string{
		`{"id":"<&>\u2028\u0000","start_time":"0000-01-01T00:30:00+01:00","endpoint":"/a<b>&c","model":"m","metadata":{"<k>":"&","":null},"request":{"x":"<\u0000>"},"tags":["","<"]}`,
		`{"\u0069d":"x","start_time":"2016-12-31T23:59:60.999999999Z","end_time":"2017-01-01T05:30:01.5+05:30","endpoint":"/","model":"m","usage":{"prompt_tokens":1e2,"completion_tokens":-0.0e5,"total_tokens":null},"status":5.99e2,"response":[1.5e300,-0,1E-400,12345678901234567890123]}`,
		`{"id":"b","start_time":"9999-12-31T23:59:59.999999999-23:59","endpoint":"/v1","model":"m","source":"batch","batch_id":"\ud83d\ude80","api_key":"xf-1","api_key_hash":"","stream":false,"request_truncated":true}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Decode(data, DefaultLimits())
		shared, serr := DecodeShared(data, DefaultLimits())
		if fmt.Sprint(err) != fmt.Sprint(serr) {
			t.Fatalf("Decode: %v; DecodeShared: %v", err, serr)
		}
		if err == nil {
			if diff := eventDiff(e, shared); diff != "" {
				t.Fatalf("DecodeShared differs from Decode: %s", diff)
			}
		}
		// a Decoder that decoded an event with every optional part first
		// gives the same: nothing of the earlier event stays
		var dec Decoder
		if _, err := dec.DecodeShared(fullEvent, DefaultLimits()); err != nil {
			t.Fatal(err)
		}
		reused, rerr := dec.DecodeShared(data, DefaultLimits())
		if fmt.Sprint(err) != fmt.Sprint(rerr) {
			t.Fatalf("Decode: %v; a reused Decoder: %v", err, rerr)
		}
		if err == nil {
			if diff := eventDiff(e, reused); diff != "" {
				t.Fatalf("a reused Decoder differs from Decode: %s", diff)
			}
		}
		if err != nil {
			if e != nil {
				t.Fatalf("Decode returned an event and an error")
			}
			if len(FieldPaths(err)) == 0 {
				t.Fatalf("error without fields: %v", err)
			}
			return
		}
		if !utf8.Valid(data) || !json.Valid(data) {
			t.Fatalf("Decode accepted invalid UTF-8 or JSON: %q", data)
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("decoded event fails Validate: %v", err)
		}
		if st, ok := StartTime(data); !ok || !st.Equal(e.StartTime) {
			t.Fatalf("StartTime = %v, %v; Decode says %v", st, ok, e.StartTime)
		}
		b1, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		// Marshal may grow the event (it escapes <, > and &): no size limit.
		e2, err := Decode(b1, Limits{MaxEventBytes: -1})
		if err != nil {
			t.Fatalf("round trip: Decode(Marshal(e)): %v\n%s", err, b1)
		}
		if diff := eventDiff(e, e2); diff != "" {
			t.Fatalf("round trip changed the event: %s\n%s", diff, b1)
		}
		b2, err := json.Marshal(e2)
		if err != nil {
			t.Fatalf("Marshal 2: %v", err)
		}
		if !bytes.Equal(b1, b2) {
			t.Fatalf("marshalling is not a fixed point:\n%s\n%s", b1, b2)
		}
	})
}

// eventDiff compares events: times by instant and offset, JSON values by
// value, the rest exactly. It returns "" if they are equal.
func eventDiff(a, b *Event) string {
	if !sameTime(&a.StartTime, &b.StartTime) {
		return "start_time"
	}
	if !sameTime(a.EndTime, b.EndTime) {
		return "end_time"
	}
	if !sameTime(a.FirstTokenTime, b.FirstTokenTime) {
		return "first_token_time"
	}
	if !sameJSON(a.Request, b.Request) {
		return "request"
	}
	if !sameJSON(a.Response, b.Response) {
		return "response"
	}
	if len(a.Metadata) != len(b.Metadata) {
		return "metadata"
	}
	for k, v := range a.Metadata {
		if w, ok := b.Metadata[k]; !ok || !sameJSON(v, w) {
			return "metadata." + k
		}
	}
	ca, cb := *a, *b
	for _, c := range []*Event{&ca, &cb} {
		c.StartTime, c.EndTime, c.FirstTokenTime = time.Time{}, nil, nil
		c.Request, c.Response, c.Metadata = nil, nil, nil
	}
	if !reflect.DeepEqual(ca, cb) {
		return "other fields"
	}
	return ""
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	_, oa := a.Zone()
	_, ob := b.Zone()
	return a.Equal(*b) && oa == ob
}

func sameJSON(a, b json.RawMessage) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	va, ea := decodeAny(a)
	vb, eb := decodeAny(b)
	return ea == nil && eb == nil && reflect.DeepEqual(va, vb)
}

func decodeAny(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

// fullEvent has every optional part an event can have, for a Decoder to
// decode before another event.
var fullEvent = []byte(`{"id":"full-1","trace_id":"t-1","session_id":"s-1","start_time":"2026-01-02T03:04:05Z",` +
	`"end_time":"2026-01-02T03:04:06Z","first_token_time":"2026-01-02T03:04:05.5Z","endpoint":"/v1/chat/completions",` +
	`"model":"m-1","instance":"i-1","user":"u-1","api_key_hash":"` + strings.Repeat("a", 64) + `","source":"batch","batch_id":"b-1",` +
	`"status":500,"error":"boom","stream":true,"request_truncated":true,` +
	`"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7},"capture":{"mode":"truncated","mask_set":"x","counted":true},` +
	`"tags":["a","b"],"metadata":{"k":"v","n":1},"request":{"messages":[]},"response":{"choices":[]}}`)
