package schema

import (
	"encoding/json"
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
}
