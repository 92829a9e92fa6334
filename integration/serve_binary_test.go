package integration

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/serve/usageapi"
)

// serveProcess is a running `callpipe serve`.
type serveProcess struct {
	*testkit.Proc
	base string // http://host:port
}

// startServe runs `callpipe serve` over database db with extra environment.
func startServe(t *testing.T, db string, env ...string) *serveProcess {
	t.Helper()
	addr := testkit.FreeAddr(t)
	p := &serveProcess{base: "http://" + addr, Proc: testkit.Start(t, append(os.Environ(), append([]string{
		"CALLPIPE_CLICKHOUSE_ADDR=" + harness.ClickHouse(t).Native,
		"CALLPIPE_CLICKHOUSE_DATABASE=" + db,
	}, env...)...), "serve", "--listen", addr, "--log.format=text")}
	testkit.WaitHealthy(t, p.base+"/readyz")
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *serveProcess) stop(t *testing.T) {
	t.Helper()
	p.Stop(t, 30*time.Second)
}

func httpGet(t *testing.T, u string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServeBinary runs `callpipe serve` with bearer tokens: the API needs a
// token, the ops endpoints do not; /readyz follows ClickHouse; /metrics
// counts requests by route and code; SIGTERM exits 0.
func TestServeBinary(t *testing.T) {
	out, db := chTestDB(t)
	calls := seedServe(t, out, serveCalls(3, "bin", 200, serveBase, 3*24*time.Hour))
	p := startServe(t, db, "CALLPIPE_SERVE_TOKENS=tok-a,tok-b")

	q := url.Values{"from": {"2026-03-03"}, "to": {"2026-03-05"}, "group_by": {"day"}}.Encode()
	if code, body := httpGet(t, p.base+"/api/v1/usage?"+q); code != http.StatusUnauthorized || !strings.Contains(body, "bearer token") {
		t.Errorf("no token: %d %s", code, body)
	}
	if code, _ := httpGet(t, p.base+"/api/v1/usage?"+q, "Authorization", "Bearer tok-c"); code != http.StatusUnauthorized {
		t.Errorf("wrong token: %d", code)
	}
	var resp usageapi.UsageResponse
	apiGet(t, p.base, "/api/v1/usage", url.Values{"from": {"2026-03-03"}, "to": {"2026-03-05"}, "group_by": {"day"}}, "tok-b", http.StatusOK, &resp)
	if len(resp.Rows) != 3 || resp.Totals.Calls != uint64(len(calls)) {
		t.Errorf("usage: %d rows, %d calls; want 3 rows, %d calls", len(resp.Rows), resp.Totals.Calls, len(calls))
	}
	var e struct{ Param, Error string }
	apiGet(t, p.base, "/api/v1/calls", url.Values{"limit": {"-1"}}, "tok-a", http.StatusBadRequest, &e)
	if e.Param != "limit" {
		t.Errorf("bad limit: %+v", e)
	}
	if code, body := httpGet(t, p.base+"/"); code != 200 || !strings.Contains(body, "<title>callpipe") {
		t.Errorf("dashboard without a token: %d", code)
	}
	if code, _ := httpGet(t, p.base+"/app.js"); code != 200 {
		t.Errorf("app.js: %d", code)
	}
	if code, _ := httpGet(t, p.base+"/healthz"); code != 200 {
		t.Errorf("healthz: %d", code)
	}
	_, metrics := httpGet(t, p.base+"/metrics")
	for _, want := range []string{
		`callpipe_serve_requests_total{code="401",route="GET /api/v1/usage"} 2`,
		`callpipe_serve_requests_total{code="200",route="GET /api/v1/usage"} 1`,
		`callpipe_serve_requests_total{code="400",route="GET /api/v1/calls"} 1`,
		`callpipe_serve_request_duration_seconds_count{route="GET /api/v1/usage"} 3`,
		`go_goroutines`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// /readyz follows ClickHouse; /healthz stays up.
	harness.StopService(t, "clickhouse") // restarted by its cleanup if the test stops early
	if code, body := httpGet(t, p.base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "clickhouse") {
		t.Errorf("readyz with ClickHouse down: %d %s", code, body)
	}
	if code, _ := httpGet(t, p.base+"/healthz"); code != 200 {
		t.Errorf("healthz with ClickHouse down: %d", code)
	}
	code, body := httpGet(t, p.base+"/api/v1/usage?"+q, "Authorization", "Bearer tok-a")
	if code != http.StatusInternalServerError || strings.Contains(body, "dial") {
		t.Errorf("usage with ClickHouse down: %d %s (want 500 without internals)", code, body)
	}
	harness.StartService(t, "clickhouse")
	testkit.WaitHealthy(t, p.base+"/readyz")
	apiGet(t, p.base, "/api/v1/calls/"+url.PathEscape(calls[5].ID), nil, "tok-a", http.StatusOK, nil)

	p.stop(t)
	if !strings.Contains(p.Out.String(), "shutting down") {
		t.Errorf("no graceful shutdown in the log:\n%s", p.Out)
	}
}
