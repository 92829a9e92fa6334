package integration

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/settings"
)

// TestSettingsAPIAndWatch drives the Langfuse settings API over a real NATS KV
// bucket: the configuration applies until something is saved, a bad key is
// refused naming the field, the secret is never returned, an empty secret
// keeps the saved one, a watcher sees every change within seconds, and
// deleting falls back to the configuration.
func TestSettingsAPIAndWatch(t *testing.T) {
	_, js := testkit.PipelineJetStream(t, ingest.NATSOptions{URL: harness.NATS(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	store, err := settings.Open(ctx, js, 1, settings.WithSealer(itSealer(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := store.DeleteLangfuse(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.DeleteLangfuse(context.Background()) })

	config := settings.Langfuse{Host: "http://langfuse-from-config:3000", PublicKey: "pk-lf-config", SecretKey: "sk-lf-config-secret"}
	mux := http.NewServeMux()
	(&settings.Handler{Store: store, Config: config}).Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	changes := make(chan settings.Effective, 16)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go func() { _ = store.WatchLangfuse(wctx, config, func(e settings.Effective) { changes <- e }) }()
	next := func(what string) settings.Effective {
		t.Helper()
		select {
		case e := <-changes:
			return e
		case <-time.After(5 * time.Second):
			t.Fatalf("watcher: no change within 5s (%s)", what)
			return settings.Effective{}
		}
	}
	if e := next("initial"); e.Source != settings.SourceConfig || e.Host != config.Host {
		t.Fatalf("initial = %+v, want the configuration", e)
	}

	call := func(method, path, body string) (int, map[string]any, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("%s %s: not JSON: %s", method, path, raw)
		}
		return resp.StatusCode, m, string(raw)
	}

	code, view, raw := call("GET", "/api/v1/settings/langfuse", "")
	if code != 200 || view["source"] != "config" || view["host"] != config.Host || strings.Contains(raw, "sk-lf-config-secret") {
		t.Fatalf("GET before saving: %d %s", code, raw)
	}
	code, view, _ = call("PUT", "/api/v1/settings/langfuse", `{"host":"ftp://x","public_key":"pk-lf-a","secret_key":"sk-lf-a"}`)
	if code != 400 || view["field"] != "host" {
		t.Fatalf("PUT with a bad host: %d %v", code, view)
	}
	code, view, _ = call("PUT", "/api/v1/settings/langfuse", `{"host":"http://lf:3000","public_key":"pk-lf-a","secret_key":"sk-lf-a","colour":"red"}`)
	if code != 400 || view["field"] != "body" {
		t.Fatalf("PUT with an unknown field: %d %v", code, view)
	}
	code, view, raw = call("PUT", "/api/v1/settings/langfuse", `{"host":"http://langfuse-saved:3000","public_key":"pk-lf-saved","secret_key":"sk-lf-saved-secret-1234"}`)
	if code != 200 || view["source"] != "saved" || view["secret_key_set"] != true || strings.Contains(raw, "sk-lf-saved-secret-1234") || view["config_overridden"] != true {
		t.Fatalf("PUT: %d %s", code, raw)
	}
	if e := next("after PUT"); e.Source != settings.SourceSaved || e.SecretKey != "sk-lf-saved-secret-1234" {
		t.Fatalf("watcher after PUT = %+v", e)
	}
	// The dashboard sends an empty secret to keep the saved one (same host
	// and public key)...
	code, _, raw = call("PUT", "/api/v1/settings/langfuse", `{"host":"http://langfuse-saved:3000/","public_key":"pk-lf-saved","secret_key":"","project_id":"proj-7"}`)
	if code != 200 {
		t.Fatalf("PUT keeping the secret: %d %s", code, raw)
	}
	if e := next("after second PUT"); e.ProjectID != "proj-7" || e.SecretKey != "sk-lf-saved-secret-1234" {
		t.Fatalf("watcher after keeping the secret = %+v", e)
	}
	// ...but never for another host or public key: the saved secret would go
	// to a host it was not entered for.
	for _, body := range []string{
		`{"host":"http://attacker.example:3000","public_key":"pk-lf-saved","secret_key":""}`,
		`{"host":"http://langfuse-saved:3000","public_key":"pk-lf-other","secret_key":""}`,
	} {
		for _, path := range []string{"/api/v1/settings/langfuse", "/api/v1/settings/langfuse/test"} {
			method := "PUT"
			if strings.HasSuffix(path, "/test") {
				method = "POST"
			}
			code, view, raw = call(method, path, body)
			if code != 400 || view["field"] != "secret_key" || strings.Contains(raw, "sk-lf-saved-secret-1234") {
				t.Fatalf("%s %s %s: %d %s, want 400 naming secret_key", method, path, body, code, raw)
			}
		}
	}
	if code, view, _ := call("GET", "/api/v1/settings/nothing", ""); code != 404 || !strings.Contains(view["error"].(string), "no settings route") {
		t.Fatalf("unknown settings route: %d %v", code, view)
	}
	code, _, _ = call("DELETE", "/api/v1/settings/langfuse", "")
	if code != 200 {
		t.Fatalf("DELETE: %d", code)
	}
	if e := next("after DELETE"); e.Source != settings.SourceConfig || e.Host != config.Host {
		t.Fatalf("watcher after DELETE = %+v", e)
	}
	// Loopback and the metadata address are refused before any connection
	// (the default policy); elsewhere an unreachable host says so.
	for _, host := range []string{"http://127.0.0.1:1", "http://169.254.169.254"} {
		code, view, _ = call("POST", "/api/v1/settings/langfuse/test", `{"host":"`+host+`","public_key":"pk-lf-a","secret_key":"sk-lf-a"}`)
		if code != 200 || view["ok"] != false || view["stage"] != "refused" || !strings.Contains(view["message"].(string), "serve.test_connection.allow") {
			t.Fatalf("test of %s: %d %v", host, code, view)
		}
	}
}
