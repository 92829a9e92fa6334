package integration

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/settings"
)

// TestSettingsSecretSealedInKV saves Langfuse settings through serve and
// checks that the NATS KV bucket holds the secret key only sealed — in the
// bucket's message and, when the local services' JetStream store is at
// hand, in its files — while serve and the langfuse stage, which have the
// settings key, still use it. A worker with another key and a serve with no
// key refuse, naming langfuse.settings_key.
func TestSettingsSecretSealedInKV(t *testing.T) {
	settingsStore(t)
	secret := "sk-lf-sealed-" + testkit.RandomHex(t, 8)
	b := langfusetest.New(langfusetest.Options{PublicKey: "pk-lf-sealed", SecretKey: secret})
	defer b.Close()
	_, db := chTestDB(t)
	const admin = "sealed-admin-token"
	p := startServe(t, db, "CALLPIPE_NATS_URL="+harness.NATS(t), "CALLPIPE_SERVE_TOKENS="+admin)
	waitSettingsAPI(t, p.base, admin)
	code, v, _ := settingsAPI(t, p.base, admin, "PUT", "/api/v1/settings/langfuse",
		fmt.Sprintf(`{"host":%q,"public_key":"pk-lf-sealed","secret_key":%q}`, b.URL, secret))
	if code != 200 || v["secret_key_set"] != true {
		t.Fatalf("PUT: %d %v", code, v)
	}

	// The bucket's message: the secret sealed, not in clear.
	e := newLfEnv(t, langfusetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, "KV_"+settings.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.GetLastMsgForSubject(ctx, "$KV."+settings.Bucket+"."+settings.LangfuseKey)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw.Data, []byte(secret)) || !bytes.Contains(raw.Data, []byte(`"secret_key_sealed":"cpseal1.`+itSealer(t).KeyID()+`.`)) {
		t.Fatalf("stored value is not sealed under the tests' key: %s", raw.Data)
	}
	// The JetStream store on disk (local services only).
	if dir := os.Getenv("CALLPIPE_STATE_DIR"); dir != "" {
		kvDir := filepath.Join(dir, "nats", "jetstream")
		scanned := 0
		_ = filepath.WalkDir(kvDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.Contains(path, "KV_"+settings.Bucket) {
				return nil
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			scanned++
			if bytes.Contains(data, []byte(secret)) {
				t.Errorf("%s holds the plain secret", path)
			}
			return nil
		})
		t.Logf("scanned %d files of the settings bucket under %s", scanned, kvDir)
	}

	// serve reads it back (the hint comes from the unsealed secret).
	if code, v, _ := settingsAPI(t, p.base, admin, "GET", "/api/v1/settings/langfuse", ""); code != 200 || v["secret_key_hint"] != settings.SecretHint(secret) {
		t.Fatalf("GET: %d %v, want hint %s", code, v, settings.SecretHint(secret))
	}

	// The langfuse stage with the same key sends with the sealed secret.
	w := startLangfuseWorker(t, e)
	calls := lfCalls(e.run, 20)
	e.publish(calls, "")
	lfWait(t, 30*time.Second, "calls at the saved Langfuse", func() bool { return len(b.Observations()) == len(calls) })
	w.stop(t)

	// Another key: the stage sends nothing and says why.
	other := startLangfuseWorker(t, newLfEnv(t, langfusetest.Options{}), "CALLPIPE_LANGFUSE_SETTINGS_KEY="+strings.Repeat("ab", 32))
	lfWait(t, 30*time.Second, "wrong key reported on /readyz", func() bool {
		code, body := other.health()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "sealed under settings key id "+itSealer(t).KeyID()) &&
			strings.Contains(body, "langfuse.settings_key")
	})
	other.stop(t)

	// doctor with another key: the langfuse line fails naming the key.
	out, _ := runCallpipe(t, append(os.Environ(), "CALLPIPE_LANGFUSE_SETTINGS_KEY="+strings.Repeat("cd", 32)), "", "doctor", "--timeout", "5s")
	if l := doctorReport(out)["langfuse"]; !strings.HasPrefix(l, "FAIL") || !strings.Contains(l, "sealed under settings key id") || !strings.Contains(l, "langfuse.settings_key") {
		t.Errorf("doctor with another settings key: langfuse line %q\n%s", l, out)
	}

	// serve without a key: reading and saving a secret name the missing key.
	bare := startServe(t, db, "CALLPIPE_NATS_URL="+harness.NATS(t), "CALLPIPE_SERVE_TOKENS="+admin, "CALLPIPE_LANGFUSE_SETTINGS_KEY=")
	lfWait(t, 20*time.Second, "settings API of serve without a key", func() bool {
		code, _, body := settingsAPI(t, bare.base, admin, "GET", "/api/v1/settings/langfuse", "")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "langfuse.settings_key") && strings.Contains(body, "sealed")
	})
	code, _, body := settingsAPI(t, bare.base, admin, "PUT", "/api/v1/settings/langfuse",
		fmt.Sprintf(`{"host":%q,"public_key":"pk-lf-sealed","secret_key":"sk-lf-other"}`, b.URL))
	if code == http.StatusOK || !strings.Contains(body, "langfuse.settings_key") {
		t.Errorf("PUT without a settings key: %d %s", code, body)
	}
	bare.stop(t)
	p.stop(t)

	// A secret saved in clear by an older release is sealed when a process
	// with the key opens the bucket.
	kv, err := e.js.KeyValue(ctx, settings.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	legacy := fmt.Sprintf(`{"host":%q,"public_key":"pk-lf-sealed","secret_key":%q}`, b.URL, secret)
	if _, err := kv.Put(ctx, settings.LangfuseKey, []byte(legacy)); err != nil {
		t.Fatal(err)
	}
	store, err := settings.Open(ctx, e.js, 1, settings.WithSealer(itSealer(t)))
	if err != nil {
		t.Fatal(err)
	}
	entry, err := kv.Get(ctx, settings.LangfuseKey)
	if err != nil || bytes.Contains(entry.Value(), []byte(secret)) || !bytes.Contains(entry.Value(), []byte("secret_key_sealed")) {
		t.Fatalf("legacy value not sealed on open: %s (%v)", entry.Value(), err)
	}
	if l, ok, err := store.Langfuse(ctx); err != nil || !ok || l.SecretKey != secret {
		t.Errorf("resealed value reads back as %+v %v %v", l, ok, err)
	}
	hist, err := kv.History(ctx, settings.LangfuseKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hist {
		if bytes.Contains(h.Value(), []byte(secret)) {
			t.Errorf("revision %d of the settings still holds the plain secret", h.Revision())
		}
	}
}
