package clickhouse

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
)

func benchCalls(n int) []schema.Call {
	start := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	out := make([]schema.Call, n)
	for i := range out {
		ttft, cost := int64(40), 0.001
		ft := start.Add(40 * time.Millisecond)
		out[i] = schema.Call{ID: fmt.Sprintf("call-%08d", i), TraceID: "t", StartTime: start, EndTime: start.Add(time.Second),
			FirstTokenTime: &ft, TTFTMS: &ttft, LatencyMS: 1000, Endpoint: "/v1/chat/completions", Kind: schema.KindChat,
			Model: "qwen2.5-instruct", Instance: "127.0.0.1:9997", UserID: "user-01", UserSource: schema.UserExplicit,
			Stream: true, Status: 200, InputText: "What is the capital of France? Answer in one word.", OutputText: "Paris.",
			Input:       json.RawMessage(`[{"role":"user","content":"What is the capital of France? Answer in one word."}]`),
			Output:      json.RawMessage(`{"role":"assistant","content":"Paris."}`),
			InputTokens: 20, OutputTokens: 2, TotalTokens: 22, UsageSource: schema.UsageReported, CostUSD: &cost,
			Metadata: map[string]json.RawMessage{"team": json.RawMessage(`"a"`)}, Tags: []string{"x"}, Source: "proxy"}
	}
	return out
}

// BenchmarkCallColumns: building the column slices of one row (-cpu 1 gives
// ns per row per CPU).
//
//	go test -run '^$' -bench 'BenchmarkCallColumns|BenchmarkDecodeCall' -cpu 1 ./sinks/clickhouse/
func BenchmarkCallColumns(b *testing.B) {
	calls := benchCalls(10000)
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += len(calls) {
		callColumns(calls, 4096, now, 1)
	}
}

// BenchmarkDecodeCall: decoding one normalized record from JetStream.
func BenchmarkDecodeCall(b *testing.B) {
	calls := benchCalls(1)
	data, err := json.Marshal(&calls[0])
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := decodeCall(data); err != nil {
			b.Fatal(err)
		}
	}
}
