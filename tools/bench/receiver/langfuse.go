// Package receiver is a plain, fast Langfuse endpoint for `callpipe bench`
// and the Langfuse sink's benchmarks: it lives with the production code (not
// the contract fake of the integration tests) so that the callpipe binary
// links no test server and no OpenAPI validator.
package receiver

import (
	"compress/gzip"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"

	"github.com/valyala/fastjson"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/callpipe/callpipe/internal/freelist"
)

// Langfuse decodes every request body completely (ingestion JSON with
// fastjson, OTLP with the official protobuf types after gunzip) and accepts
// every event as Langfuse does (207 with one success per event), without the
// contract fake's validation, OpenAPI checks and merged storage, so that a
// benchmark measures the client rather than the test server.
type Langfuse struct {
	*httptest.Server
	version  string
	requests atomic.Int64
	events   atomic.Int64
	conns    atomic.Int64
	// allocation is what the benchmark should not measure here
	parsers freelist.List[*fastjson.Parser]
	bufs    freelist.List[*[]byte]
}

// NewLangfuse starts a receiver reporting version on /api/public/health
// (3.x: clients pick the ingestion API, 4.x: OTLP).
func NewLangfuse(version string) *Langfuse {
	r := &Langfuse{version: version, parsers: freelist.New[*fastjson.Parser](64), bufs: freelist.New[*[]byte](64)}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/public/health", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "OK", "version": r.version})
	})
	mux.HandleFunc("/api/public/ingestion", r.ingestion)
	mux.HandleFunc("/api/public/otel/v1/traces", r.otel)
	r.Server = httptest.NewUnstartedServer(mux)
	r.Server.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			r.conns.Add(1)
		}
	}
	r.Server.Start()
	return r
}

// Counts are the requests answered and the events (or spans) they held.
func (r *Langfuse) Counts() (requests, events int64) { return r.requests.Load(), r.events.Load() }

// Conns is the number of TCP connections opened to the receiver so far
// (with keep-alive, about as many as requests ever ran at once).
func (r *Langfuse) Conns() int64 { return r.conns.Load() }

func (r *Langfuse) read(body io.Reader) ([]byte, *[]byte, error) {
	bp, ok := r.bufs.Get()
	if !ok {
		bp = new([]byte)
	}
	b := (*bp)[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			*bp = b
			return b, bp, nil
		}
		if err != nil {
			*bp = b
			return nil, bp, err
		}
	}
}

func (r *Langfuse) putBuf(bp *[]byte) { r.bufs.Put(bp) }

func (r *Langfuse) ingestion(w http.ResponseWriter, req *http.Request) {
	if !strings.HasPrefix(req.Header.Get("Authorization"), "Basic ") {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Invalid credentials"})
		return
	}
	data, bp, err := r.read(req.Body)
	defer r.putBuf(bp)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": err.Error()})
		return
	}
	p, ok := r.parsers.Get()
	if !ok {
		p = new(fastjson.Parser)
	}
	defer r.parsers.Put(p)
	v, err := p.ParseBytes(data)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"message": "Invalid request data", "errors": []string{err.Error()}})
		return
	}
	batch, err := v.Get("batch").Array()
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"message": "Invalid request data", "errors": []string{"batch: " + err.Error()}})
		return
	}
	out := make([]byte, 0, 32+40*len(batch))
	out = append(out, `{"errors":[],"successes":[`...)
	for i, ev := range batch {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"id":`...)
		out = ev.Get("id").MarshalTo(out)
		out = append(out, `,"status":201}`...)
	}
	out = append(out, "]}"...)
	r.requests.Add(1)
	r.events.Add(int64(len(batch)))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusMultiStatus)
	_, _ = w.Write(out)
}

func (r *Langfuse) otel(w http.ResponseWriter, req *http.Request) {
	if !strings.HasPrefix(req.Header.Get("Authorization"), "Basic ") {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Invalid credentials"})
		return
	}
	var body io.Reader = req.Body
	if strings.EqualFold(req.Header.Get("Content-Encoding"), "gzip") {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"message": "invalid gzip body"})
			return
		}
		body = zr
	}
	data, bp, err := r.read(body)
	defer r.putBuf(bp)
	var export coltracepb.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(data, &export)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": "Invalid OTLP payload: " + err.Error()})
		return
	}
	n := 0
	for _, rs := range export.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			n += len(ss.Spans)
		}
	}
	r.requests.Add(1)
	r.events.Add(int64(n))
	resp, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(resp)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
