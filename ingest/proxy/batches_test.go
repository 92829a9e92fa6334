package proxy

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
)

// An OpenAI-style batch upstream: a job, its output file (two calls, one of
// them failed) and an unrelated file.
func newBatchUpstream(t *testing.T) *httptest.Server {
	job := `{"id":"batch_abc","object":"batch","endpoint":"/v1/chat/completions","status":"completed",
		"input_file_id":"file-in","output_file_id":"file-out","error_file_id":"file-err",
		"created_at":1764806400,"in_progress_at":1764806410,"finalizing_at":1764806500,"completed_at":1764806520}`
	out := `{"id":"batch_req_1","custom_id":"q-1","response":{"status_code":200,"request_id":"r1","body":{"id":"chatcmpl-1","object":"chat.completion","model":"qwen2.5-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}},"error":null}
{"id":"batch_req_2","custom_id":"q-2","response":{"status_code":400,"request_id":"r2","body":{"error":{"message":"context too long","type":"invalid_request_error"}}},"error":null}
`
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/batches/batch_abc", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, job)
	})
	mux.HandleFunc("GET /v1/files/file-out/content", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/jsonl")
		io.WriteString(w, out)
	})
	mux.HandleFunc("GET /v1/files/file-other/content", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, out)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// The calls of a batch job are traced from its output file once the proxy
// has seen the job: one event per line, source batch, the job's id as
// batch_id, the job's times, the line's response, usage and status; the
// client gets every answer unchanged; a second download gives the same ids;
// a file of no known job is only forwarded.
func TestBatchOutputTraced(t *testing.T) {
	up := newBatchUpstream(t)
	u, _ := url.Parse(up.URL)
	o := DefaultOptions(u)
	o.Logger = slog.New(slog.DiscardHandler)
	pub := newFakePub(t)
	p, err := New(o, pub)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	srv := httptest.NewServer(p)
	t.Cleanup(func() { srv.Close(); p.Close(context.Background()); cancel(); <-done })
	get := func(path string) string {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
		}
		return string(b)
	}

	// Before the job is seen, its file is only forwarded.
	get("/v1/files/file-out/content")
	time.Sleep(50 * time.Millisecond)
	if n := len(pub.snapshot()); n != 0 {
		t.Fatalf("%d events before the job was seen", n)
	}
	get("/v1/batches/batch_abc")
	// The job is noted after the client has its answer (off the response
	// path), so a client can ask for the file before it is.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, ok := p.batches.job("file-out"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the batch job was not noted")
		}
	}
	body := get("/v1/files/file-out/content")
	if !strings.Contains(body, `"custom_id":"q-2"`) {
		t.Fatalf("client got %q", body)
	}
	evs := pub.exactly(t, 2)
	byCustom := map[string]*schema.Event{}
	for _, ev := range evs {
		var m struct {
			CustomID string `json:"batch_custom_id"`
		}
		json.Unmarshal(ev.Metadata["proxy"], &m)
		byCustom[m.CustomID] = ev
	}
	ok, failed := byCustom["q-1"], byCustom["q-2"]
	if ok == nil || failed == nil {
		t.Fatalf("events by custom_id: %v", byCustom)
	}
	start, end := time.Unix(1764806410, 0).UTC(), time.Unix(1764806520, 0).UTC()
	if ok.Source != schema.SourceBatch || ok.BatchID != "batch_abc" || ok.Endpoint != "/v1/chat/completions" ||
		ok.Model != "qwen2.5-instruct" || ok.Status != 200 || usageString(ok.Usage) != "12/3/15" ||
		!ok.StartTime.Equal(start) || ok.EndTime == nil || !ok.EndTime.Equal(end) || ok.ID != batchCallID("batch_abc", "q-1") {
		t.Fatalf("traced call: %+v", ok)
	}
	if failed.Status != 400 || !strings.Contains(failed.Error, "context too long") || failed.BatchID != "batch_abc" {
		t.Fatalf("failed call: status %d error %q", failed.Status, failed.Error)
	}
	// A second download publishes the same ids again (the publisher, as
	// JetStream's duplicate window, drops them); a file of no known job:
	// nothing.
	get("/v1/files/file-out/content")
	get("/v1/files/file-other/content")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		pub.mu.Lock()
		n := pub.count[ok.ID] + pub.count[failed.ID]
		pub.mu.Unlock()
		if n == 4 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	pub.mu.Lock()
	defer pub.mu.Unlock()
	if len(pub.count) != 2 || pub.count[ok.ID] != 2 || pub.count[failed.ID] != 2 {
		t.Fatalf("publishes per id over two downloads and an unknown file: %v", pub.count)
	}
}
