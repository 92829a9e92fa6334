package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/settings"
	"github.com/callpipe/callpipe/sinks/langfuse"
)

func init() { stages[bus.StageLangfuse] = runLangfuseStage }

// runLangfuseStage consumes CALLPIPE_NORMALIZED and sends every call to
// Langfuse as a trace and a generation until ctx ends; then it finishes the
// batches in flight (acknowledging what Langfuse accepted) and returns.
//
// Host and keys are the settings in effect: those saved from the dashboard
// (NATS KV, settings.Bucket) win over the configuration. A change restarts
// the sink in place: the running one finishes its batches in flight, then a
// new one continues on the same durable consumer with the new host and keys,
// so nothing is lost and nothing is acknowledged that Langfuse did not take.
// With no settings anywhere the stage waits, unready, instead of exiting.
func runLangfuseStage(ctx context.Context, env *workerEnv, log *slog.Logger) error {
	cfg := env.cfg
	if err := env.provisionStreams(ctx); err != nil {
		return err
	}
	js, err := jetstream.New(env.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	st := &langfuseState{reason: errors.New("langfuse: reading the settings bucket " + settings.Bucket)}
	env.addHealth(st.health)

	// Saved settings may send traces elsewhere than the configuration says:
	// the stage sends nothing until it knows whether there are any.
	var store *settings.Store
	for wait := time.Second; ; wait = min(2*wait, 15*time.Second) {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		store, err = settings.Open(octx, js, cfg.NATS.Stream.Replicas)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		st.set(nil, fmt.Errorf("langfuse: settings bucket %s: %w", settings.Bucket, err))
		log.Warn("langfuse: settings bucket not available yet, retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}

	configured := settings.Langfuse{Host: cfg.Langfuse.Host, PublicKey: cfg.Langfuse.PublicKey, SecretKey: cfg.Langfuse.SecretKey}
	updates := make(chan settings.Effective, 1)
	watchDone := make(chan struct{})
	wctx, stopWatch := context.WithCancel(ctx)
	defer func() { stopWatch(); <-watchDone }()
	go func() {
		defer close(watchDone)
		watchLangfuse(wctx, store, configured, updates, log)
	}()

	reg := &reloadRegisterer{Registerer: env.reg}
	var (
		current *settings.Effective
		run     *langfuseRun
		runDone <-chan error // nil while no sink runs
	)
	stop := func() error {
		if run == nil {
			return nil
		}
		run.cancel()
		err := <-run.done
		run, runDone = nil, nil
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return stop()
		case err := <-runDone:
			// The sink ended on its own: a broken consumer, not a setting.
			run, runDone = nil, nil
			return err
		case e := <-updates:
			if current != nil && current.Source == e.Source && sameLangfuse(current.Langfuse, e.Langfuse) {
				continue
			}
			log.Info("langfuse settings in effect", "source", sourceName(e.Source), "host", e.Host,
				"public_key", e.PublicKey, "secret_key", settings.SecretHint(e.SecretKey), "configured_host", configured.Host)
			if current != nil && sameLangfuse(current.Langfuse, e.Langfuse) {
				current = &e // same host and keys from another source: nothing to restart
				continue
			}
			if run != nil {
				log.Info("langfuse settings changed: finishing the batches in flight, then switching", "from", current.Host, "to", e.Host)
				if err := stop(); err != nil {
					return err
				}
			}
			current = &e
			if !e.Configured() {
				st.set(nil, errors.New("langfuse: not configured (set langfuse.host, langfuse.public_key and langfuse.secret_key, or save them on the dashboard's Settings page)"))
				log.Warn("langfuse: not configured; waiting for settings (nothing is consumed meanwhile)")
				continue
			}
			run = startLangfuseRun(ctx, env, e, reg, st, log)
			runDone = run.done
		}
	}
}

// sourceName is how the logs name a settings source.
func sourceName(source string) string {
	if source == settings.SourceSaved {
		return "saved (NATS KV " + settings.Bucket + ", overrides the configuration)"
	}
	return "configuration (file, environment, flags)"
}

func sameLangfuse(a, b settings.Langfuse) bool {
	return a.Host == b.Host && a.PublicKey == b.PublicKey && a.SecretKey == b.SecretKey
}

// watchLangfuse sends the settings in effect to updates (only the newest
// waits) until ctx ends, watching again after NATS trouble.
func watchLangfuse(ctx context.Context, store *settings.Store, configured settings.Langfuse, updates chan settings.Effective, log *slog.Logger) {
	push := func(e settings.Effective) {
		for {
			select {
			case updates <- e:
				return
			default:
			}
			select {
			case <-updates: // an older change nobody applied yet
			default:
			}
		}
	}
	for ctx.Err() == nil {
		err := store.WatchLangfuse(ctx, configured, push)
		if ctx.Err() != nil {
			return
		}
		log.Warn("langfuse: settings watch ended, watching again", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}

// langfuseState is what /readyz reports for the stage.
type langfuseState struct {
	mu     sync.Mutex
	sink   *langfuse.Sink
	reason error
}

func (s *langfuseState) set(sink *langfuse.Sink, reason error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sink, s.reason = sink, reason
}

func (s *langfuseState) health() error {
	s.mu.Lock()
	sink, reason := s.sink, s.reason
	s.mu.Unlock()
	if sink == nil {
		return reason
	}
	if err := sink.Health(); err != nil {
		return fmt.Errorf("langfuse: %w", err)
	}
	return nil
}

// langfuseRun is one sink with one set of host and keys.
type langfuseRun struct {
	cancel context.CancelFunc
	done   chan error
}

func startLangfuseRun(ctx context.Context, env *workerEnv, e settings.Effective, reg *reloadRegisterer, st *langfuseState, log *slog.Logger) *langfuseRun {
	rctx, cancel := context.WithCancel(ctx)
	r := &langfuseRun{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- runLangfuseSink(rctx, env, e, reg, st, log) }()
	return r
}

// runLangfuseSink sends to the Langfuse of e until ctx ends, then finishes
// the batches in flight.
func runLangfuseSink(ctx context.Context, env *workerEnv, e settings.Effective, reg *reloadRegisterer, st *langfuseState, log *slog.Logger) error {
	l := env.cfg.Langfuse
	retries := l.Retries
	if retries == 0 {
		retries = -1 // no retry inside a batch: redelivery after retry_delay only
	}
	out := langfuse.NewOutput(langfuse.OutputConfig{
		Host: e.Host, PublicKey: e.PublicKey, SecretKey: e.SecretKey, Transport: l.Transport,
		Map:           langfuse.MapOptions{Environment: l.Environment, Release: l.Release, MaxFieldBytes: int(l.MaxFieldBytes)},
		MaxBatchBytes: int(l.MaxBatchBytes), MaxBatchCount: l.MaxBatchEvents, MaxInFlight: l.MaxInFlight,
		MaxRetries: retries, MinBackoff: time.Duration(l.MinBackoff), MaxBackoff: time.Duration(l.MaxBackoff),
		Timeout: time.Duration(l.RequestTimeout),
	})
	defer out.Close()
	// /readyz reports the stage unready until Langfuse is reached, and
	// unhealthy while it refuses the keys.
	st.set(nil, fmt.Errorf("langfuse: not connected yet to %s", e.Host))
	// Connect (and with transport auto, the health probe) is retried: a
	// Langfuse that is still starting must not fail the worker.
	for {
		err := out.Connect(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		st.set(nil, fmt.Errorf("langfuse: not connected to %s: %w", e.Host, err))
		log.Warn("langfuse: not reachable yet, retrying", "host", e.Host, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(5 * time.Second):
		}
	}
	reg.release() // the previous sink's metrics give way to this one's
	sink, err := langfuse.NewSink(ctx, env.nc, out, langfuse.SinkConfig{
		Consumer: l.Consumer, FilterSubject: l.Subject, Batch: langfuse.BatchPolicy{Count: l.BatchCalls, Period: time.Duration(l.FlushInterval)},
		MaxInFlight: max(1, l.MaxInFlight/2), AckWait: time.Duration(l.AckWait), RetryDelay: time.Duration(l.RetryDelay),
		Log: log, Registerer: reg,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	st.set(sink, nil)
	log.Info("langfuse stage running", "host", e.Host, "source", e.Source, "transport", out.Transport(), "consumer", l.Consumer)
	err = sink.Run(ctx)
	st.set(nil, fmt.Errorf("langfuse: switching from %s", e.Host))
	log.Info("langfuse sink stopped", "host", e.Host)
	return err
}

// reloadRegisterer registers the metrics of one sink at a time: release
// unregisters the previous sink's, so the next sink's counters (which start
// from zero, a reset Prometheus' rate() handles) are the ones exposed.
type reloadRegisterer struct {
	prometheus.Registerer
	mu   sync.Mutex
	mine []prometheus.Collector
}

func (r *reloadRegisterer) Register(c prometheus.Collector) error {
	if err := r.Registerer.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mine = append(r.mine, c)
	return nil
}

func (r *reloadRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *reloadRegisterer) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.mine {
		r.Registerer.Unregister(c)
	}
	r.mine = nil
}
