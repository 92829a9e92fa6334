package integration

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
)

// TestServeWriteAuth runs `callpipe serve` three ways:
//   - without tokens it is read-only: settings writes, Test connection and
//     export creation answer 403 naming serve.tokens; reads work;
//   - with an admin and a read token: the read token reads and gets 403 on
//     writes, the admin token writes; Test connection refuses the metadata
//     address and loopback (the Langfuse test server), an HTML form post
//     (415) and a cross-site browser post (403);
//   - with serve.allow_unauthenticated_writes and
//     serve.test_connection.allow_private: anyone writes, and Test
//     connection reaches the Langfuse test server on 127.0.0.1.
func TestServeWriteAuth(t *testing.T) {
	settingsStore(t)
	lf := langfusetest.New(langfusetest.Options{PublicKey: "pk-lf-a", SecretKey: "sk-lf-a-secret-0001", ProjectID: "proj-a", ProjectName: "team-a"})
	defer lf.Close()
	_, db := chTestDB(t)
	lfBody := fmt.Sprintf(`{"host":%q,"public_key":"pk-lf-a","secret_key":"sk-lf-a-secret-0001"}`, lf.URL)
	writes := func(base, token string) map[string]int {
		t.Helper()
		got := map[string]int{}
		for _, w := range []struct{ method, path, body string }{
			{"PUT", "/api/v1/settings/langfuse", lfBody},
			{"POST", "/api/v1/settings/langfuse/test", lfBody},
			{"POST", "/api/v1/exports", `{"from":"2026-11-01T00:00:00Z","to":"2026-11-02T00:00:00Z","format":"jsonl"}`},
		} {
			code, v, raw := settingsAPI(t, base, token, w.method, w.path, w.body)
			got[w.method+" "+w.path] = code
			if code == http.StatusForbidden && !strings.Contains(fmt.Sprint(v["error"]), "serve.tokens") {
				t.Errorf("%s %s: 403 without naming serve.tokens: %s", w.method, w.path, raw)
			}
		}
		return got
	}

	// No tokens: read-only.
	p := startServe(t, db, "CALLPIPE_NATS_URL="+harness.NATS(t))
	waitSettingsAPI(t, p.base, "")
	for route, code := range writes(p.base, "") {
		if code != http.StatusForbidden {
			t.Errorf("no tokens, %s: %d, want 403", route, code)
		}
	}
	if code, _ := httpGet(t, p.base+"/api/v1/calls"); code != http.StatusOK {
		t.Errorf("no tokens, GET /api/v1/calls: %d", code)
	}
	p.stop(t)

	// An admin and a read token.
	p = startServe(t, db, "CALLPIPE_NATS_URL="+harness.NATS(t), "CALLPIPE_SERVE_TOKENS=admin-tok", "CALLPIPE_SERVE_READ_TOKENS=read-tok")
	waitSettingsAPI(t, p.base, "read-tok")
	for route, code := range writes(p.base, "read-tok") {
		if code != http.StatusForbidden {
			t.Errorf("read token, %s: %d, want 403", route, code)
		}
	}
	for _, tok := range []string{"read-tok", "admin-tok"} {
		if code, _ := httpGet(t, p.base+"/api/v1/calls", "Authorization", "Bearer "+tok); code != http.StatusOK {
			t.Errorf("%s GET /api/v1/calls: %d", tok, code)
		}
	}
	if code, _ := httpGet(t, p.base+"/api/v1/calls"); code != http.StatusUnauthorized {
		t.Errorf("no token GET /api/v1/calls: %d, want 401", code)
	}
	if code, v, raw := settingsAPI(t, p.base, "admin-tok", "PUT", "/api/v1/settings/langfuse", lfBody); code != http.StatusOK || v["source"] != "saved" {
		t.Errorf("admin PUT: %d %s", code, raw)
	}
	var hits atomic.Int32
	counter := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hits.Add(1) }))
	defer counter.Close()
	for _, host := range []string{"http://169.254.169.254", "http://169.254.169.254:80/latest/meta-data", lf.URL, counter.URL, strings.Replace(counter.URL, "127.0.0.1", "localhost", 1)} {
		code, v, raw := settingsAPI(t, p.base, "admin-tok", "POST", "/api/v1/settings/langfuse/test",
			fmt.Sprintf(`{"host":%q,"public_key":"pk-lf-a","secret_key":"sk-lf-a-secret-0001"}`, host))
		if code != http.StatusOK || v["ok"] != false || v["stage"] != "refused" || !strings.Contains(raw, "serve.test_connection.allow") {
			t.Errorf("admin test of %s: %d %s, want refused", host, code, raw)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("a refused test reached the server on 127.0.0.1: %d requests", n)
	}
	form := func(hdr ...string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, p.base+"/api/v1/settings/langfuse/test", strings.NewReader("host=http%3A%2F%2F169.254.169.254&public_key=pk-lf-a&secret_key=sk-lf-a"))
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := form("Authorization", "Bearer admin-tok", "Content-Type", "application/x-www-form-urlencoded"); code != http.StatusUnsupportedMediaType {
		t.Errorf("form post with the admin token: %d, want 415", code)
	}
	if code := form("Authorization", "Bearer admin-tok", "Content-Type", "application/json", "Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example"); code != http.StatusForbidden {
		t.Errorf("cross-site JSON post: %d, want 403", code)
	}
	p.stop(t)

	// Open writes on a trusted network, loopback allowed to Test connection.
	p = startServe(t, db, "CALLPIPE_NATS_URL="+harness.NATS(t), "CALLPIPE_SERVE_ALLOW_UNAUTHENTICATED_WRITES=true", "CALLPIPE_SERVE_TEST_CONNECTION_ALLOW_PRIVATE=true")
	waitSettingsAPI(t, p.base, "")
	code, v, raw := settingsAPI(t, p.base, "", "POST", "/api/v1/settings/langfuse/test", lfBody)
	if code != http.StatusOK || v["stage"] != "ok" {
		t.Errorf("open writes, test of the local Langfuse: %d %s", code, raw)
	}
	if code, _, raw := settingsAPI(t, p.base, "", "PUT", "/api/v1/settings/langfuse", lfBody); code != http.StatusOK {
		t.Errorf("open writes, PUT: %d %s", code, raw)
	}
	if code := form("Content-Type", "text/plain"); code != http.StatusUnsupportedMediaType {
		t.Errorf("open writes, text/plain post: %d, want 415", code)
	}
	if code := form("Content-Type", "application/json", "Sec-Fetch-Site", "cross-site"); code != http.StatusForbidden {
		t.Errorf("open writes, cross-site post: %d, want 403", code)
	}
	p.stop(t)
}

// TestServeSettingsPageReadOnly: on a serve without tokens the settings page
// loads, and saving shows the 403 that names serve.tokens.
func TestServeSettingsPageReadOnly(t *testing.T) {
	settingsStore(t)
	lf := langfusetest.New(langfusetest.Options{PublicKey: "pk-lf-a", SecretKey: "sk-lf-a-secret-0001"})
	defer lf.Close()
	_, db := chTestDB(t)
	p := startServe(t, db, "CALLPIPE_NATS_URL="+harness.NATS(t),
		"LANGFUSE_HOST="+lf.URL, "LANGFUSE_PUBLIC_KEY=pk-lf-a", "LANGFUSE_SECRET_KEY=sk-lf-a-secret-0001")
	waitSettingsAPI(t, p.base, "")
	b := newBrowser(t)
	b.do("open settings", chromedp.Navigate(p.base+"/#/settings"))
	b.wait("configuration in effect", `document.querySelector('[data-testid=lf-source]').dataset.source === "config"`)
	b.do("save", chromedp.Click(chromedp.CSS("#lf-save")))
	b.wait("403 shown", `document.getElementById("lf-result").dataset.stage === "forbidden"`)
	if got := b.text("#lf-result"); !strings.Contains(got, "Not allowed (403)") || !strings.Contains(got, "serve.tokens") {
		t.Errorf("result of a save on a read-only serve: %q", got)
	}
	b.shot("settings-read-only")
}
