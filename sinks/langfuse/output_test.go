package langfuse_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks/langfuse"
	"github.com/callpipe/callpipe/tools/bench/receiver"
)

func basic(pk, sk string) string { return base64.StdEncoding.EncodeToString([]byte(pk + ":" + sk)) }

func post(t *testing.T, url, auth, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+langfuse.IngestionPath, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func newOutput(t testing.TB, srv *langfusetest.Server, mod func(*langfuse.OutputConfig)) *langfuse.Output {
	t.Helper()
	cfg := langfuse.OutputConfig{
		Host: srv.URL, PublicKey: "pk-lf-test", SecretKey: "sk-lf-test", Transport: langfuse.TransportAuto,
		Map:        langfuse.MapOptions{Environment: "test", MaxFieldBytes: 64 << 10},
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	out := langfuse.NewOutput(cfg)
	if err := out.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = out.Close() })
	return out
}

func calls(n int, prefix string) []schema.Call {
	out := make([]schema.Call, n)
	for i := range out {
		out[i] = fullCall(fmt.Sprintf("%s-%05d", prefix, i))
	}
	return out
}

func states(res []langfuse.Outcome) map[langfuse.State]int {
	m := map[langfuse.State]int{}
	for _, r := range res {
		m[r.State]++
	}
	return m
}

func TestAutoTransport(t *testing.T) {
	for v, want := range map[string]string{"3.225.4": "ingestion", "2.95.0": "ingestion", "4.16.0": "otlp", "v4.0.0": "otlp"} {
		if got := langfuse.TransportForVersion(v); got != want {
			t.Errorf("%s → %s, want %s", v, got, want)
		}
	}
	srv := langfusetest.New(langfusetest.Options{})
	defer srv.Close()
	out := newOutput(t, srv, nil)
	if out.Transport() != langfuse.TransportIngestion {
		t.Fatalf("auto on v3 chose %s", out.Transport())
	}
	srv.SetVersion("4.16.0")
	if o4 := newOutput(t, srv, nil); o4.Transport() != langfuse.TransportOTLP {
		t.Fatalf("auto on v4 chose %s", o4.Transport())
	}
}

func TestPartialFailures(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{})
	defer srv.Close()
	fails := map[string]int{}
	srv.SetEventFault(func(typ, id string) (int, string) {
		switch {
		case typ == "generation-create" && strings.HasSuffix(id, "3"):
			return 400, "Invalid request data: injected"
		case typ == "generation-create" && strings.HasSuffix(id, "7"):
			fails[id]++
			if fails[id] <= 2 {
				return 500, "Internal Server Error"
			}
		}
		return 0, ""
	})
	out := newOutput(t, srv, nil)
	cs := calls(20, "p")
	res, err := out.WriteBatch(context.Background(), cs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		id := cs[i].ID
		switch {
		case strings.HasSuffix(id, "3"):
			if r.State != langfuse.Rejected || !strings.Contains(r.Reason, "injected") || !strings.Contains(r.Reason, "400") {
				t.Errorf("%s: %+v", id, r)
			}
		default:
			if r.State != langfuse.Accepted {
				t.Errorf("%s: %+v", id, r)
			}
		}
	}
	obs := srv.Observations()
	if len(obs) != 18 || len(srv.Traces()) != 20 {
		t.Fatalf("stored %d generations %d traces", len(obs), len(srv.Traces()))
	}
	for id, n := range fails {
		if n != 3 {
			t.Errorf("%s tried %d times, want 3 (2 failures + success)", id, n)
		}
	}
}

func TestUnauthorizedKeepsPending(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{SecretKey: "rotated"})
	defer srv.Close()
	out := newOutput(t, srv, func(c *langfuse.OutputConfig) { c.MaxBatchCount = 2 }) // 5 requests per batch of 5 calls
	res, err := out.WriteBatch(context.Background(), calls(5, "u"))
	if !errors.Is(err, langfuse.ErrUnauthorized) || states(res)[langfuse.Pending] != 5 {
		t.Fatalf("err %v states %v", err, states(res))
	}
	if out.Health() == nil || !strings.Contains(out.Health().Error(), "401") {
		t.Fatalf("health while refused: %v", out.Health())
	}
	if n := len(srv.Requests()); n > 5 {
		t.Fatalf("%d requests: auth failures must not be retried in a loop", n)
	}
	// Known refused: the next batch costs one request, not one per chunk.
	n := len(srv.Requests())
	res, err = out.WriteBatch(context.Background(), calls(5, "u"))
	if !errors.Is(err, langfuse.ErrUnauthorized) || states(res)[langfuse.Pending] != 5 || len(srv.Requests()) != n+1 {
		t.Fatalf("probe: err %v states %v, %d requests", err, states(res), len(srv.Requests())-n)
	}
	srv.SetCredentials("pk-lf-test", "sk-lf-test")
	res, err = out.WriteBatch(context.Background(), calls(5, "u"))
	if err != nil || states(res)[langfuse.Accepted] != 5 || out.Health() != nil {
		t.Fatalf("after fix: %v %v %v", err, states(res), out.Health())
	}
}

func TestSplitOn413(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{})
	defer srv.Close()
	srv.SetMaxBodyBytes(300_000)
	cs := calls(40, "s")
	for i := range cs {
		cs[i].Input = json.RawMessage(fmt.Sprintf("%q", strings.Repeat("x", 10_000)))
	}
	// One event bigger than the server allows, even alone: rejected, not looped on.
	cs[5].Output = json.RawMessage(fmt.Sprintf("%q", strings.Repeat("y", 400_000)))
	out := newOutput(t, srv, func(c *langfuse.OutputConfig) {
		c.MaxBatchBytes = 1_000_000
		c.Map.MaxFieldBytes = 1 << 20
	})
	res, err := out.WriteBatch(context.Background(), cs)
	if err != nil {
		t.Fatal(err)
	}
	st := states(res)
	if st[langfuse.Accepted] != 39 || res[5].State != langfuse.Rejected || !strings.Contains(res[5].Reason, "413") {
		t.Fatalf("states %v, call 5: %+v", st, res[5])
	}
	var n413, n207 int
	for _, r := range srv.Requests() {
		switch r.Status {
		case 413:
			n413++
		case 207:
			n207++
			if r.Bytes > 300_000 {
				t.Errorf("accepted a %d-byte request", r.Bytes)
			}
		}
	}
	if n413 == 0 || n207 < 2 {
		t.Fatalf("413s %d, 207s %d: no split", n413, n207)
	}
	if len(srv.Observations()) != 39 {
		t.Fatalf("%d generations", len(srv.Observations()))
	}
}

func TestBatchLimits(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{})
	defer srv.Close()
	out := newOutput(t, srv, func(c *langfuse.OutputConfig) { c.MaxBatchBytes = 50_000; c.MaxBatchCount = 30 })
	res, err := out.WriteBatch(context.Background(), calls(100, "l"))
	if err != nil || states(res)[langfuse.Accepted] != 100 {
		t.Fatal(err, states(res))
	}
	for _, r := range srv.Requests() {
		if r.Events > 30 || r.Bytes > 50_000 {
			t.Errorf("request of %d events, %d bytes", r.Events, r.Bytes)
		}
	}
	// An event above the byte limit (here the very first) goes alone.
	big := calls(10, "big")
	big[0].Input = json.RawMessage(fmt.Sprintf("%q", strings.Repeat("x", 80_000)))
	n := len(srv.Requests())
	res, err = out.WriteBatch(context.Background(), big)
	if err != nil || states(res)[langfuse.Accepted] != 10 {
		t.Fatal(err, states(res))
	}
	for _, r := range srv.Requests()[n:] {
		if r.Bytes > 50_000 && r.Events != 1 {
			t.Errorf("a %d-byte request holds %d events", r.Bytes, r.Events)
		}
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{})
	defer srv.Close()
	srv.QueueFaults(langfusetest.Fault{Status: 429, RetryAfter: time.Second})
	out := newOutput(t, srv, nil)
	res, err := out.WriteBatch(context.Background(), calls(3, "r"))
	if err != nil || states(res)[langfuse.Accepted] != 3 {
		t.Fatal(err, states(res))
	}
	reqs := srv.Requests()
	if len(reqs) != 2 || reqs[0].Status != 429 || reqs[1].Status != 207 {
		t.Fatalf("requests %+v", reqs)
	}
	if gap := reqs[1].Time.Sub(reqs[0].Time); gap < time.Second {
		t.Fatalf("retried after %v, Retry-After was 1s", gap)
	}
}

func TestRetries5xxWithBackoff(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{})
	defer srv.Close()
	srv.QueueFaults(langfusetest.Fault{Status: 500}, langfusetest.Fault{Status: 503}, langfusetest.Fault{Status: 502})
	out := newOutput(t, srv, func(c *langfuse.OutputConfig) { c.MinBackoff = 20 * time.Millisecond; c.MaxBackoff = time.Second })
	res, err := out.WriteBatch(context.Background(), calls(3, "b"))
	if err != nil || states(res)[langfuse.Accepted] != 3 {
		t.Fatal(err, states(res))
	}
	reqs := srv.Requests()
	if len(reqs) != 4 {
		t.Fatalf("%d requests", len(reqs))
	}
	// Exponential: waits of at least 10, 20, 40 ms (jitter keeps [d/2, d]).
	for i := 1; i < len(reqs); i++ {
		if gap, min := reqs[i].Time.Sub(reqs[i-1].Time), (10*time.Millisecond)<<(i-1); gap < min {
			t.Errorf("wait %d = %v < %v", i, gap, min)
		}
	}
	// Retries exhausted → pending, not dropped.
	srv.QueueFaults(langfusetest.Fault{Status: 500}, langfusetest.Fault{Status: 500}, langfusetest.Fault{Status: 500})
	o2 := newOutput(t, srv, func(c *langfuse.OutputConfig) { c.MaxRetries = 2 })
	res, err = o2.WriteBatch(context.Background(), calls(2, "x"))
	if !errors.Is(err, langfuse.ErrRetriesExhausted) || states(res)[langfuse.Pending] != 2 {
		t.Fatal(err, states(res))
	}
}

func TestFailureRateEventuallyExactlyOnce(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{})
	defer srv.Close()
	srv.SetFailureRate(0.3, langfusetest.Fault{Status: 500}, langfusetest.Fault{Status: 429}, langfusetest.Fault{Status: 503})
	out := newOutput(t, srv, func(c *langfuse.OutputConfig) { c.MaxBatchCount = 50; c.MaxRetries = 50 })
	cs := calls(1000, "f")
	res, err := out.WriteBatch(context.Background(), cs)
	if err != nil || states(res)[langfuse.Accepted] != 1000 {
		t.Fatal(err, states(res))
	}
	if len(srv.Traces()) != 1000 || len(srv.Observations()) != 1000 {
		t.Fatalf("%d traces %d generations", len(srv.Traces()), len(srv.Observations()))
	}
	for _, c := range cs {
		if srv.Envelopes("observation", c.ID) != 1 || srv.Envelopes("trace", c.TraceID) != 1 {
			t.Fatalf("call %s stored as several objects", c.ID)
		}
	}
}

func TestResendLeavesMergedStateUnchanged(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{})
	defer srv.Close()
	out := newOutput(t, srv, nil)
	cs := calls(50, "m")
	if _, err := out.WriteBatch(context.Background(), cs); err != nil {
		t.Fatal(err)
	}
	before, obefore := fmt.Sprint(srv.Traces()), fmt.Sprint(srv.Observations())
	if _, err := out.WriteBatch(context.Background(), cs); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(srv.Traces()) != before || fmt.Sprint(srv.Observations()) != obefore {
		t.Fatal("resend changed the merged state")
	}
	if srv.Envelopes("observation", "m-00001") != 1 {
		t.Fatal("resend added an event object")
	}
}

// BenchmarkWriteBatch measures calls (one trace + one generation each)
// encoded and delivered over the ingestion API to a plain local receiver
// that decodes every body (bench/receiver.Langfuse, not the validating
// contract server), in batches of 2000 calls as the sink hands them over:
//
//	go test ./sinks/langfuse -run '^$' -bench 'WriteBatch$' -benchtime 100000x
//
// generations/cpu-s divides by the process's user+system CPU time, which
// includes the receiver's share.
func BenchmarkWriteBatch(b *testing.B) {
	benchWriteBatch(b, "3.225.4", langfuse.TransportIngestion)
}

func benchWriteBatch(b *testing.B, version, transport string) {
	srv := receiver.NewLangfuse(version)
	defer srv.Close()
	out := langfuse.NewOutput(langfuse.OutputConfig{Host: srv.URL, PublicKey: "pk", SecretKey: "sk",
		Transport: langfuse.TransportAuto, Map: langfuse.MapOptions{Environment: "bench", MaxFieldBytes: 64 << 10}})
	if err := out.Connect(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	if out.Transport() != transport {
		b.Fatalf("transport %s", out.Transport())
	}
	// Two batches in flight, like the sink with its default langfuse.max_in_flight (4 requests, 2 batches).
	const batch, workers = 2000, 2
	cs := calls(batch, "bench")
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	var taken atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for {
				start := taken.Add(batch) - batch
				if start >= int64(b.N) {
					return
				}
				n := int(min(batch, int64(b.N)-start))
				res, err := out.WriteBatch(context.Background(), cs[:n])
				if err == nil && states(res)[langfuse.Accepted] != n {
					err = fmt.Errorf("accepted %v of %d", states(res), n)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	cpu := cpuTime() - cpu0
	if _, events := srv.Counts(); events < int64(b.N*out.EventsPerCall()) {
		b.Fatalf("receiver got %d events for %d calls", events, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "generations/s")
	b.ReportMetric(float64(b.N)/cpu.Seconds(), "generations/cpu-s")
	b.ReportMetric(float64(srv.Conns()), "conns")
}

// TestConnectionReuse: requests reuse kept-alive connections; at most
// MaxInFlight are ever opened, over both transports and many batches.
func TestConnectionReuse(t *testing.T) {
	for _, version := range []string{"3.225.4", "4.16.0"} {
		srv := receiver.NewLangfuse(version)
		out := langfuse.NewOutput(langfuse.OutputConfig{Host: srv.URL, PublicKey: "pk", SecretKey: "sk",
			MaxInFlight: 3, MaxBatchCount: 50})
		if err := out.Connect(context.Background()); err != nil {
			t.Fatal(err)
		}
		cs := calls(500, "k")
		for range 4 {
			if res, err := out.WriteBatch(context.Background(), cs); err != nil || states(res)[langfuse.Accepted] != len(cs) {
				t.Fatal(err, states(res))
			}
		}
		reqs, _ := srv.Counts()
		// +1: the health probe of transport auto.
		if c := srv.Conns(); c > 3+1 || reqs < 40 {
			t.Errorf("%s: %d connections for %d requests", version, c, reqs)
		}
		_ = out.Close()
		srv.Close()
	}
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkEncode is the sink's own cost per call (mapping and JSON), without HTTP:
//
//	go test ./sinks/langfuse -run '^$' -bench Encode
func BenchmarkEncode(b *testing.B) {
	cs := calls(1000, "enc")
	o := langfuse.MapOptions{Environment: "bench", MaxFieldBytes: 64 << 10}
	buf := make([]byte, 0, 1<<16)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		tr, gen := langfuse.MapCall(&cs[i%len(cs)], o)
		buf = gen.AppendJSON(tr.AppendJSON(buf[:0]))
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "generations/s")
}

// TestAutoTransportHealth: auto reads the version from GET
// /api/public/health (also from a 503, which has the same shape); without
// a version or without an answer it does not guess, Connect fails with the
// reason (the stage retries it); an explicit transport needs no health.
func TestAutoTransportHealth(t *testing.T) {
	connect := func(h http.HandlerFunc, transport string) (*langfuse.Output, error) {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		out := langfuse.NewOutput(langfuse.OutputConfig{Host: srv.URL, PublicKey: "pk", SecretKey: "sk", Transport: transport})
		return out, out.Connect(context.Background())
	}
	health := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/api/public/health" || r.Method != http.MethodGet {
				http.NotFound(w, r)
				return
			}
			w.WriteHeader(status)
			_, _ = io.WriteString(w, body)
		}
	}
	for _, tc := range []struct {
		status int
		body   string
		want   string // transport, or "" for an error
	}{
		{200, `{"status":"OK","version":"3.225.4"}`, langfuse.TransportIngestion},
		{200, `{"status":"OK","version":"4.16.0"}`, langfuse.TransportOTLP},
		{503, `{"status":"Database not available","version":"4.2.0"}`, langfuse.TransportOTLP},
		{200, `{"status":"OK"}`, ""},
		{502, `<html>Bad Gateway</html>`, ""},
		{404, `not found`, ""},
	} {
		out, err := connect(health(tc.status, tc.body), langfuse.TransportAuto)
		switch {
		case tc.want == "" && (err == nil || !strings.Contains(err.Error(), "langfuse health")):
			t.Errorf("%d %s: err %v, transport %q", tc.status, tc.body, err, out.Transport())
		case tc.want != "" && (err != nil || out.Transport() != tc.want):
			t.Errorf("%d %s: err %v, transport %q, want %s", tc.status, tc.body, err, out.Transport(), tc.want)
		}
	}
	// Unreachable: nothing listens on the port any more.
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	out := langfuse.NewOutput(langfuse.OutputConfig{Host: url, PublicKey: "pk", SecretKey: "sk"})
	if err := out.Connect(context.Background()); err == nil || !strings.Contains(err.Error(), "langfuse health") ||
		out.Transport() != "" {
		t.Fatalf("unreachable health: err %v transport %q", err, out.Transport())
	}
	if _, err := out.WriteBatch(context.Background(), calls(1, "u")); err == nil {
		t.Fatal("an unconnected output accepted a batch")
	}
	// An explicit transport does not depend on the health endpoint.
	if out, err := connect(health(500, ""), langfuse.TransportIngestion); err != nil || out.Transport() != langfuse.TransportIngestion {
		t.Fatal(err, out.Transport())
	}
}

func TestAuthPause(t *testing.T) {
	base := 300 * time.Millisecond
	want := []time.Duration{300 * time.Millisecond, 600 * time.Millisecond, 1200 * time.Millisecond, 2400 * time.Millisecond}
	for n, w := range want {
		if got := langfuse.AuthPause(base, n); got != w {
			t.Errorf("pause %d = %v, want %v", n, got, w)
		}
	}
	if got := langfuse.AuthPause(base, 40); got != langfuse.AuthPauseMax {
		t.Errorf("capped pause = %v", got)
	}
	if got := langfuse.AuthPause(5*time.Minute, 3); got != 5*time.Minute {
		t.Errorf("a base above the cap is kept: %v", got)
	}
}
