package integration

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// fakeXinference answers chat completions like Xinference: JSON with usage,
// or an SSE stream whose last chunk carries usage when include_usage is set.
func fakeXinference(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !strings.Contains(string(body), `"stream":true`) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"id":"chatcmpl-1","object":"chat.completion","created":1764150000,"model":"qwen2.5-instruct",`+
				`"choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],`+
				`"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		for _, tok := range []string{"Hel", "lo"} {
			fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"qwen2.5-instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%q},\"finish_reason\":null}]}\r\n\r\n", tok)
			fl.Flush()
			time.Sleep(20 * time.Millisecond)
		}
		fmt.Fprint(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"qwen2.5-instruct\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\r\n\r\n")
		if strings.Contains(string(body), `"include_usage":true`) {
			fmt.Fprint(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"qwen2.5-instruct\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\r\n\r\n")
		}
		fmt.Fprint(w, "data: [DONE]\r\n\r\n")
	}))
	t.Cleanup(srv.Close)
	return srv
}

func chatCall(t *testing.T, base string, stream bool, user string) (string, []byte) {
	t.Helper()
	body := fmt.Sprintf(`{"model":"qwen2.5-instruct","user":%q,"stream":%v,"messages":[{"role":"user","content":"hi"}]}`, user, stream)
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer xf-testkeytestkeytestkey")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("call: status %d err %v", resp.StatusCode, err)
	}
	id := resp.Header.Get("X-Callpipe-Event-Id")
	if id == "" {
		t.Fatal("no X-Callpipe-Event-Id")
	}
	return id, out
}

// TestProxyBinaryCapturesAndSpoolsThroughNATSOutage runs `callpipe proxy`
// against a fake Xinference and real NATS: answers pass through unchanged,
// each call becomes one event, and calls made while NATS is down succeed and
// their events arrive once NATS is back.
func TestProxyBinaryCapturesAndSpoolsThroughNATSOutage(t *testing.T) {
	s := newCallStream(t)
	up := fakeXinference(t)
	addr := testkit.FreeAddr(t)
	cmd := exec.Command(testkit.Binary(t), "proxy", "--listen", addr, "--upstream", up.URL, "--log.format=text",
		"--proxy.spool_dir", filepath.Join(t.TempDir(), "spool"))
	cmd.Env = append(os.Environ(), "CALLPIPE_NATS_URL="+harness.NATS(t))
	var stderr testkit.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	testkit.WaitHealthy(t, "http://"+addr+"/readyz")
	base := "http://" + addr

	direct := func(stream bool) []byte {
		body := fmt.Sprintf(`{"model":"qwen2.5-instruct","stream":%v,"messages":[{"role":"user","content":"hi"}]}`, stream)
		resp, err := http.Post(up.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return b
	}
	wantPlain, wantStream := direct(false), direct(true)

	var online []string
	for i := 0; i < 4; i++ {
		id, got := chatCall(t, base, i%2 == 1, "alice")
		want := wantPlain
		if i%2 == 1 {
			want = wantStream
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("call %d: client got\n%q\nupstream sends\n%q", i, got, want)
		}
		online = append(online, id)
	}
	waitForIDs(t, s, online, 15*time.Second)
	byID, _ := s.events(t)
	streamed := byID[online[1]]
	if streamed.Usage == nil || streamed.Usage.TotalTokens == nil || *streamed.Usage.TotalTokens != 11 {
		t.Errorf("streamed call usage = %+v, want the hidden include_usage chunk's 11 tokens", streamed.Usage)
	}
	if streamed.FirstTokenTime == nil || streamed.EndTime == nil || streamed.FirstTokenTime.Before(streamed.StartTime) || streamed.EndTime.Before(*streamed.FirstTokenTime) {
		t.Errorf("timings out of order: %+v", streamed)
	}
	if byID[online[0]].User != "alice" || byID[online[0]].APIKeyPrefix != "xf-test" || byID[online[0]].APIKey != "" {
		t.Errorf("user/key capture wrong: %+v", byID[online[0]])
	}

	harness.StopService(t, "nats")
	var offline []string
	for i := 0; i < 4; i++ {
		id, _ := chatCall(t, base, i%2 == 0, "bob")
		offline = append(offline, id)
	}
	harness.StartService(t, "nats")
	waitForIDs(t, s, offline, 60*time.Second)

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("proxy exit: %v\n%s", err, stderr.String())
	}
	_, counts := s.events(t)
	for _, id := range append(online, offline...) {
		if counts[id] != 1 {
			t.Errorf("%s stored %d times", id, counts[id])
		}
	}
}

// waitForIDs waits until every id is in the stream.
func waitForIDs(t *testing.T, s *callStream, ids []string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		_, counts, err := s.tryEvents()
		if err != nil {
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(250 * time.Millisecond)
			continue
		}
		missing := 0
		for _, id := range ids {
			if counts[id] == 0 {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events not in the stream after %v", missing, len(ids), within)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
