package integration

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// TestMetricsPagesPassPromlint runs every long-running role (collect, proxy,
// a worker with all four stages, serve), sends calls through the proxy and
// the collector until every sink has written them, and checks each role's
// /metrics with promlint, the linter of `promtool check metrics`: base units,
// _total on counters, help on every family, no reserved suffixes. Each page
// must also show the families of its role, so the lint reads a page that
// has seen traffic.
func TestMetricsPagesPassPromlint(t *testing.T) {
	const calls = 200
	natsSrv := harness.StartNATSServer(t)
	ch := harness.ClickHouse(t)
	s3 := harness.S3(t)
	redisAddr := harness.Redis(t)
	lf := langfusetest.New(langfusetest.Options{})
	defer lf.Close()
	run := strconv.FormatInt(time.Now().UnixNano()%1_000_000_000, 36)
	db := "promlint_" + run
	chDropAtCleanup(t, db)
	env := append(os.Environ(),
		"CALLPIPE_NATS_URL="+natsSrv.URL,
		"CALLPIPE_CLICKHOUSE_ADDR="+ch.Native, "CALLPIPE_CLICKHOUSE_DATABASE="+db,
		"CALLPIPE_S3_ENDPOINT="+s3.Endpoint, "CALLPIPE_S3_ACCESS_KEY="+s3.AccessKey, "CALLPIPE_S3_SECRET_KEY="+s3.SecretKey,
		"CALLPIPE_S3_BUCKET=promlint-"+run, "CALLPIPE_S3_USE_SSL=false",
		"CALLPIPE_REDIS_ADDR="+redisAddr, "CALLPIPE_TRANSFORM_USER_KEY_PREFIX=promlint:"+run+":",
		"CALLPIPE_ARCHIVE_FLUSH_INTERVAL=1s",
		"LANGFUSE_HOST="+lf.Host(), "LANGFUSE_PUBLIC_KEY=pk-lf-test", "LANGFUSE_SECRET_KEY=sk-lf-test",
		"CALLPIPE_PROXY_SPOOL_DIR="+t.TempDir(),
		"CALLPIPE_LOG_LEVEL=warn",
	)
	if err := testkit.Start(t, env, "migrate").Err(); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"c1","object":"chat.completion","model":"qwen2.5-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`)
	}))
	t.Cleanup(up.Close)
	roles := map[string]string{"collect": testkit.FreeAddr(t), "proxy": testkit.FreeAddr(t), "worker": testkit.FreeAddr(t), "serve": testkit.FreeAddr(t)}
	testkit.Start(t, env, "collect", "--listen", roles["collect"]).WaitReady(t, roles["collect"], time.Minute)
	testkit.Start(t, env, "proxy", "--listen", roles["proxy"], "--upstream", up.URL).WaitReady(t, roles["proxy"], time.Minute)
	testkit.Start(t, env, "worker", "--stages", "normalize,clickhouse,langfuse,archive", "--listen", roles["worker"]).WaitReady(t, roles["worker"], time.Minute)
	testkit.Start(t, env, "serve", "--listen", roles["serve"]).WaitReady(t, roles["serve"], time.Minute)

	for i := 0; i < calls/2; i++ {
		resp, err := http.Post("http://"+roles["proxy"]+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"qwen2.5-instruct","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("proxy: %s", resp.Status)
		}
	}
	var body strings.Builder
	for i := 0; i < calls/2; i++ {
		body.WriteString(eventJSON(fmt.Sprintf("%s-promlint-%d", runID, i), "") + "\n")
	}
	resp, err := http.Post("http://"+roles["collect"]+"/v1/events", "application/x-ndjson", strings.NewReader(body.String()))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("collect: %s", resp.Status)
	}
	testkit.WaitFor(t, 2*time.Minute, "every sink wrote every call", func() (bool, string) {
		f := scrape(t, roles["worker"])
		rows, _ := sample(f, "callpipe_clickhouse_rows_written_total", nil)
		traced, _ := sample(f, "callpipe_langfuse_calls_total", map[string]string{"result": "accepted"})
		archived, _ := sample(f, "callpipe_archive_calls_total", nil)
		return rows >= calls && traced >= calls && archived >= calls,
			fmt.Sprintf("clickhouse rows %v, langfuse accepted %v, archived %v", rows, traced, archived)
	})
	if resp, err := http.Get("http://" + roles["serve"] + "/api/v1/usage?group_by=model"); err == nil {
		resp.Body.Close()
	}

	want := map[string][]string{
		"collect": {"callpipe_collect_events_total"},
		"proxy":   {"callpipe_proxy_events_published_total"},
		"worker":  {"callpipe_transform_events_total", "callpipe_clickhouse_rows_written_total", "callpipe_langfuse_calls_total", "callpipe_archive_calls_total", "callpipe_rollup_dirty_periods"},
		"serve":   {"callpipe_serve_requests_total"},
	}
	for role, addr := range roles {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatalf("%s /metrics: %v", role, err)
		}
		page, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		problems, err := promlint.New(strings.NewReader(string(page))).Lint()
		if err != nil {
			t.Fatalf("%s /metrics does not parse: %v", role, err)
		}
		for _, p := range problems {
			t.Errorf("%s /metrics: %s: %s", role, p.Metric, p.Text)
		}
		for _, name := range want[role] {
			if !strings.Contains(string(page), "\n# TYPE "+name+" ") {
				t.Errorf("%s /metrics lacks %s", role, name)
			}
		}
		t.Logf("%s: %d families linted", role, strings.Count(string(page), "\n# TYPE ")+1)
	}
	// the proxy runs on proxy.procs Ps (1 by default) with GOGC 400, unless
	// the environment sets GOMAXPROCS or GOGC
	proxyPage := scrape(t, roles["proxy"])
	if v, ok := sample(proxyPage, "go_sched_gomaxprocs_threads", nil); os.Getenv("GOMAXPROCS") == "" && v != 1 {
		t.Errorf("proxy's GOMAXPROCS %v (reported %v), want 1 (proxy.procs)", v, ok)
	}
	if v, ok := sample(proxyPage, "go_gc_gogc_percent", nil); os.Getenv("GOGC") == "" && v != 400 {
		t.Errorf("proxy's GOGC %v (reported %v), want 400", v, ok)
	}
}
