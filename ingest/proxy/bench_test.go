package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/schema"
)

// BenchmarkProxyOverhead measures the latency the proxy adds to a call, as
// the difference between calls through it and the same calls made directly
// to the upstream, alternated on warm keep-alive connections. It reports the
// added p50 and p99 (µs) and the direct p50 for scale; events are published
// to an in-memory publisher. The uncaptured case is the bare cost of the
// extra HTTP hop, which the other cases include.
func BenchmarkProxyOverhead(b *testing.B) {
	x := newFakeXinference(b)
	defer x.srv.Close()
	u, _ := url.Parse(x.srv.URL)
	opts := DefaultOptions(u)
	opts.SpoolDir = b.TempDir()
	p, err := New(opts, nopPub{})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go p.Run(ctx)
	defer func() { cancel(); p.Close(context.Background()) }()
	px := httptest.NewServer(p)
	defer px.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}

	for _, bc := range []struct{ name, path, body string }{
		{"chat", "/v1/chat/completions", chatReqBody},
		{"chat-stream-usage-injected", "/v1/chat/completions", `{"model":"qwen3-instruct","messages":[{"role":"user","content":"hi"}],"stream":true}`},
		{"embeddings", "/v1/embeddings", `{"model":"bge-m3","input":["hello"]}`},
		// Not captured: the cost of the extra hop alone, for comparison.
		{"uncaptured-hop-only", "/v1/models", ""},
	} {
		b.Run(bc.name, func(b *testing.B) {
			call := func(base string) time.Duration {
				t0 := time.Now()
				var resp *http.Response
				var err error
				if bc.body == "" {
					resp, err = client.Get(base + bc.path)
				} else {
					resp, err = client.Post(base+bc.path, "application/json", bytes.NewReader([]byte(bc.body)))
				}
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return time.Since(t0)
			}
			for range 50 { // warm up connections
				call(x.srv.URL)
				call(px.URL)
			}
			direct := make([]time.Duration, 0, b.N)
			proxied := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if i%2 == 0 {
					direct = append(direct, call(x.srv.URL))
					proxied = append(proxied, call(px.URL))
				} else {
					proxied = append(proxied, call(px.URL))
					direct = append(direct, call(x.srv.URL))
				}
			}
			b.StopTimer()
			slices.Sort(direct)
			slices.Sort(proxied)
			q := func(d []time.Duration, f float64) float64 {
				return float64(d[min(len(d)-1, int(f*float64(len(d))))].Microseconds())
			}
			b.ReportMetric(q(direct, 0.5), "direct-p50-µs")
			b.ReportMetric(q(proxied, 0.5)-q(direct, 0.5), "added-p50-µs")
			b.ReportMetric(q(proxied, 0.99)-q(direct, 0.99), "added-p99-µs")
		})
	}
}

// nopPub drops events as if stored: the emitter's cost is measured by
// BenchmarkPrepare.
type nopPub struct{}

func (nopPub) PublishBatch(context.Context, []*schema.Event, []ingest.PublishResult) {}
