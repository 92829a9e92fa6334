package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/schema"
)

// TestSettingsHotReload runs `callpipe worker --stages langfuse` configured
// with Langfuse A while calls keep flowing, saves Langfuse B through the
// dashboard API of a running `callpipe serve`, and checks that the worker
// switches within seconds without a restart: once B has a call, A gets no
// more, and every call reaches A or B (none lost). Resetting the settings
// goes back to A, the configuration. A worker with no Langfuse anywhere
// waits unready ("not configured") and stops cleanly.
func TestSettingsHotReload(t *testing.T) {
	settingsStore(t)
	e := newLfEnv(t, langfusetest.Options{}) // A: pk-lf-test / sk-lf-test
	a := e.srv
	b := langfusetest.New(langfusetest.Options{PublicKey: "pk-lf-b", SecretKey: "sk-lf-b-secret-0002", ProjectID: "proj-b", ProjectName: "team-b"})
	defer b.Close()
	_, db := chTestDB(t)
	p := startServe(t, db, "CALLPIPE_NATS_URL="+harness.NATS(t), "CALLPIPE_SERVE_ALLOW_UNAUTHENTICATED_WRITES=true")

	// No Langfuse anywhere: unready, waiting, and SIGTERM still stops it.
	idle := startLangfuseWorker(t, newLfEnv(t, langfusetest.Options{}))
	lfWait(t, 30*time.Second, "not configured on /readyz", func() bool {
		code, body := idle.health()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "langfuse: not configured")
	})
	idle.stop(t)

	w := startLangfuseWorker(t, e, "LANGFUSE_HOST="+a.URL, "LANGFUSE_PUBLIC_KEY=pk-lf-test", "LANGFUSE_SECRET_KEY=sk-lf-test")
	const first = 200
	e.publish(lfCalls(e.run, first), "")
	lfWait(t, 30*time.Second, "first calls at A", func() bool { return len(a.Observations()) == first })
	if code, body := w.health(); code != http.StatusOK {
		t.Fatalf("readyz with A: %d %s", code, body)
	}
	if !strings.Contains(w.Out.String(), "source=\"configuration (file, environment, flags)\"") {
		t.Errorf("the worker log does not say the configuration is in effect:\n%s", w.Out)
	}

	// Calls keep flowing: 10 every 50 ms from here on.
	feed := newCallFeed(t, e, first)
	time.Sleep(300 * time.Millisecond)
	code, v, _ := settingsAPI(t, p.base, "", "PUT", "/api/v1/settings/langfuse",
		fmt.Sprintf(`{"host":%q,"public_key":"pk-lf-b","secret_key":"sk-lf-b-secret-0002"}`, b.URL))
	if code != 200 || v["source"] != "saved" {
		t.Fatalf("PUT B: %d %v", code, v)
	}
	saved := time.Now()
	lfWait(t, 15*time.Second, "calls at B after saving B", func() bool { return len(b.Observations()) > 0 })
	switched := time.Since(saved)
	atA := len(a.Observations())
	t.Logf("B got its first call %s after the save; A holds %d", switched.Round(time.Millisecond), atA)
	time.Sleep(time.Second)
	published := feed.stop()
	lfWait(t, 30*time.Second, "every call at A or B", func() bool { return len(missing(published, a, b)) == 0 })
	e.waitSettled(30 * time.Second)
	if n := len(a.Observations()); n != atA {
		t.Errorf("A got %d calls after B got its first: the old sink kept sending", n-atA)
	}
	if len(b.Observations()) < 20 {
		t.Errorf("B holds only %d calls", len(b.Observations()))
	}
	if code, body := w.health(); code != http.StatusOK {
		t.Errorf("readyz with B: %d %s", code, body)
	}
	if !strings.Contains(w.Out.String(), "source=\"saved (NATS KV callpipe_settings, overrides the configuration)\" host="+b.URL) {
		t.Errorf("the worker log does not say the saved settings are in effect:\n%s", w.Out)
	}
	if strings.Contains(w.Out.String(), "sk-lf-b-secret-0002") || strings.Contains(w.Out.String(), "sk-lf-test") {
		t.Errorf("the worker log shows a secret:\n%s", w.Out)
	}

	// Reset to the configuration: back to A.
	if code, v, _ := settingsAPI(t, p.base, "", "DELETE", "/api/v1/settings/langfuse", ""); code != 200 || v["source"] != "config" {
		t.Fatalf("DELETE: %d %v", code, v)
	}
	atB := len(b.Observations())
	more := make([]schema.Call, 50)
	for i := range more {
		more[i] = lfCall(e.run, 100000+i)
	}
	// The third sink (A, B, A) runs once the worker saw the reset.
	lfWait(t, 15*time.Second, "the worker back at A after the reset", func() bool {
		n := 0
		for _, line := range strings.Split(w.Out.String(), "\n") {
			if strings.Contains(line, `msg="langfuse stage running"`) && strings.Contains(line, "host="+a.URL+" source=config") {
				n++
			}
		}
		return n == 2
	})
	e.publish(more, "")
	lfWait(t, 30*time.Second, "calls after the reset at A", func() bool { return len(missing(more, a, b)) == 0 })
	e.waitSettled(30 * time.Second)
	if n := len(b.Observations()); n != atB {
		t.Errorf("B got %d calls after the reset", n-atB)
	}
	w.stop(t)
	p.stop(t)
}

// missing are the calls neither server holds.
func missing(calls []schema.Call, servers ...*langfusetest.Server) []string {
	held := map[string]bool{}
	for _, s := range servers {
		for id := range s.Observations() {
			held[id] = true
		}
	}
	var out []string
	for _, c := range calls {
		if !held[c.ID] {
			out = append(out, c.ID)
		}
	}
	return out
}

// callFeed publishes 10 calls every 50 ms on the run's subject until stop.
type callFeed struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	calls  []schema.Call
	err    error
	t      *testing.T
}

func newCallFeed(t *testing.T, e *lfEnv, from int) *callFeed {
	ctx, cancel := context.WithCancel(context.Background())
	f := &callFeed{cancel: cancel, done: make(chan struct{}), t: t}
	go func() {
		defer close(f.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := from; ; {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for range 10 {
				c := lfCall(e.run, i)
				i++
				data, _ := json.Marshal(&c)
				m := &nats.Msg{Subject: e.subject + "." + c.Kind, Data: data, Header: nats.Header{}}
				m.Header.Set(jetstream.MsgIDHeader, c.ID)
				pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := e.js.PublishMsg(pctx, m)
				pcancel()
				f.mu.Lock()
				if err != nil && f.err == nil {
					f.err = fmt.Errorf("publish %s: %w", c.ID, err)
				}
				if err == nil {
					f.calls = append(f.calls, c)
				}
				f.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { f.stop() })
	return f
}

// stop ends the feed and returns the calls JetStream stored.
func (f *callFeed) stop() []schema.Call {
	f.cancel()
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		f.t.Errorf("call feed: %v", f.err)
		f.err = nil
	}
	return f.calls
}
