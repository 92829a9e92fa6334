package integration

import (
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
