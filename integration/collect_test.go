package integration

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/ingest/collector"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
)

// callStream connects to the test NATS, provisions CALLPIPE_CALLS and returns
// the stream's last sequence, so a test reads only what it wrote.
type callStream struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	start uint64
}

func newCallStream(t testing.TB) *callStream {
	t.Helper()
	nc, js := testkit.PipelineJetStream(t, ingest.NATSOptions{URL: harness.NATS(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.EnsureCallsStream(ctx, js, bus.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, bus.CallsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &callStream{nc: nc, js: js, start: info.State.LastSeq}
}

// events returns the events stored since the stream was opened, by id, with
// how many times each id was stored.
func (s *callStream) events(t testing.TB) (map[string]*schema.Event, map[string]int) {
	t.Helper()
	byID, counts, err := s.tryEvents()
	if err != nil {
		t.Fatal(err)
	}
	return byID, counts
}

// tryEvents is events for callers that wait out a reconnect.
func (s *callStream) tryEvents() (map[string]*schema.Event, map[string]int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := s.js.Stream(ctx, bus.CallsStream)
	if err != nil {
		return nil, nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, nil, err
	}
	byID, counts := map[string]*schema.Event{}, map[string]int{}
	for seq := s.start + 1; seq <= info.State.LastSeq; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		if err != nil {
			return nil, nil, fmt.Errorf("get seq %d: %w", seq, err)
		}
		var ev schema.Event
		if err := json.Unmarshal(raw.Data, &ev); err != nil {
			return nil, nil, fmt.Errorf("seq %d: %w", seq, err)
		}
		if raw.Header.Get(jetstream.MsgIDHeader) != ev.ID {
			return nil, nil, fmt.Errorf("seq %d: Nats-Msg-Id %q != event id %q", seq, raw.Header.Get(jetstream.MsgIDHeader), ev.ID)
		}
		byID[ev.ID] = &ev
		counts[ev.ID]++
	}
	return byID, counts, nil
}

func newCollector(t testing.TB, s *callStream, o collector.Options) *httptest.Server {
	t.Helper()
	pub, err := ingest.NewPublisher(s.nc, ingest.PublisherOptions{AckTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if o.AckTimeout == 0 {
		o.AckTimeout = 3 * time.Second
	}
	srv := httptest.NewServer(collector.New(pub, o))
	t.Cleanup(srv.Close)
	return srv
}

var runID = fmt.Sprintf("t%d", time.Now().UnixNano())

func eventJSON(id string, extra string) string {
	return fmt.Sprintf(`{"id":%q,"start_time":"2026-11-26T10:00:00.125Z","end_time":"2026-11-26T10:00:01.5+00:00",`+
		`"endpoint":"/v1/chat/completions","model":"qwen2.5-instruct","api_key":"xf-secretsecretsecret",`+
		`"request":{"messages":[{"role":"user","content":"hi"}]},"response":{"choices":[]}%s}`, id, extra)
}

type reply struct {
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	Rejected   []struct {
		Index int    `json:"index"`
		ID    string `json:"id"`
		Error string `json:"error"`
	} `json:"rejected"`
	Error string `json:"error"`
}

func post(t *testing.T, url, contentType, encoding string, body []byte, hdr ...string) (int, reply, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/v1/events", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if encoding != "" {
		req.Header.Set("Content-Encoding", encoding)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var r reply
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("status %d: reply is not JSON: %q", resp.StatusCode, data)
	}
	return resp.StatusCode, r, resp.Header
}

func TestCollectorStoresEventsOnceWithHashedKeys(t *testing.T) {
	s := newCallStream(t)
	srv := newCollector(t, s, collector.Options{})
	id := func(i int) string { return fmt.Sprintf("%s-happy-%d", runID, i) }
	ndjson := eventJSON(id(0), "") + "\n" + eventJSON(id(1), `,"user":"alice"`) + "\r\n\n" + eventJSON(id(2), "") + "\n"

	status, r, _ := post(t, srv.URL, "application/x-ndjson", "", []byte(ndjson))
	if status != http.StatusAccepted || r.Accepted != 3 || r.Duplicates != 0 || len(r.Rejected) != 0 {
		t.Fatalf("status %d reply %+v", status, r)
	}
	// Resend plus an in-request repeat: nothing new is stored.
	status, r, _ = post(t, srv.URL, "application/x-ndjson", "", []byte(ndjson+eventJSON(id(0), "")))
	if status != http.StatusAccepted || r.Accepted != 0 || r.Duplicates != 4 {
		t.Fatalf("resend: status %d reply %+v", status, r)
	}
	byID, counts := s.events(t)
	for i := 0; i < 3; i++ {
		if counts[id(i)] != 1 {
			t.Errorf("%s stored %d times, want 1", id(i), counts[id(i)])
		}
	}
	ev := byID[id(1)]
	if ev == nil {
		t.Fatal("event missing")
	}
	if ev.APIKey != "" || ev.APIKeyHash != schema.HashAPIKey("xf-secretsecretsecret") || ev.APIKeyPrefix != "xf-secr" {
		t.Errorf("api key not redacted: key=%q hash=%q prefix=%q", ev.APIKey, ev.APIKeyHash, ev.APIKeyPrefix)
	}
	if ev.User != "alice" || ev.TraceID != id(1) || ev.Status != 200 || ev.Source != "online" {
		t.Errorf("defaults/fields wrong: %+v", ev)
	}
	if !ev.StartTime.Equal(time.Date(2026, 11, 26, 10, 0, 0, 125e6, time.UTC)) {
		t.Errorf("start_time = %v", ev.StartTime)
	}
}

func TestCollectorMixedBatchAndEncodings(t *testing.T) {
	s := newCallStream(t)
	srv := newCollector(t, s, collector.Options{})
	id := func(i int) string { return fmt.Sprintf("%s-mixed-%d", runID, i) }
	arr := "[" + eventJSON(id(0), "") + `,{"id":"` + id(1) + `","start_time":"yesterday","endpoint":"/v1/embeddings","model":"bge"},` +
		eventJSON(id(2), `,"usage":{"prompt_tokens":-3}`) + "," + eventJSON(id(3), "") + "]"
	status, r, _ := post(t, srv.URL, "application/json", "", []byte(arr))
	if status != http.StatusAccepted || r.Accepted != 2 || len(r.Rejected) != 2 {
		t.Fatalf("status %d reply %+v", status, r)
	}
	if r.Rejected[0].Index != 1 || r.Rejected[0].ID != id(1) || !strings.HasPrefix(r.Rejected[0].Error, "start_time:") {
		t.Errorf("rejection 0 = %+v", r.Rejected[0])
	}
	if r.Rejected[1].Index != 2 || !strings.HasPrefix(r.Rejected[1].Error, "usage.prompt_tokens:") {
		t.Errorf("rejection 1 = %+v", r.Rejected[1])
	}
	_, counts := s.events(t)
	if counts[id(0)] != 1 || counts[id(3)] != 1 || counts[id(1)] != 0 || counts[id(2)] != 0 {
		t.Fatalf("stored = %v", counts)
	}

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(eventJSON(id(4), "")))
	zw.Close()
	if status, r, _ := post(t, srv.URL, "application/json", "gzip", gz.Bytes()); status != 202 || r.Accepted != 1 {
		t.Fatalf("gzip: %d %+v", status, r)
	}
	enc, _ := zstd.NewWriter(nil)
	zbody := enc.EncodeAll([]byte(eventJSON(id(5), "")+"\n"+eventJSON(id(6), "")), nil)
	if status, r, _ := post(t, srv.URL, "application/x-ndjson", "zstd", zbody); status != 202 || r.Accepted != 2 {
		t.Fatalf("zstd: %d %+v", status, r)
	}
	_, counts = s.events(t)
	for _, i := range []int{4, 5, 6} {
		if counts[id(i)] != 1 {
			t.Errorf("%s stored %d times", id(i), counts[id(i)])
		}
	}
}

func TestCollectorRejections(t *testing.T) {
	s := newCallStream(t)
	srv := newCollector(t, s, collector.Options{MaxBodyBytes: 64 << 10})
	authed := newCollector(t, s, collector.Options{Tokens: []string{"tok-1", "tok-2"}})
	good := []byte(eventJSON(runID+"-rej-0", ""))

	if status, r, _ := post(t, srv.URL, "application/json", "", []byte(`{"id":"x"}`)); status != 400 || len(r.Rejected) != 1 || r.Accepted != 0 {
		t.Errorf("nothing valid: %d %+v", status, r)
	}
	if status, r, _ := post(t, srv.URL, "application/json", "", []byte(`[{"id":`)); status != 400 || !strings.Contains(r.Error, "body") {
		t.Errorf("truncated array: %d %+v", status, r)
	}
	big := []byte(strings.Repeat(eventJSON(runID+"-rej-big", "")+"\n", 400))
	if status, _, _ := post(t, srv.URL, "application/x-ndjson", "", big); status != 413 {
		t.Errorf("oversize: %d", status)
	}
	// A gzip bomb: tiny on the wire, over the limit once inflated.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bytes.Repeat([]byte(" "), 10<<20))
	zw.Close()
	if status, _, _ := post(t, srv.URL, "application/json", "gzip", gz.Bytes()); status != 413 {
		t.Errorf("gzip bomb: %d", status)
	}
	if status, _, _ := post(t, srv.URL, "text/plain", "", good); status != 415 {
		t.Errorf("text/plain: %d", status)
	}
	if status, _, h := post(t, authed.URL, "application/json", "", good); status != 401 || h.Get("WWW-Authenticate") == "" {
		t.Errorf("no token: %d", status)
	}
	if status, _, _ := post(t, authed.URL, "application/json", "", good, "Authorization", "Bearer wrong"); status != 401 {
		t.Errorf("bad token: %d", status)
	}
	if status, r, _ := post(t, authed.URL, "application/json", "", good, "Authorization", "Bearer tok-2"); status != 202 || r.Accepted != 1 {
		t.Errorf("good token: %d %+v", status, r)
	}
}

func TestCollectorUnavailableWhileNATSDown(t *testing.T) {
	s := newCallStream(t)
	srv := newCollector(t, s, collector.Options{})
	harness.StopService(t, "nats")
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			harness.StartService(t, "nats")
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for s.nc.IsConnected() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	id := runID + "-outage-0"
	status, r, h := post(t, srv.URL, "application/json", "", []byte(eventJSON(id, "")))
	if status != http.StatusServiceUnavailable || h.Get("Retry-After") == "" || r.Accepted != 0 {
		t.Fatalf("while down: status %d Retry-After %q reply %+v", status, h.Get("Retry-After"), r)
	}
	harness.StartService(t, "nats")
	restarted = true
	deadline = time.Now().Add(15 * time.Second)
	for {
		status, r, _ = post(t, srv.URL, "application/json", "", []byte(eventJSON(id, "")))
		if status == http.StatusAccepted || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if status != http.StatusAccepted || r.Accepted+r.Duplicates != 1 {
		t.Fatalf("after restart: %d %+v", status, r)
	}
	_, counts := s.events(t)
	if counts[id] != 1 {
		t.Fatalf("%s stored %d times after recovery", id, counts[id])
	}
}
