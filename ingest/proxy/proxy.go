// Package proxy is callpipe's capture proxy: an OpenAI-compatible reverse
// proxy placed in front of Xinference that forwards every call unchanged and
// turns each model call into a schema.Event.
//
// # Forwarding
//
// Requests go upstream with their method, path, query, headers and body
// unchanged, and the upstream's answer comes back unchanged: status, headers
// and body bytes, streamed as they arrive and flushed after every write, so an
// SSE stream reaches the client event by event. Hop-by-hop headers are handled
// as HTTP requires, the Host header names the upstream, client-sent
// X-Forwarded-*/Forwarded headers pass unchanged and none are added, and the
// transport never adds or strips compression. Every response carries
// X-Callpipe-Event-Id.
//
// # Capture
//
// POST requests to /v1/chat/completions, /v1/completions, /v1/embeddings,
// /v1/rerank, /v1/images/*, /v1/audio/* and /v1/video/* become events (other
// paths, /v1/models included, are only forwarded). An event holds the start,
// first-token and end times, the request body (at most CaptureLimit bytes,
// RequestTruncated beyond that; multipart bodies are summarised as their form
// fields plus file names and sizes), the response body (a stream is assembled
// into the non-streamed shape: content, reasoning, tool calls, finish reason,
// usage; binary bodies are summarised as content type and size), status and
// error, the caller's API key (hashed), the request's `user`, and the
// upstream instance. Usage is set only when every reported count is
// non-negative (Xinference reports -1 on some tool-call paths).
//
// # Usage injection
//
// With AskUsage, a streamed chat/completion request that does not ask for
// usage (stream_options.include_usage) is sent upstream with
// "stream_options":{"include_usage":true} added (and without Accept-Encoding,
// so that the stream can be filtered); the usage-only chunk this adds is
// recorded and removed from what the client receives, which is therefore
// byte-for-byte the stream it would have got. Should the upstream reject the
// option (400/422 naming stream_options), the request is retried once as the
// client sent it and injection stays off for this proxy.
//
// # Publishing
//
// A finished call goes through a bounded in-memory queue to the emitter (see
// Run), which builds its event there, off the client's path (the request
// body is parsed before forwarding only when usage may be injected),
// redacts it with the capture policy (Options.Capture) and publishes or
// spools it. If
// publishing fails they go to an on-disk spool (package spool) and are
// re-published oldest first once publishing works; a client's call never
// waits on either. Drops happen only when both the queue and the spool are
// full (or the event is rejected as invalid), and each one is counted in
// callpipe_proxy_events_dropped_total{reason} and logged.
package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/ingest/spool"
	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/schema/capture"
)

// Publisher stores events durably (JetStream ack); *ingest.Publisher is
// one. PublishBatch stores several, sent together: res[i] is what became
// of evs[i].
type Publisher interface {
	PublishBatch(ctx context.Context, evs []*schema.Event, res []ingest.PublishResult)
}

// Headers the proxy reads or sets.
const (
	HeaderEventID   = "X-Callpipe-Event-Id"
	HeaderTraceID   = "X-Callpipe-Trace-Id"
	HeaderSessionID = "X-Callpipe-Session-Id"
	// See headers.go for the other caller headers.
)

// Defaults for zero Options fields.
const (
	DefaultCaptureLimit   = 1 << 20
	DefaultSpoolMaxBytes  = 1 << 30
	DefaultQueueSize      = 1024
	DefaultPublishTimeout = 10 * time.Second
	DefaultRetryMin       = 250 * time.Millisecond
	DefaultRetryMax       = 30 * time.Second
)

// Options configure a Proxy. Start from DefaultOptions: the zero value of
// AskUsage is off.
type Options struct {
	// Upstream is the Xinference base URL, e.g. http://xinference:9997.
	Upstream *url.URL
	// CaptureLimit caps the bytes of a request or response kept in an event.
	// Default 1 MiB.
	CaptureLimit int
	// AskUsage enables usage injection for streamed chat/completions.
	AskUsage bool
	// SpoolDir holds events that could not be published. Empty: no spool;
	// events that fail to publish are dropped (and counted).
	SpoolDir string
	// SpoolMaxBytes bounds the spool on disk. Default 1 GiB.
	SpoolMaxBytes int64
	// QueueSize bounds the events waiting in memory. Default 1024.
	QueueSize int
	// Instance overrides the event's instance. Default: the model UID the
	// upstream answered with (Xinference's `model` in the response), else the
	// upstream's host:port; the host:port is always kept in the metadata
	// as `proxy.upstream`.
	Instance string
	Logger   *slog.Logger
	// Registerer receives the proxy's metrics; nil: not registered.
	Registerer prometheus.Registerer

	// PublishTimeout bounds one PublishBatch call. Default 10s.
	PublishTimeout time.Duration
	// RetryMin and RetryMax bound the backoff between failed attempts to
	// publish the spool's oldest event. Defaults 250ms and 30s.
	RetryMin, RetryMax time.Duration
	// MaxEventBytes bounds an encoded event: a larger one has the longest
	// strings in its request and response cut (RequestTruncated, and
	// metadata proxy.response_truncated). Default DefaultMaxEventBytes.
	MaxEventBytes int
	// Permanent reports publish errors that retrying cannot fix; such events
	// are dropped with reason "rejected" instead of being retried. nil:
	// DefaultPermanent.
	Permanent func(error) bool
	// Capture is applied to every event before it is queued for publishing
	// or spooled (capture.Policy.Event), so the spool holds redacted events
	// only. Nil: none.
	Capture *capture.Policy
	// Transport reaches the upstream. Default: a clone of
	// http.DefaultTransport that never adds compression.
	Transport http.RoundTripper
}

// DefaultOptions returns the documented defaults, AskUsage on, for upstream u.
func DefaultOptions(u *url.URL) Options {
	return Options{
		Upstream:       u,
		CaptureLimit:   DefaultCaptureLimit,
		AskUsage:       true,
		SpoolMaxBytes:  DefaultSpoolMaxBytes,
		QueueSize:      DefaultQueueSize,
		MaxEventBytes:  DefaultMaxEventBytes,
		PublishTimeout: DefaultPublishTimeout,
		RetryMin:       DefaultRetryMin,
		RetryMax:       DefaultRetryMax,
	}
}

// Proxy is the capture proxy. It is an http.Handler; run its emitter with Run
// and stop it with Close.
type Proxy struct {
	opts     Options
	pub      Publisher
	log      *slog.Logger
	rp       *httputil.ReverseProxy
	instance string     // Options.Instance, or "" for the answer's model UID
	upstream string     // host:port of the upstream
	batches  batchFiles // batch jobs' output files seen in answers (batches.go)
	m        *metrics
	spool    *spool.Spool

	noInject atomic.Bool // upstream rejected stream_options
	dirty    atomic.Bool // spooled records not yet fsynced

	mu      sync.RWMutex // guards closing against enqueues
	closing bool
	queue   chan queued
	wake    chan struct{}

	stop      chan struct{}
	stopOnce  sync.Once
	running   atomic.Bool
	runDone   chan struct{}
	closeOnce sync.Once
	closeErr  error

	drops dropLog
}

// New builds a proxy publishing through pub and opens its spool.
func New(opts Options, pub Publisher) (*Proxy, error) {
	u := opts.Upstream
	if u == nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("proxy: Upstream must be an http(s) URL with a host")
	}
	if pub == nil {
		return nil, errors.New("proxy: nil Publisher")
	}
	opts.CaptureLimit = defaults.IfNotPositive(opts.CaptureLimit, DefaultCaptureLimit)
	opts.SpoolMaxBytes = defaults.IfNotPositive(opts.SpoolMaxBytes, DefaultSpoolMaxBytes)
	opts.QueueSize = defaults.IfNotPositive(opts.QueueSize, DefaultQueueSize)
	opts.MaxEventBytes = defaults.IfNotPositive(opts.MaxEventBytes, DefaultMaxEventBytes)
	opts.PublishTimeout = defaults.IfNotPositive(opts.PublishTimeout, DefaultPublishTimeout)
	opts.RetryMin = defaults.IfNotPositive(opts.RetryMin, DefaultRetryMin)
	if opts.RetryMax < opts.RetryMin {
		opts.RetryMax = max(DefaultRetryMax, opts.RetryMin)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	p := &Proxy{
		opts:     opts,
		pub:      pub,
		log:      opts.Logger,
		instance: opts.Instance,
		queue:    make(chan queued, opts.QueueSize),
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		runDone:  make(chan struct{}),
	}
	p.drops.log = p.log
	p.upstream = hostPort(u)
	if opts.SpoolDir != "" {
		sp, err := spool.Open(opts.SpoolDir, spool.Options{
			MaxBytes: opts.SpoolMaxBytes, Sync: spool.SyncManual, Logger: p.log,
		})
		if err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
		p.spool = sp
	}
	m, err := newMetrics(opts.Registerer, p)
	if err != nil {
		if p.spool != nil {
			p.spool.Close()
		}
		return nil, err
	}
	p.m = m

	transport := opts.Transport
	if transport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DisableCompression = true
		t.MaxIdleConnsPerHost = 256
		transport = t
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			stripCallerHeaders(pr.Out.Header)
			for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if v, ok := pr.In.Header[h]; ok {
					pr.Out.Header[h] = v
				}
			}
		},
		Transport: &upstreamTransport{base: transport, p: p},
		// 0: a streamed answer (text/event-stream, or no Content-Length) is
		// flushed at every write, so tokens reach the client as the model
		// sends them; an answer of known length goes out with its headers in
		// one write at the end instead of a flush per read.
		FlushInterval:  0,
		BufferPool:     bufferPool{},
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.errorHandler,
		ErrorLog:       slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
	}
	return p, nil
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// Endpoint kinds, also the values of the metrics' endpoint label.
const (
	kindChat        = "chat"
	kindCompletions = "completions"
	kindEmbeddings  = "embeddings"
	kindRerank      = "rerank"
	kindImages      = "images"
	kindAudio       = "audio"
	kindVideo       = "video"
)

var allKinds = []string{kindChat, kindCompletions, kindEmbeddings, kindRerank, kindImages, kindAudio, kindVideo}

// classify returns the kind of a captured call, or "" to only forward.
func classify(r *http.Request) string {
	if r.Method != http.MethodPost {
		return ""
	}
	return kindOf(r.URL.Path)
}

// kindOf is the kind of a call to the endpoint path, or "" for a path the
// proxy does not capture.
func kindOf(path string) string {
	switch {
	case path == "/v1/chat/completions":
		return kindChat
	case path == "/v1/completions":
		return kindCompletions
	case path == "/v1/embeddings":
		return kindEmbeddings
	case path == "/v1/rerank":
		return kindRerank
	case strings.HasPrefix(path, "/v1/images/"):
		return kindImages
	case strings.HasPrefix(path, "/v1/audio/"):
		return kindAudio
	case strings.HasPrefix(path, "/v1/video/"):
		return kindVideo
	}
	return ""
}

type callKey struct{}

func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// ServeHTTP forwards r upstream and, for captured endpoints, emits its event.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := newEventID()
	w.Header().Set(HeaderEventID, id)
	kind := classify(r)
	if kind == "" {
		if t := p.batchTapFor(r); t != nil {
			r = r.WithContext(context.WithValue(r.Context(), batchTapKey{}, t))
		}
		p.rp.ServeHTTP(w, r)
		return
	}
	attrs, herr := readCallerHeaders(r.Header)
	if herr != nil {
		p.log.Info("proxy: call refused", "header", herr.header, "reason", herr.reason, "event_id", id)
		refuseHeader(w, herr)
		return
	}
	c := newCall(p, id, kind, r, attrs)
	c.captureRequest(r)
	r = r.WithContext(context.WithValue(r.Context(), callKey{}, c))
	// Deferred so that it also runs when ReverseProxy aborts the response
	// with http.ErrAbortHandler (a broken stream).
	defer c.done(r)
	p.rp.ServeHTTP(&clientWriter{ResponseWriter: w, c: c}, r)
}

func (p *Proxy) modifyResponse(resp *http.Response) error {
	if c := callFrom(resp.Request.Context()); c != nil {
		c.onResponse(resp)
	}
	if t := batchTapFrom(resp.Request.Context()); t != nil {
		t.onResponse(resp)
	}
	return nil
}

func (p *Proxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	c := callFrom(r.Context())
	if r.Context().Err() != nil {
		// The client is gone; nobody to answer.
		return
	}
	p.log.Warn("proxy: upstream unreachable", "upstream", p.upstream, "path", r.URL.Path, "err", err)
	body := []byte(`{"error":{"message":"callpipe proxy: upstream unreachable","type":"upstream_error","code":502}}`)
	if c != nil {
		c.proxyErr = err
		c.status = http.StatusBadGateway
		c.proxyBody = body
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadGateway)
	w.Write(body)
}

// clientWriter notes write failures towards the client. Flush and Hijack
// reach the underlying writer through Unwrap (http.ResponseController).
type clientWriter struct {
	http.ResponseWriter
	c *call
}

func (w *clientWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	if err != nil && w.c.clientErr == nil {
		w.c.clientErr = err
	}
	return n, err
}

func (w *clientWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// upstreamTransport sends a call's body read whole as an in-memory body
// (inMemoryBody: headers and body in one write), and resends, as the
// client sent it, a request whose injected stream_options the upstream
// rejected.
type upstreamTransport struct {
	base http.RoundTripper
	p    *Proxy
}

func (t *upstreamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c := callFrom(req.Context())
	if c != nil && c.upstreamBody != nil && req.Body != nil {
		out := *req // RoundTrip may not modify req
		out.Body = inMemoryBody(c.upstreamBody)
		req = &out
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil || c == nil || !c.injected ||
		(resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusUnprocessableEntity) {
		return resp, err
	}
	head, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if !bytes.Contains(head, []byte("stream_options")) && !bytes.Contains(head, []byte("include_usage")) {
		resp.Body = &prefixedBody{r: io.MultiReader(bytes.NewReader(head), resp.Body), c: resp.Body}
		return resp, nil
	}
	resp.Body.Close()
	if t.p.noInject.CompareAndSwap(false, true) {
		t.p.log.Warn("proxy: upstream rejects stream_options; usage injection turned off",
			"upstream", t.p.upstream, "status", resp.StatusCode, "answer", clip(string(head), 300))
	}
	c.injected = false
	retry := req.Clone(req.Context())
	retry.Body = io.NopCloser(bytes.NewReader(c.origBody))
	retry.ContentLength = c.origLength
	if c.origAcceptEncoding != nil {
		retry.Header["Accept-Encoding"] = c.origAcceptEncoding
	}
	return t.base.RoundTrip(retry)
}

type prefixedBody struct {
	r io.Reader
	c io.Closer
}

func (b *prefixedBody) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *prefixedBody) Close() error               { return b.c.Close() }

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

type bufferPool struct{}

func (bufferPool) Get() []byte  { return *(copyBuffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }
