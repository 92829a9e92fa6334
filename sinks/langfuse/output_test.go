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
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks/langfuse"
	"github.com/callpipe/callpipe/sinks/langfuse/langfusetest"
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
	out := newOutput(t, srv, nil)
	res, err := out.WriteBatch(context.Background(), calls(5, "u"))
	if !errors.Is(err, langfuse.ErrUnauthorized) || states(res)[langfuse.Pending] != 5 {
		t.Fatalf("err %v states %v", err, states(res))
	}
	if out.Health() == nil {
		t.Fatal("healthy while refused")
	}
	if n := len(srv.Requests()); n != 1 {
		t.Fatalf("%d requests: auth failures must not be retried in a loop", n)
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

// BenchmarkWriteBatch measures calls encoded and delivered to the in-process
// contract server (each call is one trace + one generation):
//
//	go test ./sinks/langfuse -run '^$' -bench WriteBatch -benchtime 100000x
func BenchmarkWriteBatch(b *testing.B) {
	srv := langfusetest.New(langfusetest.Options{})
	defer srv.Close()
	out := newOutput(b, srv, func(c *langfuse.OutputConfig) { c.MaxInFlight = 8 })
	const batch = 2000
	cs := calls(batch, "bench")
	b.ResetTimer()
	sent := 0
	for sent < b.N {
		n := min(batch, b.N-sent)
		res, err := out.WriteBatch(context.Background(), cs[:n])
		if err != nil || states(res)[langfuse.Accepted] != n {
			b.Fatal(err, states(res))
		}
		sent += n
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "generations/s")
	b.ReportMetric(2*float64(b.N)/b.Elapsed().Seconds(), "events/s")
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

// BenchmarkWriteBatchMinimalServer measures the sink against a minimal local
// server that only reads the envelope ids and answers 201 for each (no
// validation, no storage), i.e. the sink's own encode + HTTP cost:
//
//	go test ./sinks/langfuse -run '^$' -bench WriteBatchMinimalServer -benchtime 100000x
func BenchmarkWriteBatchMinimalServer(b *testing.B) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Batch []struct {
				ID string `json:"id"`
			} `json:"batch"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusMultiStatus)
		out := []byte(`{"errors":[],"successes":[`)
		for i, e := range req.Batch {
			if i > 0 {
				out = append(out, ',')
			}
			out = append(out, `{"id":"`+e.ID+`","status":201}`...)
		}
		_, _ = w.Write(append(out, "]}"...))
	})
	srv := httptest.NewServer(h)
	defer srv.Close()
	out := langfuse.NewOutput(langfuse.OutputConfig{Host: srv.URL, PublicKey: "pk", SecretKey: "sk",
		Transport: langfuse.TransportIngestion, MaxInFlight: 8})
	if err := out.Connect(context.Background()); err != nil {
		b.Fatal(err)
	}
	const batch = 2000
	cs := calls(batch, "bench")
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		n := min(batch, b.N-sent)
		res, err := out.WriteBatch(context.Background(), cs[:n])
		if err != nil || states(res)[langfuse.Accepted] != n {
			b.Fatal(err, states(res))
		}
		sent += n
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "generations/s")
}
