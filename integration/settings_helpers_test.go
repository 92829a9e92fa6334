package integration

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/settings"
)

// settingsStore opens the settings bucket of the test NATS with nothing
// saved, and forgets whatever the test saves when it ends: a saved value
// would redirect every other test's Langfuse worker.
func settingsStore(t *testing.T) *settings.Store {
	t.Helper()
	_, js := testkit.PipelineJetStream(t, ingest.NATSOptions{URL: harness.NATS(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := settings.Open(ctx, js, 1, settings.WithSealer(itSealer(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := store.DeleteLangfuse(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := store.DeleteLangfuse(ctx); err != nil {
			t.Errorf("forgetting the saved Langfuse settings: %v", err)
		}
	})
	return store
}

// settingsAPI calls the settings API of a running serve and returns the
// status, the decoded JSON object and the raw body.
func settingsAPI(t *testing.T, base, token, method, path, body string) (int, map[string]any, string) {
	t.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s %s: %d, not a JSON object: %s", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, m, string(raw)
}

// waitSettingsAPI waits until serve at base has opened its settings bucket
// (it does in the background) and answers GET with token.
func waitSettingsAPI(t *testing.T, base, token string) {
	t.Helper()
	lfWait(t, 20*time.Second, "settings API", func() bool {
		code, _, _ := settingsAPI(t, base, token, "GET", "/api/v1/settings/langfuse", "")
		return code == http.StatusOK
	})
}

// closedURL is an http:// URL nobody listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	return "http://" + testkit.FreeAddr(t)
}

// startLangfuseWorker runs `callpipe worker --stages langfuse` on the run's
// subject and consumer of e, with the given Langfuse environment (none: the
// stage has no configured Langfuse) and info logs in text.
func startLangfuseWorker(t *testing.T, e *lfEnv, langfuseEnv ...string) *lfWorker {
	t.Helper()
	listen := testkit.FreeAddr(t)
	env := []string{}
	for _, kv := range os.Environ() { // the stage must see only the Langfuse the test gives it
		if !strings.HasPrefix(kv, "LANGFUSE_") && !strings.HasPrefix(kv, "CALLPIPE_LANGFUSE_") || strings.HasPrefix(kv, "CALLPIPE_LANGFUSE_SETTINGS_KEY=") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"CALLPIPE_NATS_URL="+harness.NATS(t),
		"CALLPIPE_LANGFUSE_CONSUMER="+e.consumer, "CALLPIPE_LANGFUSE_SUBJECT="+e.subject+".>",
		"CALLPIPE_LANGFUSE_ENVIRONMENT=it", "CALLPIPE_LANGFUSE_BATCH_CALLS=50", "CALLPIPE_LANGFUSE_FLUSH_INTERVAL=100ms",
		"CALLPIPE_LANGFUSE_MIN_BACKOFF=20ms", "CALLPIPE_LANGFUSE_MAX_BACKOFF=200ms", "CALLPIPE_LANGFUSE_RETRY_DELAY=500ms",
		"CALLPIPE_LOG_LEVEL=info",
	)
	env = append(env, langfuseEnv...)
	return &lfWorker{listen: listen, Proc: testkit.Start(t, env, "worker", "--stages", "langfuse", "--listen", listen, "--log.format=text")}
}

// stop sends SIGTERM and wants a clean exit within a minute.
func (w *lfWorker) stop(t *testing.T) {
	t.Helper()
	w.Stop(t, time.Minute)
}
