package langfuse

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/schema"
)

// Transports.
const (
	TransportAuto      = "auto"
	TransportIngestion = "ingestion"
	TransportOTLP      = "otlp"
)

// Defaults of OutputConfig.
const (
	DefaultMaxBatchBytes = 3_500_000 // Langfuse's documented batch limit (3.5 MB)
	DefaultMaxBatchCount = 1000      // events per request
	DefaultMaxInFlight   = 4
	DefaultMaxRetries    = 8
	DefaultMinBackoff    = 200 * time.Millisecond
	DefaultMaxBackoff    = 30 * time.Second
	DefaultTimeout       = 30 * time.Second
)

// ErrUnauthorized is returned while Langfuse refuses the keys (401/403, or
// per-event 401). Nothing is acknowledged or dead-lettered meanwhile.
var ErrUnauthorized = errors.New("langfuse: credentials refused")

// ErrRetriesExhausted means some events were still failing with retryable
// errors after MaxRetries attempts; their calls stay pending.
var ErrRetriesExhausted = errors.New("langfuse: retries exhausted")

// OutputConfig is how the output reaches Langfuse and shapes its requests.
type OutputConfig struct {
	Host      string // base URL, e.g. http://localhost:3000
	PublicKey string
	SecretKey string
	Transport string // auto, ingestion or otlp

	Map MapOptions

	MaxBatchBytes int // bytes per request body (default 3.5 MB)
	MaxBatchCount int // events per request (default 1000)
	MaxInFlight   int // concurrent requests (default 4)
	MaxRetries    int // retries after the first attempt, per WriteBatch (0 = default 8, negative = none)
	MinBackoff    time.Duration
	MaxBackoff    time.Duration
	Timeout       time.Duration // per request (default 30s)
	HTTPClient    *http.Client
}

// State is what became of one call in WriteBatch.
type State int

const (
	// Pending: not (yet) accepted; the caller must not acknowledge it.
	Pending State = iota
	// Accepted: Langfuse answered 201 for all its events.
	Accepted
	// Rejected: Langfuse refused one of its events with a non-retryable
	// error; Reason holds Langfuse's message. Dead-letter it.
	Rejected
)

// Outcome is the result of one call.
type Outcome struct {
	State  State
	Reason string
}

// Output sends calls to Langfuse. It is safe for concurrent use; MaxInFlight
// bounds the requests of all WriteBatch calls together.
type Output struct {
	cfg       OutputConfig
	transport string
	ingest    *ingestionTransport
	otlp      *otlpTransport
	inflight  chan struct{}

	authMu  sync.Mutex
	authErr error
	authAt  time.Time // when authErr was recorded

	requests atomic.Int64
	events   atomic.Int64

	bodies chan *bodyBuf // free request body buffers
}

// NewOutput returns an unconnected output with defaults filled in.
func NewOutput(cfg OutputConfig) *Output {
	cfg.MaxBatchBytes = defaults.IfNotPositive(cfg.MaxBatchBytes, DefaultMaxBatchBytes)
	cfg.MaxBatchCount = defaults.IfNotPositive(cfg.MaxBatchCount, DefaultMaxBatchCount)
	cfg.MaxInFlight = defaults.IfNotPositive(cfg.MaxInFlight, DefaultMaxInFlight)
	if cfg.MaxRetries < 0 {
		cfg.MaxRetries = 0
	} else if cfg.MaxRetries == 0 {
		cfg.MaxRetries = DefaultMaxRetries
	}
	cfg.MinBackoff = defaults.IfNotPositive(cfg.MinBackoff, DefaultMinBackoff)
	cfg.MaxBackoff = defaults.IfNotPositive(cfg.MaxBackoff, DefaultMaxBackoff)
	cfg.Timeout = defaults.IfNotPositive(cfg.Timeout, DefaultTimeout)
	if cfg.HTTPClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = cfg.MaxInFlight + 2
		// at most MaxInFlight requests run at once; a request that starts
		// while another's connection is on its way back to the idle pool
		// waits for it instead of dialing one more
		tr.MaxConnsPerHost = cfg.MaxInFlight
		cfg.HTTPClient = &http.Client{Transport: tr}
	}
	if cfg.Transport == "" {
		cfg.Transport = TransportAuto
	}
	return &Output{cfg: cfg, inflight: make(chan struct{}, cfg.MaxInFlight), bodies: make(chan *bodyBuf, 2*cfg.MaxInFlight)}
}

// Transport is the transport in use after Connect.
func (o *Output) Transport() string { return o.transport }

// Connect picks the transport. With "auto" it reads the server version from
// GET /api/public/health: below 4 means the ingestion API, 4 and above OTLP.
func (o *Output) Connect(ctx context.Context) error {
	if o.cfg.Host == "" {
		return errors.New("langfuse: host is empty")
	}
	t := o.cfg.Transport
	if t == TransportAuto {
		v, err := ServerVersion(ctx, o.cfg.HTTPClient, o.cfg.Host)
		if err != nil {
			return err
		}
		t = TransportForVersion(v)
	}
	switch t {
	case TransportIngestion:
		o.ingest = newIngestionTransport(o.cfg.Host, o.cfg.PublicKey, o.cfg.SecretKey, o.cfg.HTTPClient)
	case TransportOTLP:
		o.otlp = newOTLPTransport(o.cfg.Host, o.cfg.PublicKey, o.cfg.SecretKey, o.cfg.HTTPClient)
	default:
		return fmt.Errorf("langfuse: unknown transport %q", t)
	}
	o.transport = t
	return nil
}

// TransportForVersion is the transport "auto" picks for a server version.
func TransportForVersion(version string) string {
	major, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(version), "v"), ".")
	if n, err := strconv.Atoi(major); err == nil && n >= 4 {
		return TransportOTLP
	}
	return TransportIngestion
}

// ServerVersion reads the version from GET /api/public/health.
func ServerVersion(ctx context.Context, client *http.Client, host string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(host, "/")+"/api/public/health", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("langfuse health: %w", err)
	}
	defer resp.Body.Close()
	var h struct {
		Status  string `json:"status"`
		Version string `json:"version"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil || h.Version == "" {
		return "", fmt.Errorf("langfuse health: %d answer without a version", resp.StatusCode)
	}
	return h.Version, nil
}

// Health is nil unless Langfuse refused the credentials on the last request.
func (o *Output) Health() error {
	o.authMu.Lock()
	defer o.authMu.Unlock()
	return o.authErr
}

// refused records a credential refusal.
func (o *Output) refused(err error) {
	o.authMu.Lock()
	defer o.authMu.Unlock()
	o.authErr, o.authAt = err, time.Now()
}

// authorized clears the refusal after a round that started at start got
// through auth; a round that started before the refusal proves nothing.
func (o *Output) authorized(start time.Time) {
	o.authMu.Lock()
	defer o.authMu.Unlock()
	if o.authErr != nil && start.After(o.authAt) {
		o.authErr = nil
	}
}

// Stats are the requests sent and events accepted so far.
func (o *Output) Stats() (requests, eventsAccepted int64) {
	return o.requests.Load(), o.events.Load()
}

// Close releases idle connections.
func (o *Output) Close() error {
	o.cfg.HTTPClient.CloseIdleConnections()
	return nil
}

// encoded is one event ready to send.
type encoded struct {
	call int // index in the WriteBatch calls
	id   string
	typ  string
	raw  []byte
}

// chunk is the events of one request; body is the request body when the
// encoder already wrote it (first attempt of an ingestion request).
type chunk struct {
	evs  []encoded
	body []byte
	buf  *bodyBuf // body's buffer, when it is one of the output's
}

// bodyBuf is a request body buffer the output reuses: bodies are
// megabytes, and a fresh one per request cost the sink more CPU (zeroing,
// growing, collecting) than writing the events into it. A buffer goes
// back to the free list when its WriteBatch returned and every request
// that sent it closed its body: net/http may still read a body after Do
// returned (on an error), and a reused buffer must never be sent half
// overwritten.
type bodyBuf struct {
	b    []byte
	refs atomic.Int32
	free chan *bodyBuf
}

func (bb *bodyBuf) release() {
	if bb.refs.Add(-1) != 0 {
		return
	}
	bb.b = bb.b[:0]
	select {
	case bb.free <- bb:
	default: // the list is full: let the collector have it
	}
}

// bodyReader sends a bodyBuf and releases it once, when net/http closes it.
type bodyReader struct {
	bytes.Reader
	buf    *bodyBuf
	closed atomic.Bool
}

// reader is a body reading body (in bb), holding bb until it is closed.
func (bb *bodyBuf) reader(body []byte) *bodyReader {
	bb.refs.Add(1)
	r := &bodyReader{buf: bb}
	r.Reset(body)
	return r
}

func (r *bodyReader) Close() error {
	if r.closed.CompareAndSwap(false, true) {
		r.buf.release()
	}
	return nil
}

// takeBody is a buffer of at least n bytes from the free list (or a new
// one), held by the caller until it calls release.
func (o *Output) takeBody(n int) *bodyBuf {
	var bb *bodyBuf
	select {
	case bb = <-o.bodies:
		if cap(bb.b) < n {
			bb.b = make([]byte, 0, n)
		}
	default:
		bb = &bodyBuf{b: make([]byte, 0, n), free: o.bodies}
	}
	bb.refs.Store(1)
	return bb
}

const (
	batchHead = `{"batch":[`
	batchTail = `]}`
)

// EventsPerCall is how many events (ingestion) or spans (OTLP) a call becomes.
func (o *Output) EventsPerCall() int {
	if o.otlp != nil {
		return 1
	}
	return 2
}

// encode maps calls and hands chunks to emit as soon as each is full, so
// that the first requests are on the wire while the rest is still being
// encoded. Ingestion events are written straight into their request body;
// an event's raw bytes stay valid (and are reused for retries) after emit.
// It stops early when emit returns false.
func (o *Output) encode(calls []schema.Call, held *[]*bodyBuf, emit func(chunk) bool) error {
	per := o.EventsPerCall()
	evs := make([]encoded, 0, per*len(calls))
	start := 0 // first event of the chunk being filled
	if o.otlp != nil {
		size := 0
		var buf []byte
		for i := range calls {
			from := len(buf)
			buf = appendSpan(buf, &calls[i], o.cfg.Map)
			if i == 0 { // every span of the batch lives in buf until WriteBatch returns
				buf = slices.Grow(buf, min((len(buf)+64)*(len(calls)-1), 8*o.cfg.MaxBatchBytes))
			}
			n := len(buf) - from + 6
			if len(evs) > start && (size+n > o.cfg.MaxBatchBytes || len(evs)-start >= o.cfg.MaxBatchCount) {
				if !emit(chunk{evs: evs[start:len(evs):len(evs)]}) {
					return nil
				}
				start, size = len(evs), 0
			}
			size += n
			evs = append(evs, encoded{call: i, id: calls[i].ID, typ: "span", raw: buf[from:len(buf):len(buf)]})
		}
		if len(evs) > start {
			emit(chunk{evs: evs[start:]})
		}
		return nil
	}
	// Size the body buffer from the first call, so that it rarely grows.
	var cur *bodyBuf
	newBody := func(perEvent, events int) []byte {
		n := min(o.cfg.MaxBatchBytes, perEvent*min(events, o.cfg.MaxBatchCount)+perEvent) + len(batchHead) + len(batchTail)
		cur = o.takeBody(n)
		*held = append(*held, cur)
		return append(cur.b, batchHead...)
	}
	buf := newBody(1024, per*len(calls))
	estimated := false
	var ce callEvents
	for i := range calls {
		ce.reset(&calls[i], &o.cfg.Map)
		for k := range 2 {
			from := len(buf)
			if len(evs) > start {
				buf = append(buf, ',')
				from++
			}
			buf = ce.append(buf, k)
			if !estimated {
				want := min((len(buf)-from+64)*min(per*len(calls), o.cfg.MaxBatchCount), o.cfg.MaxBatchBytes+len(batchTail))
				buf = slices.Grow(buf, max(0, want-len(buf)))
				estimated = true
			}
			if n := len(evs) - start; n > 0 && (len(buf)+len(batchTail) > o.cfg.MaxBatchBytes || n >= o.cfg.MaxBatchCount) {
				// This event opens the next request.
				sent := cur
				next := newBody(len(buf)/n, per*len(calls)-len(evs))
				next = append(next, buf[from:]...)
				body := append(buf[:from-1], batchTail...) // drops the comma
				sent.b = body                              // the buffer may have grown
				if !emit(chunk{evs: evs[start:len(evs):len(evs)], body: body, buf: sent}) {
					return nil
				}
				buf, start, from = next, len(evs), len(batchHead)
			}
			evs = append(evs, encoded{call: i, id: ce.id(k), typ: ce.typ(k), raw: buf[from:len(buf):len(buf)]})
		}
	}
	if len(evs) > start {
		body := append(buf, batchTail...)
		cur.b = body
		emit(chunk{evs: evs[start:], body: body, buf: cur})
	}
	return nil
}

// chunks cuts events (or OTLP spans) into requests of at most MaxBatchBytes and
// MaxBatchCount events (an event larger than MaxBatchBytes goes alone).
func (o *Output) chunks(evs []encoded) []chunk {
	var out []chunk
	start, size := 0, len(batchHead)+len(batchTail)
	for i := range evs {
		n := len(evs[i].raw) + 1
		if i > start && (size+n > o.cfg.MaxBatchBytes || i-start >= o.cfg.MaxBatchCount) {
			out = append(out, chunk{evs: evs[start:i]})
			start, size = i, len(batchHead)+len(batchTail)
		}
		size += n
	}
	if start < len(evs) {
		out = append(out, chunk{evs: evs[start:]})
	}
	return out
}

func body(evs []encoded) []byte {
	n := len(batchHead) + len(batchTail)
	for i := range evs {
		n += len(evs[i].raw) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, batchHead...)
	for i := range evs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, evs[i].raw...)
	}
	return append(b, batchTail...)
}

// verdict is what one request said about one event.
type verdict int

const (
	vRetry verdict = iota
	vAccepted
	vRejected
	vAuth
)

type eventVerdict struct {
	v      verdict
	reason string
}

// chunkResult is a request's verdicts, by position in the chunk.
type chunkResult struct {
	verdicts   []eventVerdict
	retryAfter time.Duration
}

// round is one attempt at sending a set of events: its requests run
// concurrently (bounded by MaxInFlight over all WriteBatch calls) and their
// verdicts are applied to the batch's outcomes as they arrive.
type round struct {
	o        *Output
	ctx      context.Context
	outcomes []Outcome
	left     []int // events not yet accepted, per call
	start    time.Time
	// probe: the keys were refused last time, so requests go one at a
	// time and the round stops at the first refusal (one request per
	// batch while Langfuse refuses them, not one per chunk).
	probe bool
	sent  int

	wg         sync.WaitGroup
	mu         sync.Mutex
	retry      []encoded
	auth       bool
	retryAfter time.Duration
	lastReason string
}

// dispatch starts the request of ch; false when ctx ended first, or when
// probing and the keys are still refused.
func (r *round) dispatch(ch chunk) bool {
	if r.probe {
		r.wg.Wait()
		r.mu.Lock()
		refused := r.auth
		r.mu.Unlock()
		if refused {
			return false
		}
		r.probe = r.sent == 0 // one request got through: the keys work again
	}
	r.sent++
	select {
	case r.o.inflight <- struct{}{}:
	case <-r.ctx.Done():
		return false
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() { <-r.o.inflight }()
		r.apply(ch.evs, r.o.send(r.ctx, ch.evs, ch.body, ch.buf))
	}()
	return true
}

func (r *round) apply(evs []encoded, res chunkResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.retryAfter = max(r.retryAfter, res.retryAfter)
	for i, v := range res.verdicts {
		e := evs[i]
		switch v.v {
		case vAccepted:
			r.left[e.call]--
			if r.left[e.call] == 0 && r.outcomes[e.call].State == Pending {
				r.outcomes[e.call].State = Accepted
			}
		case vRejected:
			r.outcomes[e.call] = Outcome{State: Rejected, Reason: e.typ + ": " + v.reason}
		case vAuth:
			r.auth = true
			r.lastReason = v.reason
			r.retry = append(r.retry, e)
		default:
			r.lastReason = v.reason
			r.retry = append(r.retry, e)
		}
	}
}

// WriteBatch sends the trace and generation of every call and returns one
// outcome per call. Retryable failures (429, 5xx, network, per-event 5xx)
// are retried with backoff up to MaxRetries times; 413 splits the request.
// The error is non-nil when some calls are still Pending: ErrUnauthorized
// (credentials refused), ErrRetriesExhausted, or the context's error.
func (o *Output) WriteBatch(ctx context.Context, calls []schema.Call) ([]Outcome, error) {
	outcomes := make([]Outcome, len(calls))
	if len(calls) == 0 {
		return outcomes, nil
	}
	if o.ingest == nil && o.otlp == nil {
		return outcomes, errors.New("langfuse output: not connected")
	}
	left := make([]int, len(calls))
	for i := range left {
		left[i] = o.EventsPerCall()
	}
	var (
		lastReason string
		pending    []encoded
	)
	for attempt := 0; ; attempt++ {
		r := &round{o: o, ctx: ctx, outcomes: outcomes, left: left, start: time.Now(), probe: o.Health() != nil}
		if attempt == 0 {
			var held []*bodyBuf
			defer func() {
				for _, bb := range held {
					bb.release()
				}
			}()
			err := o.encode(calls, &held, r.dispatch)
			r.wg.Wait()
			if err != nil {
				return outcomes, err
			}
		} else {
			for _, ch := range o.chunks(pending) {
				if !r.dispatch(ch) {
					break
				}
			}
			r.wg.Wait()
		}
		if ctx.Err() != nil {
			return outcomes, ctx.Err()
		}
		if r.lastReason != "" {
			lastReason = r.lastReason
		}
		if r.auth {
			err := fmt.Errorf("%w: %s", ErrUnauthorized, lastReason)
			o.refused(err)
			return outcomes, err
		}
		o.authorized(r.start)
		// Events of a rejected call need no retry: the call goes to the DLQ.
		pending = r.retry[:0]
		for _, e := range r.retry {
			if outcomes[e.call].State == Pending {
				pending = append(pending, e)
			}
		}
		if len(pending) == 0 {
			return outcomes, nil
		}
		if attempt >= o.cfg.MaxRetries {
			return outcomes, fmt.Errorf("%w: %d events after %d attempts, last: %s", ErrRetriesExhausted, len(pending), attempt+1, lastReason)
		}
		t := time.NewTimer(max(o.Backoff(attempt), r.retryAfter))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return outcomes, ctx.Err()
		}
	}
}

// Backoff is the wait before retry attempt+1: exponential from MinBackoff
// to MaxBackoff, with jitter in [d/2, d].
func (o *Output) Backoff(attempt int) time.Duration {
	d := o.cfg.MinBackoff << min(attempt, 20)
	if d > o.cfg.MaxBackoff || d <= 0 {
		d = o.cfg.MaxBackoff
	}
	return d/2 + rand.N(d/2+1)
}

// PartialRetries is how many times spans are resent after an OTLP partial
// success that rejected all of them, before they are dead-lettered.
const PartialRetries = 2

// send posts one chunk and classifies every event; 413 (and a
// request-level 400, which names no event) split the chunk in halves until
// the offending event is alone, which is then rejected.
func (o *Output) send(ctx context.Context, ch []encoded, reqBody []byte, buf *bodyBuf) chunkResult {
	resp, err := o.post(ctx, ch, reqBody, buf)
	return o.classify(ctx, ch, resp, err)
}

func (o *Output) post(ctx context.Context, ch []encoded, reqBody []byte, buf *bodyBuf) (ingestionResponse, error) {
	rctx, cancel := context.WithTimeout(ctx, o.cfg.Timeout)
	defer cancel()
	defer o.requests.Add(1)
	if o.otlp != nil {
		return o.otlp.post(rctx, ch)
	}
	if reqBody == nil {
		reqBody, buf = body(ch), nil
	}
	return o.ingest.post(rctx, reqBody, buf)
}

// halves sends the two halves of ch on their own.
func (o *Output) halves(ctx context.Context, ch []encoded) chunkResult {
	h := len(ch) / 2
	a, b := o.send(ctx, ch[:h], nil, nil), o.send(ctx, ch[h:], nil, nil)
	return chunkResult{verdicts: append(a.verdicts, b.verdicts...), retryAfter: max(a.retryAfter, b.retryAfter)}
}

func (o *Output) classify(ctx context.Context, ch []encoded, resp ingestionResponse, err error) chunkResult {
	res := chunkResult{verdicts: make([]eventVerdict, len(ch))}
	all := func(v verdict, reason string) chunkResult {
		for i := range res.verdicts {
			res.verdicts[i] = eventVerdict{v, reason}
		}
		return res
	}
	if err != nil {
		return all(vRetry, "network: "+err.Error())
	}
	reason := fmt.Sprintf("HTTP %d %s", resp.Status, resp.Message)
	switch {
	case resp.AllAccepted && resp.Rejected > 0:
		// OTLP partial success: Langfuse took some spans and does not say
		// which. Resending is safe (a span upserts by its ids), so narrow it
		// down by halves; spans rejected on their own (or all of a chunk)
		// are resent PartialRetries times, then dead-lettered with
		// Langfuse's message.
		if resp.Rejected < int64(len(ch)) {
			return o.halves(ctx, ch)
		}
		if resp.tries < PartialRetries {
			t := time.NewTimer(o.Backoff(resp.tries))
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return all(vRetry, "stopped while resending after an OTLP partial success")
			}
			next, err := o.post(ctx, ch, nil, nil)
			next.tries = resp.tries + 1
			return o.classify(ctx, ch, next, err)
		}
		return all(vRejected, fmt.Sprintf("langfuse OTLP partial success rejected %d of %d spans: %s", resp.Rejected, len(ch), resp.Message))
	case resp.AllAccepted:
		o.events.Add(int64(len(ch)))
		return all(vAccepted, "")
	case resp.Results != nil:
		for i, e := range ch {
			r, ok := resp.Results[e.id]
			switch {
			case !ok:
				res.verdicts[i] = eventVerdict{vRetry, "no result for event in the answer"}
			case r.Status >= 200 && r.Status < 300:
				res.verdicts[i] = eventVerdict{v: vAccepted}
				o.events.Add(1)
			case r.Status == http.StatusUnauthorized || r.Status == http.StatusForbidden:
				res.verdicts[i] = eventVerdict{vAuth, fmt.Sprintf("event %d %s", r.Status, r.Message)}
			case r.Status == http.StatusTooManyRequests || r.Status >= 500:
				res.verdicts[i] = eventVerdict{vRetry, fmt.Sprintf("event %d %s", r.Status, r.Message)}
			default:
				res.verdicts[i] = eventVerdict{vRejected, fmt.Sprintf("langfuse %d %s", r.Status, r.Message)}
			}
		}
		return res
	case resp.Status == http.StatusUnauthorized || resp.Status == http.StatusForbidden:
		return all(vAuth, reason)
	case resp.Status == http.StatusRequestEntityTooLarge || resp.Status == http.StatusBadRequest:
		if len(ch) == 1 {
			return all(vRejected, "langfuse "+reason)
		}
		return o.halves(ctx, ch)
	default: // 429, 5xx, anything unexpected
		res = all(vRetry, reason)
		res.retryAfter = resp.RetryAfter
		return res
	}
}
