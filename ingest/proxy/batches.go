package proxy

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/callpipe/callpipe/schema"
)

// Batch jobs (the OpenAI-style /v1/batches and /v1/files endpoints, where
// the upstream serves them) run their calls inside the upstream, out of the
// proxy's sight. What passes through the proxy is the batch object (when
// the client creates, reads, lists or cancels a job) and the job's output
// file (when the client downloads it): one line per call of the job, with
// its custom_id and the upstream's response. The proxy remembers which
// output and error files belong to which job, and traces each line of such
// a file as a call with source batch and the job's id as batch_id.
//
// The call's id is derived from the job and the line's custom_id, so a file
// downloaded twice yields the same calls (dropped again by the stream's
// duplicate window, and collapsed by id in every read). The upstream does
// not say when each call of a job ran: a call's start and end are the job's
// (in_progress_at, completed_at), and its request is not known (the input
// file is not read); the response, usage and status are the line's.

const (
	// maxBatchFiles bounds the output files the proxy remembers.
	maxBatchFiles = 4096
	// maxBatchObjectBytes bounds a batch object (or list) the proxy reads.
	maxBatchObjectBytes = 1 << 20
	// maxBatchOutputBytes bounds an output file the proxy traces; the
	// calls of a larger one are not traced (logged and counted).
	maxBatchOutputBytes = 64 << 20
)

// batchJob is what the proxy knows of a batch job.
type batchJob struct {
	ID         string `json:"id"`
	Endpoint   string `json:"endpoint"`
	CreatedAt  int64  `json:"created_at"`
	InProgress int64  `json:"in_progress_at"`
	Completed  int64  `json:"completed_at"`
	Finalizing int64  `json:"finalizing_at"`
	OutputFile string `json:"output_file_id"`
	ErrorFile  string `json:"error_file_id"`
}

// batchFiles maps output and error file ids to their jobs, oldest forgotten
// first.
type batchFiles struct {
	mu    sync.Mutex
	jobs  map[string]batchJob
	order []string
}

func (b *batchFiles) remember(j batchJob) {
	if j.ID == "" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.jobs == nil {
		b.jobs = map[string]batchJob{}
	}
	for _, f := range []string{j.OutputFile, j.ErrorFile} {
		if f == "" {
			continue
		}
		if _, ok := b.jobs[f]; !ok {
			b.order = append(b.order, f)
		}
		b.jobs[f] = j
	}
	for len(b.order) > maxBatchFiles {
		delete(b.jobs, b.order[0])
		b.order = b.order[1:]
	}
}

func (b *batchFiles) job(file string) (batchJob, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	j, ok := b.jobs[file]
	return j, ok
}

// rememberObjects records the jobs of a batch object or of a list of them.
func (b *batchFiles) rememberObjects(body []byte) {
	var v struct {
		Object string            `json:"object"`
		Data   []json.RawMessage `json:"data"`
	}
	if json.Unmarshal(body, &v) != nil {
		return
	}
	objs := v.Data
	if v.Object != "list" {
		objs = []json.RawMessage{body}
	}
	for _, o := range objs {
		var j batchJob
		if json.Unmarshal(o, &j) == nil {
			b.remember(j)
		}
	}
}

// batchTap reads a batch route's response as it passes to the client.
type batchTap struct {
	p      *Proxy
	object bool     // a batch object or list, else an output file
	job    batchJob // the output file's job
	upTo   int
	buf    bytes.Buffer
	over   bool
}

type batchTapKey struct{}

// batchTapFor returns the tap for r when r is a batch route the proxy
// reads: a batch object route, or the content of a known job's file.
func (p *Proxy) batchTapFor(r *http.Request) *batchTap {
	path := r.URL.Path
	if path == "/v1/batches" || strings.HasPrefix(path, "/v1/batches/") {
		return &batchTap{p: p, object: true, upTo: maxBatchObjectBytes}
	}
	if r.Method != http.MethodGet {
		return nil
	}
	file, ok := strings.CutPrefix(path, "/v1/files/")
	if !ok {
		return nil
	}
	file, ok = strings.CutSuffix(file, "/content")
	if !ok || file == "" || strings.Contains(file, "/") {
		return nil
	}
	j, ok := p.batches.job(file)
	if !ok {
		return nil
	}
	return &batchTap{p: p, job: j, upTo: maxBatchOutputBytes}
}

func batchTapFrom(ctx context.Context) *batchTap {
	t, _ := ctx.Value(batchTapKey{}).(*batchTap)
	return t
}

// onResponse taps a successful answer's body.
func (t *batchTap) onResponse(resp *http.Response) {
	if resp.StatusCode != http.StatusOK {
		return
	}
	enc := resp.Header.Get("Content-Encoding")
	if enc != "" && enc != "identity" && enc != "gzip" {
		return
	}
	resp.Body = &batchBody{rc: resp.Body, t: t, gzip: enc == "gzip"}
}

// batchBody copies what the client reads, up to the tap's bound, and hands
// it to the tap once the body is read to its end.
type batchBody struct {
	rc   io.ReadCloser
	t    *batchTap
	gzip bool
	done bool
}

func (b *batchBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 && !b.t.over {
		if b.t.buf.Len()+n > b.t.upTo {
			b.t.over = true
			b.t.buf = bytes.Buffer{}
		} else {
			b.t.buf.Write(p[:n])
		}
	}
	if err == io.EOF && !b.done {
		b.done = true
		// off the response path: the client has its last bytes already
		go b.t.finish(b.gzip)
	}
	return n, err
}

func (b *batchBody) Close() error { return b.rc.Close() }

// finish records the jobs of a batch object, or traces the calls of an
// output file.
func (t *batchTap) finish(gzipped bool) {
	if t.over {
		if !t.object {
			t.p.log.Warn("proxy: batch output file too large to trace its calls",
				"batch_id", t.job.ID, "limit_bytes", maxBatchOutputBytes)
			t.p.m.dropped.WithLabelValues(DropTooLarge).Inc()
		}
		return
	}
	body := t.buf.Bytes()
	if gzipped {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return
		}
		if body, err = io.ReadAll(io.LimitReader(zr, int64(t.upTo)+1)); err != nil || len(body) > t.upTo {
			return
		}
	}
	if t.object {
		t.p.batches.rememberObjects(body)
		return
	}
	for line := range bytes.Lines(body) {
		if ev := t.p.batchCall(t.job, bytes.TrimSpace(line)); ev != nil {
			t.p.emit(ev, kindOf(ev.Endpoint))
		}
	}
}

// batchOutputLine is one line of a batch job's output or error file.
type batchOutputLine struct {
	ID       string `json:"id"`
	CustomID string `json:"custom_id"`
	Response *struct {
		StatusCode int             `json:"status_code"`
		RequestID  string          `json:"request_id"`
		Body       json.RawMessage `json:"body"`
	} `json:"response"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// batchCall is the event of one output line of job, or nil when the line
// is not one.
func (p *Proxy) batchCall(job batchJob, line []byte) *schema.Event {
	var l batchOutputLine
	if len(line) == 0 || json.Unmarshal(line, &l) != nil || l.CustomID == "" || (l.Response == nil && l.Error == nil) {
		return nil
	}
	start, end := job.times()
	id := batchCallID(job.ID, l.CustomID)
	ev := &schema.Event{
		ID: id, TraceID: id, StartTime: start, EndTime: &end,
		Endpoint: job.Endpoint, Source: schema.SourceBatch, BatchID: job.ID,
		Status: http.StatusOK,
	}
	meta := map[string]any{"upstream": p.upstream, "batch_custom_id": l.CustomID}
	if l.ID != "" {
		meta["batch_request_id"] = l.ID
	}
	var fields map[string]json.RawMessage
	if l.Response != nil {
		if l.Response.StatusCode > 0 {
			ev.Status = l.Response.StatusCode
		}
		if len(l.Response.Body) > 0 && !isNull(l.Response.Body) {
			ev.Response = l.Response.Body
			fields, _ = topLevel(l.Response.Body)
		}
	}
	if l.Error != nil {
		if ev.Status < 400 {
			ev.Status = http.StatusInternalServerError
		}
		ev.Error = strings.TrimSpace(l.Error.Code + ": " + l.Error.Message)
	} else if ev.Status >= 400 {
		ev.Error = errorText(ev.Status, fields, l.Response.Body)
	}
	ev.Usage = usageFrom(fields["usage"])
	ev.Model = jsonString(fields["model"])
	ev.Instance = p.instance
	if ev.Instance == "" {
		ev.Instance = ev.Model
	}
	if ev.Instance == "" {
		ev.Instance = p.upstream
	}
	if b, err := json.Marshal(meta); err == nil {
		ev.Metadata = map[string]json.RawMessage{"proxy": b}
	}
	return ev
}

// times are the start and end every call of the job gets: when it began
// running (else was created) and when it completed (else began finalizing,
// else now).
func (j batchJob) times() (start, end time.Time) {
	first := func(ts ...int64) time.Time {
		for _, t := range ts {
			if t > 0 {
				return time.Unix(t, 0).UTC()
			}
		}
		return time.Time{}
	}
	start, end = first(j.InProgress, j.CreatedAt), first(j.Completed, j.Finalizing)
	now := time.Now().UTC().Truncate(time.Second)
	if start.IsZero() || start.After(now) {
		start = now
	}
	if end.IsZero() || end.Before(start) {
		end = start
	}
	return start, end
}

// batchCallID is the call id of a job's line: a UUID (version 8) of the job
// and the line's custom_id, the same whenever the file is read.
func batchCallID(job, customID string) string {
	h := sha256.Sum256([]byte("batch\x00" + job + "\x00" + customID))
	var b [16]byte
	copy(b[:], h[:16])
	b[6] = b[6]&0x0f | 0x80
	b[8] = b[8]&0x3f | 0x80
	return uuidString(b)
}
