package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "callpipe-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "callpipe")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		panic(string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// callpipe runs the built binary in an empty directory with only env set.
func callpipe(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func TestConfigPrintMasksSecretsAndAppliesOverrides(t *testing.T) {
	out, errOut, code := callpipe(t, []string{
		"CALLPIPE_NATS_PASSWORD=hunter2", "CALLPIPE_NATS_USER=ops", "LANGFUSE_SECRET_KEY=sk-lf-123",
		"CALLPIPE_COLLECT_TOKENS=tokA,tokB",
	}, "config", "print", "--nats.stream.max_age=3d", "--collect.listen=0.0.0.0:9999")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, secret := range []string{"hunter2", "sk-lf-123", "tokA", "tokB"} {
		if strings.Contains(out, secret) {
			t.Errorf("secret %q printed", secret)
		}
	}
	for _, want := range []string{"user: ops", "max_age: 3d", "listen: 0.0.0.0:9999", "password: '********'"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestBadConfigExitsTwoNamingTheKey(t *testing.T) {
	cases := []struct {
		env  []string
		args []string
		key  string
	}{
		{[]string{"CALLPIPE_NATS_STREAM_REPLICAS=2"}, []string{"config", "print"}, "nats.stream.replicas"},
		{nil, []string{"collect", "--listen", "nowhere"}, "collect.listen"},
		{nil, []string{"migrate", "--nats.url", "http://127.0.0.1:1"}, "nats.url"},
		{[]string{"CALLPIPE_PROXY_ASK_USAGE=perhaps"}, []string{"config", "print"}, "proxy.ask_usage"},
		{nil, []string{"config", "print", "--config", "/nonexistent/callpipe.yaml"}, "config file"},
		{nil, []string{"worker", "--stages", "normalize,bogus"}, `unknown stage "bogus"`},
	}
	for _, tc := range cases {
		_, errOut, code := callpipe(t, tc.env, tc.args...)
		if code != 2 {
			t.Errorf("%v %v: exit %d, want 2 (%s)", tc.env, tc.args, code, errOut)
		}
		if !strings.Contains(errOut, tc.key) {
			t.Errorf("%v %v: stderr %q does not name %q", tc.env, tc.args, errOut, tc.key)
		}
	}
}

func TestConfigFileUnknownKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	os.WriteFile(path, []byte("collect:\n  lissten: 127.0.0.1:1\n"), 0o600)
	_, errOut, code := callpipe(t, nil, "config", "print", "--config", path)
	if code != 2 || !strings.Contains(errOut, "collect.lissten") || !strings.Contains(errOut, "unknown key") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestVersion(t *testing.T) {
	out, _, code := callpipe(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "callpipe ") || !strings.Contains(out, "schema v1") {
		t.Fatalf("exit %d: %q", code, out)
	}
}
