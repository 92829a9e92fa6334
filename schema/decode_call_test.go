package schema

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestDecodeCallMatchesEncodingJSON: DecodeCall gives the same Call as
// encoding/json for the records AppendCall writes, and rejects what is not a
// call.
func TestDecodeCallMatchesEncodingJSON(t *testing.T) {
	start := time.Date(2026, 11, 1, 10, 0, 0, 123_000_000, time.UTC)
	ft := start.Add(40 * time.Millisecond)
	ttft, cost := int64(40), 0.001
	full := Call{ID: "call-1", TraceID: "t", SessionID: "s", StartTime: start, EndTime: start.Add(time.Second),
		FirstTokenTime: &ft, TTFTMS: &ttft, LatencyMS: 1000, Endpoint: "/v1/chat/completions", Kind: KindChat,
		Model: "qwen2.5-instruct", Instance: "qwen2.5-instruct", UserID: "user-01", UserSource: UserExplicit,
		Stream: true, Status: 200, InputText: "What is the capital of France?", OutputText: "Paris.",
		Input:           json.RawMessage(`[{"role":"user","content":"What is the capital of France?"}]`),
		Output:          json.RawMessage(`{"role":"assistant","content":"Paris."}`),
		ModelParameters: map[string]json.RawMessage{"temperature": json.RawMessage(`0.2`)},
		InputTokens:     20, OutputTokens: 2, TotalTokens: 22, UsageSource: UsageReported, CostUSD: &cost,
		Metadata: map[string]json.RawMessage{"team": json.RawMessage(`"a"`)}, Tags: []string{"x", "y"},
		Source: SourceBatch, BatchID: "b-1", Capture: &Capture{Mode: CaptureFull, MaskSet: "m1", Counted: true}}
	bare := Call{ID: "call-2", TraceID: "call-2", StartTime: start, EndTime: start, Kind: KindOther,
		UserID: "anonymous", UserSource: UserAnonymous, Status: 500, Error: strings.Repeat("e", 10000),
		UsageSource: UsageEstimated, Source: SourceOnline}
	odd := full
	odd.ID, odd.InputText = "call-3", "ünïcode \u2028 \"quoted\" \\ <html>"
	for _, c := range []Call{full, bare, odd} {
		data := AppendCall(nil, &c)
		got, err := DecodeCall(data)
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.ID, err, data)
		}
		var want Call
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got  %+v\n want %+v", c.ID, got, want)
		}
		if got.ID != c.ID || !got.StartTime.Equal(c.StartTime) || got.InputText != c.InputText {
			t.Errorf("%s: decoded %+v", c.ID, got)
		}
	}
	for _, bad := range []string{`{"id": 12}`, `{"id":"x"}`, `{"start_time":"2026-11-01T00:00:00Z"}`, `not json`,
		`{"id":"x","start_time":"2026-11-01T00:00:00Z","latency_ms":"slow"}`} {
		if _, err := DecodeCall([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
	for _, rec := range callEdgeCases {
		checkDecodeCall(t, []byte(rec))
	}
	// the records AppendCall writes, and the first edge cases, take the
	// hand path, escaped strings too (the others reach encoding/json)
	var c Call
	for i, rec := range append([]string{string(AppendCall(nil, &full)), string(AppendCall(nil, &bare)), string(AppendCall(nil, &odd))}, callEdgeCases[:4]...) {
		if c = (Call{}); !bindCall([]byte(rec), &c) {
			t.Errorf("record %d left to encoding/json: %s", i, rec)
		}
	}
	for _, rec := range callEdgeCases[4:] {
		if c = (Call{}); bindCall([]byte(rec), &c) {
			t.Errorf("bound by hand: %s", rec)
		}
	}
}

// callEdgeCases are records the hand binder takes and records it leaves to
// encoding/json; each must decode as encoding/json decodes it.
var callEdgeCases = []string{
	// bound by hand: nulls, empty containers, unknown fields with nested values
	`{"id":"a","start_time":"2026-11-01T00:00:00Z","input":null,"metadata":{},"tags":[],"model_parameters":null,"capture":null,"ttft_ms":null,"first_token_time":null,"extra":{"x":[1,{"y":null}]}}`,
	`{"id":"a","start_time":"2026-11-01T00:00:00.5Z","tags":[null,"x"],"metadata":{"k":null,"n":-0.5e-3},"capture":{"mode":"full","other":1},"stream":false,"cost_usd":-0}`,
	` {"id":"a","start_time":"2026-11-01T00:00:00Z"} ` + "\n",
	`{"id":"a\u00e9\n","start_time":"2026-11-01T00:00:00Z","tags":["\ud83d\ude80"]}`,
	// left to encoding/json: escaped or case-folded keys, duplicates, offsets, bad UTF-8
	`{"\u0069d":"a","start_time":"2026-11-01T00:00:00Z"}`,
	`{"ID":"a","Start_Time":"2026-11-01T00:00:00Z"}`,
	`{"id":"a","id":"b","start_time":"2026-11-01T00:00:00Z","metadata":{"k":1},"metadata":{"j":2}}`,
	`{"id":"a","start_time":"2026-11-01T01:00:00+01:00"}`,
	"{\"id\":\"a\xff\",\"start_time\":\"2026-11-01T00:00:00Z\"}",
	"{\"id\":\"a\",\"start_time\":\"2026-11-01T00:00:00Z\",\"metadata\":{\"\xa0\":0}}",
	`{"id":"a","start_time":"2026-11-01T00:00:00Z","latency_ms":1234567890123456789}`,
	// rejected by both
	`{"id":"a","start_time":"2026-11-01T00:00:00Z","input":[1 2]}`,
	`{"id":"a","start_time":"2026-11-01T00:00:00Z","extra":{"x" 1}}`,
	`{"id":"a","start_time":"2026-11-01T00:00:00Z"} x`,
	`{"id":"a","start_time":"2026-11-01T00:00:00Z","stream":"yes"}`,
	`{"id":"a","start_time":"2026-11-01T00:00:00Z","status":2.5}`,
	`{"id":"a","start_time":"2026-11-01T00:00:00Z","cost_usd":1e999}`,
	`{"id":"a","start_time":"2026-11-01T24:00:00Z"}`,
	`{"id":"a","start_time":"2026-11-01T00:00:00Z","tags":"x"}`,
	`{"id":"a","start_time":"2026-11-01T00:00:00Z","capture":[]}`,
	`{"id":"a","start_time":"2026-11-01T00:00:00Z"`,
}

// checkDecodeCall holds DecodeCall to encoding/json: the same Call, or both
// an error (DecodeCall also refuses a record without id or start time).
func checkDecodeCall(t *testing.T, data []byte) {
	t.Helper()
	got, err := DecodeCall(data)
	var want Call
	werr := json.Unmarshal(data, &want)
	if werr == nil && (want.ID == "" || want.StartTime.IsZero()) {
		werr = errors.New("not a call")
	}
	switch {
	case (err == nil) != (werr == nil):
		t.Fatalf("%q: DecodeCall error %v, encoding/json %v", data, err, werr)
	case err == nil && !reflect.DeepEqual(got, want):
		t.Fatalf("%q:\n got  %#v\n want %#v", data, got, want)
	}
}

// FuzzDecodeCallMatchesUnmarshal: whatever the bytes, DecodeCall agrees
// with encoding/json.
func FuzzDecodeCallMatchesUnmarshal(f *testing.F) {
	start := time.Date(2026, 11, 1, 10, 0, 0, 123_000_000, time.UTC)
	cost := 0.25
	f.Add(AppendCall(nil, &Call{ID: "c", TraceID: "t", StartTime: start, EndTime: start, Kind: KindChat, CostUSD: &cost,
		Input: json.RawMessage(`[{"role":"user","content":"hi"}]`), Metadata: map[string]json.RawMessage{"a": json.RawMessage(`{"b":[1,2]}`)},
		Tags: []string{"x"}, Capture: &Capture{Mode: CaptureTruncated, Counted: true}}))
	for _, rec := range callEdgeCases {
		f.Add([]byte(rec))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkDecodeCall(t, data) })
}
