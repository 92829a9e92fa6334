package integration

import (
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// lfWorker is one `callpipe worker --stages langfuse` process.
type lfWorker struct {
	*testkit.Proc
	listen string
}

func (e *lfEnv) startWorker(t *testing.T) *lfWorker {
	t.Helper()
	listen := testkit.FreeAddr(t)
	return &lfWorker{listen: listen, Proc: testkit.Start(t, append(os.Environ(),
		"LANGFUSE_HOST="+e.srv.URL, "LANGFUSE_PUBLIC_KEY=pk-lf-test", "LANGFUSE_SECRET_KEY=sk-lf-test",
		"CALLPIPE_NATS_URL="+harness.NATS(t),
		"CALLPIPE_LANGFUSE_CONSUMER="+e.consumer, "CALLPIPE_LANGFUSE_SUBJECT="+e.subject+".>",
		"CALLPIPE_LANGFUSE_ENVIRONMENT=it", "CALLPIPE_LANGFUSE_BATCH_CALLS=200",
		"CALLPIPE_LANGFUSE_MIN_BACKOFF=20ms", "CALLPIPE_LANGFUSE_MAX_BACKOFF=200ms", "CALLPIPE_LANGFUSE_RETRY_DELAY=500ms",
		"CALLPIPE_LOG_LEVEL=warn",
	), "worker", "--stages", "langfuse", "--listen", listen)}
}

func (w *lfWorker) health() (int, string) {
	resp, err := http.Get("http://" + w.listen + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestLangfuseWorkerBinary runs `callpipe worker --stages langfuse`: /readyz
// turns 503 while Langfuse refuses the keys and 200 after; SIGTERM stops it
// with status 0 and every acknowledged call stored; a restart delivers the rest.
func TestLangfuseWorkerBinary(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{SecretKey: "rotated"})
	const n = 3000
	calls := lfCalls(e.run, n)
	e.publish(calls, "")
	w := e.startWorker(t)
	lfWait(t, 30*time.Second, "503 on /readyz while refused", func() bool {
		st, body := w.health()
		return st == http.StatusServiceUnavailable && strings.Contains(body, "langfuse")
	})
	// The stage may report 503 before it has created its consumer.
	lfWait(t, 30*time.Second, "consumer created", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := e.js.Consumer(ctx, bus.NormalizedStream, e.consumer)
		return err == nil
	})
	if u, _ := e.consumerState(); u != n {
		t.Fatalf("%d unsettled during 401, want %d", u, n)
	}
	e.srv.SetCredentials("pk-lf-test", "sk-lf-test")
	e.srv.SetFailureRate(0.5, langfusetest.Fault{Status: 503})
	lfWait(t, 30*time.Second, "some accepted", func() bool { return len(e.srv.Observations()) > 300 })
	if st, body := w.health(); st != http.StatusOK {
		t.Fatalf("readyz %d %s after the keys were fixed", st, body)
	}
	w.Stop(t, 45*time.Second)
	stored := len(e.srv.Observations())
	unsettled, _ := e.consumerState()
	if acked := n - int(unsettled); acked > stored {
		t.Fatalf("%d calls acknowledged but %d stored", acked, stored)
	}
	t.Logf("after SIGTERM: %d stored, %d unsettled", stored, unsettled)
	e.srv.SetFailureRate(0)
	e.startWorker(t)
	lfWait(t, time.Minute, "rest delivered", func() bool { return len(e.srv.Observations()) == n })
	e.waitSettled(30 * time.Second)
	lfCheckStored(t, e.srv, calls)
}
