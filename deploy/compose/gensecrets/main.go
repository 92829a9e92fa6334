// Command gensecrets writes deploy/compose/.env: every variable listed in
// .env.example gets a fresh random value (from crypto/rand) unless .env
// already holds one, so running it again never changes a running stack's
// secrets; -rotate names the ones to replace. Values are never printed.
//
//	go run ./deploy/compose/gensecrets [-example deploy/compose/.env.example] [-out deploy/compose/.env] [-rotate NAME,...]
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// generators knows how every secret of the stack is made. A variable in
// .env.example that is neither here nor in userSupplied is an error, so a new
// secret cannot slip into the compose file without a generator.
var generators = map[string]func() (string, error){
	"NATS_PASSWORD":                    hexBytes(32),
	"POSTGRES_PASSWORD":                hexBytes(32),
	"CLICKHOUSE_PASSWORD":              hexBytes(32),
	"MINIO_ROOT_USER":                  prefixed("callpipe-", hexBytes(8)),
	"MINIO_ROOT_PASSWORD":              hexBytes(32),
	"REDIS_AUTH":                       hexBytes(32),
	"NEXTAUTH_SECRET":                  hexBytes(32),
	"SALT":                             hexBytes(32),
	"ENCRYPTION_KEY":                   hexBytes(32), // Langfuse wants exactly 64 hex digits (256 bits)
	"LANGFUSE_INIT_PROJECT_PUBLIC_KEY": prefixed("pk-lf-", uuid4),
	"LANGFUSE_INIT_PROJECT_SECRET_KEY": prefixed("sk-lf-", uuid4),
	"LANGFUSE_INIT_USER_PASSWORD":      hexBytes(16),
	"COLLECT_TOKEN":                    hexBytes(32),
	"SERVE_ADMIN_TOKEN":                hexBytes(32),
	"SERVE_READ_TOKEN":                 hexBytes(32),
	"CALLPIPE_CLICKHOUSE_PASSWORD":     hexBytes(32),
	"CALLPIPE_S3_ACCESS_KEY":           prefixed("callpipe-", hexBytes(8)),
	"CALLPIPE_S3_SECRET_KEY":           hexBytes(32),
	"CALLPIPE_REDIS_PASSWORD":          hexBytes(32),
	"CALLPIPE_SETTINGS_KEY":            base64Bytes(32),                            // langfuse.settings_key: 32 bytes
	"NATS_JETSTREAM_KEY":               hexBytes(32),                               // JetStream store encryption key
	"MINIO_KMS_SECRET_KEY":             prefixed("callpipe-kms:", base64Bytes(32)), // MinIO's NAME:base64(32 bytes)
}

// userSupplied are settings only the user knows; they are taken from the
// environment when set there, else left for the user to fill in.
var userSupplied = map[string]bool{"XINFERENCE_URL": true}

func main() {
	example := flag.String("example", "deploy/compose/.env.example", "the list of variables (values ignored)")
	out := flag.String("out", "deploy/compose/.env", "the file to write (mode 0600)")
	rotate := flag.String("rotate", "", "comma-separated variables to replace with new random values")
	flag.Parse()
	var names []string
	for _, n := range strings.Split(*rotate, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	sum, err := Write(*example, *out, names, os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gensecrets:", err)
		os.Exit(1)
	}
	fmt.Printf("gensecrets: wrote %s (mode 0600): %d generated, %d rotated, %d kept\n", *out, len(sum.Generated), len(sum.Rotated), len(sum.Kept))
	for _, n := range sum.Missing {
		fmt.Printf("gensecrets: %s is empty: set it in %s before `docker compose up`\n", n, *out)
	}
}

// Summary says what Write did, by variable name.
type Summary struct {
	Generated, Rotated, Kept, Missing []string
}

var nameRE = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)

// Write creates or completes out from the variables of example. Existing
// non-empty values are kept unless named in rotate; variables in out that
// example does not list are kept at the end.
func Write(example, out string, rotate []string, getenv func(string) string) (Summary, error) {
	var sum Summary
	want, err := readEnv(example)
	if err != nil {
		return sum, err
	}
	have := map[string]string{}
	var haveOrder []string
	if _, err := os.Stat(out); err == nil {
		kv, err := readEnv(out)
		if err != nil {
			return sum, err
		}
		for _, e := range kv {
			have[e.name] = e.value
			haveOrder = append(haveOrder, e.name)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return sum, err
	}
	listed := map[string]bool{}
	for _, e := range want {
		listed[e.name] = true
	}
	rot := map[string]bool{}
	for _, n := range rotate {
		if !listed[n] {
			return sum, fmt.Errorf("-rotate %s: not a variable of %s", n, example)
		}
		if generators[n] == nil {
			return sum, fmt.Errorf("-rotate %s: not a generated secret", n)
		}
		rot[n] = true
	}

	var b strings.Builder
	b.WriteString("# Written by `go tool task secrets` (deploy/compose/gensecrets). Keep it private; never commit it.\n")
	for _, e := range want {
		gen, isSecret := generators[e.name]
		v, had := have[e.name]
		switch {
		case isSecret && (rot[e.name] || v == ""):
			nv, err := gen()
			if err != nil {
				return sum, fmt.Errorf("generate %s: %w", e.name, err)
			}
			if rot[e.name] && v != "" {
				sum.Rotated = append(sum.Rotated, e.name)
			} else {
				sum.Generated = append(sum.Generated, e.name)
			}
			v = nv
		case isSecret:
			sum.Kept = append(sum.Kept, e.name)
		case userSupplied[e.name]:
			if v == "" {
				v = getenv(e.name)
			}
			if v == "" {
				sum.Missing = append(sum.Missing, e.name)
			} else if had {
				sum.Kept = append(sum.Kept, e.name)
			}
		default:
			return sum, fmt.Errorf("%s: %s has no generator (add one to deploy/compose/gensecrets or mark it user-supplied)", example, e.name)
		}
		fmt.Fprintf(&b, "%s=%s\n", e.name, v)
	}
	var extra []string
	for _, n := range haveOrder {
		if !listed[n] {
			extra = append(extra, n)
		}
	}
	sort.Strings(extra)
	for _, n := range extra {
		fmt.Fprintf(&b, "%s=%s\n", n, have[n])
		sum.Kept = append(sum.Kept, n)
	}
	return sum, writeFile(out, b.String())
}

type envEntry struct{ name, value string }

// readEnv reads NAME=value lines; blank lines and # comments are skipped.
func readEnv(path string) ([]envEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []envEntry
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		t := strings.TrimSpace(sc.Text())
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		name, value, ok := strings.Cut(t, "=")
		if !ok || !nameRE.MatchString(name) {
			return nil, fmt.Errorf("%s:%d: want NAME=value, got %q", path, line, t)
		}
		if seen[name] {
			return nil, fmt.Errorf("%s:%d: %s set twice", path, line, name)
		}
		seen[name] = true
		out = append(out, envEntry{name, value})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
}

// writeFile replaces path atomically, readable by its owner only.
func writeFile(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".env-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := io.WriteString(tmp, content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func hexBytes(n int) func() (string, error) {
	return func() (string, error) {
		b := make([]byte, n)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		return hex.EncodeToString(b), nil
	}
}

func base64Bytes(n int) func() (string, error) {
	return func() (string, error) {
		b := make([]byte, n)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		return base64.StdEncoding.EncodeToString(b), nil
	}
}

func prefixed(p string, gen func() (string, error)) func() (string, error) {
	return func() (string, error) {
		v, err := gen()
		return p + v, err
	}
}

// uuid4 is a random RFC 4122 version 4 UUID, the shape of Langfuse's keys.
func uuid4() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32], nil
}
