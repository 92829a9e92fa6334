// Package usageapi is callpipe's read side over HTTP: the usage API
// (/api/v1/usage, /api/v1/calls, /api/v1/calls/{id}, /api/v1/traces/{id})
// over ClickHouse, the dashboard served from embedded assets at /, and
// /healthz, /readyz and /metrics.
package usageapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/store/callsdb"
)

// Store is what the API reads. ClickHouseStore is the real one.
type Store interface {
	// Usage returns the rows of s, the totals of its range and filter (nil
	// when there are none) and how many groups s.Limit left out.
	Usage(ctx context.Context, s callsdb.UsageSpec) (callsdb.UsageAnswer, error)
	Calls(ctx context.Context, s callsdb.CallListSpec) ([]callsdb.CallSummary, *callsdb.CallCursor, error)
	Call(ctx context.Context, id string) (*callsdb.StoredCall, error)
	Trace(ctx context.Context, id string, limit int) ([]callsdb.StoredCall, error)
	Batches(ctx context.Context, s callsdb.BatchSpec) ([]callsdb.BatchSummary, error)
	Ping(ctx context.Context) error
}

// ClickHouseStore reads database DB through Conn.
type ClickHouseStore struct {
	Conn driver.Conn
	DB   string
}

func (c ClickHouseStore) Usage(ctx context.Context, s callsdb.UsageSpec) (callsdb.UsageAnswer, error) {
	return callsdb.UsageWithTotals(ctx, c.Conn, c.DB, s)
}

func (c ClickHouseStore) Calls(ctx context.Context, s callsdb.CallListSpec) ([]callsdb.CallSummary, *callsdb.CallCursor, error) {
	return callsdb.CallList(ctx, c.Conn, c.DB, s)
}

func (c ClickHouseStore) Call(ctx context.Context, id string) (*callsdb.StoredCall, error) {
	return callsdb.CallDetail(ctx, c.Conn, c.DB, id)
}

func (c ClickHouseStore) Trace(ctx context.Context, id string, limit int) ([]callsdb.StoredCall, error) {
	return callsdb.TraceCalls(ctx, c.Conn, c.DB, id, limit)
}

func (c ClickHouseStore) Batches(ctx context.Context, s callsdb.BatchSpec) ([]callsdb.BatchSummary, error) {
	return callsdb.Batches(ctx, c.Conn, c.DB, s)
}

func (c ClickHouseStore) Ping(ctx context.Context) error { return c.Conn.Ping(ctx) }

// Options configure a Server.
type Options struct {
	// Tokens are the admin bearer tokens (serve.tokens): they read
	// everything and may change settings and start exports.
	Tokens []string
	// ReadTokens read everything and change nothing (serve.read_tokens).
	ReadTokens []string
	// OpenWrites lets anyone write when there are no tokens at all
	// (serve.allow_unauthenticated_writes). Without it, a server with no
	// tokens is read-only: writes answer 403 naming serve.tokens.
	OpenWrites bool
	// RefreshInterval is the dashboard's polling period (default 15s).
	RefreshInterval time.Duration
	// QueryTimeout bounds the store calls of one request (default 30s).
	QueryTimeout time.Duration
	// Langfuse makes "View in Langfuse" links; zero: no links.
	Langfuse LangfuseLinks
	Log      *slog.Logger
	// Registerer gets the request metrics; Gatherer is served on /metrics
	// (both nil: a private registry).
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// Server serves the API, the dashboard and the ops endpoints.
type Server struct {
	store   Store
	opts    Options
	tokens  []token
	links   atomic.Pointer[langfuseLinks] // replaced when the Langfuse settings change
	log     *slog.Logger
	mux     *http.ServeMux
	reqs    *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

// SetLangfuse changes where "View in Langfuse" links point (the settings
// saved from the dashboard changed); zero: no links. Safe while serving.
func (s *Server) SetLangfuse(l LangfuseLinks) {
	c := l.compile()
	s.links.Store(&c)
}

// New returns a server reading store.
func New(store Store, opts Options) (*Server, error) {
	opts.RefreshInterval = defaults.IfNotPositive(opts.RefreshInterval, 15*time.Second)
	opts.QueryTimeout = defaults.IfNotPositive(opts.QueryTimeout, 30*time.Second)
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Registerer == nil && opts.Gatherer == nil {
		reg := prometheus.NewRegistry()
		opts.Registerer, opts.Gatherer = reg, reg
	}
	s := &Server{store: store, opts: opts, log: opts.Log}
	s.SetLangfuse(opts.Langfuse)
	for r, list := range map[role][]string{roleAdmin: opts.Tokens, roleRead: opts.ReadTokens} {
		for _, t := range list {
			if t == "" {
				return nil, errors.New("usageapi: empty bearer token")
			}
			// Hashing first makes every compare the same length, so
			// ConstantTimeCompare leaks neither content nor length.
			s.tokens = append(s.tokens, token{sum: sha256.Sum256([]byte(t)), role: r})
		}
	}
	if opts.OpenWrites && len(s.tokens) > 0 {
		return nil, errors.New("usageapi: OpenWrites (serve.allow_unauthenticated_writes) applies only without tokens")
	}
	s.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "callpipe_serve_requests_total", Help: "HTTP requests of callpipe serve by route and status code.",
	}, []string{"route", "code"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "callpipe_serve_request_duration_seconds", Help: "HTTP request durations of callpipe serve by route.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"route"})
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{s.reqs, s.latency} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	m := http.NewServeMux()
	m.Handle("GET /api/v1/usage", s.auth(roleRead, s.handleUsage))
	m.Handle("GET /api/v1/calls", s.auth(roleRead, s.handleCalls))
	m.Handle("GET /api/v1/calls/{id}", s.auth(roleRead, s.handleCall))
	m.Handle("GET /api/v1/traces/{trace_id}", s.auth(roleRead, s.handleTrace))
	m.Handle("GET /api/v1/batches", s.auth(roleRead, s.handleBatches))
	m.Handle("GET /api/v1/meta", s.auth(roleRead, s.handleMeta))
	m.HandleFunc("GET /api/", func(w http.ResponseWriter, r *http.Request) {
		s.writeJSON(w, http.StatusNotFound, map[string]string{"error": "no API route " + r.Method + " " + r.URL.Path})
	})
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	m.HandleFunc("GET /readyz", s.handleReady)
	if s.opts.Gatherer != nil {
		m.Handle("GET /metrics", promhttp.HandlerFor(s.opts.Gatherer, promhttp.HandlerOpts{}))
	}
	m.Handle("GET /", assetHandler())
	s.mux = m
}

// Mount serves the routes that register adds to a mux under prefix (e.g.
// "/api/v1/settings/"), behind the same bearer-token auth and request
// metrics as the API. GET reads with any token; every other method writes
// and needs an admin token, and is refused when it comes cross-origin from
// a browser (a form on another site). Call it before serving.
func (s *Server) Mount(prefix string, register func(*http.ServeMux)) {
	sub := http.NewServeMux()
	register(sub)
	s.mux.Handle(http.MethodGet+" "+prefix, s.auth(roleRead, sub.ServeHTTP))
	csrf := http.NewCrossOriginProtection()
	csrf.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.writeJSON(w, http.StatusForbidden, map[string]string{"error": "cross-origin write refused: settings and exports change only from the dashboard's own origin or a non-browser client"})
	}))
	write := s.auth(roleAdmin, csrf.Handler(sub).ServeHTTP)
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		s.mux.Handle(m+" "+prefix, write)
	}
}

// ServeHTTP counts and times every request by its route pattern.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
	s.mux.ServeHTTP(rec, r)
	route := r.Pattern // set by the mux on r
	if route == "" {
		route = "unmatched"
	}
	s.reqs.WithLabelValues(route, strconv.Itoa(rec.code)).Inc()
	s.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// role is what a caller of /api/ may do.
type role int

const (
	roleNone  role = iota // no valid token where tokens are required
	roleRead              // read usage, calls, settings and exports
	roleAdmin             // also change settings and start exports
)

type token struct {
	sum  [sha256.Size]byte
	role role
}

// AuthMode says how serve authenticates, for its start-up log line.
func (s *Server) AuthMode() string {
	switch {
	case len(s.tokens) > 0:
		admin := 0
		for _, t := range s.tokens {
			if t.role == roleAdmin {
				admin++
			}
		}
		return fmt.Sprintf("bearer tokens (%d admin, %d read)", admin, len(s.tokens)-admin)
	case s.opts.OpenWrites:
		return "none: anyone may read and write (serve.allow_unauthenticated_writes)"
	}
	return "none: read-only (set serve.tokens to change settings and start exports)"
}

// auth lets the request through when its caller has at least need: 401
// without a valid token where tokens are configured, 403 when the caller may
// read but need is admin.
func (s *Server) auth(need role, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := s.callerRole(r.Header.Get("Authorization"))
		switch {
		case got == roleNone:
			w.Header().Set("WWW-Authenticate", `Bearer realm="callpipe"`)
			s.writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or invalid bearer token (Authorization: Bearer <serve.tokens or serve.read_tokens entry>)"})
		case got < need && len(s.tokens) == 0:
			s.writeJSON(w, http.StatusForbidden, map[string]string{"error": "serve has no tokens, so its API is read-only: set serve.tokens (admin bearer tokens) to change settings and start exports, or serve.allow_unauthenticated_writes: true on a trusted network"})
		case got < need:
			s.writeJSON(w, http.StatusForbidden, map[string]string{"error": "this is a read token (serve.read_tokens): changing settings and starting exports needs an admin token from serve.tokens"})
		default:
			h(w, r)
		}
	})
}

// callerRole is the role of the bearer token in header, compared in
// constant time with every configured token; without tokens, anyone reads
// (and writes with OpenWrites).
func (s *Server) callerRole(header string) role {
	if len(s.tokens) == 0 {
		if s.opts.OpenWrites {
			return roleAdmin
		}
		return roleRead
	}
	scheme, tok, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return roleNone
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	var admin, read int
	for _, t := range s.tokens {
		match := subtle.ConstantTimeCompare(got[:], t.sum[:])
		if t.role == roleAdmin {
			admin |= match
		} else {
			read |= match
		}
	}
	switch {
	case admin == 1:
		return roleAdmin
	case read == 1:
		return roleRead
	}
	return roleNone
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := s.store.Ping(ctx); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not ready: clickhouse: " + err.Error() + "\n"))
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

// MetaResponse is the body of GET /api/v1/meta: what the dashboard needs to
// know about the server.
type MetaResponse struct {
	RefreshSeconds float64 `json:"refresh_seconds"`
	Langfuse       bool    `json:"langfuse"`
	ServerTime     string  `json:"server_time"`
}

func (s *Server) handleMeta(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, MetaResponse{
		RefreshSeconds: s.opts.RefreshInterval.Seconds(), Langfuse: s.links.Load().enabled(),
		ServerTime: s.now().UTC().Format(time.RFC3339),
	})
}

func (s *Server) now() time.Time {
	if s.opts.Now != nil {
		return s.opts.Now()
	}
	return time.Now()
}

func (s *Server) queryContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.opts.QueryTimeout)
}

func (s *Server) writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error("encode response", "err", err)
		code, b = http.StatusInternalServerError, []byte(`{"error":"internal error encoding the response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// fail answers err: 400 for a bad parameter, 404 for an unknown id, 504 when
// the query timed out, else 500 (logged; the body says only that it failed).
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var pe *ParamError
	switch {
	case errors.As(err, &pe):
		s.writeJSON(w, http.StatusBadRequest, pe)
	case errors.Is(err, callsdb.ErrNotFound):
		s.writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
	case errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil:
		s.log.Warn("query timed out", "path", r.URL.Path, "err", err)
		s.writeJSON(w, http.StatusGatewayTimeout, map[string]string{"error": "query timed out after " + s.opts.QueryTimeout.String()})
	case r.Context().Err() != nil:
		// The client went away; nothing to answer.
	default:
		s.log.Error("request failed", "path", r.URL.Path, "query", r.URL.RawQuery, "err", err)
		s.writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "query failed; see the server log"})
	}
}
