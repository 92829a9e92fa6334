package langfuse

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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

	requests atomic.Int64
	events   atomic.Int64
}

// NewOutput returns an unconnected output with defaults filled in.
func NewOutput(cfg OutputConfig) *Output {
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if cfg.MaxBatchCount <= 0 {
		cfg.MaxBatchCount = DefaultMaxBatchCount
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxRetries < 0 {
		cfg.MaxRetries = 0
	} else if cfg.MaxRetries == 0 {
		cfg.MaxRetries = DefaultMaxRetries
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.HTTPClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = cfg.MaxInFlight + 2
		cfg.HTTPClient = &http.Client{Transport: tr}
	}
	if cfg.Transport == "" {
		cfg.Transport = TransportAuto
	}
	return &Output{cfg: cfg, inflight: make(chan struct{}, cfg.MaxInFlight)}
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

func (o *Output) setAuth(err error) {
	o.authMu.Lock()
	o.authErr = err
	o.authMu.Unlock()
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

// encode maps and writes the events of calls into one buffer.
func (o *Output) encode(calls []schema.Call) ([]encoded, error) {
	out := make([]encoded, 0, 2*len(calls))
	type span struct{ from, to int }
	spans := make([]span, 0, 2*len(calls))
	buf := make([]byte, 0, 2048*len(calls))
	if o.otlp != nil {
		for i := range calls {
			raw, err := marshalSpan(CallSpan(&calls[i], o.cfg.Map))
			if err != nil {
				return nil, fmt.Errorf("encode span of call %s: %w", calls[i].ID, err)
			}
			out = append(out, encoded{call: i, id: calls[i].ID, typ: "span", raw: raw})
		}
		return out, nil
	}
	for i := range calls {
		tr, gen := MapCall(&calls[i], o.cfg.Map)
		for _, ev := range []*Event{&tr, &gen} {
			from := len(buf)
			buf = ev.AppendJSON(buf)
			spans = append(spans, span{from, len(buf)})
			out = append(out, encoded{call: i, id: ev.ID, typ: ev.Type})
		}
	}
	for i, s := range spans {
		out[i].raw = buf[s.from:s.to:s.to]
	}
	return out, nil
}

// chunks cuts events (or OTLP spans) into request bodies of at most MaxBatchBytes and
// MaxBatchCount events (an event larger than MaxBatchBytes goes alone).
func (o *Output) chunks(evs []encoded) [][]encoded {
	var out [][]encoded
	start, size := 0, len(`{"batch":[]}`)
	for i := range evs {
		n := len(evs[i].raw) + 1
		if i > start && (size+n > o.cfg.MaxBatchBytes || i-start >= o.cfg.MaxBatchCount) {
			out = append(out, evs[start:i])
			start, size = i, len(`{"batch":[]}`)
		}
		size += n
	}
	if start < len(evs) {
		out = append(out, evs[start:])
	}
	return out
}

func body(evs []encoded) []byte {
	n := len(`{"batch":[]}`)
	for i := range evs {
		n += len(evs[i].raw) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, `{"batch":[`...)
	for i := range evs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, evs[i].raw...)
	}
	return append(b, "]}"...)
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
	pending, err := o.encode(calls)
	if err != nil {
		return outcomes, err
	}
	left := make([]int, len(calls)) // events not yet accepted, per call
	for _, e := range pending {
		left[e.call]++
	}
	var lastReason string
	for attempt := 0; ; attempt++ {
		var (
			mu         sync.Mutex
			retry      []encoded
			auth       bool
			retryAfter time.Duration
			wg         sync.WaitGroup
		)
		for _, ch := range o.chunks(pending) {
			select {
			case o.inflight <- struct{}{}:
			case <-ctx.Done():
				wg.Wait()
				return outcomes, ctx.Err()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-o.inflight }()
				res := o.send(ctx, ch)
				mu.Lock()
				defer mu.Unlock()
				retryAfter = max(retryAfter, res.retryAfter)
				for i, v := range res.verdicts {
					e := ch[i]
					switch v.v {
					case vAccepted:
						left[e.call]--
						if left[e.call] == 0 && outcomes[e.call].State == Pending {
							outcomes[e.call].State = Accepted
						}
					case vRejected:
						outcomes[e.call] = Outcome{State: Rejected, Reason: e.typ + ": " + v.reason}
					case vAuth:
						auth = true
						lastReason = v.reason
						retry = append(retry, e)
					default:
						lastReason = v.reason
						retry = append(retry, e)
					}
				}
			}()
		}
		wg.Wait()
		if auth {
			err := fmt.Errorf("%w: %s", ErrUnauthorized, lastReason)
			o.setAuth(err)
			return outcomes, err
		}
		o.setAuth(nil)
		// Events of a rejected call need no retry: the call goes to the DLQ.
		pending = pending[:0]
		for _, e := range retry {
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
		wait := max(o.Backoff(attempt), retryAfter)
		t := time.NewTimer(wait)
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

// send posts one chunk and classifies every event; 413 (and a
// request-level 400, which names no event) split the chunk in halves until
// the offending event is alone, which is then rejected.
func (o *Output) send(ctx context.Context, ch []encoded) chunkResult {
	res := chunkResult{verdicts: make([]eventVerdict, len(ch))}
	all := func(v verdict, reason string) chunkResult {
		for i := range res.verdicts {
			res.verdicts[i] = eventVerdict{v, reason}
		}
		return res
	}
	rctx, cancel := context.WithTimeout(ctx, o.cfg.Timeout)
	var (
		resp ingestionResponse
		err  error
	)
	if o.otlp != nil {
		resp, err = o.otlp.post(rctx, ch)
	} else {
		resp, err = o.ingest.post(rctx, body(ch))
	}
	cancel()
	o.requests.Add(1)
	if err != nil {
		return all(vRetry, "network: "+err.Error())
	}
	reason := fmt.Sprintf("HTTP %d %s", resp.Status, resp.Message)
	switch {
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
		h := len(ch) / 2
		a, b := o.send(ctx, ch[:h]), o.send(ctx, ch[h:])
		res.verdicts = append(a.verdicts, b.verdicts...)
		res.retryAfter = max(a.retryAfter, b.retryAfter)
		return res
	default: // 429, 5xx, anything unexpected
		res = all(vRetry, reason)
		res.retryAfter = resp.RetryAfter
		return res
	}
}
