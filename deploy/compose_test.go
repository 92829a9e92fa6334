package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The compose file is decoded strictly into these types: a key docker compose
// does not know (or that this stack does not use) fails the test. The
// compose-spec Go parser is not among the modules this project may use, and
// no Docker engine runs here for `docker compose config`.
type composeFile struct {
	Services   map[string]composeService `yaml:"services"`
	Volumes    map[string]composeVolume  `yaml:"volumes"`
	Extensions map[string]yaml.Node      `yaml:",inline"` // x-* anchors only
}

type composeService struct {
	Image       string                      `yaml:"image"`
	Build       *composeBuild               `yaml:"build"`
	Restart     string                      `yaml:"restart"`
	User        string                      `yaml:"user"`
	Entrypoint  stringOrList                `yaml:"entrypoint"`
	Command     stringOrList                `yaml:"command"`
	Environment map[string]string           `yaml:"environment"`
	Ports       []string                    `yaml:"ports"`
	Volumes     []string                    `yaml:"volumes"`
	DependsOn   map[string]composeDependsOn `yaml:"depends_on"`
	Healthcheck *composeHealthcheck         `yaml:"healthcheck"`
	Deploy      *composeDeploy              `yaml:"deploy"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

type composeDependsOn struct {
	Condition string `yaml:"condition"`
}

type composeHealthcheck struct {
	Test        stringOrList `yaml:"test"`
	Interval    string       `yaml:"interval"`
	Timeout     string       `yaml:"timeout"`
	Retries     int          `yaml:"retries"`
	StartPeriod string       `yaml:"start_period"`
}

type composeDeploy struct {
	Replicas *int `yaml:"replicas"`
}

type composeVolume struct {
	Driver string `yaml:"driver"`
}

// stringOrList is compose's "string or list of strings" (command, entrypoint, test).
type stringOrList []string

func (s *stringOrList) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*s = []string{n.Value}
		return nil
	case yaml.SequenceNode:
		var l []string
		if err := n.Decode(&l); err != nil {
			return err
		}
		*s = l
		return nil
	}
	return fmt.Errorf("line %d: want a string or a list of strings", n.Line)
}

const composePath = "compose/docker-compose.yml"

func loadCompose(t *testing.T) (*composeFile, string) {
	t.Helper()
	raw, err := os.ReadFile(composePath)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var f composeFile
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("%s: %v", composePath, err)
	}
	for k := range f.Extensions {
		if !strings.HasPrefix(k, "x-") {
			t.Errorf("%s: top-level key %q is not part of the compose spec (services, volumes or x-*)", composePath, k)
		}
	}
	return &f, string(raw)
}

// The reference deployment's services (../shared/reference/xinference-langfuse-tracing.rst)
// and the ports this stack publishes of them: only what people use (Langfuse's
// web UI, and MinIO where browsers upload Langfuse media), each on
// bindAddress. The reference also publishes 3030, 5432, 6379, 8123, 9000 and
// 9091, which only the stack itself needs.
var referencePorts = map[string][]string{
	"langfuse-worker": nil,
	"langfuse-web":    {bindAddress + ":3000:3000"},
	"clickhouse":      nil,
	"minio":           {bindAddress + ":9090:9000"},
	"redis":           nil,
	"postgres":        nil,
}

// bindAddress is the host address of every published port: loopback unless
// BIND_ADDRESS in .env says otherwise.
const bindAddress = "${BIND_ADDRESS:-127.0.0.1}"

// initServices are the one-shot services that create callpipe's own
// ClickHouse and MinIO users.
var initServices = []string{"clickhouse-init", "minio-init"}

// callpipeServices: command, the listen key and port of its ops listener
// (0 for the one-shot migrate).
var callpipeServices = map[string]struct {
	command   string
	listenKey string
	port      int
	published bool
}{
	"migrate":           {"migrate", "", 0, false},
	"collect":           {"collect", "CALLPIPE_COLLECT_LISTEN", 8081, true},
	"proxy":             {"proxy", "CALLPIPE_PROXY_LISTEN", 8080, true},
	"worker-normalize":  {"worker --stages normalize", "CALLPIPE_WORKER_LISTEN", 8082, false},
	"worker-clickhouse": {"worker --stages clickhouse", "CALLPIPE_WORKER_LISTEN", 8082, false},
	"worker-langfuse":   {"worker --stages langfuse", "CALLPIPE_WORKER_LISTEN", 8082, false},
	"worker-archive":    {"worker --stages archive", "CALLPIPE_WORKER_LISTEN", 8082, false},
	"serve":             {"serve", "CALLPIPE_SERVE_LISTEN", 8090, true},
}

func TestComposeServices(t *testing.T) {
	f, _ := loadCompose(t)
	want := append([]string{"nats"}, initServices...)
	for s := range referencePorts {
		want = append(want, s)
	}
	for s := range callpipeServices {
		want = append(want, s)
	}
	sort.Strings(want)
	if got := keys(f.Services); !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}

	for name, ports := range referencePorts {
		if got := f.Services[name].Ports; !slices.Equal(got, ports) {
			t.Errorf("%s: ports %v, want the reference deployment's %v", name, got, ports)
		}
	}

	web := f.Services["langfuse-web"].Environment
	for k, v := range map[string]string{
		"LANGFUSE_INIT_ORG_ID": "20250101", "LANGFUSE_INIT_ORG_NAME": "orbitAI",
		"LANGFUSE_INIT_PROJECT_ID": "20250101", "LANGFUSE_INIT_PROJECT_NAME": "xinference",
	} {
		if web[k] != v {
			t.Errorf("langfuse-web %s=%q, want the reference's %q", k, web[k], v)
		}
	}
	// langfuse-web inherits every langfuse-worker setting (the reference's merge).
	for k := range f.Services["langfuse-worker"].Environment {
		if _, ok := web[k]; !ok {
			t.Errorf("langfuse-web lacks %s of langfuse-worker", k)
		}
	}

	for name, s := range f.Services {
		if s.Image == "" {
			t.Errorf("%s: no image", name)
		}
		if s.Restart == "" {
			t.Errorf("%s: no restart policy", name)
		}
		for dep, cond := range s.DependsOn {
			target, ok := f.Services[dep]
			switch {
			case !ok:
				t.Errorf("%s: depends_on unknown service %s", name, dep)
			case cond.Condition == "service_healthy" && target.Healthcheck == nil:
				t.Errorf("%s: waits for %s to be healthy, but %s has no healthcheck", name, dep, dep)
			case cond.Condition == "service_completed_successfully" && target.Restart != "no":
				t.Errorf("%s: waits for %s to complete, but %s restarts", name, dep, dep)
			case !slices.Contains([]string{"service_started", "service_healthy", "service_completed_successfully"}, cond.Condition):
				t.Errorf("%s: depends_on %s condition %q", name, dep, cond.Condition)
			}
		}
		if s.Healthcheck != nil {
			h := s.Healthcheck
			if len(h.Test) == 0 || h.Interval == "" || h.Timeout == "" || h.Retries < 1 {
				t.Errorf("%s: incomplete healthcheck %+v", name, h)
			}
		}
	}

	for name, want := range callpipeServices {
		s := f.Services[name]
		if s.Build == nil || s.Build.Context != "../.." || s.Build.Dockerfile != "Dockerfile" {
			t.Errorf("%s: must build the repository's Dockerfile, has %+v", name, s.Build)
		}
		if got := strings.Join(s.Command, " "); got != want.command {
			t.Errorf("%s: command %q, want %q", name, got, want.command)
		}
		if want.port == 0 {
			if s.Restart != "no" || s.Healthcheck != nil {
				t.Errorf("%s: one-shot: want restart \"no\" and no healthcheck", name)
			}
			continue
		}
		if dep, ok := s.DependsOn["migrate"]; !ok || dep.Condition != "service_completed_successfully" {
			t.Errorf("%s: must start after migrate completed", name)
		}
		listen := s.Environment[want.listenKey]
		if listen != fmt.Sprintf("0.0.0.0:%d", want.port) {
			t.Errorf("%s: %s=%q, want 0.0.0.0:%d (reachable from other containers)", name, want.listenKey, listen, want.port)
		}
		if s.Healthcheck == nil {
			t.Errorf("%s: no healthcheck", name)
		} else if test := strings.Join(s.Healthcheck.Test, " "); test != fmt.Sprintf("CMD /callpipe doctor --probe http://127.0.0.1:%d/healthz", want.port) {
			t.Errorf("%s: healthcheck %q, want /callpipe doctor --probe on /healthz of port %d (the image has no shell or wget)", name, test, want.port)
		}
		published := slices.Contains(s.Ports, fmt.Sprintf("%s:%d:%d", bindAddress, want.port, want.port))
		if published != want.published || (!want.published && len(s.Ports) > 0) {
			t.Errorf("%s: ports %v (published %v, want %v)", name, s.Ports, published, want.published)
		}
		if strings.HasPrefix(name, "worker-") && (s.Deploy == nil || s.Deploy.Replicas == nil || *s.Deploy.Replicas < 1) {
			t.Errorf("%s: needs deploy.replicas", name)
		}
	}
	if p := f.Services["proxy"].Environment["CALLPIPE_PROXY_UPSTREAM"]; !strings.HasPrefix(p, "${XINFERENCE_URL:?") {
		t.Errorf("proxy upstream %q, want the required ${XINFERENCE_URL:?...}", p)
	}
	if !slices.Contains(f.Services["proxy"].Volumes, "callpipe_proxy_spool:"+f.Services["proxy"].Environment["CALLPIPE_PROXY_SPOOL_DIR"]) {
		t.Errorf("proxy: the spool dir must be a named volume, volumes %v", f.Services["proxy"].Volumes)
	}
	if conf := natsConfig(t, f); !regexp.MustCompile(`(?m)^jetstream \{ store_dir: /data,`).MatchString(conf) {
		t.Errorf("nats configuration:\n%s\nwant JetStream with its store on the volume (store_dir: /data)", conf)
	}
}

// natsConfig is the configuration the nats service writes before it starts
// nats-server (a quoted here-document, so that $VARIABLES reach nats-server,
// which reads them from its environment).
func natsConfig(t *testing.T, f *composeFile) string {
	t.Helper()
	cmd := strings.Join(f.Services["nats"].Command, "\n")
	_, rest, ok := strings.Cut(cmd, "cat > /tmp/nats.conf <<'EOF'\n")
	conf, tail, ok2 := strings.Cut(rest, "\nEOF\n")
	if !ok || !ok2 || !strings.Contains(tail, "exec nats-server -c /tmp/nats.conf") {
		t.Fatalf("nats command %q: want a quoted here-document written to /tmp/nats.conf, then exec nats-server -c /tmp/nats.conf", cmd)
	}
	return strings.ReplaceAll(conf, "$$", "$") // compose's escape of a literal $
}

func TestComposeVolumes(t *testing.T) {
	f, _ := loadCompose(t)
	used := map[string]bool{}
	for name, s := range f.Services {
		for _, v := range s.Volumes {
			src, dst, ok := strings.Cut(v, ":")
			if !ok || !strings.HasPrefix(dst, "/") {
				t.Errorf("%s: volume %q: want NAME:/path", name, v)
				continue
			}
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				t.Errorf("%s: bind mount %q: use named volumes", name, v)
				continue
			}
			if _, ok := f.Volumes[src]; !ok {
				t.Errorf("%s: volume %s is not declared under volumes:", name, src)
			}
			used[src] = true
		}
	}
	for v, def := range f.Volumes {
		if !used[v] {
			t.Errorf("volume %s is declared but no service mounts it", v)
		}
		if def.Driver != "local" {
			t.Errorf("volume %s: driver %q", v, def.Driver)
		}
	}
	for _, v := range []string{"langfuse_postgres_data", "langfuse_clickhouse_data", "langfuse_clickhouse_logs", "langfuse_minio_data", "nats_data", "callpipe_proxy_spool"} {
		if !used[v] {
			t.Errorf("volume %s missing", v)
		}
	}
}

var (
	// secretKey matches the names of settings that hold a password, key, token or secret.
	secretKey = regexp.MustCompile(`(?i)(PASSWORD|SECRET|TOKEN|SALT|ENCRYPTION_KEY|ACCESS_KEY|_KEY$|_KEY_ID$|(^|_)AUTH$|^AUTH_)`)
	// requiredRef is a reference that fails when the variable is unset or empty.
	requiredRef = regexp.MustCompile(`^\$\{([A-Z][A-Z0-9_]*):\?[^}]*\}$`)
	anyRef      = regexp.MustCompile(`\$\{([A-Z][A-Z0-9_]*)(:?[-?])?([^}]*)\}`)
	urlUserinfo = regexp.MustCompile(`://[^/@\s]*:([^@\s]+)@`)
	// passwordFlag is a command-line flag that takes a secret (redis --requirepass, nats --pass).
	passwordFlag = regexp.MustCompile(`(?:^|\s)(--pass|--password|--requirepass|--auth)\s+`)
)

func secretLike(name string) bool { return secretKey.MatchString(name) }

// TestComposeHasNoLiteralSecret: every password, key, token and secret of
// the stack is a ${VAR:?} reference to .env, without a default.
func TestComposeHasNoLiteralSecret(t *testing.T) {
	f, raw := loadCompose(t)
	for name, s := range f.Services {
		for k, v := range s.Environment {
			if secretLike(k) && !requiredRef.MatchString(v) {
				t.Errorf("%s: %s=%q: a secret must be exactly ${VAR:?message} (from .env, no default)", name, k, v)
			}
			if m := urlUserinfo.FindStringSubmatch(v); m != nil && !requiredRef.MatchString(m[1]) {
				t.Errorf("%s: %s: the password in the URL %q must be a ${VAR:?} reference", name, k, v)
			}
		}
		// The value after a password flag runs to the reference's closing brace
		// (its message has spaces).
		cmd := strings.Join(s.Command, " ")
		for _, m := range passwordFlag.FindAllStringSubmatchIndex(cmd, -1) {
			flag, rest := cmd[m[2]:m[3]], cmd[m[1]:]
			end := strings.IndexByte(rest, '}')
			if end < 0 || !requiredRef.MatchString(rest[:end+1]) {
				t.Errorf("%s: command %s must be followed by a ${VAR:?} reference", name, flag)
			}
		}
	}
	// A default on a secret's reference would be a default password.
	for _, m := range anyRef.FindAllStringSubmatch(raw, -1) {
		if secretLike(m[1]) && m[2] != ":?" {
			t.Errorf("${%s%s%s}: secrets take no default; use ${%s:?message}", m[1], m[2], m[3], m[1])
		}
	}
	// The reference's hard-coded values must not come back.
	for _, leaked := range []string{"CHANGEME", "mysalt", "mysecret", "miniosecret", "myredissecret", "postgres:postgres@",
		"pk-lf-8a79d84e", "sk-lf-d1d41a0b", strings.Repeat("0", 64), "LANGFUSE_INIT_USER_PASSWORD: administrator"} {
		if strings.Contains(raw, leaked) {
			t.Errorf("%s contains the reference's literal secret %q", composePath, leaked)
		}
	}
}

// TestComposeEnvExample: .env.example lists exactly the variables the compose
// file requires, all empty, and .env is git-ignored.
func TestComposeEnvExample(t *testing.T) {
	_, raw := loadCompose(t)
	required := map[string]bool{}
	for _, m := range anyRef.FindAllStringSubmatch(raw, -1) {
		if m[2] == ":?" || m[2] == "?" || m[2] == "" {
			required[m[1]] = true
		}
	}
	example := map[string]bool{}
	fh, err := os.Open(filepath.Join("compose", ".env.example"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || v != "" {
			t.Errorf(".env.example: %q: want NAME= with an empty value", line)
		}
		example[k] = true
	}
	if got, want := keys(example), keys(required); !slices.Equal(got, want) {
		t.Errorf(".env.example lists %v; the compose file requires %v", got, want)
	}
	ig, err := os.ReadFile(filepath.Join("compose", ".gitignore"))
	if err != nil || !slices.Contains(strings.Fields(string(ig)), ".env") {
		t.Errorf("deploy/compose/.gitignore must ignore .env (%v)", err)
	}
}

// TestComposeMatchesReference compares with the reference deployment itself
// when its file is at hand (../shared next to the repository, as on the
// development machines and in CI); referencePorts above covers it otherwise.
func TestComposeMatchesReference(t *testing.T) {
	ref := filepath.Join("..", "..", "shared", "reference", "xinference-langfuse-tracing.rst")
	raw, err := os.ReadFile(ref)
	if os.IsNotExist(err) {
		t.Skipf("%s not present; TestComposeServices checks the reference's names and ports", ref)
	}
	if err != nil {
		t.Fatal(err)
	}
	var block strings.Builder
	in := false
	for _, line := range strings.Split(string(raw), "\n") {
		switch {
		case strings.HasPrefix(line, ".. code-block:: yaml"):
			in = true
		case in && line != "" && !strings.HasPrefix(line, " "):
			in = false
		case in:
			block.WriteString(strings.TrimPrefix(line, "  ") + "\n")
		}
	}
	var rf struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Ports       []string          `yaml:"ports"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
	}
	if err := yaml.Unmarshal([]byte(block.String()), &rf); err != nil {
		t.Fatalf("reference compose: %v", err)
	}
	if len(rf.Services) != len(referencePorts) {
		t.Fatalf("reference has services %v", keys(rf.Services))
	}
	f, _ := loadCompose(t)
	for name, rs := range rf.Services {
		s, ok := f.Services[name]
		if !ok {
			t.Errorf("service %s of the reference missing", name)
			continue
		}
		// Published ports are a subset of the reference's, on bindAddress.
		for _, p := range s.Ports {
			if !slices.Contains(rs.Ports, strings.TrimPrefix(p, bindAddress+":")) && !slices.Contains(rs.Ports, "127.0.0.1:"+strings.TrimPrefix(p, bindAddress+":")) {
				t.Errorf("%s: port %s is not one of the reference's %v", name, p, rs.Ports)
			}
		}
		// Same image, pinned: the reference's tag (when it has one) is a
		// prefix of the version.
		repo, tag, _ := strings.Cut(s.Image, ":")
		rrepo, rtag, _ := strings.Cut(rs.Image, ":")
		if repo != rrepo || (rtag != "" && !strings.Contains(rtag, "$") && !strings.HasPrefix(tag, rtag+".")) {
			t.Errorf("%s: image %q, reference %q", name, s.Image, rs.Image)
		}
		for k, v := range rs.Environment {
			got, ok := s.Environment[k]
			switch {
			case !ok && !strings.HasPrefix(k, "REDIS_TLS_"):
				t.Errorf("%s: setting %s of the reference missing", name, k)
			case strings.HasPrefix(k, "LANGFUSE_INIT_") && !secretLike(k) && !strings.Contains(k, "USER_") && got != v:
				t.Errorf("%s: project setting %s=%q, reference %q", name, k, got, v)
			}
		}
	}
	for v := range rf.Volumes {
		if _, ok := f.Volumes[v]; !ok {
			t.Errorf("volume %s of the reference missing", v)
		}
	}
}

// TestComposeServeWritesNeedAToken: the published serve changes settings and
// starts exports only with the admin token from .env, reads need a token
// too, and Test connection may not reach loopback or cloud metadata.
func TestComposeServeWritesNeedAToken(t *testing.T) {
	f, _ := loadCompose(t)
	env := f.Services["serve"].Environment
	for _, k := range []string{"CALLPIPE_SERVE_TOKENS", "CALLPIPE_SERVE_READ_TOKENS"} {
		if !requiredRef.MatchString(env[k]) {
			t.Errorf("serve: %s=%q, want a required ${VAR:?} reference to .env", k, env[k])
		}
	}
	for _, k := range []string{"CALLPIPE_SERVE_ALLOW_UNAUTHENTICATED_WRITES", "CALLPIPE_SERVE_TEST_CONNECTION_ALLOW_PRIVATE"} {
		if v, ok := env[k]; ok {
			t.Errorf("serve: %s=%q opens a door the stack does not need", k, v)
		}
	}
	if allow := env["CALLPIPE_SERVE_TEST_CONNECTION_ALLOW"]; strings.Contains(allow, "127.") || strings.Contains(allow, "169.254") || strings.Contains(allow, "0.0.0.0/0") {
		t.Errorf("serve: Test connection allowed to %q", allow)
	}
}
