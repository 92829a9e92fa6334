package integration

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks/langfuse"
)

// TestLangfuseSinkFaults runs every fault at once through real JetStream:
// 30% of requests answered 429 (Retry-After) or 500, some held back past
// the sink's timeout (slow server, processed anyway), 207s with per-event
// 400s and first-time 500s, and a 401 period in the middle. In the end
// every call is accepted exactly once per id (one trace and one
// generation object) or, for the per-event 400s, in CALLPIPE_DLQ with
// Langfuse's message; nothing is left unacknowledged; while the keys are
// refused nothing is acknowledged, the refusal shows in a metric and the
// log, and the sink backs off instead of looping.
func TestLangfuseSinkFaults(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{})
	n := 3000
	if lfRace {
		n = 1000
	}
	calls := lfCalls(e.run, n)
	rejected := func(id string) bool { return strings.HasSuffix(id, "13") }
	// 40% faulted: 30% answered 429/500, 10% answered after the sink's timeout.
	timeout, delay := lfSlow()
	slow := langfusetest.Fault{Delay: delay}
	e.srv.SetFailureRate(0.4,
		langfusetest.Fault{Status: 429, RetryAfter: time.Second}, langfusetest.Fault{Status: 500},
		langfusetest.Fault{Status: 429, RetryAfter: time.Second}, langfusetest.Fault{Status: 500},
		langfusetest.Fault{Status: 429, RetryAfter: time.Second}, langfusetest.Fault{Status: 500},
		slow, slow)
	failed := map[string]bool{}
	e.srv.SetEventFault(func(typ, id string) (int, string) {
		switch {
		case typ == langfuse.TypeGenerationCreate && rejected(id):
			return 400, "Invalid request data: injected rejection"
		case strings.HasSuffix(id, "7") && !failed[typ+id]:
			failed[typ+id] = true
			return 500, "Internal Server Error"
		}
		return 0, ""
	})
	reg := prometheus.NewRegistry()
	logs := &testkit.Buffer{}
	e.publish(calls, "")
	e.startSink(func(oc *langfuse.OutputConfig, sc *langfuse.SinkConfig) {
		oc.Timeout = timeout
		oc.MaxBatchCount = 200
		oc.MaxRetries = 3
		sc.Batch.Count = 500
		sc.Registerer = reg
		sc.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	lfWait(t, 2*time.Minute, "a quarter stored", func() bool { return len(e.srv.Observations()) >= n/4 })

	// The 401 period.
	e.srv.SetCredentials("pk-lf-test", "sk-rotated-elsewhere")
	lfWait(t, 30*time.Second, "credentials refused", func() bool {
		return lfMetric(t, reg, "callpipe_langfuse_credentials_refused", "") == 1
	})
	// Requests accepted before the rotation may still be finishing (slow
	// answers, Retry-After); after that nothing may be acknowledged.
	time.Sleep(delay + time.Second)
	unsettled0, _ := e.consumerState()
	stored0 := len(e.srv.Observations())
	reqs0 := len(e.srv.Requests())
	time.Sleep(3 * time.Second)
	unsettled1, _ := e.consumerState()
	reqs := e.srv.Requests()[reqs0:]
	if unsettled1 != unsettled0 || len(e.srv.Observations()) != stored0 {
		t.Errorf("while refused: unsettled %d → %d, stored %d → %d (something was acknowledged or stored)",
			unsettled0, unsettled1, stored0, len(e.srv.Observations()))
	}
	if unsettled0 == 0 {
		t.Fatal("every call settled before the 401 period: the test did not exercise it")
	}
	// Backing off: while refused, a batch costs one request and the pause
	// doubles from retry_delay (300ms), so two batches in flight make a
	// handful of requests in 3 s; a loop would send hundreds.
	for _, r := range reqs {
		if r.Status != 401 {
			t.Errorf("a request during the 401 period got %d", r.Status)
		}
	}
	if len(reqs) > 12 {
		t.Errorf("%d requests in 3 s while refused: no back-off", len(reqs))
	}
	if !strings.Contains(logs.String(), "refused the credentials") || !strings.Contains(logs.String(), "401") {
		t.Errorf("the refusal is not in the log:\n%.2000s", logs.String())
	}
	t.Logf("401 period: %d requests in 3 s, %d calls unsettled", len(reqs), unsettled0)
	e.srv.SetCredentials("pk-lf-test", "sk-lf-test")

	lfWait(t, 3*time.Minute, "all accepted or dead-lettered", func() bool {
		u, _ := e.consumerState()
		return u == 0 && len(e.srv.Observations()) == n-n/100
	})
	if v := lfMetric(t, reg, "callpipe_langfuse_credentials_refused", ""); v != 0 {
		t.Errorf("credentials_refused = %v after the keys were accepted again", v)
	}
	traces, obs := e.srv.Traces(), e.srv.Observations()
	dead := map[string]string{}
	for _, m := range e.deadLetters() {
		var c schema.Call
		if err := json.Unmarshal(m.Data, &c); err != nil {
			t.Fatalf("dead letter is not a call: %v", err)
		}
		if _, dup := dead[c.ID]; dup {
			t.Errorf("%s dead-lettered twice", c.ID)
		}
		dead[c.ID] = m.Header.Get(bus.HeaderError)
	}
	for i := range calls {
		c := &calls[i]
		if _, ok := traces[c.TraceID]; !ok || e.srv.Envelopes("trace", c.TraceID) != 1 {
			t.Fatalf("trace of %s: stored %v, %d objects", c.ID, ok, e.srv.Envelopes("trace", c.TraceID))
		}
		g, ok := obs[c.ID]
		reason, isDead := dead[c.ID]
		if rejected(c.ID) {
			if ok || !isDead || !strings.Contains(reason, "injected rejection") || !strings.Contains(reason, "400") {
				t.Errorf("%s: stored %v, dead letter %q", c.ID, ok, reason)
			}
			continue
		}
		if !ok || isDead || e.srv.Envelopes("observation", c.ID) != 1 {
			t.Fatalf("%s: stored %v, dead letter %q, %d objects", c.ID, ok, reason, e.srv.Envelopes("observation", c.ID))
		}
		if g.TraceID != c.TraceID || g.Model != c.Model || g.UsageDetails["total"] != c.TotalTokens {
			t.Fatalf("generation %s: %+v", c.ID, g)
		}
	}
	if len(dead) != n/100 {
		t.Errorf("%d dead letters, want %d", len(dead), n/100)
	}
	acc := lfMetric(t, reg, "callpipe_langfuse_calls_total", "accepted")
	dl := lfMetric(t, reg, "callpipe_langfuse_calls_total", "dead_lettered")
	if acc+dl < float64(n) || dl != float64(n/100) {
		t.Errorf("metrics: %v accepted + %v dead-lettered for %d calls", acc, dl, n)
	}
	codes, late := map[int]int{}, 0
	for _, r := range e.srv.Requests() {
		codes[r.Status]++
		if r.Delayed > timeout { // past the sink's timeout: processed, yet resent
			late++
		}
	}
	t.Logf("requests by status: %v, %d answered after the sink's timeout", codes, late)
	if codes[429] == 0 || codes[500] == 0 || codes[401] == 0 || late == 0 {
		t.Errorf("not every fault happened: %v, %d slow", codes, late)
	}
}

// TestLangfuseSinkReplayRouting: the replay contract (bus/route.go):
// replayed calls whose Callpipe-Sinks names other sinks are acknowledged
// and not sent; replayed calls for langfuse (or for every sink) and live
// calls are sent.
func TestLangfuseSinkReplayRouting(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{})
	all := lfCalls(e.run, 400)
	live, other, mine, every := all[:100], all[100:200], all[200:300], all[300:]
	replay := func(sinks string) nats.Header {
		h := nats.Header{}
		h.Set(bus.HeaderReplay, "job-"+e.run)
		if sinks != "" {
			h.Set(bus.HeaderSinks, sinks)
		}
		return h
	}
	e.publish(live, "")
	e.publishWith(other, "", replay("clickhouse,archive"))
	e.publishWith(mine, "", replay("clickhouse, langfuse"))
	e.publishWith(every, "", replay(""))
	reg := prometheus.NewRegistry()
	e.startSink(func(_ *langfuse.OutputConfig, sc *langfuse.SinkConfig) { sc.Registerer = reg })
	e.waitSettled(time.Minute)
	lfWait(t, 30*time.Second, "sent calls stored", func() bool { return len(e.srv.Observations()) == 300 })
	obs := e.srv.Observations()
	for _, c := range other {
		if _, ok := obs[c.ID]; ok {
			t.Fatalf("%s was replayed for clickhouse,archive only but sent to Langfuse", c.ID)
		}
	}
	for _, group := range [][]schema.Call{live, mine, every} {
		for _, c := range group {
			if _, ok := obs[c.ID]; !ok {
				t.Fatalf("%s not sent", c.ID)
			}
		}
	}
	if v := lfMetric(t, reg, "callpipe_langfuse_calls_total", "skipped_replay"); v != 100 {
		t.Errorf("skipped_replay = %v, want 100", v)
	}
	if dl := e.deadLetters(); len(dl) != 0 {
		t.Errorf("%d dead letters", len(dl))
	}
}
