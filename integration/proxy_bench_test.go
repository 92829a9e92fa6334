package integration

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/ingest/proxy"
)

// BenchmarkProxyAddedLatency500rps sends chat calls open-loop at 500
// requests/s both straight to a fake Xinference and through the proxy (which
// publishes every event to real JetStream), and reports the added latency at
// p50 and p99 (proxied quantile minus direct quantile):
//
//	go tool task services:up && . .state/services/env
//	go test -run '^$' -bench ProxyAddedLatency500rps -benchtime 5000x ./integration
//
// b.N is the number of calls per path.
func BenchmarkProxyAddedLatency500rps(b *testing.B) {
	s := newCallStream(b)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"chatcmpl-1","object":"chat.completion","model":"qwen2.5-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}`)
	}))
	defer up.Close()
	pub, err := ingest.NewPublisher(s.nc, ingest.PublisherOptions{})
	if err != nil {
		b.Fatal(err)
	}
	u, _ := url.Parse(up.URL)
	opts := proxy.DefaultOptions(u)
	opts.SpoolDir = b.TempDir()
	p, err := proxy.New(opts, pub)
	if err != nil {
		b.Fatal(err)
	}
	go p.Run(context.Background())
	defer p.Close(context.Background())
	px := httptest.NewServer(p)
	defer px.Close()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	body := `{"model":"qwen2.5-instruct","messages":[{"role":"user","content":"` + strings.Repeat("hello ", 100) + `"}]}`
	call := func(base string) time.Duration {
		t0 := time.Now()
		resp, err := client.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			b.Error(err)
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(t0)
	}
	for range 100 {
		call(up.URL)
		call(px.URL)
	}
	var mu sync.Mutex
	var direct, proxied []time.Duration
	var wg sync.WaitGroup
	tick := time.NewTicker(2 * time.Millisecond) // 500/s on each path
	defer tick.Stop()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		<-tick.C
		wg.Add(2)
		go func() {
			defer wg.Done()
			d := call(up.URL)
			mu.Lock()
			direct = append(direct, d)
			mu.Unlock()
		}()
		go func() {
			defer wg.Done()
			d := call(px.URL)
			mu.Lock()
			proxied = append(proxied, d)
			mu.Unlock()
		}()
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(direct)
	slices.Sort(proxied)
	q := func(d []time.Duration, f float64) float64 {
		return float64(d[int(f*float64(len(d)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(q(direct, 0.50), "direct-p50-ms")
	b.ReportMetric(q(direct, 0.99), "direct-p99-ms")
	b.ReportMetric(q(proxied, 0.50)-q(direct, 0.50), "added-p50-ms")
	b.ReportMetric(q(proxied, 0.99)-q(direct, 0.99), "added-p99-ms")
}
