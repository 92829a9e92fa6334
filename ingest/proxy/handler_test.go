package proxy

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/callpipe/callpipe/schema"
)

// cannedTransport answers every request with the same JSON body, without a
// network, so that a benchmark of ServeHTTP measures the proxy's own work.
type cannedTransport struct{ body string }

func (t cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	io.Copy(io.Discard, r.Body)
	r.Body.Close()
	return &http.Response{StatusCode: 200, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Request: r,
		Header:        http.Header{"Content-Type": {"application/json"}, "Content-Length": {strconv.Itoa(len(t.body))}},
		ContentLength: int64(len(t.body)), Body: io.NopCloser(strings.NewReader(t.body))}, nil
}

// BenchmarkServeHTTPEmbeddings is the proxy's own CPU and allocations on a
// client's response path for an embeddings call: ServeHTTP up to the event
// handed to the emitter's queue (which this benchmark drains without
// publishing), with the upstream answered in memory.
//
//	go test ./ingest/proxy -run '^$' -bench ServeHTTPEmbeddings -benchmem -cpu 1
func BenchmarkServeHTTPEmbeddings(b *testing.B) {
	u, _ := url.Parse("http://xinference:9997")
	opts := DefaultOptions(u)
	opts.Transport = cannedTransport{body: embeddingsJSON}
	opts.QueueSize = 1 << 16
	p, err := New(opts, nopPub{})
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"model":"bge-m3","input":"` + strings.Repeat("the pipeline stores every call once ", 12) + `"}`)
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/embeddings", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer sk-bench")
		p.ServeHTTP(httptest.NewRecorder(), req)
		select {
		case <-p.queue: // the emitter builds the event: not on the client's path
		default:
			b.Fatal("no call queued")
		}
	}
}

// BenchmarkEventEmbeddings is the emitter's work for the same call: the
// event built from the queued call (parsing the captured request and
// answer, masking), off the client's path but on the proxy's CPUs.
//
//	go test ./ingest/proxy -run '^$' -bench EventEmbeddings -benchmem -cpu 1
func BenchmarkEventEmbeddings(b *testing.B) { benchmarkEvent(b, embeddingsJSON) }

// BenchmarkEventEmbeddings1024 is BenchmarkEventEmbeddings with an answer
// of bge-m3's size: one vector of 1,024 floats (about 12 KB).
func BenchmarkEventEmbeddings1024(b *testing.B) {
	var vec strings.Builder
	for i := range 1024 {
		if i > 0 {
			vec.WriteByte(',')
		}
		fmt.Fprintf(&vec, "%.8f", math.Sin(float64(i))/7)
	}
	benchmarkEvent(b, `{"object":"list","model":"bge-m3","data":[{"index":0,"object":"embedding","embedding":[`+vec.String()+`]}],`+
		`"usage":{"prompt_tokens":6,"total_tokens":6}}`)
}

func benchmarkEvent(b *testing.B, answer string) {
	u, _ := url.Parse("http://xinference:9997")
	opts := DefaultOptions(u)
	opts.Transport = cannedTransport{body: answer}
	opts.QueueSize = 1
	p, err := New(opts, nopPub{})
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"model":"bge-m3","input":"` + strings.Repeat("the pipeline stores every call once ", 12) + `"}`)
	calls := make([]queued, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		if len(calls) == 0 {
			b.StopTimer()
			for range cap(calls) {
				req := httptest.NewRequest(http.MethodPost, "/v1/embeddings", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				p.ServeHTTP(httptest.NewRecorder(), req)
				calls = append(calls, <-p.queue)
			}
			b.StartTimer()
		}
		if ev := calls[len(calls)-1].event(); ev.Usage == nil {
			b.Fatal("no usage in the event")
		}
		calls = calls[:len(calls)-1]
	}
}

// The handler only queues the finished call: the request body is parsed and
// the event built by the emitter, off the client's path, and the raw API key
// is already reduced to its hash in the queue.
func TestHandlerQueuesTheCallAndTheEmitterBuildsItsEvent(t *testing.T) {
	u, _ := url.Parse("http://xinference:9997")
	opts := DefaultOptions(u)
	opts.Transport = cannedTransport{body: embeddingsJSON}
	p, err := New(opts, nopPub{})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPost, "/v1/embeddings?x=1", strings.NewReader(`{"model":"bge-m3","input":"hi","user":"carol"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-secret-key-of-carol")
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, req)
	if rec.Code != 200 || rec.Body.String() != embeddingsJSON {
		t.Fatalf("answer %d %s", rec.Code, rec.Body)
	}
	var q queued
	select {
	case q = <-p.queue:
	default:
		t.Fatal("nothing queued")
	}
	if q.c == nil || q.ev != nil {
		t.Fatalf("queued %+v, want the call", q)
	}
	if q.c.parsed || q.c.model != "" {
		t.Error("the request body was parsed on the client's path")
	}
	if q.c.apiKey != "" || q.c.keyHash == "" {
		t.Errorf("queued call holds key %q, hash %q: want only the hash", q.c.apiKey, q.c.keyHash)
	}
	ev := q.event()
	if ev.Model != "bge-m3" || ev.User != "carol" || ev.Endpoint != "/v1/embeddings" || ev.Status != 200 || ev.Error != "" {
		t.Errorf("event model %q user %q endpoint %q status %d error %q", ev.Model, ev.User, ev.Endpoint, ev.Status, ev.Error)
	}
	if ev.APIKey != "" || ev.APIKeyHash != schema.HashAPIKey("sk-secret-key-of-carol") || ev.APIKeyPrefix != schema.APIKeyPrefix("sk-secret-key-of-carol") {
		t.Errorf("event key %q hash %q prefix %q", ev.APIKey, ev.APIKeyHash, ev.APIKeyPrefix)
	}
	if ev.EndTime == nil || ev.EndTime.Before(ev.StartTime) || ev.Usage == nil {
		t.Errorf("event end %v start %v usage %+v", ev.EndTime, ev.StartTime, ev.Usage)
	}
	if err := ev.Validate(); err != nil {
		t.Error(err)
	}
}
