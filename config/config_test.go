package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "callpipe.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsAreValid(t *testing.T) {
	d := Default()
	if err := d.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

// Every default file path is under paths.state_dir, which the environment
// sets as CALLPIPE_PATHS_STATE_DIR; proxy.spool_dir still wins when set.
func TestDefaultPathsUnderStateDir(t *testing.T) {
	d := Default()
	if got, want := d.SpoolDir(), filepath.Join(".state", "spool"); got != want {
		t.Errorf("default spool %q, want %q", got, want)
	}
	c, err := Load(Sources{File: writeFile(t, ""), Getenv: env(map[string]string{"CALLPIPE_PATHS_STATE_DIR": "/var/lib/callpipe"})})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.SpoolDir(); got != "/var/lib/callpipe/spool" {
		t.Errorf("spool under CALLPIPE_PATHS_STATE_DIR: %q", got)
	}
	c.Proxy.SpoolDir = "/spool"
	if got := c.SpoolDir(); got != "/spool" {
		t.Errorf("proxy.spool_dir set: %q", got)
	}
	c.Paths.StateDir = ""
	var e *Error
	if err := c.Validate(); !errors.As(err, &e) || e.Key != "paths.state_dir" {
		t.Errorf("empty paths.state_dir: %v", err)
	}
}

func TestPrecedenceFileEnvFlag(t *testing.T) {
	file := writeFile(t, "nats:\n  url: nats://file:1\n  stream:\n    max_age: 3d\ncollect:\n  listen: 0.0.0.0:1\n  tokens: [a, b]\n")
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	RegisterFlags(fs)
	fs.String("listen", "", "")
	if err := fs.Parse([]string{"--listen", "127.0.0.1:9", "--proxy.ask_usage=false"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(Sources{File: file, Flags: fs, Aliases: map[string]string{"listen": "collect.listen"},
		Getenv: env(map[string]string{"CALLPIPE_NATS_URL": "nats://env:2", "CALLPIPE_COLLECT_LISTEN": "127.0.0.1:5"})})
	if err != nil {
		t.Fatal(err)
	}
	if c.NATS.URL != "nats://env:2" {
		t.Errorf("env must override file: nats.url=%q", c.NATS.URL)
	}
	if c.Collect.Listen != "127.0.0.1:9" {
		t.Errorf("flag must override env: collect.listen=%q", c.Collect.Listen)
	}
	if time.Duration(c.NATS.Stream.MaxAge) != 72*time.Hour {
		t.Errorf("file value lost: max_age=%v", c.NATS.Stream.MaxAge)
	}
	if c.Proxy.AskUsage {
		t.Error("--proxy.ask_usage=false not applied")
	}
	if strings.Join(c.Collect.Tokens, ",") != "a,b" {
		t.Errorf("tokens=%v", c.Collect.Tokens)
	}
	if c.NATS.Stream.Replicas != 1 {
		t.Errorf("untouched default changed: replicas=%d", c.NATS.Stream.Replicas)
	}
}

func TestInvalidValuesNameTheKey(t *testing.T) {
	cases := []struct {
		name, file string
		env        map[string]string
		key        string
	}{
		{"replicas", "", map[string]string{"CALLPIPE_NATS_STREAM_REPLICAS": "2"}, "nats.stream.replicas"},
		{"not an int", "", map[string]string{"CALLPIPE_NATS_STREAM_REPLICAS": "three"}, "nats.stream.replicas"},
		{"duration", "nats:\n  stream:\n    max_age: forever\n", nil, "max_age"},
		{"bytes", "", map[string]string{"CALLPIPE_COLLECT_MAX_BODY_BYTES": "8 parsecs"}, "collect.max_body_bytes"},
		{"bool", "", map[string]string{"CALLPIPE_PROXY_ASK_USAGE": "maybe"}, "proxy.ask_usage"},
		{"listen", "", map[string]string{"CALLPIPE_COLLECT_LISTEN": "8080"}, "collect.listen"},
		{"nats url", "", map[string]string{"CALLPIPE_NATS_URL": "http://x:1"}, "nats.url"},
		{"transport", "langfuse:\n  transport: grpc\n", nil, "langfuse.transport"},
		{"upstream", "", map[string]string{"CALLPIPE_PROXY_UPSTREAM": "xinference:9997"}, "proxy.upstream"},
		{"procs", "", map[string]string{"CALLPIPE_PROXY_PROCS": "-1"}, "proxy.procs"},
		{"log level", "", map[string]string{"CALLPIPE_LOG_LEVEL": "loud"}, "log.level"},
		{"database", "", map[string]string{"CALLPIPE_CLICKHOUSE_DATABASE": "my-db"}, "clickhouse.database"},
		{"unknown key", "nats:\n  urll: nats://x:1\n", nil, "urll"},
		{"open writes with tokens", "", map[string]string{"CALLPIPE_SERVE_TOKENS": "a", "CALLPIPE_SERVE_ALLOW_UNAUTHENTICATED_WRITES": "true"}, "serve.allow_unauthenticated_writes"},
		{"test connection network", "", map[string]string{"CALLPIPE_SERVE_TEST_CONNECTION_ALLOW": "10.0.0.0/8,langfuse.internal"}, "serve.test_connection.allow"},
		{"settings key", "", map[string]string{"CALLPIPE_LANGFUSE_SETTINGS_KEY": "not-32-bytes"}, "langfuse.settings_key"},
		{"sse", "", map[string]string{"CALLPIPE_S3_SSE": "aes"}, "s3.sse"},
		{"sse-kms without a key", "", map[string]string{"CALLPIPE_S3_SSE": "sse-kms"}, "s3.sse_kms_key_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := Sources{Getenv: env(tc.env), File: writeFile(t, tc.file)}
			_, err := Load(src)
			if err == nil {
				t.Fatal("invalid value accepted")
			}
			if !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("error %q does not name %q", err, tc.key)
			}
			var ce *Error
			if tc.env != nil && !errors.As(err, &ce) {
				t.Fatalf("want *config.Error, got %T", err)
			}
		})
	}
}

func TestLangfuseSDKNames(t *testing.T) {
	c, err := Load(Sources{File: writeFile(t, ""), Getenv: env(map[string]string{
		"LANGFUSE_HOST": "https://lf.example", "LANGFUSE_PUBLIC_KEY": "pk-1", "LANGFUSE_SECRET_KEY": "sk-1",
	})})
	if err != nil {
		t.Fatal(err)
	}
	if c.Langfuse.Host != "https://lf.example" || c.Langfuse.PublicKey != "pk-1" || c.Langfuse.SecretKey != "sk-1" {
		t.Fatalf("langfuse = %+v", c.Langfuse)
	}
	c, err = Load(Sources{File: writeFile(t, ""), Getenv: env(map[string]string{
		"LANGFUSE_HOST": "https://a.example", "LANGFUSE_BASE_URL": "https://b.example", "CALLPIPE_LANGFUSE_HOST": "https://c.example",
	})})
	if err != nil {
		t.Fatal(err)
	}
	if c.Langfuse.Host != "https://c.example" {
		t.Fatalf("CALLPIPE_LANGFUSE_HOST must win, got %q", c.Langfuse.Host)
	}
}

func TestMaskedHidesEverySecret(t *testing.T) {
	c := Default()
	c.NATS.Password, c.NATS.Token, c.Redis.Password = "p1", "t1", "p2"
	c.S3.AccessKey, c.S3.SecretKey, c.Langfuse.SecretKey, c.ClickHouse.Password = "a1", "s1", "s2", "p3"
	c.Collect.Tokens = []string{"tok1", "tok2"}
	c.Serve.Tokens, c.Serve.ReadTokens = []string{"adm1"}, []string{"rd1"}
	out, err := c.Masked().YAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"p1", "t1", "p2", "a1", "s1", "s2", "p3", "tok1", "tok2", "adm1", "rd1"} {
		if strings.Contains(string(out), ": "+secret) || strings.Contains(string(out), "- "+secret) {
			t.Errorf("secret %q printed:\n%s", secret, out)
		}
	}
	if c.Collect.Tokens[0] != "tok1" || c.Serve.Tokens[0] != "adm1" || c.Serve.ReadTokens[0] != "rd1" {
		t.Error("Masked modified the original")
	}
}

// The committed example must be exactly what the code documents, and load to the defaults.
func TestExampleFileIsCurrent(t *testing.T) {
	committed, err := os.ReadFile("../callpipe.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(committed) != string(Example()) {
		t.Fatal("callpipe.example.yaml is stale: regenerate with `go run ./cmd/callpipe config example > callpipe.example.yaml`")
	}
	c, err := Load(Sources{File: writeFile(t, string(committed)), Getenv: env(nil)})
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	want, _ := d.YAML()
	got, _ := c.YAML()
	if string(want) != string(got) {
		t.Fatalf("example does not load to the defaults:\n%s\nvs\n%s", got, want)
	}
}
