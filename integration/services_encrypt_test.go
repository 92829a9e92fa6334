package integration

import (
	"bytes"
	"context"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// TestServicesJetStreamEncrypted starts only NATS of deploy/local/services.sh
// in a state folder of its own, with CALLPIPE_SERVICES_JETSTREAM_ENCRYPT=1:
// a prompt stored in a stream is read back, and none of the store's files
// hold its text; the key is in no configuration file. It stops that NATS
// (and only it) at the end.
func TestServicesJetStreamEncrypted(t *testing.T) {
	script := filepath.Join(harness.RepoRoot(t), "deploy", "local", "services.sh")
	serverBin(t, "nats-server")
	state := t.TempDir()
	// An offset whose NATS ports (14222+, 18222+) are both free now.
	offset := 0
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if o := port - 14222; o > 0 && o+18222 < 65536 {
			if l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(o+18222)); err == nil {
				l2.Close()
				offset = o
				break
			}
		}
	}
	if offset == 0 {
		t.Fatal("no free port pair for NATS")
	}
	env := append(os.Environ(), "CALLPIPE_STATE_DIR="+state, "CALLPIPE_SERVICES_PORT_OFFSET="+strconv.Itoa(offset),
		"CALLPIPE_SERVICES_JETSTREAM_ENCRYPT=1")
	sh := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("bash", append([]string{script}, args...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("services.sh %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	sh("start", "nats")
	t.Cleanup(func() { sh("stop", "nats") })

	conf, err := os.ReadFile(filepath.Join(state, "nats", "nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(state, "nats", "jetstream.key"))
	if err != nil || len(key) != 64 {
		t.Fatalf("jetstream.key: %q %v", key, err)
	}
	if !strings.Contains(string(conf), "cipher: chachapoly") || bytes.Contains(conf, key) {
		t.Fatalf("nats.conf does not encrypt, or holds the key:\n%s", conf)
	}

	_, js := testkit.JetStream(t, "nats://127.0.0.1:"+strconv.Itoa(14222+offset))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "ENC", Subjects: []string{"enc.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	prompt := "my medical question " + testkit.RandomHex(t, 8)
	for range 20 {
		if _, err := js.Publish(ctx, "enc.call", []byte(`{"request":{"messages":[{"content":"`+prompt+`"}]}}`)); err != nil {
			t.Fatal(err)
		}
	}
	m, err := s.GetMsg(ctx, 1)
	if err != nil || !bytes.Contains(m.Data, []byte(prompt)) {
		t.Fatalf("read back: %v", err)
	}
	var files int
	err = filepath.WalkDir(filepath.Join(state, "nats", "jetstream"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		if bytes.Contains(b, []byte(prompt)) || bytes.Contains(b, []byte("medical")) {
			t.Errorf("%s holds the prompt in clear", path)
		}
		return nil
	})
	if err != nil || files == 0 {
		t.Fatalf("store: %d files, %v", files, err)
	}
}
