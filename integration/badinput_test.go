package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/internal/badinput"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/tools/workload"
)

// peakRSSMB is a running process's peak resident set (VmHWM).
func peakRSSMB(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/status: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}

// TestCollectorBadInputCorpus sends every malformed request of the corpus to
// the collector binary: each gets the right status and an error naming the
// field or reason; valid events in the same request are stored; the process
// neither crashes nor grows (bombs included); a slow-loris body is cut off.
func TestCollectorBadInputCorpus(t *testing.T) {
	s := newCallStream(t)
	addr := testkit.FreeAddr(t)
	p := testkit.Start(t, append(os.Environ(), "CALLPIPE_NATS_URL="+harness.NATS(t), "CALLPIPE_COLLECT_READ_TIMEOUT=2s"),
		"collect", "--listen", addr, "--log.format=text")
	testkit.WaitHealthy(t, "http://"+addr+"/readyz")
	url := "http://" + addr

	cases := badinput.Cases(runID + "-bad")
	if len(cases) < 50 {
		t.Fatalf("corpus has %d cases, want at least 50", len(cases))
	}
	var wantIDs []string
	for _, c := range cases {
		status, r, _ := post(t, url, c.ContentType, c.ContentEncoding, c.Body)
		if status != c.Status {
			t.Errorf("%s: status %d, want %d (reply %+v)", c.Name, status, c.Status, r)
			continue
		}
		msgs := r.Error
		for _, rej := range r.Rejected {
			msgs += " | " + rej.Error
		}
		if msgs == "" {
			t.Errorf("%s: %d without any error message", c.Name, status)
		}
		if !strings.Contains(msgs, c.WantError) {
			t.Errorf("%s: errors %q do not mention %q", c.Name, msgs, c.WantError)
		}
		if r.Accepted != len(c.ValidIDs) {
			t.Errorf("%s: accepted %d, want %d", c.Name, r.Accepted, len(c.ValidIDs))
		}
		wantIDs = append(wantIDs, c.ValidIDs...)
	}

	// Slow loris: a body that never completes is answered 408 after
	// collect.read_timeout, and the collector keeps serving others meanwhile.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/events HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"id\":", addr)
	if status, _, _ := post(t, url, "application/json", "", []byte(badinput.Valid(runID+"-during-loris"))); status != 202 {
		t.Errorf("valid request during a slow-loris body: %d", status)
	}
	wantIDs = append(wantIDs, runID+"-during-loris")
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("slow-loris connection: no answer within 10s: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "not received within") {
		t.Errorf("slow-loris body: %d %s, want 408 naming the timeout", resp.StatusCode, body)
	}

	events, counts := s.events(t)
	for _, id := range wantIDs {
		if counts[id] != 1 {
			t.Errorf("valid event %s stored %d times, want 1", id, counts[id])
		}
	}
	if len(events) != len(wantIDs) {
		t.Errorf("stream holds %d new events, want exactly the %d valid ones", len(events), len(wantIDs))
	}
	if rss := peakRSSMB(t, p.Cmd.Process.Pid); rss > 256 {
		t.Errorf("collector peak RSS %.0f MB after the corpus (bombs included), want <= 256", rss)
	}
	select {
	case <-p.Done():
		t.Fatalf("collector exited: %v", p.Err())
	default:
	}
}

// TestProxyBadInputCorpus sends the corpus's bodies through the proxy binary
// to a synthetic Xinference: the proxy answers exactly what the upstream
// answers, stays up, and every event it publishes is a valid schema v1 event.
func TestProxyBadInputCorpus(t *testing.T) {
	s := newCallStream(t)
	fixed := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	up := httptest.NewServer(&workload.Upstream{Models: workload.DefaultModels(), Now: func() time.Time { return fixed }})
	defer up.Close()
	addr := testkit.FreeAddr(t)
	p := testkit.Start(t, append(os.Environ(), "CALLPIPE_NATS_URL="+harness.NATS(t), "CALLPIPE_PROXY_SPOOL_DIR="+t.TempDir()),
		"proxy", "--listen", addr, "--proxy.upstream", up.URL, "--log.format=text")
	testkit.WaitHealthy(t, "http://"+addr+"/readyz")

	sent := 0
	for _, c := range badinput.Cases(runID + "-proxybad") {
		if c.ContentEncoding != "" || len(c.Body) > 2<<20 {
			continue // bombs and oversized bodies are the collector's; the proxy streams them through
		}
		for _, path := range []string{"/v1/chat/completions", "/v1/embeddings"} {
			direct := do(t, up.URL+path, c.ContentType, c.Body)
			proxied := do(t, "http://"+addr+path, c.ContentType, c.Body)
			if proxied.status != direct.status || !bytes.Equal(proxied.body, direct.body) {
				t.Errorf("%s %s: proxy answered %d %q, upstream %d %q", c.Name, path, proxied.status, proxied.body, direct.status, direct.body)
			}
			sent++
		}
	}
	testkit.WaitFor(t, 30*time.Second, fmt.Sprintf("%d events from the proxy", sent), func() (bool, string) {
		evs, _, err := s.tryEvents()
		if err != nil {
			return false, err.Error()
		}
		return len(evs) >= sent, fmt.Sprintf("%d events", len(evs))
	})
	st, err := s.js.Stream(t.Context(), "CALLPIPE_CALLS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for seq := s.start + 1; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := schema.Decode(m.Data, schema.DefaultLimits()); err != nil {
			t.Errorf("proxy published an invalid event at seq %d: %v\n%.300s", seq, err, m.Data)
		}
	}
	if rss := peakRSSMB(t, p.Cmd.Process.Pid); rss > 256 {
		t.Errorf("proxy peak RSS %.0f MB, want <= 256", rss)
	}
}

type answer struct {
	status int
	body   []byte
}

func do(t *testing.T, url, contentType string, body []byte) answer {
	t.Helper()
	resp, err := http.Post(url, contentType, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, b}
}
