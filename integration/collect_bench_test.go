package integration

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callpipe/callpipe/ingest/collector"
)

// BenchmarkCollectNDJSON measures events/s accepted and acknowledged by
// JetStream for ~1 KB events in NDJSON batches of 500, from 4 concurrent clients:
//
//	go tool task services:up && . .state/services/env
//	go test -run '^$' -bench CollectNDJSON -benchtime 200x ./integration
//
// One op is one batch of 500 events.
func BenchmarkCollectNDJSON(b *testing.B) {
	const batch, clients = 500, 4
	s := newCallStream(b)
	srv := newCollector(b, s, collector.Options{})
	bodies := make([][]byte, b.N)
	for i := range bodies {
		bodies[i] = benchBatch(batch)
	}
	b.SetBytes(int64(len(bodies[0])))
	var next atomic.Int64
	var failed atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				resp, err := http.Post(srv.URL+"/v1/events", "application/x-ndjson", bytes.NewReader(bodies[i]))
				if err != nil || resp.StatusCode != http.StatusAccepted {
					failed.Add(1)
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if failed.Load() > 0 {
		b.Fatalf("%d batches not accepted", failed.Load())
	}
	b.ReportMetric(float64(b.N*batch)/elapsed.Seconds(), "events/s")
}

var benchSeq atomic.Int64

// benchBatch is n realistic chat events of about 1 KB each, with fresh ids.
func benchBatch(n int) []byte {
	var buf bytes.Buffer
	content := strings.Repeat("lorem ipsum ", 45)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s-bench-%d", runID, benchSeq.Add(1))
		fmt.Fprintf(&buf, `{"id":%q,"start_time":"2026-11-26T10:00:00.125Z","end_time":"2026-11-26T10:00:01.5Z",`+
			`"endpoint":"/v1/chat/completions","model":"qwen2.5-instruct","user":"u%d",`+
			`"request":{"model":"qwen2.5-instruct","messages":[{"role":"user","content":%q}]},`+
			`"response":{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]},`+
			`"usage":{"prompt_tokens":120,"completion_tokens":3,"total_tokens":123}}`+"\n", id, i%10, content)
	}
	return buf.Bytes()
}
