package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// publishedPorts is every port the compose stack publishes on the host:
// what people use, nothing that only the stack itself needs.
var publishedPorts = map[string][]string{
	"langfuse-web": {bindAddress + ":3000:3000"},
	"minio":        {bindAddress + ":9090:9000"},
	"collect":      {bindAddress + ":8081:8081"},
	"proxy":        {bindAddress + ":8080:8080"},
	"serve":        {bindAddress + ":8090:8090"},
}

// versionTag is an image tag that names a release (major.minor at least, or
// MinIO's RELEASE.date), not a moving "latest" or a bare major.
var versionTag = regexp.MustCompile(`^(\d+\.\d+(\.\d+)*(-[a-z0-9]+)?|RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)$`)

// TestComposeLeastPrivilege: published ports are only those people use and
// bind to 127.0.0.1 unless BIND_ADDRESS says otherwise; every image is
// pinned by version; callpipe uses its own ClickHouse, MinIO and Redis users
// (never Langfuse's or the root ones), and those users reach only callpipe's
// data.
func TestComposeLeastPrivilege(t *testing.T) {
	f, _ := loadCompose(t)
	for name, s := range f.Services {
		if want := publishedPorts[name]; !slices.Equal(s.Ports, want) {
			t.Errorf("%s: ports %v, want %v", name, s.Ports, want)
		}
		if s.Build != nil {
			continue // callpipe's own image, built from the repository
		}
		_, tag, _ := strings.Cut(s.Image[strings.LastIndex(s.Image, "/")+1:], ":")
		if !versionTag.MatchString(tag) {
			t.Errorf("%s: image %q is not pinned to a version (tag %q)", name, s.Image, tag)
		}
	}

	env := f.Services["serve"].Environment // every callpipe service shares the x-callpipe environment
	for k, want := range map[string]string{
		"CALLPIPE_CLICKHOUSE_USER":     "callpipe",
		"CALLPIPE_CLICKHOUSE_PASSWORD": "CALLPIPE_CLICKHOUSE_PASSWORD",
		"CALLPIPE_S3_ACCESS_KEY":       "CALLPIPE_S3_ACCESS_KEY",
		"CALLPIPE_S3_SECRET_KEY":       "CALLPIPE_S3_SECRET_KEY",
		"CALLPIPE_REDIS_USERNAME":      "callpipe",
		"CALLPIPE_REDIS_PASSWORD":      "CALLPIPE_REDIS_PASSWORD",
	} {
		got := env[k]
		if m := requiredRef.FindStringSubmatch(got); m != nil {
			got = m[1]
		}
		if got != want {
			t.Errorf("callpipe %s=%q, want %s (callpipe's own user, not Langfuse's or root)", k, env[k], want)
		}
	}
	for name := range callpipeServices {
		for k, v := range f.Services[name].Environment {
			for _, shared := range []string{"MINIO_ROOT_", "${CLICKHOUSE_PASSWORD", "${REDIS_AUTH", "${POSTGRES_"} {
				if strings.Contains(v, shared) {
					t.Errorf("%s: %s=%q uses a credential of Langfuse or a root one", name, k, v)
				}
			}
		}
	}

	// ClickHouse: callpipe's user gets rights on database callpipe only.
	chInit := strings.Join(f.Services["clickhouse-init"].Command, "\n")
	grants := regexp.MustCompile(`(?m)GRANT ([A-Z, ]+) ON (\S+) TO callpipe`).FindAllStringSubmatch(chInit, -1)
	if len(grants) == 0 || !strings.Contains(chInit, "CREATE USER IF NOT EXISTS callpipe") {
		t.Fatalf("clickhouse-init creates no callpipe user with grants:\n%s", chInit)
	}
	for _, g := range grants {
		if g[2] != "callpipe.*" || strings.Contains(g[1], "ALL") || strings.Contains(g[1], "ACCESS") || strings.Contains(g[1], "SYSTEM") {
			t.Errorf("clickhouse-init grants %s ON %s: want rights on callpipe.* only, no ALL, ACCESS MANAGEMENT or SYSTEM", g[1], g[2])
		}
	}
	if dep := f.Services["migrate"].DependsOn["clickhouse-init"]; dep.Condition != "service_completed_successfully" {
		t.Errorf("migrate must wait for clickhouse-init to complete")
	}

	// MinIO: callpipe's policy names only its bucket, no wildcard action.
	mInit := strings.Join(f.Services["minio-init"].Command, "\n")
	_, rest, _ := strings.Cut(mInit, "cat > /tmp/callpipe-policy.json <<'EOF'\n")
	doc, _, ok := strings.Cut(rest, "\nEOF\n")
	var policy struct {
		Statement []struct {
			Effect   string   `json:"Effect"`
			Action   []string `json:"Action"`
			Resource []string `json:"Resource"`
		} `json:"Statement"`
	}
	if err := json.Unmarshal([]byte(doc), &policy); !ok || err != nil || len(policy.Statement) == 0 {
		t.Fatalf("minio-init: no policy document (%v):\n%s", err, mInit)
	}
	for _, st := range policy.Statement {
		for _, a := range st.Action {
			if !strings.HasPrefix(a, "s3:") || strings.Contains(a, "*") || strings.Contains(a, "Policy") || a == "s3:DeleteBucket" {
				t.Errorf("minio-init policy allows %s", a)
			}
		}
		for _, r := range st.Resource {
			if r != "arn:aws:s3:::callpipe" && r != "arn:aws:s3:::callpipe/*" {
				t.Errorf("minio-init policy reaches %s (want bucket callpipe only)", r)
			}
		}
	}
	for _, step := range []string{`mc admin user add local "$$CALLPIPE_S3_ACCESS_KEY"`, `mc admin policy attach local callpipe --user "$$CALLPIPE_S3_ACCESS_KEY"`} {
		if !strings.Contains(mInit, step) {
			t.Errorf("minio-init lacks %s", step)
		}
	}
	if dep := f.Services["worker-archive"].DependsOn["minio-init"]; dep.Condition != "service_completed_successfully" {
		t.Errorf("worker-archive must wait for minio-init to complete")
	}

	// Redis: callpipe's ACL user reaches keys under callpipe: only, without
	// dangerous or admin commands.
	redisCmd := strings.Join(f.Services["redis"].Command, " ")
	acl := regexp.MustCompile(`--user callpipe on >\$\{CALLPIPE_REDIS_PASSWORD:\?[^}]*\} (.*)`).FindStringSubmatch(redisCmd)
	if acl == nil {
		t.Fatalf("redis command declares no ACL user callpipe with ${CALLPIPE_REDIS_PASSWORD:?}: %q", redisCmd)
	}
	rules := strings.Fields(acl[1])
	for _, want := range []string{"~callpipe:*", "-@dangerous", "-@admin"} {
		if !slices.Contains(rules, want) {
			t.Errorf("redis ACL of callpipe %v lacks %s", rules, want)
		}
	}
	for _, r := range rules {
		if r == "~*" || r == "allkeys" || r == "nopass" || r == "allcommands" {
			t.Errorf("redis ACL of callpipe has %s", r)
		}
	}
}

// TestComposeNoOpenWritePath: nothing that changes data answers without
// credentials — NATS needs a password, the collector a bearer token, serve
// an admin token for writes (TestComposeServeWritesNeedAToken), MinIO its
// keys and has no browser console; monitoring is not reachable from outside
// the NATS container.
func TestComposeNoOpenWritePath(t *testing.T) {
	f, _ := loadCompose(t)
	conf := natsConfig(t, f)
	if !strings.Contains(conf, "authorization { user: callpipe, password: $NATS_PASSWORD }") {
		t.Errorf("nats configuration has no password authorization:\n%s", conf)
	}
	if !strings.Contains(conf, "http: 127.0.0.1:8222") {
		t.Errorf("nats monitoring must listen on the container's loopback only:\n%s", conf)
	}
	if v := f.Services["collect"].Environment["CALLPIPE_COLLECT_TOKENS"]; !requiredRef.MatchString(v) {
		t.Errorf("collect: CALLPIPE_COLLECT_TOKENS=%q, want a required ${VAR:?} reference (the collector would accept anyone)", v)
	}
	if v := f.Services["minio"].Environment["MINIO_BROWSER"]; v != "off" {
		t.Errorf("minio: MINIO_BROWSER=%q, want off", v)
	}
	for name, s := range f.Services {
		for k, v := range s.Environment {
			if strings.Contains(k, "ALLOW_UNAUTHENTICATED") || strings.Contains(k, "INSECURE") || (strings.HasSuffix(k, "_TOKENS") && v == "") {
				t.Errorf("%s: %s=%q opens a door", name, k, v)
			}
		}
	}
}

// TestComposeEncryptsAtRest: JetStream encrypts its store with a key from
// .env, MinIO has a KMS key and encrypts callpipe's bucket by default,
// callpipe asks for SSE-S3 on every object, and the Langfuse secret saved in
// NATS KV is sealed. When nats-server is installed (deploy/local/services.sh),
// it checks the NATS configuration too.
func TestComposeEncryptsAtRest(t *testing.T) {
	f, _ := loadCompose(t)
	conf := natsConfig(t, f)
	if !regexp.MustCompile(`jetstream \{[^}]*cipher: (chachapoly|aes), key: \$NATS_JETSTREAM_KEY`).MatchString(conf) {
		t.Errorf("nats: JetStream is not encrypted with $NATS_JETSTREAM_KEY:\n%s", conf)
	}
	if v := f.Services["nats"].Environment["NATS_JETSTREAM_KEY"]; !requiredRef.MatchString(v) {
		t.Errorf("nats: NATS_JETSTREAM_KEY=%q, want a required ${VAR:?} reference", v)
	}
	if v := f.Services["minio"].Environment["MINIO_KMS_SECRET_KEY"]; !requiredRef.MatchString(v) {
		t.Errorf("minio: MINIO_KMS_SECRET_KEY=%q, want a required ${VAR:?} reference", v)
	}
	if !strings.Contains(strings.Join(f.Services["minio-init"].Command, "\n"), "mc encrypt set sse-s3 local/callpipe") {
		t.Error("minio-init does not turn on default SSE-S3 for bucket callpipe")
	}
	env := f.Services["worker-archive"].Environment
	if env["CALLPIPE_S3_SSE"] != "sse-s3" {
		t.Errorf("callpipe: CALLPIPE_S3_SSE=%q, want sse-s3", env["CALLPIPE_S3_SSE"])
	}
	if !requiredRef.MatchString(env["CALLPIPE_LANGFUSE_SETTINGS_KEY"]) {
		t.Errorf("callpipe: CALLPIPE_LANGFUSE_SETTINGS_KEY=%q, want a required ${VAR:?} reference", env["CALLPIPE_LANGFUSE_SETTINGS_KEY"])
	}

	bin, err := exec.LookPath("nats-server")
	if err != nil {
		home, _ := os.UserHomeDir()
		bin = filepath.Join(home, "go", "bin", "nats-server")
		if _, err := os.Stat(bin); err != nil {
			t.Logf("nats-server not installed: configuration not checked by the server")
			return
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(conf, "/data", dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-t", "-c", path)
	cmd.Env = append(os.Environ(), "NATS_PASSWORD=p", "NATS_JETSTREAM_KEY=k")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("nats-server -t rejects the compose configuration: %v\n%s", err, out)
	}
}
