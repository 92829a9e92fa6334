package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/settings"
)

// doctorEnv is the environment of `callpipe doctor` against this stack: a
// migrated ClickHouse database and a fresh bucket of its own, no Langfuse.
type doctorEnv struct {
	bin string
	env []string
	db  string
}

func newDoctorEnv(t *testing.T) *doctorEnv {
	t.Helper()
	natsURL := harness.NATS(t)
	ch := harness.ClickHouse(t)
	s3 := harness.S3(t)
	redisAddr := harness.Redis(t)
	_, db := chTestDB(t) // migrated, dropped at the end

	bucket := "doctor-" + testkit.RandomHex(t, 6)
	mc, err := minio.New(s3.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s3.AccessKey, s3.SecretKey, ""), Secure: s3.UseSSL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := mc.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket %s: %v", bucket, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := mc.RemoveBucket(ctx, bucket); err != nil { // fails if the probe object was left behind
			t.Errorf("remove bucket %s (doctor must delete its probe object): %v", bucket, err)
		}
	})

	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "CALLPIPE_") || strings.HasPrefix(name, "LANGFUSE_") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"CALLPIPE_NATS_URL="+natsURL,
		"CALLPIPE_CLICKHOUSE_ADDR="+ch.Native,
		"CALLPIPE_CLICKHOUSE_DATABASE="+db,
		"CALLPIPE_S3_ENDPOINT="+s3.Endpoint,
		"CALLPIPE_S3_ACCESS_KEY="+s3.AccessKey,
		"CALLPIPE_S3_SECRET_KEY="+s3.SecretKey,
		"CALLPIPE_S3_USE_SSL="+map[bool]string{true: "true", false: "false"}[s3.UseSSL],
		"CALLPIPE_S3_BUCKET="+bucket,
		"CALLPIPE_REDIS_ADDR="+redisAddr,
		// the key that seals the Langfuse secret the tests save (TestMain)
		"CALLPIPE_LANGFUSE_SETTINGS_KEY="+os.Getenv("CALLPIPE_LANGFUSE_SETTINGS_KEY"),
		"CALLPIPE_LOG_LEVEL=warn",
	)
	d := &doctorEnv{bin: testkit.Binary(t), env: env, db: db}
	if out, code := d.run(t, "migrate"); code != 0 { // the streams (the database is migrated already)
		t.Fatalf("callpipe migrate: exit %d\n%s", code, out)
	}
	return d
}

// run runs the binary with args (plus extra KEY=VALUE settings) and returns
// its combined output and exit code.
func (d *doctorEnv) run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	return d.runEnv(t, nil, args...)
}

func (d *doctorEnv) runEnv(t *testing.T, extra []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.bin, args...)
	cmd.Env = append(append([]string(nil), d.env...), extra...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &exit):
		return out.String(), exit.ExitCode()
	default:
		t.Fatalf("%s %v: %v\n%s", d.bin, args, err, out.String())
		return "", -1
	}
}

// doctorLines maps each check name of a doctor report to its status word.
func doctorLines(t *testing.T, out string) map[string]string {
	t.Helper()
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		status, rest, ok := strings.Cut(l, "  ")
		switch status = strings.TrimSpace(status); {
		case !ok:
			continue
		case status != "ok" && status != "skip" && status != "warn" && status != "FAIL":
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(rest, " "), "  ")
		lines[name] = status
	}
	return lines
}

func failing(lines map[string]string) []string {
	var out []string
	for name, st := range lines {
		if st == "FAIL" {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// TestDoctorNamesTheStoppedService runs `callpipe doctor` against the whole
// stack, then with each service stopped in turn: exactly that service's line
// fails (exit 1) and the others stay ok.
func TestDoctorNamesTheStoppedService(t *testing.T) {
	d := newDoctorEnv(t)

	out, code := d.run(t, "doctor")
	lines := doctorLines(t, out)
	if code != 0 || len(failing(lines)) != 0 {
		t.Fatalf("all services up: exit %d, failing %v\n%s", code, failing(lines), out)
	}
	for _, name := range []string{"nats", "stream CALLPIPE_CALLS", "stream CALLPIPE_NORMALIZED", "clickhouse", "clickhouse schema", "s3", "redis"} {
		if lines[name] != "ok" {
			t.Errorf("all services up: %q is %q, want ok\n%s", name, lines[name], out)
		}
	}
	if lines["langfuse"] != "skip" {
		t.Errorf("langfuse.host unset: langfuse line %q, want skip\n%s", lines["langfuse"], out)
	}

	for _, c := range []struct{ service, line string }{
		{harness.ServiceNATS, "nats"},
		{harness.ServiceClickHouse, "clickhouse"},
		{harness.ServiceMinIO, "s3"},
		{harness.ServiceRedis, "redis"},
	} {
		t.Run(c.service, func(t *testing.T) {
			harness.StopService(t, c.service)
			start := time.Now()
			out, code := d.run(t, "doctor", "--timeout", "5s")
			took := time.Since(start)
			got := failing(doctorLines(t, out))
			if code != 1 || len(got) != 1 || got[0] != c.line {
				t.Errorf("%s stopped: exit %d, failing %v; want exit 1 and only %q failing\n%s", c.service, code, got, c.line, out)
			}
			if !strings.Contains(out, "→ fix: ") {
				t.Errorf("%s stopped: no fix given\n%s", c.service, out)
			}
			if took > 20*time.Second {
				t.Errorf("%s stopped: doctor took %v (timeout 5s)", c.service, took)
			}
			t.Logf("%s stopped (doctor took %v):\n%s", c.service, took.Round(time.Millisecond), out)
			harness.StartService(t, c.service)
		})
	}

	// With every service back, the report is clean again.
	out, code = d.run(t, "doctor")
	if code != 0 {
		t.Fatalf("after restarting the services: exit %d\n%s", code, out)
	}
}

// TestDoctorSchemaAndBucket: a database that was never migrated and a
// bucket that does not exist are each named, with the fix.
func TestDoctorSchemaAndBucket(t *testing.T) {
	d := newDoctorEnv(t)
	out, code := d.runEnv(t, []string{
		"CALLPIPE_CLICKHOUSE_DATABASE=doctor_never_" + testkit.RandomHex(t, 4),
		"CALLPIPE_S3_BUCKET=doctor-missing-" + testkit.RandomHex(t, 4),
	}, "doctor")
	got := failing(doctorLines(t, out))
	if code != 1 || strings.Join(got, ",") != "clickhouse schema,s3" {
		t.Fatalf("exit %d, failing %v; want exit 1 and [clickhouse schema s3]\n%s", code, got, out)
	}
	for _, want := range []string{"schema was never applied", "run `callpipe migrate`", "does not exist"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q\n%s", want, out)
		}
	}

	// --probe is the image's healthcheck: 0 on a 2xx, 1 otherwise.
	if out, code := d.run(t, "doctor", "--probe", "http://"+testkit.FreeAddr(t)+"/healthz", "--timeout", "2s"); code != 1 {
		t.Errorf("--probe of a closed port: exit %d\n%s", code, out)
	}
}

// TestDoctorUsesSavedLangfuseSettings: Langfuse settings saved from the
// dashboard (NATS KV) win over the configuration, and doctor checks those.
func TestDoctorUsesSavedLangfuseSettings(t *testing.T) {
	d := newDoctorEnv(t)
	_, js := testkit.JetStream(t, harness.NATS(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := settings.Open(ctx, js, 1, settings.WithSealer(itSealer(t)))
	if err != nil {
		t.Fatal(err)
	}
	prev, saved, err := store.Langfuse(ctx)
	switch {
	case err != nil:
		t.Fatal(err)
	case saved && prev.PublicKey == "pk-lf-doctor": // left by an interrupted run of this test
		if err := store.DeleteLangfuse(ctx); err != nil {
			t.Fatal(err)
		}
	case saved:
		t.Fatalf("Langfuse settings for %s are saved in this stack: refusing to overwrite them", prev.Host)
	}
	closed := "http://" + testkit.FreeAddr(t)
	if err := store.PutLangfuse(ctx, settings.Langfuse{Host: closed, PublicKey: "pk-lf-doctor", SecretKey: "sk-lf-doctor"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := store.DeleteLangfuse(ctx); err != nil {
			t.Errorf("delete saved settings: %v", err)
		}
	})
	out, code := d.run(t, "doctor")
	lines := doctorLines(t, out)
	got := failing(lines)
	if code != 1 || strings.Join(got, ",") != "langfuse" || !strings.Contains(out, closed) || !strings.Contains(out, "settings from saved") {
		t.Fatalf("exit %d, failing %v; want langfuse failing at the saved host %s\n%s", code, got, closed, out)
	}
	// langfuse.host is not configured, but traces go to the saved host: the
	// langfuse stage's consumer is expected like the configured sinks'
	if _, ok := lines["consumer callpipe-langfuse"]; !ok {
		t.Errorf("no line for the langfuse stage's consumer although Langfuse settings are saved:\n%s", out)
	}
	if err := store.DeleteLangfuse(ctx); err != nil {
		t.Fatal(err)
	}
	out, _ = d.run(t, "doctor")
	if _, ok := doctorLines(t, out)["consumer callpipe-langfuse"]; ok {
		t.Errorf("a line for the langfuse consumer with Langfuse neither configured nor saved:\n%s", out)
	}
}
