package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/sinks/langfuse"
)

func init() { stages["langfuse"] = runLangfuseStage }

// runLangfuseStage consumes CALLPIPE_NORMALIZED and sends every call to
// Langfuse as a trace and a generation until ctx ends; then it finishes the
// batches in flight (acknowledging what Langfuse accepted) and returns.
func runLangfuseStage(ctx context.Context, env *workerEnv, log *slog.Logger) error {
	cfg := env.cfg
	l := cfg.Langfuse
	if l.Host == "" || l.PublicKey == "" || l.SecretKey == "" {
		return fmt.Errorf("%w: langfuse.host, langfuse.public_key and langfuse.secret_key are required (LANGFUSE_HOST, LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY)", errConfig)
	}
	js, err := jetstream.New(env.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = provisionStreams(pctx, js, cfg)
	cancel()
	if err != nil {
		return err
	}
	retries := l.Retries
	if retries == 0 {
		retries = -1 // no retry inside a batch: redelivery after retry_delay only
	}
	out := langfuse.NewOutput(langfuse.OutputConfig{
		Host: l.Host, PublicKey: l.PublicKey, SecretKey: l.SecretKey, Transport: l.Transport,
		Map:           langfuse.MapOptions{Environment: l.Environment, Release: l.Release, MaxFieldBytes: int(l.MaxFieldBytes)},
		MaxBatchBytes: int(l.MaxBatchBytes), MaxBatchCount: l.MaxBatchEvents, MaxInFlight: l.MaxInFlight,
		MaxRetries: retries, MinBackoff: time.Duration(l.MinBackoff), MaxBackoff: time.Duration(l.MaxBackoff),
		Timeout: time.Duration(l.RequestTimeout),
	})
	// /readyz reports the stage unready until Langfuse is reached, and
	// unhealthy while it refuses the keys.
	var ready atomic.Pointer[langfuse.Sink]
	var lastErr atomic.Pointer[error]
	env.addHealth(func() error {
		s := ready.Load()
		if s == nil {
			if e := lastErr.Load(); e != nil {
				return fmt.Errorf("langfuse: not connected: %w", *e)
			}
			return fmt.Errorf("langfuse: not connected yet")
		}
		if err := s.Health(); err != nil {
			return fmt.Errorf("langfuse: %w", err)
		}
		return nil
	})
	// Connect (and with transport auto, the health probe) is retried: a
	// Langfuse that is still starting must not fail the worker.
	for {
		err := out.Connect(ctx)
		if err == nil {
			break
		}
		lastErr.Store(&err)
		log.Warn("langfuse: not reachable yet, retrying", "host", l.Host, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(5 * time.Second):
		}
	}
	defer out.Close()
	sink, err := langfuse.NewSink(ctx, env.nc, out, langfuse.SinkConfig{
		Consumer: l.Consumer, FilterSubject: l.Subject, Batch: langfuse.BatchPolicy{Count: l.BatchCalls, Period: time.Duration(l.FlushInterval)},
		MaxInFlight: max(1, l.MaxInFlight/2), AckWait: time.Duration(l.AckWait), RetryDelay: time.Duration(l.RetryDelay),
		Log: log, Registerer: env.reg,
	})
	if err != nil {
		return err
	}
	ready.Store(sink)
	log.Info("langfuse stage running", "host", l.Host, "transport", out.Transport(), "consumer", l.Consumer)
	err = sink.Run(ctx)
	log.Info("langfuse stage stopped")
	return err
}
