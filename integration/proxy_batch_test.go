package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/usageapi"
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
func TestProxyBatchHeadersEndToEnd(t *testing.T) {
	natsURL := harness.FreshNATS(t)
	ch := harness.ClickHouse(t)
	redisAddr := harness.Redis(t)
	tag := testkit.RandomHex(t, 4)
	db := "opsbatch_" + tag
	lf := langfusetest.New(langfusetest.Options{})
	t.Cleanup(lf.Close)
	up := newHeaderUpstream(t)

	env := append(os.Environ(), "CALLPIPE_NATS_URL="+natsURL, "CALLPIPE_LOG_FORMAT=text")
	proxyAddr := testkit.FreeAddr(t)
	proxy := testkit.Start(t, env, "proxy", "--listen", proxyAddr, "--upstream", up.URL)
	proxy.WaitReady(t, proxyAddr, 60*time.Second)
	workerAddr := testkit.FreeAddr(t)
	worker := testkit.Start(t, append(env,
		"CALLPIPE_CLICKHOUSE_ADDR="+ch.Native, "CALLPIPE_CLICKHOUSE_DATABASE="+db, "CALLPIPE_REDIS_ADDR="+redisAddr,
		"LANGFUSE_HOST="+lf.URL, "LANGFUSE_PUBLIC_KEY=pk-lf-test", "LANGFUSE_SECRET_KEY=sk-lf-test",
	), "worker", "--stages", "normalize,clickhouse,langfuse", "--listen", workerAddr)
	worker.WaitReady(t, workerAddr, 60*time.Second)
	serve := startServe(t, db, "CALLPIPE_NATS_URL="+natsURL)
	base := "http://" + proxyAddr

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

	day := time.Now().UTC().Format("2006-01-02")
	rng := url.Values{"from": {day}, "to": {day}}
	with := func(kv ...string) url.Values {
		v := url.Values{"from": {day}, "to": {day}}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	var usage usageapi.UsageResponse
	testkit.WaitFor(t, 60*time.Second, "6 calls in the usage API", func() (bool, string) {
		apiGet(t, serve.base, "/api/v1/usage", with("group_by", "source"), "", 200, &usage)
		return usage.Totals.Calls == 6, fmt.Sprintf("%d calls", usage.Totals.Calls)
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
	serve.stop(t)
	worker.Stop(t, 30*time.Second)
	proxy.Stop(t, 30*time.Second)
}
