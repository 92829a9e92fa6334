package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestAPIKeyArg(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "key")
	if err := os.WriteFile(file, []byte("  sk-from-file  \n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	two := filepath.Join(dir, "two")
	_ = os.WriteFile(two, []byte("a\nb\n"), 0o600)
	empty := filepath.Join(dir, "empty")
	_ = os.WriteFile(empty, []byte("\n \n"), 0o600)

	run := func(key, keyFile, stdin string) (string, string, error) {
		cmd := &cobra.Command{}
		var stderr strings.Builder
		cmd.SetIn(strings.NewReader(stdin))
		cmd.SetErr(&stderr)
		k, err := apiKeyArg(cmd, key, keyFile)
		return k, stderr.String(), err
	}
	if k, warn, err := run("", "-", "sk-from-stdin\n"); err != nil || k != "sk-from-stdin" || warn != "" {
		t.Errorf("stdin: %q %q %v", k, warn, err)
	}
	if k, _, err := run("", file, ""); err != nil || k != "sk-from-file" {
		t.Errorf("file: %q %v", k, err)
	}
	if k, warn, err := run("sk-argv", "", ""); err != nil || k != "sk-argv" || !strings.Contains(warn, "--key-file") {
		t.Errorf("--key: %q, warning %q, %v; want the key and a warning naming --key-file", k, warn, err)
	}
	for name, c := range map[string][3]string{
		"none":       {"", "", ""},
		"both":       {"k", file, ""},
		"empty":      {"", empty, ""},
		"two lines":  {"", two, ""},
		"no file":    {"", filepath.Join(dir, "missing"), ""},
		"empty pipe": {"", "-", ""},
	} {
		if _, _, err := run(c[0], c[1], c[2]); !errors.Is(err, errUsage) {
			t.Errorf("%s: %v, want a usage error", name, err)
		}
	}
}
