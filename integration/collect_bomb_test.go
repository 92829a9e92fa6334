package integration

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// TestCollectGzipBombBounded posts to a real `callpipe collect` an ~8 KB
// gzip body that inflates to 8 MiB of `{}` lines (2.8 million invalid
// events) with one valid event before and one after. The answer lists
// 1,000 rejections and counts the rest, both valid events are stored, and
// the process's peak RSS stays far below what listing every rejection cost
// (1.57 GB RSS and a 278 MB answer, measured before the bound). A body that
// inflates past collect.max_body_bytes is 413 naming that key.
func TestCollectGzipBombBounded(t *testing.T) {
	s := newCallStream(t)
	addr := testkit.FreeAddr(t)
	p := testkit.Start(t, append(os.Environ(), "CALLPIPE_NATS_URL="+harness.NATS(t)), "collect", "--listen", addr, "--log.format=text")
	p.WaitReady(t, addr, 30*time.Second)
	url := "http://" + addr + "/v1/events"

	const limit = 8 << 20 // collect.max_body_bytes default
	first, last := runID+"-bomb-first", runID+"-bomb-last"
	head, tail := eventJSON(first, "")+"\n", eventJSON(last, "")+"\n"
	n := (limit - len(head) - len(tail)) / 3
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	zw.Write([]byte(head))
	zw.Write(bytes.Repeat([]byte("{}\n"), n))
	zw.Write([]byte(tail))
	zw.Close()
	t.Logf("gzip body %d bytes, %d bytes inflated, %d invalid events", gz.Len(), len(head)+3*n+len(tail), n)

	rssBefore := vmKB(t, p.Cmd.Process.Pid, "VmRSS")
	start := time.Now()
	code, body := postRaw(t, url, gz.Bytes())
	t.Logf("answer %d, %d bytes in %s; RSS before %d kB", code, len(body), time.Since(start).Round(time.Millisecond), rssBefore)
	if len(body) > 256<<10 {
		t.Fatalf("answer of %d bytes", len(body))
	}
	t.Logf("peak RSS after the bomb %d kB", vmKB(t, p.Cmd.Process.Pid, "VmHWM"))
	var r struct {
		reply
		Omitted *int `json:"rejections_omitted"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("%d %s: %v", code, testkit.Last(string(body), 300), err)
	}
	if code != http.StatusAccepted || r.Accepted != 2 || len(r.Rejected) != 1000 || r.Omitted == nil || *r.Omitted != n-1000 {
		t.Fatalf("answer %d: accepted %d, %d rejections listed, omitted %v (want 202, 2, 1000, %d)", code, r.Accepted, len(r.Rejected), r.Omitted, n-1000)
	}
	if r.Rejected[0].Index != 1 || r.Rejected[999].Index != 1000 {
		t.Errorf("rejections listed from index %d to %d, want 1 to 1000", r.Rejected[0].Index, r.Rejected[999].Index)
	}
	byID, _ := s.events(t)
	if byID[first] == nil || byID[last] == nil {
		t.Errorf("valid events around the bomb not stored: first %v, last %v", byID[first] != nil, byID[last] != nil)
	}

	// Inflating past the limit: 413, naming the limit and its key.
	gz.Reset()
	zw.Reset(&gz)
	zw.Write(bytes.Repeat([]byte("{}\n"), limit/3+1))
	zw.Close()
	code, body = postRaw(t, url, gz.Bytes())
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "collect.max_body_bytes") || !strings.Contains(string(body), strconv.Itoa(limit)) {
		t.Errorf("over the limit: %d %s", code, body)
	}

	peak := vmKB(t, p.Cmd.Process.Pid, "VmHWM")
	t.Logf("peak RSS (VmHWM) %d kB", peak)
	if peak > 150<<10 {
		t.Errorf("peak RSS %d kB, want under 150 MB", peak)
	}
}

func postRaw(t *testing.T, url string, gzBody []byte) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(gzBody))
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Content-Encoding", "gzip")
	client := &http.Client{Timeout: 2 * time.Minute}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// vmKB reads a kB field (VmRSS, VmHWM) of /proc/<pid>/status.
func vmKB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
