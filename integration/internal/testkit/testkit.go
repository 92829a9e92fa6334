// Package testkit holds what the integration tests repeat around callpipe
// processes: build the binary once, start it with its output kept (and
// logged when the test fails), kill it on cleanup, stop it with SIGTERM,
// wait until it is ready or a condition holds, free ports and random ids.
package testkit

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/internal/fleet"
)

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// Binary builds cmd/callpipe once per test run and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	binaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "callpipe-it")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "callpipe")
		cmd := exec.Command("go", "build", "-o", binaryPath, "./cmd/callpipe")
		cmd.Dir = harness.RepoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			binaryErr = &buildError{out: string(out), err: err}
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string {
	return "go build ./cmd/callpipe: " + e.err.Error() + "\n" + e.out
}

// Proc is a callpipe child process of a test.
type Proc struct {
	Cmd  *exec.Cmd
	Out  *Buffer // stdout and stderr
	name string
	done chan struct{}
	err  error
}

// Start runs `callpipe args...` with the environment env (the test's own
// when nil). Its output is kept in Out and its end logged when the test
// failed; the test's cleanup kills it if it still runs.
func Start(t testing.TB, env []string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Cmd: exec.Command(Binary(t), args...), Out: &Buffer{}, name: strings.Join(args, " "), done: make(chan struct{})}
	p.Cmd.Env = env
	p.Cmd.Stdout, p.Cmd.Stderr = p.Out, p.Out
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.Cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.Cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("callpipe %s output (end):\n%s", p.name, Last(p.Out.String(), 3000))
		}
	})
	return p
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is how the process exited (nil: status 0); valid once Done is closed.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Stop sends SIGTERM and fails the test unless the process exits with
// status 0 within timeout.
func (p *Proc) Stop(t testing.TB, timeout time.Duration) {
	t.Helper()
	if err := p.Terminate(timeout); err != nil {
		t.Fatal(err)
	}
}

// Terminate sends SIGTERM and says what went wrong unless the process exits
// with status 0 within timeout (then it is killed).
func (p *Proc) Terminate(timeout time.Duration) error {
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("callpipe %s exit after SIGTERM: %w\n%s", p.name, p.err, p.Out)
		}
		return nil
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("callpipe %s did not stop within %s of SIGTERM\n%s", p.name, timeout, p.Out)
	}
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() {
	_ = p.Cmd.Process.Kill()
	<-p.done
}

// WaitReady waits until http://listen/readyz answers 200, failing the test
// when the process exits first or timeout passes.
func (p *Proc) WaitReady(t testing.TB, listen string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if ready("http://" + listen + "/readyz") {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("callpipe %s exited at start: %v\n%s", p.name, p.err, p.Out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("callpipe %s not ready after %s:\n%s", p.name, timeout, p.Out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitHealthy waits until url answers 200 (at most 20s).
func WaitHealthy(t testing.TB, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if ready(url) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not healthy after 20s", url)
}

func ready(url string) bool {
	resp, err := http.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// WaitFor polls cond until it is true, failing the test with what and cond's
// last state when timeout passes first.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for poll := 50 * time.Millisecond; time.Now().Before(deadline); poll = min(2*poll, 250*time.Millisecond) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(poll)
	}
	t.Fatalf("timed out after %s waiting for %s (last: %s)", timeout, what, last)
}

// FreeAddr returns a loopback host:port that was free a moment ago and that
// this test process has not handed out before (fleet.FreeListen): the
// kernel offers a closed probe port again, and two processes of one test
// given the same port leave one unable to bind.
func FreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := fleet.FreeListen()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// JetStream connects to the NATS server at url for the test (the
// connection closes at its cleanup) and returns the connection and its
// JetStream context.
func JetStream(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// PipelineJetStream is JetStream with the connection a pipeline process
// makes (ingest.Connect: retried in the background, publishes failing fast
// while disconnected), named after the test unless o names it.
func PipelineJetStream(t testing.TB, o ingest.NATSOptions, opts ...jetstream.JetStreamOpt) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	if o.Name == "" {
		o.Name = t.Name()
	}
	nc, err := ingest.Connect(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// RandomHex is n random bytes in hex: ids that keep concurrent tests (and
// runs against the same services) apart.
func RandomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// Last is the last n bytes of s.
func Last(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Buffer is what a child's output goroutine and the test share.
type Buffer = harness.Buffer
