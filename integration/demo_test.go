package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/tools/workload"
)

// TestDemoEndToEnd runs `callpipe demo --exit` — the README's main job — on
// fresh state (its own JetStream, ClickHouse database and bucket) and checks
// what it reports against ClickHouse and S3 directly.
func TestDemoEndToEnd(t *testing.T) {
	natsURL := harness.FreshNATS(t)
	ch := harness.ClickHouse(t)
	s3 := harness.S3(t)
	redisAddr := harness.Redis(t)
	bin := testkit.Binary(t)

	tag := fmt.Sprintf("%d", time.Now().UnixNano()%1_000_000_000)
	db := "demo_" + tag
	chDropAtCleanup(t, db)
	bucket := "demo-" + tag
	dir := t.TempDir()
	serve := testkit.FreeAddr(t)
	env := append(os.Environ(),
		"CALLPIPE_NATS_URL="+natsURL,
		"CALLPIPE_CLICKHOUSE_ADDR="+ch.Native,
		"CALLPIPE_CLICKHOUSE_DATABASE="+db,
		"CALLPIPE_S3_ENDPOINT="+s3.Endpoint,
		"CALLPIPE_S3_ACCESS_KEY="+s3.AccessKey,
		"CALLPIPE_S3_SECRET_KEY="+s3.SecretKey,
		"CALLPIPE_S3_BUCKET="+bucket,
		"CALLPIPE_REDIS_ADDR="+redisAddr,
		"CALLPIPE_COLLECT_LISTEN="+testkit.FreeAddr(t),
		"CALLPIPE_PROXY_LISTEN="+testkit.FreeAddr(t),
		"CALLPIPE_WORKER_LISTEN="+testkit.FreeAddr(t),
		"CALLPIPE_SERVE_LISTEN="+serve,
		"CALLPIPE_LOG_FORMAT=text",
		"LANGFUSE_HOST=", "CALLPIPE_LANGFUSE_HOST=",
	)
	const calls = 400
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo", "--exit", "--calls", fmt.Sprint(calls), "--error-share", "0.05",
		"--concurrency", "8", "--dir", dir, "--wait", "90s", "--seed", "42")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	t.Logf("callpipe demo:\n%s", out)
	if err != nil {
		for _, name := range []string{"worker", "serve", "proxy"} {
			b, _ := os.ReadFile(filepath.Join(dir, name+".log"))
			t.Logf("%s.log (end):\n%s", name, testkit.Last(string(b), 3000))
		}
		t.Fatalf("callpipe demo: %v", err)
	}
	text := string(out)
	for _, want := range []string{
		fmt.Sprintf("usage API  %d calls = sent %d", calls, calls),
		"langfuse   not configured",
		"dashboard  http://" + serve + "/",
		"stopped    every process exited cleanly",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}

	var summary struct {
		Workload workload.Result `json:"workload"`
		From     time.Time       `json:"from"`
		To       time.Time       `json:"to"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "summary.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &summary); err != nil {
		t.Fatal(err)
	}
	if summary.Workload.Sent != calls || summary.Workload.Total.Errors == 0 {
		t.Fatalf("workload sent %d calls with %d errors; want %d with some errors", summary.Workload.Sent, summary.Workload.Total.Errors, calls)
	}

	// Independent check: ClickHouse itself, per model.
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ch.Native}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rows, err := callsdb.Usage(ctx, conn, db, summary.From, summary.To, callsdb.GroupBy{Model: true})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range rows {
		want := summary.Workload.ByModel[r.Model]
		seen[r.Model] = true
		if int64(r.Calls) != want.Calls || int64(r.Errors) != want.Errors {
			t.Errorf("model %s: ClickHouse %d calls / %d errors, workload sent %d / %d", r.Model, r.Calls, r.Errors, want.Calls, want.Errors)
		}
		// Failed calls have no reported usage (their input is estimated
		// with the tokenizer), so tokens are exact only for models without errors.
		if want.Errors == 0 && (r.InputTokens != want.InputTokens || r.OutputTokens != want.OutputTokens) {
			t.Errorf("model %s: ClickHouse tokens in/out %d/%d, upstream reported %d/%d", r.Model, r.InputTokens, r.OutputTokens, want.InputTokens, want.OutputTokens)
		}
	}
	for m := range summary.Workload.ByModel {
		if !seen[m] {
			t.Errorf("model %s: sent calls, none in ClickHouse", m)
		}
	}

	mc, err := minio.New(s3.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s3.AccessKey, s3.SecretKey, ""), Secure: s3.UseSSL})
	if err != nil {
		t.Fatal(err)
	}
	objects := 0
	for obj := range mc.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		objects++
	}
	if objects == 0 {
		t.Errorf("bucket %s holds no archive objects after the demo", bucket)
	}
}
