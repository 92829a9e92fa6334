package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	"github.com/callpipe/callpipe/sinks/langfuse"
	"github.com/callpipe/callpipe/store/settings"
)

func init() { stages[bus.StageLangfuse] = runLangfuseStage }

// runLangfuseStage consumes CALLPIPE_NORMALIZED and sends every call to
// Langfuse as a trace and a generation until ctx ends; then it finishes the
// batches in flight (acknowledging what Langfuse accepted) and returns.
// Host and keys are the settings in effect, saved ones over configured ones
// (langfuse.Supervisor).
// langfuseTLS is the client TLS of https:// Langfuse hosts (langfuse.tls;
// nil: system roots).
func langfuseTLS(cfg *config.Config) (*tls.Config, error) {
	t := cfg.Langfuse.TLS
	t.Enabled = true // the https:// scheme decides
	c, err := t.Build()
	if err != nil {
		return nil, fmt.Errorf("%w: langfuse.tls: %w", errConfig, err)
	}
	return c, nil
}

func runLangfuseStage(ctx context.Context, env *workerEnv, log *slog.Logger) error {
	cfg := env.cfg
	if err := env.provisionStreams(ctx); err != nil {
		return err
	}
	l := cfg.Langfuse
	retries := l.Retries
	if retries == 0 {
		retries = -1 // no retry inside a batch: redelivery after retry_delay only
	}
	tlsCfg, err := langfuseTLS(cfg)
	if err != nil {
		return err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig, tr.MaxIdleConnsPerHost = tlsCfg, l.MaxInFlight+2
	sup := langfuse.NewSupervisor(env.nc, langfuse.SupervisorConfig{
		Output: langfuse.OutputConfig{
			HTTPClient:    &http.Client{Transport: tr},
			Transport:     l.Transport,
			Map:           langfuse.MapOptions{Environment: l.Environment, Release: l.Release, MaxFieldBytes: int(l.MaxFieldBytes)},
			MaxBatchBytes: int(l.MaxBatchBytes), MaxBatchCount: l.MaxBatchEvents, MaxInFlight: l.MaxInFlight,
			MaxRetries: retries, MinBackoff: time.Duration(l.MinBackoff), MaxBackoff: time.Duration(l.MaxBackoff),
			Timeout: time.Duration(l.RequestTimeout),
		},
		Sink: langfuse.SinkConfig{
			Consumer: l.Consumer, FilterSubject: l.Subject, Batch: langfuse.BatchPolicy{Count: l.BatchCalls, Period: time.Duration(l.FlushInterval)},
			MaxInFlight: max(1, l.MaxInFlight/2), AckWait: time.Duration(l.AckWait), RetryDelay: time.Duration(l.RetryDelay),
		},
		Configured: settings.Langfuse{Host: l.Host, PublicKey: l.PublicKey, SecretKey: l.SecretKey},
		Sealer:     cfg.Sealer(),
		Replicas:   cfg.NATS.Stream.Replicas,
		Log:        log, Registerer: env.reg,
	})
	env.health.Add(sup.Health)
	return sup.Run(ctx)
}
