package integration

import (
	"encoding/hex"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks/langfuse"
)

func lfCalls(run string, n int) []schema.Call {
	out := make([]schema.Call, n)
	for i := range out {
		out[i] = lfCall(run, i)
	}
	return out
}

// lfCheckStored asserts the contract server holds exactly one trace and one
// generation per call, with the fields an operator looks at.
func lfCheckStored(t *testing.T, srv *langfusetest.Server, calls []schema.Call) {
	t.Helper()
	traces, obs := srv.Traces(), srv.Observations()
	if len(traces) != len(calls) || len(obs) != len(calls) {
		t.Fatalf("server holds %d traces and %d generations, want %d each", len(traces), len(obs), len(calls))
	}
	for i := range calls {
		c := &calls[i]
		tr, ok := traces[c.TraceID]
		if !ok {
			t.Fatalf("no trace %s", c.TraceID)
		}
		g, ok := obs[c.ID]
		if !ok {
			t.Fatalf("no generation %s", c.ID)
		}
		if tr.UserID != c.UserID || tr.SessionID != c.SessionID || tr.Name != "chat "+c.Model ||
			!tr.Timestamp.Equal(c.StartTime) || tr.Environment != "it" || tr.Metadata["instance"] != c.Instance {
			t.Fatalf("trace %s: %+v", c.TraceID, tr)
		}
		if g.Type != "GENERATION" || g.TraceID != c.TraceID || g.Model != c.Model ||
			g.UsageDetails["input"] != c.InputTokens || g.UsageDetails["output"] != c.OutputTokens ||
			g.UsageDetails["total"] != c.TotalTokens || g.CostDetails["total"] != *c.CostUSD ||
			!g.StartTime.Equal(c.StartTime) || g.EndTime == nil || g.EndTime.Sub(g.StartTime).Milliseconds() != c.LatencyMS ||
			g.CompletionStartTime == nil || g.CompletionStartTime.Sub(g.StartTime).Milliseconds() != *c.TTFTMS ||
			g.ModelParameters["temperature"] != 0.2 || g.Level == "ERROR" {
			t.Fatalf("generation %s: %+v", c.ID, g)
		}
		if srv.Envelopes("trace", c.TraceID) != 1 || srv.Envelopes("observation", c.ID) != 1 {
			t.Fatalf("call %s stored as more than one event object", c.ID)
		}
	}
}

// TestLangfuseSinkThroughNATS: N calls on CALLPIPE_NORMALIZED → exactly N
// traces and N generations with the right fields; a resend of every call
// (new JetStream messages) leaves Langfuse's merged state unchanged.
func TestLangfuseSinkThroughNATS(t *testing.T) {
	n := 50000
	if lfRace {
		n = 10000
	}
	if testing.Short() {
		n = 5000
	}
	if v, err := strconv.Atoi(os.Getenv("CALLPIPE_LANGFUSE_IT_CALLS")); err == nil && v > 0 {
		n = v
	}
	e := newLfEnv(t, langfusetest.Options{})
	calls := lfCalls(e.run, n)
	e.publish(calls, "")
	start := time.Now()
	e.startSink(nil)
	lfWait(t, 5*time.Minute, "every generation stored", func() bool {
		acc, _, _ := e.srv.Counts()
		return acc >= 2*n
	})
	e.waitSettled(time.Minute)
	t.Logf("%d calls through NATS to the contract server in %v", n, time.Since(start))
	lfCheckStored(t, e.srv, calls)
	before, obefore := e.srv.Traces(), e.srv.Observations()

	e.publish(calls, "resend:")
	lfWait(t, 5*time.Minute, "resend delivered", func() bool {
		acc, _, _ := e.srv.Counts()
		return acc >= 4*n
	})
	e.waitSettled(time.Minute)
	if !reflect.DeepEqual(before, e.srv.Traces()) || !reflect.DeepEqual(obefore, e.srv.Observations()) {
		t.Fatal("resend changed the merged traces or generations")
	}
	lfCheckStored(t, e.srv, calls)
	if dl := e.deadLetters(); len(dl) != 0 {
		t.Fatalf("%d dead letters", len(dl))
	}
}

// TestLangfuseSinkPartialFailures: a per-event 400 sends the call to
// CALLPIPE_DLQ with Langfuse's message; per-event 500s are retried until
// accepted; nothing stays unacknowledged.
func TestLangfuseSinkPartialFailures(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{OpenAPI: lfSpec(t, "langfuse-3.225.4")})
	const n = 200
	calls := lfCalls(e.run, n)
	failures := map[string]int{}
	e.srv.SetEventFault(func(typ, id string) (int, string) {
		if typ != "generation-create" {
			return 0, ""
		}
		switch {
		case strings.HasSuffix(id, "13"): // c000013, c000113
			return 400, "Invalid request data: injected rejection"
		case strings.HasSuffix(id, "7"):
			failures[id]++ // under the server's lock
			if failures[id] <= 3 {
				return 500, "Internal Server Error"
			}
		}
		return 0, ""
	})
	e.publish(calls, "")
	e.startSink(nil)
	lfWait(t, time.Minute, "dead letters and generations", func() bool {
		return len(e.srv.Observations()) == n-2 && len(e.deadLetters()) == 2
	})
	e.waitSettled(30 * time.Second)
	dl := e.deadLetters()
	for _, m := range dl {
		reason := m.Header.Get(bus.HeaderError)
		if m.Header.Get(bus.HeaderStage) != "langfuse" || !strings.Contains(reason, "injected rejection") ||
			!strings.Contains(reason, "400") {
			t.Errorf("dead letter headers %v", m.Header)
		}
		if !strings.Contains(string(m.Data), e.run+"-c000") {
			t.Errorf("dead letter body is not the call: %.80s", m.Data)
		}
	}
	obs := e.srv.Observations()
	for i := range calls {
		id := calls[i].ID
		_, ok := obs[id]
		if strings.HasSuffix(id, "13") == ok {
			t.Errorf("call %s: stored=%v", id, ok)
		}
	}
	for id, k := range failures {
		if k != 4 {
			t.Errorf("%s answered %d times, want 3 failures then a success", id, k)
		}
	}
	if len(failures) != 20 {
		t.Errorf("%d calls hit per-event 500s, want 20", len(failures))
	}
	if v := e.srv.Violations(); len(v) != 0 {
		t.Fatalf("%d requests off Langfuse's OpenAPI definition, first: %.500s", len(v), v[0])
	}
}

// TestLangfuseSinkUnauthorized: while Langfuse refuses the keys nothing is
// acknowledged or dead-lettered and the sink is unhealthy, without a busy
// loop; once the keys are accepted every call gets through.
func TestLangfuseSinkUnauthorized(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{SecretKey: "sk-rotated", OpenAPI: lfSpec(t, "langfuse-4.16.0")})
	const n = 300
	calls := lfCalls(e.run, n)
	e.publish(calls, "")
	s := e.startSink(nil)
	lfWait(t, 10*time.Second, "unhealthy", func() bool { return s.sink.Health() != nil })
	time.Sleep(2 * time.Second)
	if !strings.Contains(s.sink.Health().Error(), "401") {
		t.Errorf("health: %v", s.sink.Health())
	}
	if unsettled, _ := e.consumerState(); unsettled != n {
		t.Fatalf("during 401: %d unsettled, want all %d (nothing acknowledged)", unsettled, n)
	}
	// retry_delay 300ms over ~2.5s: a handful of requests, not a busy loop.
	if r := len(e.srv.Requests()); r > 40 {
		t.Fatalf("%d requests while refused", r)
	}
	if len(e.srv.Traces()) != 0 || len(e.deadLetters()) != 0 {
		t.Fatal("stored or dead-lettered while refused")
	}
	e.srv.SetCredentials("pk-lf-test", "sk-lf-test")
	lfWait(t, time.Minute, "all accepted after the keys were fixed", func() bool {
		return len(e.srv.Observations()) == n
	})
	e.waitSettled(30 * time.Second)
	if s.sink.Health() != nil {
		t.Fatalf("still unhealthy: %v", s.sink.Health())
	}
	lfCheckStored(t, e.srv, calls)
	if v := e.srv.Violations(); len(v) != 0 {
		t.Fatalf("%d requests off Langfuse's OpenAPI definition, first: %.500s", len(v), v[0])
	}
}

// TestLangfuseSinkSplitAndRateLimit: a server with a small body limit makes
// the sink split on 413; a 429 with Retry-After is waited out.
func TestLangfuseSinkSplitAndRateLimit(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{})
	const n = 400
	calls := lfCalls(e.run, n)
	e.srv.SetMaxBodyBytes(100_000)
	e.srv.QueueFaults(langfusetest.Fault{Status: 429, RetryAfter: 2 * time.Second})
	e.publish(calls, "")
	e.startSink(func(oc *langfuse.OutputConfig, sc *langfuse.SinkConfig) { sc.Batch.MaxInFlight = 1; oc.MaxInFlight = 1 })
	lfWait(t, time.Minute, "all accepted", func() bool { return len(e.srv.Observations()) == n })
	e.waitSettled(30 * time.Second)
	lfCheckStored(t, e.srv, calls)
	reqs := e.srv.Requests()
	if reqs[0].Status != 429 || reqs[1].Time.Sub(reqs[0].Time) < 2*time.Second {
		t.Fatalf("after 429 with Retry-After 2s the next request came %v later", reqs[1].Time.Sub(reqs[0].Time))
	}
	var n413 int
	for _, r := range reqs {
		if r.Status == 413 {
			n413++
		}
		if r.Status == 207 && r.Bytes > 100_000 {
			t.Errorf("a %d-byte request was accepted", r.Bytes)
		}
	}
	if n413 == 0 {
		t.Fatal("no 413: nothing was split")
	}
}

// TestLangfuseSinkFlakyServer: 30% of requests answered 429/500/503 (and
// some per-event 500s) → every call accepted exactly once per id in the end,
// nothing in the DLQ, nothing unacknowledged.
func TestLangfuseSinkFlakyServer(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{})
	const n = 5000
	calls := lfCalls(e.run, n)
	e.srv.SetFailureRate(0.3,
		langfusetest.Fault{Status: 429, RetryAfter: time.Second}, langfusetest.Fault{Status: 500}, langfusetest.Fault{Status: 503})
	seen := map[string]bool{}
	e.srv.SetEventFault(func(typ, id string) (int, string) {
		if strings.HasSuffix(id, "5") && !seen[typ+id] {
			seen[typ+id] = true
			return 500, "Internal Server Error"
		}
		return 0, ""
	})
	e.publish(calls, "")
	e.startSink(func(oc *langfuse.OutputConfig, sc *langfuse.SinkConfig) {
		oc.MaxBatchCount = 200
		oc.MaxRetries = 3 // exhausted retries go back to JetStream and come again
	})
	lfWait(t, 3*time.Minute, "all accepted", func() bool { return len(e.srv.Observations()) == n && len(e.srv.Traces()) == n })
	e.waitSettled(time.Minute)
	lfCheckStored(t, e.srv, calls)
	if dl := e.deadLetters(); len(dl) != 0 {
		t.Fatalf("%d dead letters, first: %v", len(dl), dl[0].Header)
	}
	var failed int
	for _, r := range e.srv.Requests() {
		if r.Status != 207 {
			failed++
		}
	}
	t.Logf("%d requests, %d failed", len(e.srv.Requests()), failed)
	if failed == 0 {
		t.Fatal("no injected failure")
	}
}

// TestLangfuseSinkStopFlushes: stopping the sink (SIGTERM path) finishes the
// batch in flight: everything Langfuse accepted is acknowledged, the rest is
// delivered by the next run.
func TestLangfuseSinkStopFlushes(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{})
	const n = 3000
	calls := lfCalls(e.run, n)
	e.publish(calls, "")
	e.srv.SetFailureRate(0.5, langfusetest.Fault{Status: 503})
	s := e.startSink(func(oc *langfuse.OutputConfig, sc *langfuse.SinkConfig) { sc.Batch.Count = 100 })
	lfWait(t, time.Minute, "some accepted", func() bool { return len(e.srv.Observations()) > 200 })
	s.stop(t)
	stored := len(e.srv.Observations())
	unsettled, _ := e.consumerState()
	// Every acknowledged call is stored: acked = n - unsettled <= stored.
	if acked := n - int(unsettled); acked > stored {
		t.Fatalf("%d calls acknowledged but only %d stored", acked, stored)
	}
	t.Logf("stopped with %d of %d stored, %d unsettled", stored, n, unsettled)
	e.srv.SetFailureRate(0)
	e.startSink(nil)
	lfWait(t, time.Minute, "rest delivered", func() bool { return len(e.srv.Observations()) == n })
	e.waitSettled(30 * time.Second)
	lfCheckStored(t, e.srv, calls)
}

// TestLangfuseSinkOTLPThroughNATS: against a Langfuse 4.x server, transport
// auto picks OTLP; every call becomes one trace and one generation with the
// right user, tokens, latency and model; a resend changes nothing.
func TestLangfuseSinkOTLPThroughNATS(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{Version: "4.16.0"})
	n := 5000
	calls := lfCalls(e.run, n)
	e.publish(calls, "")
	s := e.startSink(nil)
	if s.out.Transport() != langfuse.TransportOTLP {
		t.Fatalf("transport %s", s.out.Transport())
	}
	lfWait(t, 2*time.Minute, "every span stored", func() bool { return e.srv.OTLPSpans() >= n })
	e.waitSettled(time.Minute)
	check := func() {
		traces, obs := e.srv.Traces(), e.srv.Observations()
		if len(traces) != n || len(obs) != n {
			t.Fatalf("%d traces %d generations, want %d", len(traces), len(obs), n)
		}
		for i := range calls {
			c := &calls[i]
			tr := traces[hex.EncodeToString(langfuse.OTLPTraceID(c))]
			g := obs[hex.EncodeToString(langfuse.OTLPSpanID(c))]
			if tr.UserID != c.UserID || tr.Name != "chat "+c.Model || !tr.Timestamp.Equal(c.StartTime) || tr.Environment != "it" {
				t.Fatalf("trace of %s: %+v", c.ID, tr)
			}
			if g.Type != "GENERATION" || g.Model != c.Model || g.UsageDetails["input"] != c.InputTokens ||
				g.UsageDetails["output"] != c.OutputTokens || g.UsageDetails["total"] != c.TotalTokens ||
				g.EndTime == nil || g.EndTime.Sub(g.StartTime).Milliseconds() != c.LatencyMS {
				t.Fatalf("generation of %s: %+v", c.ID, g)
			}
		}
	}
	check()
	before := fmt.Sprint(e.srv.Traces(), e.srv.Observations())
	e.publish(calls, "resend:")
	lfWait(t, 2*time.Minute, "resend delivered", func() bool { return e.srv.OTLPSpans() >= 2*n })
	e.waitSettled(time.Minute)
	if fmt.Sprint(e.srv.Traces(), e.srv.Observations()) != before {
		t.Fatal("resend changed the merged state")
	}
	check()
}

// TestLangfuseSinkSlowServer: requests that outlive the sink's timeout
// (while the server still stores them) are resent; every call ends up
// stored once per id, acknowledged, none dead-lettered; no busy loop.
func TestLangfuseSinkSlowServer(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{})
	const n = 2000
	calls := lfCalls(e.run, n)
	timeout, delay := lfSlow()
	e.srv.SetFailureRate(0.3, langfusetest.Fault{Delay: delay}, langfusetest.Fault{Delay: 300 * time.Millisecond})
	e.publish(calls, "")
	e.startSink(func(oc *langfuse.OutputConfig, sc *langfuse.SinkConfig) {
		oc.Timeout = timeout
		oc.MaxBatchCount = 100
		sc.Batch.Count = 200
	})
	lfWait(t, 3*time.Minute, "all accepted", func() bool { return len(e.srv.Observations()) == n })
	e.waitSettled(time.Minute)
	lfCheckStored(t, e.srv, calls)
	if dl := e.deadLetters(); len(dl) != 0 {
		t.Fatalf("%d dead letters", len(dl))
	}
	reqs := e.srv.Requests()
	acc, _, _ := e.srv.Counts()
	t.Logf("%d requests, %d events accepted for %d calls (timed-out requests resent)", len(reqs), acc, n)
	if acc <= 2*n {
		t.Error("no request timed out: the test did not exercise resends")
	}
	if len(reqs) > 400 {
		t.Errorf("%d requests for %d calls: busy retrying", len(reqs), n)
	}
}
