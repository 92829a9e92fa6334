package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	"github.com/callpipe/callpipe/ingest"
)

func connectNATS(cfg *config.Config, name string, log *slog.Logger) (*nats.Conn, error) {
	tlsCfg, err := cfg.NATS.TLS.Build()
	if err != nil {
		return nil, fmt.Errorf("%w: nats.tls: %w", errConfig, err)
	}
	return ingest.Connect(ingest.NATSOptions{
		URL: cfg.NATS.URL, Name: "callpipe-" + name,
		User: cfg.NATS.User, Password: cfg.NATS.Password, Token: cfg.NATS.Token,
		NKeyFile: cfg.NATS.NKeyFile, CredsFile: cfg.NATS.CredsFile, TLS: tlsCfg, Logger: log,
	})
}

func streamOptions(cfg *config.Config) ingest.StreamOptions {
	return ingest.StreamOptions{
		MaxAge:          time.Duration(cfg.NATS.Stream.MaxAge),
		MaxBytes:        int64(cfg.NATS.Stream.MaxBytes),
		DuplicateWindow: time.Duration(cfg.NATS.Stream.DuplicateWindow),
		Replicas:        cfg.NATS.Stream.Replicas,
	}
}

// newRegistry is the Prometheus registry of one process, with Go and process metrics.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// opsMux serves /healthz (200 when healthy() is nil, else 503 with the reason) and /metrics.
func opsMux(reg *prometheus.Registry, healthy func() error) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := healthy(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "unhealthy:", err)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

func natsHealth(nc *nats.Conn) func() error {
	return func() error {
		if !nc.IsConnected() {
			return errors.New("nats: " + nc.Status().String())
		}
		return nil
	}
}

// serveHTTP serves h on listen until ctx ends, then lets in-flight requests
// finish (up to grace) before returning.
func serveHTTP(ctx context.Context, listen string, h http.Handler, log *slog.Logger, grace time.Duration) error {
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
