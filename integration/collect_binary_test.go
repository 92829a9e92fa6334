package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// TestCollectBinaryGracefulShutdown runs `callpipe collect`, keeps clients
// posting, sends SIGTERM, and checks that every event answered 202 is in the
// stream exactly once and that the process exits 0.
func TestCollectBinaryGracefulShutdown(t *testing.T) {
	s := newCallStream(t)
	addr := testkit.FreeAddr(t)
	cmd := exec.Command(testkit.Binary(t), "collect", "--listen", addr, "--log.format=text")
	cmd.Env = append(os.Environ(), "CALLPIPE_NATS_URL="+harness.NATS(t))
	var stderr testkit.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	testkit.WaitHealthy(t, "http://"+addr+"/readyz")

	var (
		mu       sync.Mutex
		accepted []string
		wg       sync.WaitGroup
		stop     = make(chan struct{})
	)
	for c := 0; c < 4; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var body strings.Builder
				var ids []string
				for j := 0; j < 50; j++ {
					id := fmt.Sprintf("%s-sigterm-%d-%d-%d", runID, c, i, j)
					ids = append(ids, id)
					body.WriteString(eventJSON(id, "") + "\n")
				}
				resp, err := http.Post("http://"+addr+"/v1/events", "application/x-ndjson", strings.NewReader(body.String()))
				if err != nil {
					return // the server has stopped listening
				}
				var r reply
				_ = json.NewDecoder(resp.Body).Decode(&r)
				resp.Body.Close()
				if resp.StatusCode == http.StatusAccepted {
					if r.Accepted != len(ids) {
						t.Errorf("accepted %d of %d", r.Accepted, len(ids))
					}
					mu.Lock()
					accepted = append(accepted, ids...)
					mu.Unlock()
				}
			}
		}(c)
	}
	time.Sleep(700 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("collect exited with %v:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("collect did not exit after SIGTERM:\n%s", stderr.String())
	}
	close(stop)
	wg.Wait()
	if len(accepted) == 0 {
		t.Fatal("no batch was accepted before SIGTERM")
	}
	_, counts := s.events(t)
	for _, id := range accepted {
		if counts[id] != 1 {
			t.Fatalf("%s answered 202 but stored %d times", id, counts[id])
		}
	}
	t.Logf("%d events answered 202 before shutdown, all stored once", len(accepted))
}

// TestCollectBinaryWaitsForNATS starts `callpipe collect` while its NATS
// server is down: the collector waits for JetStream (logging each retry)
// instead of exiting, and accepts events once the server is up. Against the
// same server with a stream configuration JetStream refuses (3 replicas on a
// single server), it exits at once with the stream and the reason.
func TestCollectBinaryWaitsForNATS(t *testing.T) {
	ns := harness.StartNATSServer(t)
	ns.Stop(t)
	addr := testkit.FreeAddr(t)
	cmd := exec.Command(testkit.Binary(t), "collect", "--listen", addr, "--log.format=text")
	cmd.Env = append(os.Environ(), "CALLPIPE_NATS_URL="+ns.URL)
	var stderr testkit.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	early := testkit.Start(t, append(os.Environ(), "CALLPIPE_NATS_URL="+ns.URL), "collect", "--listen", testkit.FreeAddr(t))

	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(stderr.String(), "jetstream streams not ready; retrying") < 2 {
		select {
		case err := <-exited:
			t.Fatalf("collect exited while NATS was down (%v):\n%s", err, stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("collect logged no second provisioning retry in 20s:\n%s", stderr.String())
		}
	}
	// A collector stopped while it waits exits cleanly.
	testkit.WaitFor(t, 30*time.Second, "the second collector waits for JetStream", func() (bool, string) {
		return strings.Contains(early.Out.String(), "jetstream streams not ready; retrying"), early.Out.String()
	})
	early.Stop(t, 10*time.Second)

	ns.Start(t)
	testkit.WaitHealthy(t, "http://"+addr+"/readyz")
	id := runID + "-after-nats"
	resp, err := http.Post("http://"+addr+"/v1/events", "application/x-ndjson", strings.NewReader(eventJSON(id, "")+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST after NATS came up: %s", resp.Status)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("collect exited with %v:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("collect did not exit after SIGTERM:\n%s", stderr.String())
	}
	_, js := testkit.JetStream(t, ns.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, bus.CallsStream)
	if err != nil {
		t.Fatalf("stream after collect provisioned it: %v", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("%s holds %d messages, want the one event accepted after NATS came up", bus.CallsStream, info.State.Msgs)
	}

	refused := exec.Command(testkit.Binary(t), "collect", "--listen", testkit.FreeAddr(t), "--log.format=text")
	refused.Env = append(os.Environ(), "CALLPIPE_NATS_URL="+ns.URL, "CALLPIPE_NATS_STREAM_REPLICAS=3")
	start := time.Now()
	out, err := refused.CombinedOutput()
	if err == nil {
		t.Fatalf("collect with 3 replicas on a single server did not fail:\n%s", out)
	}
	if !strings.Contains(string(out), "provision stream "+bus.CallsStream) || strings.Contains(string(out), "not ready; retrying") {
		t.Fatalf("collect with a refused stream config: want the stream named and no retry, got:\n%s", out)
	}
	t.Logf("refused config: exit after %s:\n%s", time.Since(start).Round(time.Millisecond), out)
}
