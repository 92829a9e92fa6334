// Package ops is what every long-running callpipe process serves to its
// operators and orchestrator: a Prometheus registry with Go and process
// metrics, /healthz (liveness), /readyz (readiness, with the reason when not
// ready) and /metrics, an HTTP server that drains in-flight requests on
// shutdown, and Health, the readiness of a process made of several parts.
//
// Liveness ignores dependencies, so that an orchestrator does not restart
// every replica when NATS is down; readiness follows them.
package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry is the Prometheus registry of one process, with Go and process metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Mux serves /healthz (liveness: 200 while the process serves), /readyz
// (200 when ready() is nil, else 503 with the reason: a dependency is
// unreachable) and /metrics.
func Mux(reg *prometheus.Registry, ready func() error) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// NATSHealth is not ready while nc is not connected.
func NATSHealth(nc *nats.Conn) func() error {
	return func() error {
		if !nc.IsConnected() {
			return errors.New("nats: " + nc.Status().String())
		}
		return nil
	}
}

// Serve serves h on listen until ctx ends, then lets in-flight requests
// finish (up to grace) before returning.
func Serve(ctx context.Context, listen string, h http.Handler, log *slog.Logger, grace time.Duration) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", listen, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("http server %s: %w", listen, err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight requests", "grace", grace)
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("http shutdown %s: %w", listen, err)
	}
	return nil
}

// Health is the readiness of a process made of parts: ready when every
// added check is nil. The zero value is ready.
type Health struct {
	mu     sync.Mutex
	checks []func() error
}

// Add adds a readiness check.
func (h *Health) Add(check func() error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks = append(h.checks, check)
}

// Check is the first failing check's error, nil when all pass.
func (h *Health) Check() error {
	h.mu.Lock()
	checks := append([]func() error(nil), h.checks...)
	h.mu.Unlock()
	for _, check := range checks {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// Stage adds a part that is not ready, with reason starting, until Running
// is called; from then on its own health check decides.
func (h *Health) Stage(starting string) *Stage {
	s := &Stage{}
	s.Waiting(errors.New(starting))
	h.Add(s.check)
	return s
}

// Stage is one part's share of Health: why it is not running yet, then its
// running component's own health.
type Stage struct {
	notReady atomic.Pointer[error]
	healthy  atomic.Pointer[func() error]
}

// Waiting records why the part is not running yet.
func (s *Stage) Waiting(err error) { s.notReady.Store(&err) }

// Running hands readiness to the running component's health check.
func (s *Stage) Running(healthy func() error) { s.healthy.Store(&healthy) }

func (s *Stage) check() error {
	if h := s.healthy.Load(); h != nil {
		return (*h)()
	}
	return *s.notReady.Load()
}
