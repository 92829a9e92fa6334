package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func readMap(t *testing.T, path string) map[string]string {
	t.Helper()
	kv, err := readEnv(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range kv {
		m[e.name] = e.value
	}
	return m
}

func noEnv(string) string { return "" }

func TestWriteGeneratesEverySecretOfTheRealExample(t *testing.T) {
	example := filepath.Join("..", ".env.example")
	out := filepath.Join(t.TempDir(), ".env")
	sum, err := Write(example, out, nil, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf(".env mode %v, want 0600", fi.Mode().Perm())
	}
	got := readMap(t, out)
	for _, e := range mustRead(t, example) {
		if e.value != "" {
			t.Errorf(".env.example: %s has a value; every value must be empty", e.name)
		}
		if _, ok := got[e.name]; !ok {
			t.Errorf(".env lacks %s", e.name)
		}
	}
	for name := range generators {
		if got[name] == "" {
			t.Errorf("%s not generated (is it in .env.example?)", name)
		}
	}
	if len(sum.Generated) != len(generators) || len(sum.Missing) != 1 || sum.Missing[0] != "XINFERENCE_URL" {
		t.Errorf("summary %+v: want %d generated and XINFERENCE_URL missing", sum, len(generators))
	}
	formats := map[string]*regexp.Regexp{
		"ENCRYPTION_KEY":                   regexp.MustCompile(`^[0-9a-f]{64}$`),
		"LANGFUSE_INIT_PROJECT_PUBLIC_KEY": regexp.MustCompile(`^pk-lf-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`),
		"LANGFUSE_INIT_PROJECT_SECRET_KEY": regexp.MustCompile(`^sk-lf-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`),
		"POSTGRES_PASSWORD":                regexp.MustCompile(`^[0-9a-f]{64}$`), // URL-safe: it is part of DATABASE_URL
		"MINIO_ROOT_USER":                  regexp.MustCompile(`^callpipe-[0-9a-f]{16}$`),
	}
	for name, re := range formats {
		if !re.MatchString(got[name]) {
			t.Errorf("%s=%q does not match %s", name, got[name], re)
		}
	}
	// Distinct secrets: no generator may repeat a value.
	seen := map[string]string{}
	for name := range generators {
		if prev, dup := seen[got[name]]; dup {
			t.Errorf("%s and %s got the same value", name, prev)
		}
		seen[got[name]] = name
	}
	// Two fresh files never share a secret.
	out2 := filepath.Join(t.TempDir(), ".env")
	if _, err := Write(example, out2, nil, noEnv); err != nil {
		t.Fatal(err)
	}
	got2 := readMap(t, out2)
	for name := range generators {
		if got[name] == got2[name] {
			t.Errorf("%s is the same in two fresh .env files", name)
		}
	}
}

func mustRead(t *testing.T, path string) []envEntry {
	t.Helper()
	kv, err := readEnv(path)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func TestWriteKeepsExistingValuesAndRotatesOnlyNamed(t *testing.T) {
	dir := t.TempDir()
	example := filepath.Join(dir, ".env.example")
	out := filepath.Join(dir, ".env")
	if err := os.WriteFile(example, []byte("XINFERENCE_URL=\nREDIS_AUTH=\nSALT=\nNATS_PASSWORD=\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, []byte("REDIS_AUTH=keepme\nCALLPIPE_IMAGE=registry.example/callpipe:v1\nSALT=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(k string) string {
		if k == "XINFERENCE_URL" {
			return "http://xinference:9997"
		}
		return ""
	}
	sum, err := Write(example, out, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	got := readMap(t, out)
	if got["REDIS_AUTH"] != "keepme" {
		t.Errorf("REDIS_AUTH=%q, want the existing value kept", got["REDIS_AUTH"])
	}
	if got["SALT"] == "" || got["NATS_PASSWORD"] == "" {
		t.Errorf("empty secrets not generated: %v", got)
	}
	if got["XINFERENCE_URL"] != "http://xinference:9997" {
		t.Errorf("XINFERENCE_URL=%q, want it from the environment", got["XINFERENCE_URL"])
	}
	if got["CALLPIPE_IMAGE"] != "registry.example/callpipe:v1" {
		t.Errorf("a variable not in the example was dropped: %v", got)
	}
	if len(sum.Generated) != 2 || len(sum.Missing) != 0 {
		t.Errorf("summary %+v", sum)
	}

	salt := got["SALT"]
	sum, err = Write(example, out, []string{"REDIS_AUTH"}, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	again := readMap(t, out)
	if again["REDIS_AUTH"] == "keepme" || len(again["REDIS_AUTH"]) != 64 {
		t.Errorf("REDIS_AUTH=%q after -rotate, want a new 64-hex value", again["REDIS_AUTH"])
	}
	if again["SALT"] != salt || again["XINFERENCE_URL"] != "http://xinference:9997" {
		t.Errorf("values not named in -rotate changed: %v", again)
	}
	if len(sum.Rotated) != 1 || sum.Rotated[0] != "REDIS_AUTH" || len(sum.Generated) != 0 {
		t.Errorf("summary %+v, want only REDIS_AUTH rotated", sum)
	}
}

func TestWriteRejects(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, ".env")
	cases := map[string]struct {
		example string
		rotate  []string
		want    string
	}{
		"unknown variable":   {"NEW_PASSWORD=\n", nil, "NEW_PASSWORD has no generator"},
		"bad line":           {"not a line\n", nil, "want NAME=value"},
		"duplicate":          {"SALT=\nSALT=\n", nil, "SALT set twice"},
		"rotate unknown":     {"SALT=\n", []string{"NOPE"}, "-rotate NOPE: not a variable"},
		"rotate user config": {"XINFERENCE_URL=\n", []string{"XINFERENCE_URL"}, "not a generated secret"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			example := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
			if err := os.WriteFile(example, []byte(c.example), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Write(example, out, c.rotate, noEnv)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}
