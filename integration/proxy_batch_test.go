package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/serve/usageapi"
)

// headerUpstream is a Xinference-like chat upstream that records the
// request headers it got; model "broken" answers 500.
type headerUpstream struct {
	*httptest.Server
	mu      sync.Mutex
	headers []http.Header
}

func newHeaderUpstream(t *testing.T) *headerUpstream {
	u := &headerUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.headers = append(u.headers, r.Header.Clone())
		u.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(string(body), `"model":"broken"`) {
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, `{"detail":"model broken is not running"}`)
			return
		}
		time.Sleep(30 * time.Millisecond) // a measurable duration per call
		fmt.Fprint(w, `{"id":"chatcmpl-1","object":"chat.completion","created":1764150000,"model":"qwen2.5-instruct",`+
			`"choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],`+
			`"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}`)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *headerUpstream) requests() []http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.headers)
}

// proxyCall posts one chat call through the proxy with the given headers and
// returns its status, event id and body.
func proxyCall(t *testing.T, base, model string, hdr map[string]string) (int, string, string) {
	t.Helper()
	body := fmt.Sprintf(`{"model":%q,"user":"alice","messages":[{"role":"user","content":"hi"}]}`, model)
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Callpipe-Event-Id"), string(b)
}

// TestProxyBatchHeadersEndToEnd runs the real binaries — proxy, a worker
// with the normalize, clickhouse and langfuse stages, serve — and sends
// calls with X-Callpipe-Source/Batch-Id/Tags: the headers never reach the
// upstream, a bad one is refused naming it, and source and batch show in
// the usage API's group_by=source, the call list's filters, the batch list
// and the Langfuse trace.
// proxyPipeline is the real binaries — proxy, a worker with the normalize,
// clickhouse and langfuse stages, serve — on a fresh JetStream and database,
// in front of a headerUpstream, with a Langfuse test server.
type proxyPipeline struct {
	nats  string
	env   []string // for callpipe commands: NATS, ClickHouse and Redis of the pipeline
	base  string   // the proxy
	serve *serveProcess
	lf    *langfusetest.Server
	up    *headerUpstream
	tag   string
	procs []*testkit.Proc
}

func startProxyPipeline(t *testing.T) *proxyPipeline {
	t.Helper()
	natsURL := harness.FreshNATS(t)
	ch := harness.ClickHouse(t)
	redisAddr := harness.Redis(t)
	tag := testkit.RandomHex(t, 4)
	db := "opsbatch_" + tag
	chDropAtCleanup(t, db)
	lf := langfusetest.New(langfusetest.Options{})
	t.Cleanup(lf.Close)
	up := newHeaderUpstream(t)

	env := append(os.Environ(), "CALLPIPE_NATS_URL="+natsURL, "CALLPIPE_LOG_FORMAT=text")
	proxyAddr := testkit.FreeAddr(t)
	proxy := testkit.Start(t, env, "proxy", "--listen", proxyAddr, "--upstream", up.URL)
	proxy.WaitReady(t, proxyAddr, 60*time.Second)
	workerAddr := testkit.FreeAddr(t)
	env = append(env, "CALLPIPE_CLICKHOUSE_ADDR="+ch.Native, "CALLPIPE_CLICKHOUSE_DATABASE="+db, "CALLPIPE_REDIS_ADDR="+redisAddr)
	worker := testkit.Start(t, append(env,
		"LANGFUSE_HOST="+lf.URL, "LANGFUSE_PUBLIC_KEY=pk-lf-test", "LANGFUSE_SECRET_KEY=sk-lf-test",
	), "worker", "--stages", "normalize,clickhouse,langfuse", "--listen", workerAddr)
	worker.WaitReady(t, workerAddr, 60*time.Second)
	serve := startServe(t, db, "CALLPIPE_NATS_URL="+natsURL)
	return &proxyPipeline{env: env, nats: natsURL, base: "http://" + proxyAddr, serve: serve, lf: lf, up: up, tag: tag, procs: []*testkit.Proc{proxy, worker}}
}

// stop ends serve, the worker and the proxy, each with status 0.
func (p *proxyPipeline) stop(t *testing.T) {
	t.Helper()
	p.serve.stop(t)
	for i := len(p.procs) - 1; i >= 0; i-- {
		p.procs[i].Stop(t, 30*time.Second)
	}
}

func TestProxyBatchHeadersEndToEnd(t *testing.T) {
	pl := startProxyPipeline(t)
	firstDay := time.Now().UTC().Format(time.DateOnly) // the range below covers a UTC midnight crossed meanwhile
	base, serve, lf, up, tag := pl.base, pl.serve, pl.lf, pl.up, pl.tag

	nightly, other := "nightly-"+tag, "reindex-"+tag
	batchHdr := func(id string) map[string]string {
		return map[string]string{"X-Callpipe-Source": "batch", "X-Callpipe-Batch-Id": id, "X-Callpipe-Tags": "eval, nightly"}
	}
	var nightlyIDs []string
	for i := 0; i < 3; i++ {
		code, id, body := proxyCall(t, base, "qwen2.5-instruct", batchHdr(nightly))
		if code != 200 {
			t.Fatalf("batch call: %d %s", code, body)
		}
		nightlyIDs = append(nightlyIDs, id)
	}
	if code, _, body := proxyCall(t, base, "broken", batchHdr(other)); code != 500 {
		t.Fatalf("broken batch call: %d %s", code, body)
	}
	for i := 0; i < 2; i++ {
		if code, _, body := proxyCall(t, base, "qwen2.5-instruct", nil); code != 200 {
			t.Fatalf("online call: %d %s", code, body)
		}
	}
	// Refused before the upstream, naming the header.
	code, _, body := proxyCall(t, base, "qwen2.5-instruct", map[string]string{"X-Callpipe-Source": "nightly"})
	if code != http.StatusBadRequest || !strings.Contains(body, `"param":"X-Callpipe-Source"`) || !strings.Contains(body, `got \"nightly\"`) {
		t.Fatalf("bad source: %d %s", code, body)
	}
	reqs := up.requests()
	if len(reqs) != 6 {
		t.Fatalf("upstream got %d requests, want 6 (the refused one never reaches it)", len(reqs))
	}
	for _, h := range reqs {
		for k := range h {
			if strings.HasPrefix(strings.ToLower(k), "x-callpipe-") {
				t.Fatalf("upstream got header %s", k)
			}
		}
	}

	day := time.Now().UTC().Format(time.DateOnly)
	rng := url.Values{"from": {firstDay}, "to": {day}}
	with := func(kv ...string) url.Values {
		v := url.Values{"from": {firstDay}, "to": {day}}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	var usage usageapi.UsageResponse
	testkit.WaitFor(t, 60*time.Second, "6 calls in the usage API", func() (bool, string) {
		apiGet(t, serve.base, "/api/v1/usage", with("group_by", "source"), "", 200, &usage)
		// rows and totals are two reads: both must see every call
		var inRows uint64
		for _, r := range usage.Rows {
			inRows += r.Metrics.Calls
		}
		return usage.Totals.Calls == 6 && inRows == 6, fmt.Sprintf("%d calls, %d in rows", usage.Totals.Calls, inRows)
	})
	bySource := map[string]usageapi.Metrics{}
	for _, r := range usage.Rows {
		bySource[str(r.Source)] = r.Metrics
	}
	// The failed call's input tokens are estimated, so the batch total is
	// checked against the batch list below.
	if b, o := bySource["batch"], bySource["online"]; b.Calls != 4 || b.Errors != 1 || o.Calls != 2 || o.Errors != 0 || o.TotalTokens != 30 {
		t.Fatalf("group_by=source: batch %+v online %+v", b, o)
	}

	var calls usageapi.CallsResponse
	apiGet(t, serve.base, "/api/v1/calls", with("source", "batch"), "", 200, &calls)
	if len(calls.Calls) != 4 {
		t.Fatalf("source=batch lists %d calls, want 4", len(calls.Calls))
	}
	calls = usageapi.CallsResponse{} // omitted fields would keep the last answer's values
	apiGet(t, serve.base, "/api/v1/calls", with("batch_id", nightly), "", 200, &calls)
	var got []string
	for _, c := range calls.Calls {
		if c.Source != "batch" || c.BatchID != nightly {
			t.Errorf("batch_id=%s lists %+v", nightly, c)
		}
		got = append(got, c.ID)
	}
	slices.Sort(got)
	want := slices.Sorted(slices.Values(nightlyIDs))
	if !slices.Equal(got, want) {
		t.Fatalf("batch_id=%s lists %v, want %v", nightly, got, want)
	}
	calls = usageapi.CallsResponse{}
	apiGet(t, serve.base, "/api/v1/calls", with("source", "online"), "", 200, &calls)
	if len(calls.Calls) != 2 || calls.Calls[0].Source != "online" || calls.Calls[0].BatchID != "" {
		t.Fatalf("source=online lists %+v", calls.Calls)
	}

	var batches usageapi.BatchesResponse
	apiGet(t, serve.base, "/api/v1/batches", rng, "", 200, &batches)
	byID := map[string]int{}
	for i, b := range batches.Batches {
		byID[b.BatchID] = i
	}
	if len(batches.Batches) != 2 {
		t.Fatalf("batches: %+v", batches.Batches)
	}
	n, o := batches.Batches[byID[nightly]], batches.Batches[byID[other]]
	if n.BatchID != nightly || n.Calls != 3 || n.Errors != 0 || n.TotalTokens != 45 || n.DurationMS < 90 ||
		!n.LastEnd.After(n.FirstStart) || !slices.Equal(n.Models, []string{"qwen2.5-instruct"}) {
		t.Errorf("nightly batch %+v", n)
	}
	if o.BatchID != other || o.Calls != 1 || o.Errors != 1 || !slices.Equal(o.Models, []string{"broken"}) {
		t.Errorf("other batch %+v", o)
	}
	if sum := n.TotalTokens + o.TotalTokens; sum != bySource["batch"].TotalTokens {
		t.Errorf("batches hold %d tokens, usage by source %d", sum, bySource["batch"].TotalTokens)
	}

	// Langfuse: each batch call's trace carries source, batch and tags.
	testkit.WaitFor(t, 60*time.Second, "Langfuse traces of the batch calls", func() (bool, string) {
		tr := lf.Traces()
		for _, id := range nightlyIDs {
			if _, ok := tr[id]; !ok {
				return false, fmt.Sprintf("%d traces, no %s yet", len(tr), id)
			}
		}
		return true, ""
	})
	for _, id := range nightlyIDs {
		tr := lf.Traces()[id]
		own, _ := tr.Metadata["callpipe"].(map[string]any)
		if tr.Metadata["source"] != "batch" || own["batch_id"] != nightly || !slices.Equal(tr.Tags, []string{"eval", "nightly"}) || tr.UserID != "alice" {
			b, _ := json.Marshal(tr)
			t.Errorf("Langfuse trace %s: %s", id, b)
		}
	}
	pl.stop(t)
}

// TestProxyTracesEndToEnd sends an agent loop through the real proxy — one
// call, two in parallel, one more — under one X-Callpipe-Trace-Id, and a
// second trace in the same X-Callpipe-Session-Id: /api/v1/traces shows the
// trace's calls with the right parent, order and overlap, and the session
// with both traces; Langfuse gets the session and one trace holding the
// four generations; non-streamed calls have no TTFT.
func TestProxyTracesEndToEnd(t *testing.T) {
	pl := startProxyPipeline(t)
	firstDay := time.Now().UTC().Format(time.DateOnly) // the list below covers a UTC midnight crossed meanwhile
	trace, trace2, sess := "agent-"+pl.tag, "agent2-"+pl.tag, "sess-"+pl.tag
	hdr := func(tr string) map[string]string {
		return map[string]string{"X-Callpipe-Trace-Id": tr, "X-Callpipe-Session-Id": sess, "X-Callpipe-Tags": "agent"}
	}
	call := func(tr string) string {
		code, id, body := proxyCall(t, pl.base, "qwen2.5-instruct", hdr(tr))
		if code != 200 {
			t.Errorf("call: %d %s", code, body)
		}
		return id
	}
	first := call(trace)
	par := make([]string, 2)
	var wg sync.WaitGroup
	for i := range par {
		wg.Go(func() { par[i] = call(trace) })
	}
	wg.Wait()
	last := call(trace)
	other := call(trace2)
	if t.Failed() {
		t.FailNow()
	}

	var tr usageapi.TraceResponse
	testkit.WaitFor(t, 60*time.Second, "the trace's 4 calls", func() (bool, string) {
		tr = usageapi.TraceResponse{}
		code, body := httpGet(t, pl.serve.base+"/api/v1/traces/"+trace)
		if code != 200 {
			return false, body
		}
		if err := json.Unmarshal([]byte(body), &tr); err != nil {
			t.Fatal(err)
		}
		return tr.Root.Calls == 4, fmt.Sprintf("%d calls", tr.Root.Calls)
	})
	if tr.MatchedBy != "trace_id" || tr.Root.Type != "trace" || tr.Root.ID != trace || len(tr.Root.Children) != 4 || len(tr.Timeline) != 4 {
		t.Fatalf("trace: matched by %s, root %s %s with %d children, %d timeline rows", tr.MatchedBy, tr.Root.Type, tr.Root.ID, len(tr.Root.Children), len(tr.Timeline))
	}
	at := map[string]usageapi.TraceNode{}
	for _, n := range tr.Root.Children {
		if n.Type != "call" || len(n.Children) != 0 {
			t.Errorf("child of the trace: %s %s with %d children", n.Type, n.ID, len(n.Children))
		}
		at[n.ID] = n
	}
	end := func(n usageapi.TraceNode) int64 { return n.OffsetMS + n.DurationMS }
	f, p0, p1, l := at[first], at[par[0]], at[par[1]], at[last]
	if f.OffsetMS != 0 || f.DurationMS < 30 {
		t.Errorf("first call: offset %d duration %d", f.OffsetMS, f.DurationMS)
	}
	for _, p := range []usageapi.TraceNode{p0, p1} {
		if p.OffsetMS < end(f) || p.DurationMS < 30 {
			t.Errorf("parallel call %s: offset %d duration %d, first ended at %d", p.ID, p.OffsetMS, p.DurationMS, end(f))
		}
	}
	if p0.OffsetMS >= end(p1) || p1.OffsetMS >= end(p0) {
		t.Errorf("parallel calls do not overlap: [%d,%d] [%d,%d]", p0.OffsetMS, end(p0), p1.OffsetMS, end(p1))
	}
	if l.OffsetMS < max(end(p0), end(p1)) || tr.Timeline[3].ID != last || tr.Timeline[0].ID != first {
		t.Errorf("last call at %d, parallel ones ended at %d and %d; timeline %v", l.OffsetMS, end(p0), end(p1), tr.Timeline)
	}
	if tr.Root.DurationMS != end(l) || tr.Root.TotalTokens != 60 || tr.Root.Errors != 0 {
		t.Errorf("trace totals: duration %d (last call ends at %d), tokens %d, errors %d", tr.Root.DurationMS, end(l), tr.Root.TotalTokens, tr.Root.Errors)
	}

	var ss usageapi.TraceResponse
	testkit.WaitFor(t, 30*time.Second, "the session's 5 calls", func() (bool, string) {
		ss = usageapi.TraceResponse{}
		apiGet(t, pl.serve.base, "/api/v1/traces/"+sess, nil, "", 200, &ss)
		return ss.Root.Calls == 5, fmt.Sprintf("%d calls", ss.Root.Calls)
	})
	if ss.MatchedBy != "session_id" || ss.Root.Type != "session" || len(ss.Root.Children) != 2 ||
		ss.Root.Children[0].ID != trace || ss.Root.Children[0].Calls != 4 || ss.Root.Children[1].ID != trace2 ||
		len(ss.Root.Children[1].Children) != 1 || ss.Root.Children[1].Children[0].ID != other {
		b, _ := json.Marshal(ss.Root)
		t.Fatalf("session tree: %s", b)
	}

	var calls usageapi.CallsResponse
	day := time.Now().UTC().Format(time.DateOnly)
	apiGet(t, pl.serve.base, "/api/v1/calls", url.Values{"from": {firstDay}, "to": {day}}, "", 200, &calls)
	for _, c := range calls.Calls {
		if c.TTFTMS != nil {
			t.Errorf("non-streamed call %s has TTFT %d ms", c.ID, *c.TTFTMS)
		}
	}

	testkit.WaitFor(t, 60*time.Second, "Langfuse trace with 4 generations", func() (bool, string) {
		n := 0
		for _, o := range pl.lf.Observations() {
			if o.TraceID == trace {
				n++
			}
		}
		return n == 4, fmt.Sprintf("%d generations", n)
	})
	lt := pl.lf.Traces()[trace]
	if lt.SessionID != sess || !slices.Equal(lt.Tags, []string{"agent"}) || lt.UserID != "alice" {
		b, _ := json.Marshal(lt)
		t.Errorf("Langfuse trace: %s", b)
	}
	for _, id := range append([]string{first, last}, par...) {
		if o := pl.lf.Observations()[id]; o.TraceID != trace || o.CompletionStartTime != nil {
			b, _ := json.Marshal(o)
			t.Errorf("Langfuse generation %s: %s", id, b)
		}
	}
	pl.stop(t)
}

// TestPricesStoredInKV: `callpipe prices set` stores a Langfuse-shaped price
// table in NATS KV and the running normalize stage prices calls with it from
// the next call on, ahead of nothing configured; a second table replaces
// it; `prices delete` leaves calls unpriced again; a bad table is refused
// naming the row and field.
func TestPricesStoredInKV(t *testing.T) {
	pl := startProxyPipeline(t)
	env := pl.env
	prices := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command(testkit.Binary(t), append([]string{"prices"}, args...)...)
		cmd.Env, cmd.Stdin = env, strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	table := func(in, out float64) string {
		return fmt.Sprintf(`{"models":[{"modelName":"qwen2.5-instruct","matchPattern":"(?i)^qwen2\\.5-instruct$","inputPrice":%g,"outputPrice":%g,"unit":"TOKENS"}]}`, in, out)
	}
	cost := func(id string) *float64 {
		var c usageapi.CallResponse
		testkit.WaitFor(t, 30*time.Second, "call "+id+" stored", func() (bool, string) {
			code, body := httpGet(t, pl.serve.base+"/api/v1/calls/"+id)
			if code == 200 {
				c = usageapi.CallResponse{}
				json.Unmarshal([]byte(body), &c)
			}
			return code == 200, body
		})
		return c.CostUSD
	}
	call := func() string {
		code, id, body := proxyCall(t, pl.base, "qwen2.5-instruct", nil)
		if code != 200 {
			t.Fatalf("call: %d %s", code, body)
		}
		return id
	}
	// pricedAt sends calls until one costs want (the stage applies a stored
	// table within moments), then one more that must cost the same.
	pricedAt := func(want float64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			c := cost(call())
			if c != nil && math.Abs(*c-want) < 1e-12 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("calls still cost %v, want %v", c, want)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if c := cost(call()); c == nil || math.Abs(*c-want) > 1e-12 {
			t.Fatalf("the next call costs %v, want %v", c, want)
		}
	}

	// the reprice range starts on the day of the first call: the test may
	// run across a UTC midnight
	first := time.Now().UTC()
	unpriced := call()
	if c := cost(unpriced); c != nil {
		t.Fatalf("a call without any price costs %v", *c)
	}
	if out, err := prices("", "get"); err == nil || !strings.Contains(out, "no price table stored") {
		t.Fatalf("prices get before set: %v %s", err, out)
	}
	out, err := prices(`{"models":[{"modelName":"x","matchPattern":"(","inputPrice":-1}]}`, "set", "-")
	if err == nil || !strings.Contains(out, "models[0].matchPattern: not a regular expression") || !strings.Contains(out, "models[0].inputPrice: -1") {
		t.Fatalf("bad table: %v %s", err, out)
	}
	if out, err := prices(table(1e-6, 2e-6), "set", "-"); err != nil || !strings.Contains(out, "stored 1 model prices") {
		t.Fatalf("prices set: %v %s", err, out)
	}
	pricedAt(12*1e-6 + 3*2e-6) // 12 prompt and 3 completion tokens
	// Calls stored before the table keep their cost until repriced.
	if c := cost(unpriced); c != nil {
		t.Fatalf("a stored call was repriced by prices set: %v", *c)
	}
	day := first.Format(time.DateOnly)
	next := time.Now().UTC().Add(24 * time.Hour).Format(time.DateOnly)
	if out, err := prices("", "reprice", "--from", day, "--to", next); err != nil || !strings.Contains(out, "with a changed cost") || strings.Contains(out, "; 0 with") {
		t.Fatalf("prices reprice: %v %s", err, out)
	}
	testkit.WaitFor(t, 30*time.Second, "the earlier call repriced", func() (bool, string) {
		c := cost(unpriced)
		return c != nil && math.Abs(*c-(12*1e-6+3*2e-6)) < 1e-12, fmt.Sprint(c)
	})
	if out, err := prices("", "reprice", "--from", day, "--to", next); err != nil || !strings.Contains(out, "; 0 with a changed cost") {
		t.Fatalf("second prices reprice: %v %s", err, out)
	}
	if out, err := prices("", "get"); err != nil || !strings.Contains(out, `"inputPrice": 0.000001`) {
		t.Fatalf("prices get: %v %s", err, out)
	}
	if _, err := prices(table(10e-6, 0), "set", "-"); err != nil {
		t.Fatal(err)
	}
	pricedAt(12 * 10e-6)
	if out, err := prices("", "delete"); err != nil {
		t.Fatalf("prices delete: %v %s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for c := cost(call()); c != nil; c = cost(call()) {
		if time.Now().After(deadline) {
			t.Fatalf("calls still cost %v after prices delete", *c)
		}
		time.Sleep(200 * time.Millisecond)
	}
	pl.stop(t)
}

// TestUsersReresolve: a call stored with user unresolved (its key could not
// be looked up) gets its user from `callpipe users reresolve` once the key
// is known: the call, the usage by user and the Langfuse trace follow.
func TestUsersReresolve(t *testing.T) {
	pl := startProxyPipeline(t)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(testkit.Binary(t), args...)
		cmd.Env = pl.env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("callpipe %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	key := "xf-reresolve" + pl.tag + strings.Repeat("0", 30)
	// Hours ago: an hour the rollup sealer has already sealed, so the
	// usage must come from the dirty-hour path, not the sealed rollup.
	start := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Millisecond)
	c := schema.Call{ID: "unres-" + pl.tag, TraceID: "unres-" + pl.tag, StartTime: start, EndTime: start.Add(time.Second),
		LatencyMS: 1000, Endpoint: "/v1/chat/completions", Kind: schema.KindChat, Model: "qwen2.5-instruct",
		UserID: schema.UserUnresolved, UserSource: schema.UserUnresolved, APIKeyHash: schema.HashAPIKey(key), APIKeyPrefix: key[:7],
		Status: 200, InputTokens: 10, OutputTokens: 5, TotalTokens: 15, UsageSource: schema.UsageReported, Source: schema.SourceOnline,
		InputText: "hi", OutputText: "hello"}
	_, js := testkit.JetStream(t, pl.nats)
	m := &nats.Msg{Subject: bus.NormalizedSubjectPrefix + ".chat", Data: schema.AppendCall(nil, &c), Header: nats.Header{}}
	m.Header.Set(bus.HeaderMsgID, c.ID)
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	userOf := func() (string, string) {
		code, body := httpGet(t, pl.serve.base+"/api/v1/calls/"+c.ID)
		if code != 200 {
			return "", body
		}
		var got usageapi.CallResponse
		json.Unmarshal([]byte(body), &got)
		return got.UserID, got.UserSource
	}
	testkit.WaitFor(t, 30*time.Second, "the unresolved call stored", func() (bool, string) {
		u, src := userOf()
		return u == schema.UserUnresolved, u + " " + src
	})
	day, next := start.Format(time.DateOnly), start.Add(24*time.Hour).Format(time.DateOnly)
	run("users", "add", "--key", key, "--user", "zoe-"+pl.tag)
	if out := run("users", "reresolve", "--from", day, "--to", next); !strings.Contains(out, "1 unresolved calls") || !strings.Contains(out, "1 resolved, 0 still unresolved") || !strings.Contains(out, "published 1 calls") {
		t.Fatalf("reresolve: %s", out)
	}
	testkit.WaitFor(t, 30*time.Second, "the call's user resolved", func() (bool, string) {
		u, src := userOf()
		return u == "zoe-"+pl.tag && src == schema.UserAPIKey, u + " " + src
	})
	var usage usageapi.UsageResponse
	apiGet(t, pl.serve.base, "/api/v1/usage", url.Values{"from": {day}, "to": {day}, "group_by": {"user"}}, "", 200, &usage)
	if usage.Percentiles != "histogram" {
		t.Logf("usage read every call (percentiles %s): the hour was not sealed", usage.Percentiles)
	}
	if len(usage.Rows) != 1 || str(usage.Rows[0].User) != "zoe-"+pl.tag || usage.Rows[0].Calls != 1 || usage.Rows[0].TotalTokens != 15 {
		b, _ := json.Marshal(usage.Rows)
		t.Fatalf("usage by user after reresolve: %s", b)
	}
	testkit.WaitFor(t, 30*time.Second, "the Langfuse trace's user", func() (bool, string) {
		tr := pl.lf.Traces()[c.TraceID]
		return tr.UserID == "zoe-"+pl.tag, tr.UserID
	})
	if out := run("users", "reresolve", "--from", day, "--to", next); !strings.Contains(out, "0 unresolved calls") {
		t.Fatalf("second reresolve: %s", out)
	}
	pl.stop(t)
}
