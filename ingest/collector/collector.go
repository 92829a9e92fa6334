// Package collector is the HTTP side of ingest: POST /v1/events takes one
// event, a JSON array or NDJSON, and answers only after JetStream has
// acknowledged every event it reports as accepted.
package collector

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/internal/freelist"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/schema/capture"
)

// Publisher is what the collector needs from ingest.Publisher.
type Publisher interface {
	PublishMsgAsync(msg *nats.Msg) (ingest.Pending, error)
	Connected() bool
}

// Options configure a Collector.
type Options struct {
	MaxBodyBytes int64 // after decompression; default 8 MiB
	// ReadTimeout bounds reading one request body (default 30s), so that a
	// client sending slowly (or not at all) cannot hold a connection.
	ReadTimeout time.Duration
	Tokens      []string
	Limits      schema.Limits
	// AckTimeout bounds the wait for JetStream acknowledgements of one request.
	AckTimeout time.Duration
	// Capture is applied to every valid event before it is published
	// (capture.Policy.Event). Nil: none.
	Capture    *capture.Policy
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Collector serves POST /v1/events.
type Collector struct {
	pub    Publisher
	opts   Options
	log    *slog.Logger
	events *prometheus.CounterVec
}

// New returns a collector that publishes through pub.
func New(pub Publisher, o Options) *Collector {
	o.MaxBodyBytes = defaults.IfNotPositive(o.MaxBodyBytes, 8<<20)
	if o.Limits.MaxEventBytes <= 0 {
		o.Limits = schema.DefaultLimits()
	}
	o.AckTimeout = defaults.IfNotPositive(o.AckTimeout, 10*time.Second)
	o.ReadTimeout = defaults.IfNotPositive(o.ReadTimeout, 30*time.Second)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Collector{pub: pub, opts: o, log: o.Logger,
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callpipe_collect_events_total",
			Help: "Events received by the collector, by result (accepted, duplicate, rejected, unavailable).",
		}, []string{"result"}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(c.events)
	}
	return c
}

// Rejection is one event that was not accepted, and why.
type Rejection struct {
	Index int    `json:"index"`
	ID    string `json:"id,omitempty"`
	Error string `json:"error"`
}

// Reply is the body of every answer to POST /v1/events.
type Reply struct {
	Accepted   int         `json:"accepted"`
	Duplicates int         `json:"duplicates"`
	Rejected   []Rejection `json:"rejected"` // the first MaxRejections, in body order
	// RejectionsOmitted counts the rejected events beyond MaxRejections,
	// which are not listed: the answer stays small whatever the body holds.
	RejectionsOmitted int    `json:"rejections_omitted"`
	Error             string `json:"error,omitempty"`
}

// MaxRejections is the most rejections one answer lists.
const MaxRejections = 1000

// rejectedTotal is every rejected event, listed or not.
func (r Reply) rejectedTotal() int { return len(r.Rejected) + r.RejectionsOmitted }

const retryAfterSeconds = "2"

func (c *Collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeReply(w, http.StatusMethodNotAllowed, Reply{Error: "method " + r.Method + " not allowed; use POST"})
		return
	}
	if !c.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="callpipe"`)
		writeReply(w, http.StatusUnauthorized, Reply{Error: "Authorization: missing or invalid bearer token"})
		return
	}
	if !c.pub.Connected() {
		c.unavailable(w, errors.New("NATS is not connected"))
		return
	}
	buf := getBody()
	// After the answer is written: the events, their rejections and the
	// answer may all point into the body.
	defer putBody(buf)
	body, status, err := c.readBody(w, r, buf)
	if err != nil {
		writeReply(w, status, Reply{Error: err.Error()})
		return
	}
	events, err := split(r.Header.Get("Content-Type"), body)
	if err != nil {
		var ue *unsupportedTypeError
		if errors.As(err, &ue) {
			writeReply(w, http.StatusUnsupportedMediaType, Reply{Error: err.Error()})
			return
		}
		writeReply(w, http.StatusBadRequest, Reply{Error: err.Error(), Rejected: []Rejection{}})
		return
	}
	reply, err := c.publish(r.Context(), events, len(body))
	if err != nil {
		c.unavailable(w, err)
		return
	}
	c.events.WithLabelValues("accepted").Add(float64(reply.Accepted))
	c.events.WithLabelValues("duplicate").Add(float64(reply.Duplicates))
	c.events.WithLabelValues("rejected").Add(float64(reply.rejectedTotal()))
	if reply.Accepted+reply.Duplicates == 0 {
		writeReply(w, http.StatusBadRequest, reply)
		return
	}
	writeReply(w, http.StatusAccepted, reply)
}

func (c *Collector) unavailable(w http.ResponseWriter, err error) {
	c.events.WithLabelValues("unavailable").Inc()
	c.log.Warn("collector: jetstream unavailable", "err", err)
	w.Header().Set("Retry-After", retryAfterSeconds)
	writeReply(w, http.StatusServiceUnavailable, Reply{Error: "event stream unavailable, retry later: " + err.Error(), Rejected: []Rejection{}})
}

func (c *Collector) authorized(r *http.Request) bool {
	if len(c.opts.Tokens) == 0 {
		return true
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return false
	}
	valid := 0
	for _, t := range c.opts.Tokens {
		valid |= subtle.ConstantTimeCompare([]byte(token), []byte(t))
	}
	return valid == 1
}

// readBody decompresses and reads the body, never holding more than
// MaxBodyBytes+1 decompressed bytes, so a compression bomb costs nothing.
func (c *Collector) readBody(w http.ResponseWriter, r *http.Request, buf *bytes.Buffer) ([]byte, int, error) {
	limit := c.opts.MaxBodyBytes
	// Best effort: a ResponseWriter that cannot set deadlines (a test
	// recorder) reads without one.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(c.opts.ReadTimeout))
	var src io.Reader = http.MaxBytesReader(w, r.Body, limit)
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(src)
		if err != nil {
			return nil, http.StatusBadRequest, fmt.Errorf("body: invalid gzip: %v", err)
		}
		defer zr.Close()
		src = zr
	case "zstd":
		zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(limit)*2))
		if err != nil {
			return nil, http.StatusBadRequest, fmt.Errorf("body: invalid zstd: %v", err)
		}
		defer zr.Close()
		src = zr
	default:
		return nil, http.StatusUnsupportedMediaType, fmt.Errorf("Content-Encoding: %q not supported (use gzip, zstd or none)", enc)
	}
	_, err := buf.ReadFrom(io.LimitReader(src, limit+1))
	body := buf.Bytes()
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr) || int64(len(body)) > limit:
		return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("body: larger than the limit of %d bytes after decompression (collect.max_body_bytes); send fewer events per request", limit)
	case isTimeout(err):
		return nil, http.StatusRequestTimeout, fmt.Errorf("body: not received within %s", c.opts.ReadTimeout)
	case err != nil:
		return nil, http.StatusBadRequest, fmt.Errorf("body: %v", err)
	}
	return body, 0, nil
}

// Request bodies and the messages made of their events are reused across
// requests: at thousands of events a second their bytes were most of what
// the collector allocated (and the garbage collector then scanned for).
var (
	bodies   = freelist.New[*bytes.Buffer](maxFreeBuffers)
	outboxes = freelist.New[*outbox](maxFreeBuffers)
)

const (
	// maxFreeBuffers bounds each free list: requests in flight at once
	// beyond it allocate their own.
	maxFreeBuffers = 4
	// maxPooledBody: buffers for larger bodies are left to the garbage
	// collector rather than kept for a rare request of that size.
	maxPooledBody = 4 << 20
	// maxPooledMessages: the same for the messages of a request of many
	// small events.
	maxPooledMessages = 16 << 10
)

func getBody() *bytes.Buffer {
	if b, ok := bodies.Get(); ok {
		b.Reset()
		return b
	}
	return new(bytes.Buffer)
}

func putBody(b *bytes.Buffer) {
	if b.Cap() <= maxPooledBody {
		bodies.Put(b)
	}
}

// outbox is what the messages of one request are made of until JetStream
// has acknowledged them all: their bytes one after another (an arena), the
// messages themselves with their headers, and the acknowledgements awaited.
// A later request reuses it, unless a message may still be in flight.
type outbox struct {
	arena   []byte
	msgs    []nats.Msg
	pending []ingest.Pending
	events  schema.Decoder // each event is re-encoded before the next is decoded
}

// arenaSize is the room for the messages of a body of n bytes: all of them,
// as masks seldom lengthen an event by much.
func arenaSize(n int) int { return n + n/8 + 4<<10 }

// getOutbox returns an empty outbox with room for the messages of a body of
// n bytes.
func getOutbox(n int) *outbox {
	o, ok := outboxes.Get()
	if !ok {
		o = new(outbox)
	}
	if cap(o.arena) < arenaSize(n) {
		o.arena = make([]byte, 0, arenaSize(n))
	}
	o.arena, o.msgs, o.pending = o.arena[:0], o.msgs[:0], o.pending[:0]
	return o
}

// putOutbox gives o to a later request; every message of o is acknowledged.
func putOutbox(o *outbox) {
	if cap(o.arena) <= arenaSize(maxPooledBody) && cap(o.msgs) <= maxPooledMessages {
		clear(o.pending) // the futures, let go
		outboxes.Put(o)
	}
}

// next returns the message for the next event: the one an earlier request
// made in this place (its header is reused) or a new one. A message handed
// out stays where it is: growing msgs copies the earlier ones, not them.
func (o *outbox) next() *nats.Msg {
	if len(o.msgs) == cap(o.msgs) {
		o.msgs = append(o.msgs, nats.Msg{})
	} else {
		o.msgs = o.msgs[:len(o.msgs)+1]
	}
	return &o.msgs[len(o.msgs)-1]
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

type unsupportedTypeError struct{ contentType string }

func (e *unsupportedTypeError) Error() string {
	return fmt.Sprintf("Content-Type: %q not supported (use application/json or application/x-ndjson)", e.contentType)
}

// split returns the events of the body, one raw JSON text each, in order.
// It walks the body instead of cutting it into a slice first: millions of
// tiny events (`{}` lines) cost no more memory than the body itself.
func split(contentType string, body []byte) (iter.Seq2[int, []byte], error) {
	mt := "application/json"
	if contentType != "" {
		parsed, _, err := mime.ParseMediaType(contentType)
		if err != nil {
			return nil, &unsupportedTypeError{contentType}
		}
		mt = parsed
	}
	switch mt {
	case "application/x-ndjson", "application/jsonl", "application/jsonlines", "application/x-jsonlines":
		return ndjsonLines(body), nil
	case "application/json":
	default:
		return nil, &unsupportedTypeError{contentType}
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, errors.New("body: empty")
	}
	if trimmed[0] != '[' {
		return func(yield func(int, []byte) bool) { yield(0, body) }, nil
	}
	// A malformed array is refused whole, before anything is published.
	if !json.Valid(trimmed) {
		var arr []json.RawMessage
		err := json.Unmarshal(trimmed, &arr)
		return nil, fmt.Errorf("body: invalid JSON array: %v", err)
	}
	if whole := bytes.TrimSpace(trimmed); len(bytes.TrimSpace(whole[1:len(whole)-1])) == 0 {
		return nil, errors.New("body: empty array")
	}
	return func(yield func(int, []byte) bool) {
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		_, _ = dec.Token() // [
		for i := 0; dec.More(); i++ {
			var raw json.RawMessage
			if dec.Decode(&raw) != nil || !yield(i, raw) {
				return
			}
		}
	}, nil
}

// ndjsonLines yields the non-blank lines of body as SplitNDJSON returns them.
func ndjsonLines(body []byte) iter.Seq2[int, []byte] {
	return func(yield func(int, []byte) bool) {
		i := 0
		for line := range bytes.Lines(body) {
			if line = bytes.TrimRight(line, "\r\n"); len(bytes.TrimSpace(line)) > 0 {
				if !yield(i, line) {
					return
				}
				i++
			}
		}
	}
}

// SplitNDJSON returns the non-blank lines of body; CRLF endings are accepted.
func SplitNDJSON(body []byte) [][]byte {
	var out [][]byte
	for _, line := range ndjsonLines(body) {
		out = append(out, line)
	}
	return out
}

// publish decodes each raw event, publishes the valid ones and waits for
// every acknowledgement. An error means at least one valid event may not be
// stored; the client must retry the whole request (ids make that safe).
//
// The messages are made in an outbox sized for the body (their bytes one
// after another in one buffer), reused once every one of them is
// acknowledged.
func (c *Collector) publish(ctx context.Context, events iter.Seq2[int, []byte], bodyLen int) (Reply, error) {
	reply := Reply{Rejected: []Rejection{}}
	out := getOutbox(bodyLen)
	for i, raw := range events {
		// the event is re-encoded below, before the body is let go
		ev, err := out.events.DecodeShared(raw, c.opts.Limits)
		if err == nil {
			c.opts.Capture.Event(ev)
			free := out.arena[len(out.arena):]
			msg := out.next()
			ingest.FillMessage(msg, free, ev)
			if n := len(msg.Data); n <= cap(free) {
				// written in the arena (else it outgrew it: an allocation of its own)
				msg.Data = msg.Data[:n:n]
				out.arena = out.arena[:len(out.arena)+n]
			}
			// Masks can lengthen a text ([REDACTED] for a short address),
			// and normalize decodes with the same limit.
			if lim := c.opts.Limits.MaxEventBytes; lim > 0 && len(msg.Data) > lim {
				err = fmt.Errorf("event: %d bytes as published (capture masks applied), limit %d (event.max_bytes)", len(msg.Data), lim)
				out.msgs = out.msgs[:len(out.msgs)-1] // not published: its place is free
			} else {
				p, perr := c.pub.PublishMsgAsync(msg)
				if perr != nil {
					return reply, perr // the outbox stays with the messages in flight
				}
				out.pending = append(out.pending, p)
				continue
			}
		}
		if len(reply.Rejected) >= MaxRejections {
			reply.RejectionsOmitted++
			continue
		}
		reply.Rejected = append(reply.Rejected, Rejection{Index: i, ID: peekID(raw, ev), Error: err.Error()})
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.AckTimeout)
	defer cancel()
	var firstErr error
	for _, p := range out.pending {
		dup, err := p.Wait(ctx)
		switch {
		case err != nil:
			if firstErr == nil {
				firstErr = err
			}
		case dup:
			reply.Duplicates++
		default:
			reply.Accepted++
		}
	}
	if firstErr == nil {
		putOutbox(out) // else a message may still be in flight
	}
	return reply, firstErr
}

// peekID finds the id of an event that failed validation, for the client's benefit.
func peekID(raw []byte, ev *schema.Event) string {
	if ev != nil {
		return ev.ID
	}
	var probe struct {
		ID any `json:"id"`
	}
	if json.Unmarshal(raw, &probe) == nil {
		if s, ok := probe.ID.(string); ok && len(s) <= 128 {
			return s
		}
	}
	return ""
}

func writeReply(w http.ResponseWriter, status int, reply Reply) {
	if reply.Rejected == nil {
		reply.Rejected = []Rejection{}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(reply)
}
