package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// tlsStack is one server of each kind that accepts TLS clients only: NATS
// (NKey auth, JetStream encrypted at rest), ClickHouse (secure native
// port), MinIO (https, KMS for SSE-S3), Redis (ACL user) and the Langfuse
// fake over https.
type tlsStack struct {
	pki      *testPKI
	nats     *tlsNATS
	chAddr   string
	minio    *tlsMinIO
	redis    *tlsRedis
	langfuse *langfusetest.Server
	lfCA     string
}

func startTLSStack(t *testing.T) *tlsStack {
	t.Helper()
	s := &tlsStack{pki: newTestPKI(t)}
	s.nats = startTLSNATS(t, s.pki, "chachapoly")
	s.chAddr = startTLSClickHouse(t, s.pki)
	s.minio = startTLSMinIO(t, s.pki)
	s.redis = startTLSRedis(t, s.pki)
	s.langfuse = langfusetest.New(langfusetest.Options{TLS: true})
	t.Cleanup(s.langfuse.Close)
	s.lfCA = filepath.Join(s.pki.dir, "langfuse-ca.pem")
	if err := os.WriteFile(s.lfCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.langfuse.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// env is a callpipe environment that reaches every server over TLS (tls
// true), or the same addresses in plain text; nothing of the shared local
// stack leaks in.
func (s *tlsStack) env(tls bool, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CALLPIPE_") && !strings.HasPrefix(kv, "LANGFUSE_") {
			env = append(env, kv)
		}
	}
	on := fmt.Sprint(tls)
	natsURL, lfHost := s.nats.url, s.langfuse.URL
	if !tls {
		natsURL = "nats://" + strings.TrimPrefix(natsURL, "tls://")
		lfHost = "http://" + strings.TrimPrefix(lfHost, "https://")
	}
	env = append(env,
		"CALLPIPE_LANGFUSE_SETTINGS_KEY="+testSettingsKey, "CALLPIPE_LOG_LEVEL=warn",
		"CALLPIPE_NATS_URL="+natsURL, "CALLPIPE_NATS_NKEY_FILE="+s.nats.seedFile,
		"CALLPIPE_NATS_TLS_ENABLED="+on, "CALLPIPE_NATS_TLS_CA_FILE="+s.pki.caFile,
		"CALLPIPE_CLICKHOUSE_ADDR="+s.chAddr, "CALLPIPE_CLICKHOUSE_DATABASE=callpipe_tls",
		"CALLPIPE_CLICKHOUSE_TLS_ENABLED="+on, "CALLPIPE_CLICKHOUSE_TLS_CA_FILE="+s.pki.caFile,
		"CALLPIPE_S3_ENDPOINT="+s.minio.endpoint, "CALLPIPE_S3_ACCESS_KEY="+s.minio.user, "CALLPIPE_S3_SECRET_KEY="+s.minio.password,
		"CALLPIPE_S3_USE_SSL="+on, "CALLPIPE_S3_TLS_ENABLED="+on, "CALLPIPE_S3_TLS_CA_FILE="+s.pki.caFile,
		"CALLPIPE_S3_BUCKET=callpipe-tls", "CALLPIPE_S3_SSE=sse-s3",
		"CALLPIPE_REDIS_ADDR="+s.redis.addr, "CALLPIPE_REDIS_USERNAME="+s.redis.user, "CALLPIPE_REDIS_PASSWORD="+s.redis.password,
		"CALLPIPE_REDIS_TLS_ENABLED="+on, "CALLPIPE_REDIS_TLS_CA_FILE="+s.pki.caFile,
		"LANGFUSE_HOST="+lfHost, "LANGFUSE_PUBLIC_KEY=pk-lf-test", "LANGFUSE_SECRET_KEY=sk-lf-test",
		"CALLPIPE_LANGFUSE_TLS_CA_FILE="+s.lfCA,
	)
	return append(env, extra...)
}

// run runs callpipe with env and stdin; it returns the output and the exit code.
func runCallpipe(t *testing.T, env []string, stdin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(testkit.Binary(t), args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("callpipe %s: %v", strings.Join(args, " "), err)
	}
	return string(out), code
}

// doctorReport is doctor's output by checked name: each whole line
// ("ok    nats  detail ...").
func doctorReport(out string) map[string]string {
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		status, rest, ok := strings.Cut(l, "  ")
		if st := strings.TrimSpace(status); !ok || (st != "ok" && st != "skip" && st != "warn" && st != "FAIL") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(rest, " "), "  ")
		lines[name] = l
	}
	return lines
}

// TestTLSEveryClient: every client of callpipe — NATS (TLS + NKey),
// ClickHouse (secure native port), S3 (https), Redis (TLS + ACL user) and
// Langfuse (https) — works against a server that accepts TLS only, through
// migrate, doctor (which marks each connection [TLS]) and users; the same
// clients in plain text fail against those servers, and doctor marks them
// [plain text].
func TestTLSEveryClient(t *testing.T) {
	s := startTLSStack(t)
	env := s.env(true)

	if out, code := runCallpipe(t, env, "", "migrate"); code != 0 {
		t.Fatalf("migrate over TLS: exit %d\n%s", code, out)
	}
	mc, err := rawarchive.NewClient(rawarchive.S3Config{Endpoint: s.minio.endpoint, AccessKey: s.minio.user, SecretKey: s.minio.password,
		UseSSL: true, PathStyle: true, TLS: s.pki.clientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := rawarchive.EnsureBucket(ctx, mc, "callpipe-tls", "us-east-1"); err != nil {
		t.Fatal(err)
	}

	out, _ := runCallpipe(t, env, "", "doctor", "--timeout", "10s")
	lines := doctorReport(out)
	for _, name := range []string{"nats", "stream CALLPIPE_CALLS", "clickhouse", "clickhouse schema", "s3", "redis", "langfuse", "langfuse keys"} {
		l, ok := lines[name]
		if !ok || !strings.HasPrefix(l, "ok ") {
			t.Errorf("doctor over TLS: %s: %q, want ok\n%s", name, l, out)
		}
	}
	for _, name := range []string{"nats", "clickhouse", "s3", "redis", "langfuse"} {
		if !strings.Contains(lines[name], "[TLS]") {
			t.Errorf("doctor: %s line %q does not say [TLS]", name, lines[name])
		}
	}

	// users add/ls go through the ACL user over TLS: the rules suffice.
	key := "sk-tls-" + testkit.RandomHex(t, 12)
	if out, code := runCallpipe(t, env, key+"\n", "users", "add", "--key-file", "-", "--user", "tls-user"); code != 0 {
		t.Fatalf("users add over TLS: exit %d\n%s", code, out)
	}
	if out, code := runCallpipe(t, env, "", "users", "ls"); code != 0 || !strings.Contains(out, "tls-user") {
		t.Fatalf("users ls over TLS: exit %d\n%s", code, out)
	}

	// The langfuse stage reads NATS over TLS and sends to Langfuse over https.
	w := testkit.Start(t, s.env(true, "CALLPIPE_WORKER_LISTEN="+testkit.FreeAddr(t), "CALLPIPE_LANGFUSE_FLUSH_INTERVAL=100ms"),
		"worker", "--stages", "langfuse")
	nc, err := s.nats.connect(s.pki)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	calls := lfCalls("tls"+testkit.RandomHex(t, 3), 20)
	for _, c := range calls {
		data, _ := json.Marshal(&c)
		m := &nats.Msg{Subject: bus.NormalizedSubjectPrefix + ".tls." + c.Kind, Data: data, Header: nats.Header{}}
		m.Header.Set(jetstream.MsgIDHeader, c.ID)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, 60*time.Second, "calls at the https Langfuse", func() (bool, string) {
		n := len(s.langfuse.Observations())
		return n == len(calls), fmt.Sprint(n)
	})
	w.Stop(t, time.Minute)

	// The same clients in plain text: refused, and doctor says plain text.
	out, code := runCallpipe(t, s.env(false), "", "doctor", "--timeout", "5s")
	lines = doctorReport(out)
	if code != 1 {
		t.Errorf("doctor in plain text against TLS-only servers: exit %d, want 1\n%s", code, out)
	}
	for _, name := range []string{"nats", "clickhouse", "s3", "redis", "langfuse"} {
		l := lines[name]
		if !strings.HasPrefix(l, "FAIL") || !strings.Contains(l, "[plain text]") {
			t.Errorf("doctor in plain text: %s: %q, want FAIL marked [plain text]\n%s", name, l, out)
		}
	}
}

// TestTLSArchiveEncryptedAtRest runs the archive stage over TLS (NATS and
// S3) with s3.sse sse-s3: the archive objects are stored encrypted (HEAD
// shows SSE), replay and export read them back (the export's objects are
// encrypted too), and JetStream's store — encrypted with a key — holds no
// plain prompt text in its files.
func TestTLSArchiveEncryptedAtRest(t *testing.T) {
	s := startTLSStack(t)
	env := s.env(true, "CALLPIPE_ARCHIVE_FLUSH_INTERVAL=1s", "CALLPIPE_ARCHIVE_ACK_WAIT=30s", "CALLPIPE_WORKER_LISTEN="+testkit.FreeAddr(t))
	if out, code := runCallpipe(t, env, "", "migrate"); code != 0 {
		t.Fatalf("migrate: exit %d\n%s", code, out)
	}
	w := testkit.Start(t, env, "worker", "--stages", "archive")

	nc, err := s.nats.connect(s.pki)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	marker := "PROMPT-MARKER-" + testkit.RandomHex(t, 8)
	day := time.Now().UTC().Truncate(time.Hour)
	const n = 50
	for i := range n {
		raw := fmt.Sprintf(`{"id":"tls-%03d","start_time":%q,"end_time":%q,"endpoint":"/v1/chat/completions","model":"m","status":200,`+
			`"request":{"messages":[{"role":"user","content":"%s question %d"}]},"response":{"choices":[{"message":{"role":"assistant","content":"answer"}}]},`+
			`"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`,
			i, day.Add(time.Duration(i)*time.Second).Format(time.RFC3339Nano), day.Add(time.Duration(i)*time.Second+time.Millisecond).Format(time.RFC3339Nano), marker, i)
		m := &nats.Msg{Subject: bus.CallsSubjectPrefix + ".tls", Data: []byte(raw), Header: nats.Header{}}
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("tls-%03d", i))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}

	mc, err := rawarchive.NewClient(rawarchive.S3Config{Endpoint: s.minio.endpoint, AccessKey: s.minio.user, SecretKey: s.minio.password,
		UseSSL: true, PathStyle: true, TLS: s.pki.clientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	var objs []minio.ObjectInfo
	testkit.WaitFor(t, 90*time.Second, "archive objects", func() (bool, string) {
		objs = objs[:0]
		for o := range mc.ListObjects(ctx, "callpipe-tls", minio.ListObjectsOptions{Prefix: "raw/v1/", Recursive: true}) {
			if o.Err == nil {
				objs = append(objs, o)
			}
		}
		return len(objs) >= 2, fmt.Sprint(len(objs)) // a data object and its manifest
	})
	for _, o := range objs {
		st, err := mc.StatObject(ctx, "callpipe-tls", o.Key, minio.StatObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sse := st.Metadata.Get("X-Amz-Server-Side-Encryption"); sse != "AES256" {
			t.Errorf("archive object %s: X-Amz-Server-Side-Encryption %q, want AES256 (SSE-S3)", o.Key, sse)
		}
	}

	from, to := day.Format("2006-01-02T15"), day.Add(time.Hour).Format("2006-01-02T15")
	out, code := runCallpipe(t, env, "", "replay", "--from", from, "--to", to, "--dry-run")
	if code != 0 || !strings.Contains(out, fmt.Sprint(n)) {
		t.Errorf("replay --dry-run of the encrypted archive: exit %d, want %d calls counted\n%s", code, n, out)
	}
	out, code = runCallpipe(t, env, "", "export", "--source", "archive", "--from", from, "--to", to,
		"--dest", "s3://callpipe-tls/exports/tls", "--format", "ndjson", "--compression", "none")
	if code != 0 {
		t.Fatalf("export --source archive: exit %d\n%s", code, out)
	}
	var exported bytes.Buffer
	for o := range mc.ListObjects(ctx, "callpipe-tls", minio.ListObjectsOptions{Prefix: "exports/tls/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		st, err := mc.StatObject(ctx, "callpipe-tls", o.Key, minio.StatObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sse := st.Metadata.Get("X-Amz-Server-Side-Encryption"); sse != "AES256" {
			t.Errorf("export object %s: X-Amz-Server-Side-Encryption %q, want AES256", o.Key, sse)
		}
		if strings.Contains(o.Key, "part-") {
			obj, err := mc.GetObject(ctx, "callpipe-tls", o.Key, minio.GetObjectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			_, _ = exported.ReadFrom(obj)
			obj.Close()
		}
	}
	if c := strings.Count(exported.String(), marker); c != n {
		t.Errorf("export holds %d of the %d calls", c, n)
	}
	w.Stop(t, time.Minute)

	// JetStream's store files: data was written, none of it readable.
	var stored int64
	err = filepath.WalkDir(s.nats.storeDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		stored += int64(len(b))
		if bytes.Contains(b, []byte(marker)) || bytes.Contains(b, []byte("question 1")) {
			t.Errorf("JetStream store file %s holds plain prompt text", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if stored < int64(n*len(marker)) {
		t.Errorf("JetStream store holds only %d bytes: the calls were not stored there", stored)
	}
}
