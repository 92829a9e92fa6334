package integration

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/serve/usageapi"
	"github.com/callpipe/callpipe/sinks/langfuse"
)

// TestSettingsServeAPI drives the Langfuse settings of a running `callpipe
// serve` (bearer token, Langfuse A in its configuration) against two
// Langfuse test servers: "Test connection" says what failed for a bad key,
// an unreachable host, https to a plain-HTTP host and a wrong project, and
// names the project for good keys; saving B makes it the source in effect
// over the configuration; a reset goes back to A; the secret is in no
// answer and no log line. With NATS down the settings routes answer 503
// naming NATS while usage, /readyz and /metrics keep working.
func TestSettingsServeAPI(t *testing.T) {
	settingsStore(t)
	a := langfusetest.New(langfusetest.Options{PublicKey: "pk-lf-a", SecretKey: "sk-lf-a-secret-0001", ProjectID: "proj-a", ProjectName: "team-a"})
	defer a.Close()
	b := langfusetest.New(langfusetest.Options{PublicKey: "pk-lf-b", SecretKey: "sk-lf-b-secret-0002", ProjectID: "proj-b", ProjectName: "team-b"})
	defer b.Close()
	secrets := []string{"sk-lf-a-secret-0001", "sk-lf-b-secret-0002", "sk-lf-wrong-secret-9"}
	out, db := chTestDB(t)
	calls := seedServe(t, out, serveCalls(7, "set", 20, serveBase, 24*time.Hour))
	// A consumer of the langfuse stage, for serve's lag metrics.
	e := newLfEnv(t, langfusetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.js.CreateOrUpdateConsumer(ctx, bus.NormalizedStream, jetstream.ConsumerConfig{
		Durable: e.consumer, FilterSubject: e.subject + ".>", AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	e.publish(lfCalls(e.run, 7), "")
	const token = "settings-token"
	// The Langfuse test servers listen on 127.0.0.1, which Test connection
	// refuses unless allowed.
	p := startServe(t, db, "CALLPIPE_SERVE_TOKENS="+token, "CALLPIPE_SERVE_TEST_CONNECTION_ALLOW_PRIVATE=true", "CALLPIPE_NATS_URL="+harness.NATS(t), "CALLPIPE_LANGFUSE_CONSUMER="+e.consumer,
		"LANGFUSE_HOST="+a.URL, "LANGFUSE_PUBLIC_KEY=pk-lf-a", "LANGFUSE_SECRET_KEY=sk-lf-a-secret-0001")

	var bodies []string
	call := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		code, m, raw := settingsAPI(t, p.base, token, method, path, body)
		bodies = append(bodies, raw)
		return code, m
	}
	// The bucket opens in the background: wait for the first answer.
	waitSettingsAPI(t, p.base, token)
	if code, _, _ := settingsAPI(t, p.base, "", "GET", "/api/v1/settings/langfuse", ""); code != http.StatusUnauthorized {
		t.Fatalf("settings without the bearer token: %d, want 401", code)
	}
	code, v := call("GET", "/api/v1/settings/langfuse", "")
	if code != 200 || v["source"] != "config" || v["host"] != a.URL || v["secret_key_set"] != true || v["config_overridden"] != false {
		t.Fatalf("GET with only the configuration: %d %v", code, v)
	}
	// "View in Langfuse" links follow the settings in effect.
	traceID := langfuse.TraceID(&calls[0])
	waitLink := func(want string) {
		t.Helper()
		var last string
		lfWait(t, 20*time.Second, "langfuse link "+want, func() bool {
			var c usageapi.CallResponse
			apiGet(t, p.base, "/api/v1/calls/"+url.PathEscape(calls[0].ID), nil, token, http.StatusOK, &c)
			last = c.LangfuseURL
			return last == want
		})
	}
	waitLink(a.URL + "/project/proj-a/traces/" + url.PathEscape(traceID))

	test := func(host, pk, sk, project string) map[string]any {
		t.Helper()
		code, v := call("POST", "/api/v1/settings/langfuse/test",
			fmt.Sprintf(`{"host":%q,"public_key":%q,"secret_key":%q,"project_id":%q}`, host, pk, sk, project))
		if code != 200 {
			t.Fatalf("test %s %s: %d %v", host, pk, code, v)
		}
		return v
	}
	for _, tc := range []struct {
		name, host, pk, sk, project string
		stage, message              string
	}{
		{"bad key", b.URL, "pk-lf-b", "sk-lf-wrong-secret-9", "", "auth", "Langfuse 3.225.4 refused the keys (401): check the public key pk-lf-b and the secret key sk-lf-…et-9"},
		{"unreachable host", closedURL(t), "pk-lf-b", "sk-lf-b-secret-0002", "", "unreachable", "is unreachable: dial tcp"},
		{"https to plain HTTP", strings.Replace(b.URL, "http://", "https://", 1), "pk-lf-b", "sk-lf-b-secret-0002", "", "tls", "does not speak TLS"},
		{"wrong project", b.URL, "pk-lf-b", "sk-lf-b-secret-0002", "proj-a", "wrong_project", `the keys belong to project "team-b" (proj-b), not to the expected project proj-a`},
		{"good keys", b.URL, "pk-lf-b", "sk-lf-b-secret-0002", "proj-b", "ok", `connected to Langfuse 3.225.4, project "team-b" (proj-b)`},
		// The configured secret is used for the configured host and key.
		{"configured secret", a.URL, "pk-lf-a", "", "", "ok", `project "team-a" (proj-a)`},
	} {
		v := test(tc.host, tc.pk, tc.sk, tc.project)
		if v["stage"] != tc.stage || v["ok"] != (tc.stage == "ok") || !strings.Contains(v["message"].(string), tc.message) {
			t.Errorf("test %s: %v; want stage %s with %q", tc.name, v, tc.stage, tc.message)
		}
	}
	// The configured secret never goes to another host.
	if code, v := call("POST", "/api/v1/settings/langfuse/test", fmt.Sprintf(`{"host":%q,"public_key":"pk-lf-a","secret_key":""}`, b.URL)); code != 400 || v["field"] != "secret_key" {
		t.Errorf("test of another host with the configured secret: %d %v", code, v)
	}

	code, v = call("PUT", "/api/v1/settings/langfuse", fmt.Sprintf(`{"host":%q,"public_key":"pk-lf-b","secret_key":"sk-lf-b-secret-0002","project_id":"proj-b"}`, b.URL))
	if code != 200 || v["source"] != "saved" || v["host"] != b.URL || v["config_overridden"] != true || v["config_host"] != a.URL || v["secret_key_hint"] != "sk-lf-…0002" {
		t.Fatalf("PUT B: %d %v", code, v)
	}
	code, v = call("GET", "/api/v1/settings/langfuse", "")
	if code != 200 || v["source"] != "saved" || v["host"] != b.URL || v["project_id"] != "proj-b" {
		t.Fatalf("GET after saving B: %d %v", code, v)
	}
	waitLink(b.URL + "/project/proj-b/traces/" + url.PathEscape(traceID))
	// "Test connection" with the saved secret (the form leaves it empty).
	if v := test(b.URL, "pk-lf-b", "", "proj-b"); v["stage"] != "ok" {
		t.Errorf("test with the saved secret: %v", v)
	}
	code, v = call("PUT", "/api/v1/settings/langfuse", fmt.Sprintf(`{"host":%q,"public_key":"pk-b","secret_key":""}`, b.URL))
	if code != 400 || v["field"] != "public_key" {
		t.Errorf("PUT a malformed public key: %d %v", code, v)
	}
	code, v = call("DELETE", "/api/v1/settings/langfuse", "")
	if code != 200 || v["source"] != "config" || v["host"] != a.URL {
		t.Fatalf("DELETE: %d %v", code, v)
	}
	waitLink(a.URL + "/project/proj-a/traces/" + url.PathEscape(traceID))

	// NATS down: the usage API stays, settings answer 503 naming NATS.
	harness.StopService(t, "nats")
	lfWait(t, 20*time.Second, "settings 503 with NATS down", func() bool {
		code, v, _ := settingsAPI(t, p.base, token, "GET", "/api/v1/settings/langfuse", "")
		return code == http.StatusServiceUnavailable && strings.Contains(fmt.Sprint(v["error"]), "NATS")
	})
	code, v = call("PUT", "/api/v1/settings/langfuse", fmt.Sprintf(`{"host":%q,"public_key":"pk-lf-b","secret_key":"sk-lf-b-secret-0002"}`, b.URL))
	if code != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(v["error"]), "NATS") {
		t.Errorf("PUT with NATS down: %d %v", code, v)
	}
	var usage usageapi.UsageResponse
	apiGet(t, p.base, "/api/v1/usage", url.Values{"from": {"2026-03-03"}, "to": {"2026-03-04"}}, token, http.StatusOK, &usage)
	if usage.Totals.Calls != 20 {
		t.Errorf("usage with NATS down: %d calls, want 20", usage.Totals.Calls)
	}
	if code, body := httpGet(t, p.base+"/readyz"); code != 200 {
		t.Errorf("readyz with NATS down (serve needs only ClickHouse): %d %s", code, body)
	}
	code, metrics := httpGet(t, p.base+"/metrics")
	if code != 200 || !strings.Contains(metrics, `callpipe_consumer_up{`) {
		t.Errorf("metrics with NATS down: %d, want the lag collector's callpipe_consumer_up", code)
	}
	harness.StartService(t, "nats")
	lfWait(t, 30*time.Second, "settings back with NATS", func() bool {
		code, _, _ := settingsAPI(t, p.base, token, "GET", "/api/v1/settings/langfuse", "")
		return code == http.StatusOK
	})
	_, metrics = httpGet(t, p.base+"/metrics")
	for _, want := range []string{
		// every stage's consumer is reported; this test's has 7 calls waiting
		`callpipe_consumer_pending_messages{consumer="` + e.consumer + `",stage="langfuse",stream="CALLPIPE_NORMALIZED"} 7`,
		`callpipe_consumer_up{consumer="` + e.consumer + `",stage="langfuse",stream="CALLPIPE_NORMALIZED"} 1`,
		`stage="normalize",stream="CALLPIPE_CALLS"}`, `stage="archive",stream="CALLPIPE_CALLS"}`, `stage="clickhouse",stream="CALLPIPE_NORMALIZED"}`,
		`callpipe_stream_messages{stream="CALLPIPE_DLQ"}`,
		`callpipe_serve_requests_total{code="503",route="GET /api/v1/settings/"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("serve /metrics lacks %s\n%s", want, metrics)
		}
	}

	p.stop(t)
	logs := p.Out.String()
	for _, s := range secrets {
		for i, body := range bodies {
			if strings.Contains(body, s) {
				t.Errorf("answer %d shows the secret %s: %s", i, s, body)
			}
		}
		if strings.Contains(logs, s) {
			t.Errorf("serve log shows the secret %s", s)
		}
	}
}
