package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/schema/capture"
)

// fakePub is a Publisher that can be told to fail. Like JetStream it stores
// an id once; like the collector's consumers it requires events that
// validate and survive schema.Decode.
type fakePub struct {
	t        testing.TB
	mu       sync.Mutex
	fail     bool
	attempts int
	count    map[string]int
	events   []*schema.Event
	batches  []int           // sizes of PublishBatch calls
	storedBy []int           // events each PublishBatch call stored
	hold     chan struct{}   // when set, PublishBatch waits until it is closed
	failIDs  map[string]bool // events that fail (not permanently), each once
}

func newFakePub(t testing.TB) *fakePub { return &fakePub{t: t, count: map[string]int{}} }

func (f *fakePub) setFail(v bool) {
	f.mu.Lock()
	f.fail = v
	f.mu.Unlock()
}

func (f *fakePub) PublishBatch(ctx context.Context, evs []*schema.Event, res []ingest.PublishResult) {
	f.mu.Lock()
	f.batches = append(f.batches, len(evs))
	hold := f.hold
	f.mu.Unlock()
	if hold != nil {
		<-hold
	}
	stored := 0
	for i, ev := range evs {
		res[i].Duplicate, res[i].Err = f.Publish(ctx, ev)
		if res[i].Err == nil && !res[i].Duplicate {
			stored++
		}
	}
	f.mu.Lock()
	f.storedBy = append(f.storedBy, stored)
	f.mu.Unlock()
}

func (f *fakePub) Publish(ctx context.Context, ev *schema.Event) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts++
	if f.fail {
		return false, errors.New("nats: no responders available for request")
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if f.failIDs[ev.ID] {
		delete(f.failIDs, ev.ID)
		return false, errors.New("nats: timeout")
	}
	ev.RedactAPIKey()
	if err := ev.Validate(); err != nil {
		f.t.Errorf("published event does not validate: %v", err)
		return false, err
	}
	b, err := json.Marshal(ev)
	if err != nil {
		f.t.Errorf("encode: %v", err)
		return false, err
	}
	dec, err := schema.Decode(b, schema.DefaultLimits())
	if err != nil {
		f.t.Errorf("published event fails schema.Decode: %v\n%s", err, b)
		return false, err
	}
	f.count[ev.ID]++
	if f.count[ev.ID] > 1 {
		return true, nil
	}
	f.events = append(f.events, dec)
	return false, nil
}

func (f *fakePub) snapshot() []*schema.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*schema.Event(nil), f.events...)
}

// wait returns the published events once there are n, failing after 10s.
func (f *fakePub) wait(t testing.TB, n int) []*schema.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if evs := f.snapshot(); len(evs) >= n {
			return evs
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%d events published, want %d", len(f.snapshot()), n)
	return nil
}

// exactly waits for n events and checks that no more come.
func (f *fakePub) exactly(t testing.TB, n int) []*schema.Event {
	t.Helper()
	f.wait(t, n)
	time.Sleep(50 * time.Millisecond)
	evs := f.snapshot()
	if len(evs) != n {
		t.Fatalf("%d events published, want exactly %d", len(evs), n)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, c := range f.count {
		if c != 1 {
			t.Fatalf("event %s published %d times", id, c)
		}
	}
	return evs
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	x    *fakeXinference
	p    *Proxy
	srv  *httptest.Server
	pub  *fakePub
	reg  *prometheus.Registry
	logs *syncBuffer
	opts Options
}

func newEnv(t *testing.T, mod func(*Options)) *env {
	t.Helper()
	e := &env{x: newFakeXinference(t), pub: newFakePub(t), reg: prometheus.NewRegistry(), logs: &syncBuffer{}}
	u, _ := url.Parse(e.x.srv.URL)
	o := DefaultOptions(u)
	o.RetryMin, o.RetryMax = 5*time.Millisecond, 50*time.Millisecond
	o.Registerer = e.reg
	o.Logger = slog.New(slog.NewTextHandler(e.logs, nil))
	if mod != nil {
		mod(&o)
	}
	e.opts = o
	p, err := New(o, e.pub)
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	e.srv = httptest.NewServer(p)
	t.Cleanup(func() {
		e.srv.Close()
		p.Close(context.Background())
		cancel()
		<-done
		e.x.srv.Close()
	})
	return e
}

type result struct {
	status int
	header http.Header
	body   []byte
	id     string
}

func (e *env) do(t testing.TB, method, path, contentType string, body []byte, hdr map[string]string) result {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == nil {
		req.Body = nil
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return result{resp.StatusCode, resp.Header, b, resp.Header.Get(HeaderEventID)}
}

func (e *env) post(t testing.TB, path, body string) result {
	return e.do(t, "POST", path, "application/json", []byte(body), nil)
}

func find(t testing.TB, evs []*schema.Event, id string) *schema.Event {
	t.Helper()
	for _, ev := range evs {
		if ev.ID == id {
			return ev
		}
	}
	t.Fatalf("no event %s among %d", id, len(evs))
	return nil
}

func checkTimes(t testing.TB, ev *schema.Event, wantFirst bool) {
	t.Helper()
	if ev.StartTime.IsZero() || ev.EndTime == nil || ev.EndTime.Before(ev.StartTime) {
		t.Fatalf("times: start %v end %v", ev.StartTime, ev.EndTime)
	}
	if wantFirst != (ev.FirstTokenTime != nil) {
		t.Fatalf("first_token_time = %v, want set: %v", ev.FirstTokenTime, wantFirst)
	}
	if ev.FirstTokenTime != nil && (ev.FirstTokenTime.Before(ev.StartTime) || ev.FirstTokenTime.After(*ev.EndTime)) {
		t.Fatalf("first token %v outside [%v, %v]", ev.FirstTokenTime, ev.StartTime, ev.EndTime)
	}
}

func usage(p, c, tot int64) *schema.Usage {
	return &schema.Usage{PromptTokens: &p, CompletionTokens: &c, TotalTokens: &tot}
}

func usageString(u *schema.Usage) string {
	if u == nil {
		return "nil"
	}
	f := func(p *int64) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprint(*p)
	}
	return f(u.PromptTokens) + "/" + f(u.CompletionTokens) + "/" + f(u.TotalTokens)
}

func jsonEqual(t testing.TB, got json.RawMessage, want string) {
	t.Helper()
	var a, b any
	if err := json.Unmarshal(got, &a); err != nil {
		t.Fatalf("not JSON: %v: %s", err, got)
	}
	json.Unmarshal([]byte(want), &b)
	ga, _ := json.Marshal(a)
	gb, _ := json.Marshal(b)
	if !bytes.Equal(ga, gb) {
		t.Fatalf("JSON differs:\n got %s\nwant %s", ga, gb)
	}
}

const chatReqBody = `{"model":"qwen3-instruct","messages":[{"role":"user","content":"What is the capital of France?"}],"user":"alice@example.com","temperature":0.2}`

func TestChatNonStream(t *testing.T) {
	e := newEnv(t, nil)
	key := "xf-Q2hhbmdlTWVJbW1lZGlhdGVseUFsbFRoZXNlQXJlRmFrZUtleXM"
	r := e.do(t, "POST", "/v1/chat/completions?trace=1", "application/json", []byte(chatReqBody), map[string]string{
		"Authorization":        "Bearer " + key,
		HeaderSessionID:        "sess-42",
		"X-Some-Client-Header": "kept",
	})
	if r.status != 200 || string(r.body) != chatJSON {
		t.Fatalf("client got %d %s", r.status, r.body)
	}
	if r.header.Get("X-Upstream") != "xinference" || r.header.Get("Content-Type") != "application/json" || r.id == "" {
		t.Fatalf("headers: %v", r.header)
	}
	// The upstream got the request unchanged.
	if got := e.x.lastBody("/v1/chat/completions"); string(got) != chatReqBody {
		t.Fatalf("upstream body %s", got)
	}
	h := e.x.lastHeader("/v1/chat/completions")
	if h.Get("Authorization") != "Bearer "+key || h.Get("X-Some-Client-Header") != "kept" || h.Get("X-Forwarded-For") != "" {
		t.Fatalf("upstream headers: %v", h)
	}
	ev := find(t, e.pub.exactly(t, 1), r.id)
	if ev.TraceID != ev.ID || ev.SessionID != "sess-42" || ev.Model != "qwen3-instruct" || ev.User != "alice@example.com" ||
		ev.Endpoint != "/v1/chat/completions" || ev.Status != 200 || ev.Error != "" || ev.Stream || ev.Source != schema.SourceOnline {
		t.Fatalf("event: %+v", ev)
	}
	if ev.APIKey != "" || ev.APIKeyHash != schema.HashAPIKey(key) || ev.APIKeyPrefix != "xf-Q2hh" {
		t.Fatalf("api key: %q %q %q", ev.APIKey, ev.APIKeyHash, ev.APIKeyPrefix)
	}
	// The instance is the model UID the upstream answered with; its address
	// is kept in the proxy's metadata.
	var pm struct{ Upstream string }
	if err := json.Unmarshal(ev.Metadata["proxy"], &pm); err != nil || ev.Instance != "qwen3-instruct" ||
		pm.Upstream != strings.TrimPrefix(e.x.srv.URL, "http://") {
		t.Fatalf("instance %q, proxy metadata %s", ev.Instance, ev.Metadata["proxy"])
	}
	jsonEqual(t, ev.Request, chatReqBody)
	jsonEqual(t, ev.Response, chatJSON)
	if usageString(ev.Usage) != "21/8/29" || ev.RequestTruncated {
		t.Fatalf("usage %s truncated %v", usageString(ev.Usage), ev.RequestTruncated)
	}
	// A whole answer has no first token: TTFT stays null; the first byte's
	// time is kept in the proxy's metadata.
	checkTimes(t, ev, false)
	if !bytes.Contains(ev.Metadata["proxy"], []byte(`"first_byte_time":`)) {
		t.Fatalf("no first_byte_time in %s", ev.Metadata["proxy"])
	}
	if got := value(e.p.m.captured.WithLabelValues(kindChat)); got != 1 {
		t.Fatalf("captured metric = %v", got)
	}
}

func TestTraceHeaderAndAPIKeyHeader(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do(t, "POST", "/v1/embeddings", "application/json", []byte(`{"model":"bge-m3","input":"hi"}`),
		map[string]string{"x-api-key": "sk-local-1234567890", HeaderTraceID: "trace-abc"})
	ev := find(t, e.pub.exactly(t, 1), r.id)
	if ev.TraceID != "trace-abc" || ev.APIKeyHash != schema.HashAPIKey("sk-local-1234567890") {
		t.Fatalf("trace %q hash %q", ev.TraceID, ev.APIKeyHash)
	}
	// A trace id the schema cannot take is refused before the upstream,
	// naming the header.
	before := e.x.requests("/v1/embeddings")
	r = e.do(t, "POST", "/v1/embeddings", "application/json", []byte(`{"model":"bge-m3","input":"hi"}`),
		map[string]string{HeaderTraceID: strings.Repeat("t", 200)})
	if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), HeaderTraceID+": 200 characters, limit 128") {
		t.Fatalf("long trace id: %d %s", r.status, r.body)
	}
	if n := e.x.requests("/v1/embeddings"); n != before {
		t.Fatalf("refused call reached the upstream (%d requests, was %d)", n, before)
	}
	e.pub.exactly(t, 1)
}

const streamReq = `{"model":"qwen3-instruct","messages":[{"role":"user","content":"weather and time in Paris?"}],"stream":true,"tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}}]}`

func TestChatStreamUsageInjection(t *testing.T) {
	e := newEnv(t, nil)
	r := e.post(t, "/v1/chat/completions", streamReq)
	// Byte for byte what the upstream sends a client that did not ask for usage.
	if want := xinfChatStream(true, false, false); !bytes.Equal(r.body, want) {
		t.Fatalf("client stream differs:\n got %q\nwant %q", r.body, want)
	}
	if r.header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		t.Fatalf("content type %q", r.header.Get("Content-Type"))
	}
	up := e.x.lastBody("/v1/chat/completions")
	var sent map[string]json.RawMessage
	if err := json.Unmarshal(up, &sent); err != nil || string(sent["stream_options"]) != `{"include_usage":true}` {
		t.Fatalf("upstream request %s (%v)", up, err)
	}
	var orig map[string]json.RawMessage
	json.Unmarshal([]byte(streamReq), &orig)
	for k, v := range orig {
		if !bytes.Equal(sent[k], v) {
			t.Fatalf("field %s changed: %s", k, sent[k])
		}
	}
	ev := find(t, e.pub.exactly(t, 1), r.id)
	if !ev.Stream || ev.Status != 200 || ev.Error != "" || usageString(ev.Usage) != "42/17/59" {
		t.Fatalf("event: stream %v status %d err %q usage %s", ev.Stream, ev.Status, ev.Error, usageString(ev.Usage))
	}
	jsonEqual(t, ev.Request, streamReq) // the client's request, not the rewritten one
	var resp struct {
		Choices []struct {
			Message struct {
				Content   string            `json:"content"`
				ToolCalls []json.RawMessage `json:"tool_calls"`
			} `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(ev.Response, &resp); err != nil || len(resp.Choices) != 1 ||
		resp.Choices[0].Message.Content != "Let me check." || len(resp.Choices[0].Message.ToolCalls) != 3 ||
		resp.Choices[0].FinishReason != "tool_calls" {
		t.Fatalf("assembled response %s", ev.Response)
	}
	checkTimes(t, ev, true)
	var meta map[string]any
	json.Unmarshal(ev.Metadata["proxy"], &meta)
	if meta["usage_requested"] != true || meta["first_byte_time"] == nil {
		t.Fatalf("metadata %s", ev.Metadata["proxy"])
	}
}

func TestChatStreamClientAskedForUsage(t *testing.T) {
	e := newEnv(t, nil)
	body := `{"model":"qwen3-instruct","messages":[],"stream":true,"stream_options":{"include_usage":true}}`
	r := e.post(t, "/v1/chat/completions", body)
	if want := xinfChatStream(false, true, false); !bytes.Equal(r.body, want) {
		t.Fatalf("client stream differs:\n got %q\nwant %q", r.body, want)
	}
	if got := e.x.lastBody("/v1/chat/completions"); string(got) != body {
		t.Fatalf("request changed: %s", got)
	}
	ev := find(t, e.pub.exactly(t, 1), r.id)
	if usageString(ev.Usage) != "42/17/59" {
		t.Fatalf("usage %s", usageString(ev.Usage))
	}
}

func TestAskUsageOff(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.AskUsage = false })
	body := `{"model":"qwen3-instruct","messages":[],"stream":true}`
	r := e.post(t, "/v1/chat/completions", body)
	if want := xinfChatStream(false, false, false); !bytes.Equal(r.body, want) {
		t.Fatalf("client stream differs")
	}
	if got := e.x.lastBody("/v1/chat/completions"); string(got) != body {
		t.Fatalf("request changed: %s", got)
	}
	if ev := find(t, e.pub.exactly(t, 1), r.id); ev.Usage != nil {
		t.Fatalf("usage without asking: %s", usageString(ev.Usage))
	}
}

func TestUsageInjectionMergesStreamOptions(t *testing.T) {
	e := newEnv(t, nil)
	body := `{"model":"qwen3-instruct","stream":true,"stream_options":{"include_usage":false,"continuous_usage_stats":false},"messages":[]}`
	r := e.post(t, "/v1/chat/completions", body)
	if want := xinfChatStream(false, false, false); !bytes.Equal(r.body, want) {
		t.Fatalf("client stream differs")
	}
	var sent struct {
		StreamOptions map[string]bool `json:"stream_options"`
	}
	json.Unmarshal(e.x.lastBody("/v1/chat/completions"), &sent)
	if !sent.StreamOptions["include_usage"] || sent.StreamOptions["continuous_usage_stats"] {
		t.Fatalf("stream_options sent: %v", sent.StreamOptions)
	}
	e.pub.exactly(t, 1)
}

func TestInjectionRejectedIsRetried(t *testing.T) {
	e := newEnv(t, nil)
	body := `{"model":"strict","messages":[],"stream":true}`
	for i := range 2 {
		r := e.do(t, "POST", "/v1/chat/completions", "application/json", []byte(body), map[string]string{"Accept-Encoding": "gzip"})
		if r.status != 200 || !bytes.Equal(r.body, xinfChatStream(false, false, false)) {
			t.Fatalf("call %d: %d %q", i, r.status, r.body)
		}
		if got := e.x.lastBody("/v1/chat/completions"); string(got) != body {
			t.Fatalf("call %d: the upstream's last request was %s", i, got)
		}
		if got := e.x.lastHeader("/v1/chat/completions").Get("Accept-Encoding"); got != "gzip" {
			t.Fatalf("call %d: Accept-Encoding %q", i, got)
		}
	}
	if !e.p.noInject.Load() || !strings.Contains(e.logs.String(), "usage injection turned off") {
		t.Fatal("injection not turned off")
	}
	for _, ev := range e.pub.exactly(t, 2) {
		if ev.Status != 200 || ev.Error != "" {
			t.Fatalf("event status %d err %q", ev.Status, ev.Error)
		}
	}
}

func TestCompletionStream(t *testing.T) {
	e := newEnv(t, nil)
	r := e.post(t, "/v1/completions", `{"model":"qwen2.5-base","prompt":"Once","max_tokens":4,"stream":true}`)
	if want := xinfCompletionStream(false); !bytes.Equal(r.body, want) {
		t.Fatalf("client stream differs:\n got %q\nwant %q", r.body, want)
	}
	ev := find(t, e.pub.exactly(t, 1), r.id)
	if usageString(ev.Usage) != "5/4/9" || ev.Model != "qwen2.5-base" {
		t.Fatalf("usage %s model %q", usageString(ev.Usage), ev.Model)
	}
	if !strings.Contains(string(ev.Response), `"text":"Once upon a time"`) || !strings.Contains(string(ev.Response), `"finish_reason":"length"`) {
		t.Fatalf("assembled %s", ev.Response)
	}
	checkTimes(t, ev, true)
}

func TestEndpoints(t *testing.T) {
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	mw.WriteField("model", "whisper-large-v3")
	mw.WriteField("language", "en")
	fw, _ := mw.CreateFormFile("file", "hello.wav")
	fw.Write(bytes.Repeat([]byte{0x52, 0x49, 0x46, 0x46}, 1000))
	mw.Close()

	cases := []struct {
		name, method, path, ctype, body string
		wantStatus                      int
		wantBody                        string
		captured                        bool
		model, usage                    string
		check                           func(t *testing.T, ev *schema.Event)
	}{
		{name: "embeddings", method: "POST", path: "/v1/embeddings", body: `{"model":"bge-m3","input":["hello"]}`,
			wantStatus: 200, wantBody: embeddingsJSON, captured: true, model: "bge-m3", usage: "6/-/6"},
		{name: "rerank", method: "POST", path: "/v1/rerank", body: `{"model":"bge-reranker-v2-m3","query":"capital","documents":["a","b"],"return_documents":false}`,
			wantStatus: 200, wantBody: rerankJSON, captured: true, model: "bge-reranker-v2-m3", usage: "37/0/37"},
		{name: "image generation", method: "POST", path: "/v1/images/generations", body: `{"model":"sd3-medium","prompt":"a cat","n":1,"response_format":"b64_json"}`,
			wantStatus: 200, wantBody: imageJSON, captured: true, model: "sd3-medium", usage: "nil"},
		{name: "audio transcription", method: "POST", path: "/v1/audio/transcriptions", ctype: mw.FormDataContentType(), body: mp.String(),
			wantStatus: 200, wantBody: `{"text":"hello from 4000 bytes of audio"}`, captured: true, model: "whisper-large-v3", usage: "nil",
			check: func(t *testing.T, ev *schema.Event) {
				jsonEqual(t, ev.Request, `{"form":{"model":"whisper-large-v3","language":"en"},"files":[{"field":"file","filename":"hello.wav","content_type":"application/octet-stream","bytes":4000}]}`)
			}},
		{name: "audio speech (binary answer)", method: "POST", path: "/v1/audio/speech", body: `{"model":"ChatTTS","input":"hello","voice":"echo"}`,
			wantStatus: 200, wantBody: speechMP3, captured: true, model: "ChatTTS", usage: "nil",
			check: func(t *testing.T, ev *schema.Event) {
				jsonEqual(t, ev.Response, fmt.Sprintf(`{"content_type":"audio/mpeg","bytes":%d}`, len(speechMP3)))
			}},
		{name: "negative usage", method: "POST", path: "/v1/chat/completions", body: `{"model":"neg-usage","messages":[],"tools":[]}`,
			wantStatus: 200, wantBody: chatNegUsageJSON, captured: true, model: "neg-usage", usage: "nil",
			check: func(t *testing.T, ev *schema.Event) { jsonEqual(t, ev.Response, chatNegUsageJSON) }},
		{name: "upstream 400", method: "POST", path: "/v1/chat/completions", body: `{"model":"err-400","messages":[],"stream":true}`,
			wantStatus: 400, wantBody: `{"detail":"Model not found in the model list, uid: err-400"}`, captured: true, model: "err-400", usage: "nil",
			check: func(t *testing.T, ev *schema.Event) {
				if ev.Error != "Model not found in the model list, uid: err-400" {
					t.Fatalf("error %q", ev.Error)
				}
			}},
		{name: "upstream 500", method: "POST", path: "/v1/chat/completions", body: `{"model":"err-500","messages":[]}`,
			wantStatus: 500, wantBody: `{"detail":"[address=0.0.0.0:34591, pid=3811] CUDA out of memory. Tried to allocate 2.00 GiB"}`, captured: true, model: "err-500", usage: "nil",
			check: func(t *testing.T, ev *schema.Event) {
				if !strings.Contains(ev.Error, "CUDA out of memory") {
					t.Fatalf("error %q", ev.Error)
				}
			}},
		{name: "models passthrough", method: "GET", path: "/v1/models", wantStatus: 200, wantBody: modelsJSON, captured: false},
		{name: "unknown path passthrough", method: "POST", path: "/v1/cluster/info", body: `{}`, wantStatus: 404, wantBody: "404 page not found\n", captured: false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			ct := tc.ctype
			if ct == "" && tc.body != "" {
				ct = "application/json"
			}
			var body []byte
			if tc.body != "" {
				body = []byte(tc.body)
			}
			r := e.do(t, tc.method, tc.path, ct, body, nil)
			if r.status != tc.wantStatus || string(r.body) != tc.wantBody {
				t.Fatalf("client got %d %q", r.status, r.body)
			}
			if r.id == "" {
				t.Fatal("no event id header")
			}
			if !tc.captured {
				time.Sleep(50 * time.Millisecond)
				if n := len(e.pub.snapshot()); n != 0 {
					t.Fatalf("%d events for an uncaptured path", n)
				}
				return
			}
			ev := find(t, e.pub.exactly(t, 1), r.id)
			if ev.Model != tc.model || usageString(ev.Usage) != tc.usage || ev.Status != tc.wantStatus || ev.Endpoint != tc.path {
				t.Fatalf("event model %q usage %s status %d endpoint %q", ev.Model, usageString(ev.Usage), ev.Status, ev.Endpoint)
			}
			if tc.wantStatus < 400 && ev.Error != "" {
				t.Fatalf("error %q", ev.Error)
			}
			// Only a stream has a first token.
			checkTimes(t, ev, strings.HasPrefix(r.header.Get("Content-Type"), "text/event-stream"))
			if tc.check != nil {
				tc.check(t, ev)
			}
		})
	}
}

func TestEncodedResponseIsDecodedForCapture(t *testing.T) {
	e := newEnv(t, nil)
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/video/generations", strings.NewReader(`{"model":"Wan2.1-t2v","prompt":"a cat"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept-Encoding", "gzip") // set by hand: Go's client then leaves the body compressed
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, gzipped(videoJSON)) || resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("client did not get the upstream's compressed bytes")
	}
	ev := find(t, e.pub.exactly(t, 1), resp.Header.Get(HeaderEventID))
	jsonEqual(t, ev.Response, videoJSON)
	if ev.Model != "Wan2.1-t2v" || ev.Endpoint != "/v1/video/generations" {
		t.Fatalf("model %q endpoint %q", ev.Model, ev.Endpoint)
	}
}

func TestConcurrentCalls(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.SpoolDir = t.TempDir() })
	const n = 60
	ids := make(chan string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var r result
			switch i % 4 {
			case 0:
				r = e.post(t, "/v1/chat/completions", chatReqBody)
			case 1:
				r = e.post(t, "/v1/chat/completions", streamReq)
				if !bytes.Equal(r.body, xinfChatStream(true, false, false)) {
					t.Errorf("stream differs")
				}
			case 2:
				r = e.post(t, "/v1/completions", `{"model":"qwen2.5-base","prompt":"x","stream":true}`)
			default:
				r = e.post(t, "/v1/rerank", `{"model":"bge-reranker-v2-m3","query":"q","documents":["a"]}`)
			}
			ids <- r.id
		})
		if i == n/2 {
			e.pub.setFail(true) // half way through, NATS goes away ...
		}
	}
	wg.Wait()
	e.pub.setFail(false) // ... and comes back
	close(ids)
	evs := e.pub.exactly(t, n)
	for id := range ids {
		find(t, evs, id)
	}
}

func TestStreamErrorEvent(t *testing.T) {
	e := newEnv(t, nil)
	r := e.post(t, "/v1/chat/completions", `{"model":"stream-error","messages":[],"stream":true}`)
	if want := xinfChatStream(false, false, true); !bytes.Equal(r.body, want) {
		t.Fatalf("client stream differs: %q", r.body)
	}
	ev := find(t, e.pub.exactly(t, 1), r.id)
	if ev.Status != 200 || ev.Error != "[address=0.0.0.0:40103, pid=7] CUDA out of memory" {
		t.Fatalf("status %d error %q", ev.Status, ev.Error)
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		dead := httptest.NewServer(http.NotFoundHandler())
		dead.Close()
		o.Upstream, _ = url.Parse(dead.URL)
	})
	r := e.post(t, "/v1/chat/completions", chatReqBody)
	if r.status != http.StatusBadGateway || r.id == "" {
		t.Fatalf("client got %d, id %q", r.status, r.id)
	}
	ev := find(t, e.pub.exactly(t, 1), r.id)
	if ev.Status != 502 || !strings.HasPrefix(ev.Error, "upstream unreachable: ") || ev.Model != "qwen3-instruct" {
		t.Fatalf("event status %d error %q", ev.Status, ev.Error)
	}
	checkTimes(t, ev, false)
}

func TestClientDisconnectMidStream(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"hang","messages":[],"stream":true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Header.Get(HeaderEventID)
	br := bufio.NewReader(resp.Body)
	want := xinfChatStreamParts(false, false, false)
	got := make([]byte, len(want[1])+len(want[2])+len(want[3]))
	if _, err := io.ReadFull(br, got); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-e.x.hangEnd:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream request was not cancelled")
	}
	ev := find(t, e.pub.exactly(t, 1), id)
	if ev.Error != "client disconnected" || ev.Status != 200 || !ev.Stream {
		t.Fatalf("status %d error %q", ev.Status, ev.Error)
	}
	if !strings.Contains(string(ev.Response), `"content":"Hello"`) {
		t.Fatalf("partial response not kept: %s", ev.Response)
	}
	checkTimes(t, ev, true)
}

func TestUpstreamDiesMidStream(t *testing.T) {
	e := newEnv(t, nil)
	resp, err := http.Post(e.srv.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"die","messages":[],"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatal("the client's stream ended cleanly although the upstream's broke")
	}
	if want := bytes.Join(xinfChatStreamParts(false, false, false)[1:4], nil); !bytes.Equal(got, want) {
		t.Fatalf("client got %q", got)
	}
	ev := find(t, e.pub.exactly(t, 1), resp.Header.Get(HeaderEventID))
	if ev.Status != 200 || !strings.HasPrefix(ev.Error, "upstream response broken: ") ||
		!strings.Contains(string(ev.Response), `"content":"Hello"`) {
		t.Fatalf("status %d error %q response %s", ev.Status, ev.Error, ev.Response)
	}
}

// TestSlowStreamIsNotBuffered: the upstream holds the rest of its stream
// until the client has received the first token.
func TestSlowStreamIsNotBuffered(t *testing.T) {
	for _, inject := range []bool{true, false} {
		t.Run(fmt.Sprintf("usage injection %v", inject), func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.AskUsage = inject })
			resp, err := http.Post(e.srv.URL+"/v1/chat/completions", "application/json",
				strings.NewReader(`{"model":"slow","messages":[],"stream":true}`))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			parts := xinfChatStreamParts(false, false, false)
			first := bytes.Join(parts[1:4], nil)
			got := make([]byte, len(first))
			read := make(chan error, 1)
			go func() { _, err := io.ReadFull(resp.Body, got); read <- err }()
			select {
			case err := <-read:
				if err != nil || !bytes.Equal(got, first) {
					t.Fatalf("first chunks %q, %v", got, err)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("first chunks did not arrive before the upstream finished: the stream is buffered")
			}
			close(e.x.release)
			rest, _ := io.ReadAll(resp.Body)
			if all := append(got, rest...); !bytes.Equal(all, parts[0]) {
				t.Fatalf("stream differs: %q", all)
			}
			ev := find(t, e.pub.exactly(t, 1), resp.Header.Get(HeaderEventID))
			checkTimes(t, ev, true)
			// The first token came long before the end.
			if ev.EndTime.Sub(*ev.FirstTokenTime) < 0 {
				t.Fatal("first token after end")
			}
		})
	}
}

func TestRequestTruncated(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.CaptureLimit = 1024 })
	long := strings.Repeat("lorem ipsum ", 1000)
	body := `{"model":"qwen3-instruct","user":"bob","stream":true,"messages":[{"role":"user","content":"` + long + `"}]}`
	r := e.post(t, "/v1/chat/completions", body)
	if r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	if got := e.x.lastBody("/v1/chat/completions"); string(got) != body {
		t.Fatalf("upstream got %d bytes, want the whole %d", len(got), len(body))
	}
	ev := find(t, e.pub.exactly(t, 1), r.id)
	var captured string
	if err := json.Unmarshal(ev.Request, &captured); err != nil || captured != body[:1024] || !ev.RequestTruncated {
		t.Fatalf("captured request %.80s... (%d bytes) truncated %v", captured, len(captured), ev.RequestTruncated)
	}
	if ev.Model != "qwen3-instruct" || ev.User != "bob" {
		t.Fatalf("model %q user %q", ev.Model, ev.User)
	}
	var meta map[string]any
	json.Unmarshal(ev.Metadata["proxy"], &meta)
	if meta["request_bytes"] != float64(len(body)) {
		t.Fatalf("request_bytes %v", meta["request_bytes"])
	}
}

func TestEventKeptUnderMaxEventBytes(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxEventBytes = 4096 })
	img := strings.Repeat("iVBORw0KGgo", 3000)
	body := `{"model":"qwen2-vl","messages":[{"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,` + img + `"}}]}]}`
	r := e.post(t, "/v1/chat/completions", body)
	if got := e.x.lastBody("/v1/chat/completions"); string(got) != body {
		t.Fatal("upstream did not get the whole request")
	}
	ev := find(t, e.pub.exactly(t, 1), r.id)
	b, _ := json.Marshal(ev)
	if len(b) > 4096 || !ev.RequestTruncated {
		t.Fatalf("event is %d bytes, truncated %v", len(b), ev.RequestTruncated)
	}
	var req struct {
		Model    string `json:"model"`
		Messages []struct {
			Content []struct {
				Text     string `json:"text"`
				ImageURL struct {
					URL string `json:"url"`
				} `json:"image_url"`
			} `json:"content"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(ev.Request, &req); err != nil || req.Model != "qwen2-vl" ||
		req.Messages[0].Content[0].Text != "what is this?" || !strings.HasSuffix(req.Messages[0].Content[1].ImageURL.URL, cutMarker) {
		t.Fatalf("shrunk request %s", ev.Request)
	}
}

func TestPublisherDownSpoolsThenRecovers(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.SpoolDir = t.TempDir() })
	e.pub.setFail(true)
	var ids []string
	for i := range 30 {
		var r result
		switch i % 3 {
		case 0:
			r = e.post(t, "/v1/chat/completions", chatReqBody)
		case 1:
			r = e.post(t, "/v1/chat/completions", streamReq)
		default:
			r = e.post(t, "/v1/embeddings", `{"model":"bge-m3","input":"x"}`)
		}
		if r.status != 200 {
			t.Fatalf("call %d failed with %d while NATS is down", i, r.status)
		}
		ids = append(ids, r.id)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.p.spool.Len() != 30 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := e.p.spool.Len(); n != 30 {
		t.Fatalf("spool holds %d events, want 30", n)
	}
	if len(e.pub.snapshot()) != 0 {
		t.Fatal("published while failing")
	}
	if v := value(e.p.m.publishErrors); v < 1 {
		t.Fatalf("publish errors %v", v)
	}
	if v := gauge(t, e.reg, "callpipe_proxy_spool_bytes"); v <= 0 {
		t.Fatalf("spool bytes gauge %v", v)
	}

	e.pub.setFail(false)
	evs := e.pub.exactly(t, 30)
	for i, ev := range evs {
		if ev.ID != ids[i] {
			t.Fatalf("event %d is %s, want %s: not oldest first", i, ev.ID, ids[i])
		}
	}
	// the drainer sends the spool in batches, not one event per round trip
	e.pub.mu.Lock()
	largest := slices.Max(append([]int{0}, e.pub.storedBy...))
	e.pub.mu.Unlock()
	if largest < 2 {
		t.Errorf("spool drained in batches storing at most %d event", largest)
	}
	for e.p.spool.Len() != 0 {
		time.Sleep(5 * time.Millisecond)
	}
	if v := gauge(t, e.reg, "callpipe_proxy_spool_bytes"); v != 0 {
		t.Fatalf("spool bytes gauge %v after drain", v)
	}
	if v := value(e.p.m.published.WithLabelValues("spool", "stored")); v != 30 {
		t.Fatalf("published via spool %v", v)
	}
	// Publishing works again: new events go direct.
	r := e.post(t, "/v1/embeddings", `{"model":"bge-m3","input":"x"}`)
	find(t, e.pub.exactly(t, 31), r.id)
	if v := value(e.p.m.published.WithLabelValues("direct", "stored")); v != 1 {
		t.Fatalf("published direct %v", v)
	}
	for _, reason := range []string{DropSpoolFull, DropNoSpool, DropInvalid} {
		if v := value(e.p.m.dropped.WithLabelValues(reason)); v != 0 {
			t.Fatalf("dropped{%s} = %v", reason, v)
		}
	}
}

// value reads a counter (testutil would add a module to go.mod).
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	return d.GetCounter().GetValue()
}

func gauge(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestQueueAndSpoolFullDropsAreCounted(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.SpoolDir = t.TempDir()
		o.SpoolMaxBytes = 8 << 10
		o.QueueSize = 1
		o.RetryMin, o.RetryMax = time.Hour, time.Hour
	})
	e.pub.setFail(true)
	for range 20 {
		if r := e.post(t, "/v1/chat/completions", chatReqBody); r.status != 200 {
			t.Fatalf("call failed: %d", r.status)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		spooled := value(e.p.m.spooled)
		dropped := value(e.p.m.dropped.WithLabelValues(DropSpoolFull))
		if spooled+dropped == 20 && dropped > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spooled %v dropped %v, want 20 in all with drops", spooled, dropped)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(e.logs.String(), "call event dropped") || !strings.Contains(e.logs.String(), "reason=spool_full") {
		t.Fatalf("drop not logged:\n%s", e.logs.String())
	}
}

func TestPermanentErrorIsDroppedNotRetried(t *testing.T) {
	perm := errors.New("rejected for good")
	e := newEnv(t, func(o *Options) {
		o.SpoolDir = t.TempDir()
		o.Permanent = func(err error) bool { return errors.Is(err, perm) }
	})
	pub := &permPub{err: perm}
	e.p.pub = pub
	e.post(t, "/v1/embeddings", `{"model":"bge-m3","input":"x"}`)
	deadline := time.Now().Add(5 * time.Second)
	for value(e.p.m.dropped.WithLabelValues(DropRejected)) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("not dropped")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if e.p.spool.Len() != 0 {
		t.Fatal("a rejected event was spooled")
	}
}

// TestEmitterPublishesQueuedEventsTogether: events that queued while the
// emitter waited for JetStream go out in one batch (one round trip), and an
// event of a batch that fails goes to the spool alone, published from there,
// while the others of its batch are stored directly.
func TestEmitterPublishesQueuedEventsTogether(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.SpoolDir = t.TempDir() })
	hold := make(chan struct{})
	e.pub.mu.Lock()
	e.pub.hold = hold
	e.pub.mu.Unlock()
	body := `{"model":"bge-m3","input":"hi"}`
	e.post(t, "/v1/embeddings", body)
	waitUntil(t, "the emitter holds the first event", func() bool {
		e.pub.mu.Lock()
		defer e.pub.mu.Unlock()
		return len(e.pub.batches) == 1
	})
	var fail string
	for i := 1; i <= 10; i++ {
		r := e.post(t, "/v1/embeddings", body)
		if r.status != 200 || r.id == "" {
			t.Fatalf("call %d: status %d, event id %q", i, r.status, r.id)
		}
		if i == 4 {
			fail = r.id
		}
	}
	waitUntil(t, "ten events queued", func() bool { return len(e.p.queue) == 10 })
	e.pub.mu.Lock()
	e.pub.failIDs = map[string]bool{fail: true}
	e.pub.hold = nil
	e.pub.mu.Unlock()
	close(hold)
	e.pub.exactly(t, 11)
	e.pub.mu.Lock()
	batches := slices.Clone(e.pub.batches)
	e.pub.mu.Unlock()
	// the emitter's two batches, then the drainer's with the failed event
	if len(batches) != 3 || batches[0] != 1 || batches[1] != 10 || batches[2] != 1 {
		t.Errorf("batches published %v, want [1 10 1]", batches)
	}
	if d, s := value(e.p.m.published.WithLabelValues("direct", "stored")), value(e.p.m.published.WithLabelValues("spool", "stored")); d != 10 || s != 1 {
		t.Errorf("published direct %v, from the spool %v; want 10 and 1", d, s)
	}
}

// waitUntil polls cond for up to 10 s.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type permPub struct{ err error }

func (p *permPub) PublishBatch(_ context.Context, evs []*schema.Event, res []ingest.PublishResult) {
	for i := range evs {
		res[i].Err = p.err
	}
}

// TestCloseSpoolsQueueAndRestartDrains: events queued at shutdown survive in
// the spool and are published, in order, by the next process.
func TestCloseSpoolsQueueAndRestartDrains(t *testing.T) {
	dir := t.TempDir()
	x := newFakeXinference(t)
	defer x.srv.Close()
	u, _ := url.Parse(x.srv.URL)
	down := newFakePub(t)
	down.setFail(true)
	o := DefaultOptions(u)
	o.SpoolDir = dir
	o.RetryMin, o.RetryMax = 5*time.Millisecond, 20*time.Millisecond
	p1, err := New(o, down)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p1) // Run is never started: everything stays queued
	var ids []string
	for range 5 {
		resp, err := http.Post(srv.URL+"/v1/embeddings", "application/json", strings.NewReader(`{"model":"bge-m3","input":"x"}`))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		ids = append(ids, resp.Header.Get(HeaderEventID))
	}
	srv.Close()
	if err := p1.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := p1.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	up := newFakePub(t)
	p2, err := New(o, up)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p2.Run(ctx); close(done) }()
	evs := up.exactly(t, 5)
	for i, ev := range evs {
		if ev.ID != ids[i] {
			t.Fatalf("event %d = %s, want %s", i, ev.ID, ids[i])
		}
	}
	cancel()
	<-done
	p2.Close(context.Background())
}

// TestCloseWithExpiredContextSpools: a shutdown out of time still keeps
// every queued event, in the spool.
func TestCloseWithExpiredContextSpools(t *testing.T) {
	dir := t.TempDir()
	x := newFakeXinference(t)
	defer x.srv.Close()
	u, _ := url.Parse(x.srv.URL)
	pub := newFakePub(t)
	o := DefaultOptions(u)
	o.SpoolDir = dir
	p, err := New(o, pub)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p)
	for range 3 {
		resp, _ := http.Post(srv.URL+"/v1/embeddings", "application/json", strings.NewReader(`{"model":"bge-m3","input":"x"}`))
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.Close(ctx)
	if n := len(pub.snapshot()); n != 0 {
		t.Fatalf("published %d with an expired context", n)
	}
	p2, err := New(o, pub)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close(context.Background())
	if n := p2.spool.Len(); n != 3 {
		t.Fatalf("spool holds %d, want 3", n)
	}
	// After Close, events are dropped and counted, never blocking the client.
	p.emit(&schema.Event{ID: "late", StartTime: time.Now(), Endpoint: "/v1/embeddings", Model: "m"}, kindEmbeddings)
	if v := value(p.m.dropped.WithLabelValues(DropClosed)); v != 1 {
		t.Fatalf("dropped{closed} = %v", v)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	if _, err := New(Options{}, newFakePub(t)); err == nil {
		t.Fatal("no upstream accepted")
	}
	u, _ := url.Parse("http://xinference:9997")
	if _, err := New(Options{Upstream: u}, nil); err == nil {
		t.Fatal("nil publisher accepted")
	}
	p, err := New(Options{Upstream: u}, newFakePub(t))
	if err != nil || p.upstream != "xinference:9997" {
		t.Fatalf("%v %q", err, p.upstream)
	}
	u2, _ := url.Parse("https://xinference.internal")
	if p, _ := New(Options{Upstream: u2}, newFakePub(t)); p.upstream != "xinference.internal:443" {
		t.Fatalf("upstream %q", p.upstream)
	}
}

func TestEventIDs(t *testing.T) {
	seen := map[string]bool{}
	prev := ""
	for range 1000 {
		id := newEventID()
		if len(id) != 36 || id[14] != '7' || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		if id[:13] < prev[:min(13, len(prev))] {
			t.Fatalf("ids not time ordered: %s after %s", id, prev)
		}
		seen[id], prev = true, id
	}
}

// Batch and tag headers set the event's source, batch and tags; no
// X-Callpipe-* header reaches the upstream.
func TestCallerHeaders(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do(t, "POST", "/v1/chat/completions", "application/json", []byte(chatReqBody), map[string]string{
		HeaderSource: "Batch", HeaderBatchID: "nightly-2026-12-04", HeaderTags: " eval , nightly,eval,",
		HeaderTraceID: "trace-1", HeaderSessionID: "sess-1", "X-Callpipe-Anything": "x",
	})
	if r.status != 200 {
		t.Fatalf("status %d %s", r.status, r.body)
	}
	for k := range e.x.lastHeader("/v1/chat/completions") {
		if strings.HasPrefix(strings.ToLower(k), "x-callpipe-") {
			t.Fatalf("upstream got header %s", k)
		}
	}
	ev := find(t, e.pub.wait(t, 1), r.id)
	if ev.Source != schema.SourceBatch || ev.BatchID != "nightly-2026-12-04" || strings.Join(ev.Tags, "|") != "eval|nightly" ||
		ev.TraceID != "trace-1" || ev.SessionID != "sess-1" {
		t.Fatalf("event source %q batch %q tags %q trace %q session %q", ev.Source, ev.BatchID, ev.Tags, ev.TraceID, ev.SessionID)
	}
	// A batch id alone implies source batch.
	r = e.do(t, "POST", "/v1/embeddings", "application/json", []byte(`{"model":"bge-m3","input":"hi"}`),
		map[string]string{HeaderBatchID: "b-2"})
	if ev := find(t, e.pub.wait(t, 2), r.id); ev.Source != schema.SourceBatch || ev.BatchID != "b-2" {
		t.Fatalf("batch id alone: source %q batch %q", ev.Source, ev.BatchID)
	}
	// No header: online.
	r = e.post(t, "/v1/embeddings", `{"model":"bge-m3","input":"hi"}`)
	if ev := find(t, e.pub.wait(t, 3), r.id); ev.Source != schema.SourceOnline || ev.BatchID != "" || ev.Tags != nil {
		t.Fatalf("no header: source %q batch %q tags %q", ev.Source, ev.BatchID, ev.Tags)
	}
}

// Headers the schema cannot take are refused with 400 naming the header and
// the reason, before the upstream, and make no event.
func TestCallerHeadersRefused(t *testing.T) {
	e := newEnv(t, nil)
	many := make([]string, schema.MaxTags+1)
	for i := range many {
		many[i] = fmt.Sprint("t", i)
	}
	for _, c := range []struct {
		hdr        map[string]string
		param, msg string
	}{
		{map[string]string{HeaderSource: "nightly"}, HeaderSource, `must be \"online\" or \"batch\", got \"nightly\"`},
		{map[string]string{HeaderSource: "online", HeaderBatchID: "b"}, HeaderBatchID, "allowed only with X-Callpipe-Source: batch"},
		{map[string]string{HeaderBatchID: strings.Repeat("b", 257)}, HeaderBatchID, "257 characters, limit 256"},
		{map[string]string{HeaderSessionID: "a\tb"}, HeaderSessionID, "contains a control character"},
		{map[string]string{HeaderTags: strings.Join(many, ",")}, HeaderTags, "65 tags, limit 64"},
		{map[string]string{HeaderTags: "ok," + strings.Repeat("x", 201)}, HeaderTags, "201 characters, limit 200"},
	} {
		r := e.do(t, "POST", "/v1/embeddings", "application/json", []byte(`{"model":"bge-m3","input":"hi"}`), c.hdr)
		var body struct {
			Error struct {
				Message, Type, Param string
			}
		}
		if err := json.Unmarshal(r.body, &body); err != nil || r.status != http.StatusBadRequest ||
			body.Error.Param != c.param || !strings.Contains(string(r.body), c.msg) || body.Error.Type != "invalid_request_error" {
			t.Fatalf("%v: %d %s (want param %s, %s)", c.hdr, r.status, r.body, c.param, c.msg)
		}
	}
	if n := e.x.requests("/v1/embeddings"); n != 0 {
		t.Fatalf("upstream got %d refused calls", n)
	}
	time.Sleep(50 * time.Millisecond)
	if n := len(e.pub.snapshot()); n != 0 {
		t.Fatalf("%d events for refused calls", n)
	}
}

// The request body's metadata names trace, session, user and tags as
// Langfuse's OpenAI integration reads them; headers and the user field win;
// other members become metadata of the call.
func TestBodyMetadata(t *testing.T) {
	e := newEnv(t, nil)
	body := `{"model":"qwen3-instruct","messages":[{"role":"user","content":"hi"}],` +
		`"metadata":{"langfuse_session_id":"s-body","langfuse_user_id":"u-body","langfuse_trace_id":"t-body","langfuse_tags":["rag"," eval "],"team":"search","proxy":"x"}}`
	r := e.do(t, "POST", "/v1/chat/completions", "application/json", []byte(body), map[string]string{HeaderTags: "eval,web"})
	ev := find(t, e.pub.wait(t, 1), r.id)
	if ev.SessionID != "s-body" || ev.User != "u-body" || ev.TraceID != "t-body" || strings.Join(ev.Tags, "|") != "eval|web|rag" {
		t.Fatalf("session %q user %q trace %q tags %q", ev.SessionID, ev.User, ev.TraceID, ev.Tags)
	}
	if string(ev.Metadata["team"]) != `"search"` || bytes.Contains(ev.Metadata["proxy"], []byte(`"x"`)) {
		t.Fatalf("metadata %v", ev.Metadata)
	}
	// Headers and the body's user field win over metadata.
	body = `{"model":"qwen3-instruct","user":"alice","messages":[],"metadata":{"langfuse_session_id":"s-body","langfuse_user_id":"u-body","langfuse_trace_id":"t-body"}}`
	r = e.do(t, "POST", "/v1/chat/completions", "application/json", []byte(body), map[string]string{HeaderSessionID: "s-hdr", HeaderTraceID: "t-hdr"})
	ev = find(t, e.pub.wait(t, 2), r.id)
	if ev.SessionID != "s-hdr" || ev.User != "alice" || ev.TraceID != "t-hdr" {
		t.Fatalf("session %q user %q trace %q", ev.SessionID, ev.User, ev.TraceID)
	}
	if got := e.x.lastBody("/v1/chat/completions"); string(got) != body {
		t.Fatalf("upstream body changed: %s", got)
	}
	// A metadata object too large for the event gives its langfuse_* keys only.
	body = `{"model":"qwen3-instruct","messages":[],"metadata":{"langfuse_session_id":"s-big","blob":"` + strings.Repeat("x", maxBodyMetadata) + `"}}`
	r = e.do(t, "POST", "/v1/chat/completions", "application/json", []byte(body), nil)
	ev = find(t, e.pub.wait(t, 3), r.id)
	if ev.SessionID != "s-big" || ev.Metadata["blob"] != nil {
		t.Fatalf("large metadata: session %q, blob kept: %v", ev.SessionID, ev.Metadata["blob"] != nil)
	}
}

// The capture policy is applied before an event is queued or spooled: with
// mode none for the model, neither the spool on disk nor the published
// event holds the prompt or the answer, and the reported usage stays.
func TestCapturePolicyBeforeSpool(t *testing.T) {
	policy, err := capture.New(capture.Options{Models: []string{"qwen3-*=none"}, Masks: capture.DefaultMasks,
		Count: func(ev *schema.Event) (int64, int64, bool) { return 21, 8, false }})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e := newEnv(t, func(o *Options) { o.SpoolDir, o.Capture = dir, policy })
	e.pub.setFail(true)
	r := e.post(t, "/v1/chat/completions", chatReqBody)
	if r.status != 200 || string(r.body) != chatJSON {
		t.Fatalf("client got %d %s: the answer must pass unchanged", r.status, r.body)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.p.spool.Len() != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if e.p.spool.Len() != 1 {
		t.Fatal("the event was not spooled")
	}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, s := range []string{"capital of France", "Paris"} {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("spool file %s holds %q", path, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.pub.setFail(false)
	ev := find(t, e.pub.exactly(t, 1), r.id)
	if ev.Request != nil || ev.Response != nil || usageString(ev.Usage) != "21/8/29" ||
		ev.Capture == nil || ev.Capture.Mode != capture.None || ev.Capture.MaskSet != policy.MaskSet() {
		t.Fatalf("published event: %+v", ev)
	}
}

// writeCounter counts the writes on the proxy's connections upstream.
type writeCounter struct {
	net.Conn
	writes *atomic.Int64
}

func (c writeCounter) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// TestRequestForwardedInOneWrite: a captured request read whole goes
// upstream as one write, headers and body together (one wake-up of the
// upstream); a body beyond the capture limit is still streamed after its
// headers, and both arrive whole.
func TestRequestForwardedInOneWrite(t *testing.T) {
	var writes atomic.Int64
	e := newEnv(t, func(o *Options) {
		o.CaptureLimit = 4096
		tr := &http.Transport{DisableCompression: true, DisableKeepAlives: true}
		dial := (&net.Dialer{}).DialContext
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return writeCounter{Conn: c, writes: &writes}, nil
		}
		o.Transport = tr
	})
	for _, tc := range []struct {
		name    string
		content string
		writes  func(int64) bool
	}{
		{"whole", strings.Repeat("lighthouse ", 90), func(n int64) bool { return n == 1 }},
		{"beyond the capture limit", strings.Repeat("lighthouse ", 1000), func(n int64) bool { return n >= 2 }},
	} {
		writes.Store(0)
		body := `{"model":"qwen3-instruct","messages":[{"role":"user","content":"` + tc.content + `"}]}`
		if r := e.post(t, "/v1/chat/completions", body); r.status != 200 {
			t.Fatalf("%s: status %d", tc.name, r.status)
		}
		if got := e.x.lastBody("/v1/chat/completions"); string(got) != body {
			t.Fatalf("%s: upstream got %d bytes, want the whole %d", tc.name, len(got), len(body))
		}
		if n := writes.Load(); !tc.writes(n) {
			t.Errorf("%s (%d bytes): %d writes upstream", tc.name, len(body), n)
		}
	}
	// a body of unknown length (sent chunked) read whole arrives whole
	body := `{"model":"qwen3-instruct","messages":[{"role":"user","content":"sent in chunks"}]}`
	req, err := http.NewRequest("POST", e.srv.URL+"/v1/chat/completions", struct{ io.Reader }{strings.NewReader(body)})
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.TransferEncoding = []string{"chunked"}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("chunked request: status %d", resp.StatusCode)
	}
	if got := e.x.lastBody("/v1/chat/completions"); string(got) != body {
		t.Fatalf("chunked request: upstream got %q, want %q", got, body)
	}
}

// TestSetProcs: proxy.procs sets GOMAXPROCS unless the environment sets it;
// 0 leaves it as it is.
func TestSetProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })
	t.Setenv("GOMAXPROCS", "")
	if n := SetProcs(1); n != 1 || runtime.GOMAXPROCS(0) != 1 {
		t.Fatalf("SetProcs(1) = %d, GOMAXPROCS %d; want 1", n, runtime.GOMAXPROCS(0))
	}
	if n := SetProcs(0); n != 1 {
		t.Fatalf("SetProcs(0) = %d; want GOMAXPROCS unchanged (1)", n)
	}
	runtime.GOMAXPROCS(3)
	t.Setenv("GOMAXPROCS", "3")
	if n := SetProcs(1); n != 3 {
		t.Fatalf("SetProcs(1) with GOMAXPROCS=3 in the environment = %d; want 3", n)
	}
}
