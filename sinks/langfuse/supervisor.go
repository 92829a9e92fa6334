package langfuse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/store/settings"
)

// SupervisorConfig is the Langfuse stage: the sink's settings, and the host
// and keys of the configuration, which saved settings override.
type SupervisorConfig struct {
	// Output is every output setting but host and keys, which come from the
	// settings in effect.
	Output OutputConfig
	// Sink is the consumer side; its Registerer and Log are the
	// supervisor's.
	Sink SinkConfig
	// Configured is the Langfuse of the configuration file, environment and
	// flags: what applies while nothing is saved in the settings bucket.
	Configured settings.Langfuse
	// Sealer unseals the secret key saved in the settings bucket; nil
	// when no settings key is configured.
	Sealer *settings.Sealer
	// Replicas of the settings bucket when the supervisor creates it.
	Replicas   int
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// Supervisor runs the Langfuse sink with the settings in effect: those saved
// from the dashboard (NATS KV, settings.Bucket) win over the configuration.
// A change restarts the sink in place: the running one finishes its batches
// in flight, then a new one continues on the same durable consumer with the
// new host and keys, so nothing is lost and nothing is acknowledged that
// Langfuse did not take. With no settings anywhere it waits, unready,
// instead of exiting.
type Supervisor struct {
	nc  *nats.Conn
	cfg SupervisorConfig
	log *slog.Logger
	reg *reloadRegisterer

	mu     sync.Mutex
	sink   *Sink
	reason error // why no sink runs
}

// NewSupervisor returns a supervisor that is unready until Run has read the
// settings bucket and connected to Langfuse.
func NewSupervisor(nc *nats.Conn, cfg SupervisorConfig) *Supervisor {
	return &Supervisor{nc: nc, cfg: cfg, log: cfg.Log, reg: &reloadRegisterer{Registerer: cfg.Registerer},
		reason: errors.New("langfuse: reading the settings bucket " + settings.Bucket)}
}

// Health is what /readyz reports for the stage.
func (s *Supervisor) Health() error {
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

func (s *Supervisor) set(sink *Sink, reason error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sink, s.reason = sink, reason
}

// Run sends every call to the Langfuse in effect until ctx ends; then it
// finishes the batches in flight (acknowledging what Langfuse accepted) and
// returns. It returns early only when a sink ends on its own.
func (s *Supervisor) Run(ctx context.Context) error {
	log := s.log
	js, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	// Saved settings may send traces elsewhere than the configuration says:
	// the stage sends nothing until it knows whether there are any.
	store, err := settings.OpenWhenReady(ctx, js, s.cfg.Replicas, func(err error, wait time.Duration) {
		s.set(nil, fmt.Errorf("langfuse: settings bucket %s: %w", settings.Bucket, err))
		log.Warn("langfuse: settings bucket not available yet, retrying", "err", err, "retry_in", wait)
	}, settings.WithSealer(s.cfg.Sealer))
	if err != nil {
		return nil
	}

	configured := s.cfg.Configured
	updates := make(chan settings.Effective, 1)
	watchDone := make(chan struct{})
	wctx, stopWatch := context.WithCancel(ctx)
	defer func() { stopWatch(); <-watchDone }()
	go func() {
		defer close(watchDone)
		watchLangfuse(wctx, store, configured, updates, log)
	}()

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
			if e.Err != nil {
				// Saved settings win over the configuration even when they
				// cannot be read: send nothing rather than to the wrong place.
				log.Error("langfuse: the saved settings cannot be read; sending nothing until they can", "err", e.Err)
				if err := stop(); err != nil {
					return err
				}
				current = nil
				s.set(nil, fmt.Errorf("langfuse: %w", e.Err))
				continue
			}
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
				s.set(nil, errors.New("langfuse: not configured (set langfuse.host, langfuse.public_key and langfuse.secret_key, or save them on the dashboard's Settings page)"))
				log.Warn("langfuse: not configured; waiting for settings (nothing is consumed meanwhile)")
				continue
			}
			run = s.start(ctx, e)
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

// langfuseRun is one sink with one set of host and keys.
type langfuseRun struct {
	cancel context.CancelFunc
	done   chan error
}

func (s *Supervisor) start(ctx context.Context, e settings.Effective) *langfuseRun {
	rctx, cancel := context.WithCancel(ctx)
	r := &langfuseRun{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.runSink(rctx, e) }()
	return r
}

// runSink sends to the Langfuse of e until ctx ends, then finishes the
// batches in flight.
func (s *Supervisor) runSink(ctx context.Context, e settings.Effective) error {
	log := s.log
	oc := s.cfg.Output
	oc.Host, oc.PublicKey, oc.SecretKey = e.Host, e.PublicKey, e.SecretKey
	out := NewOutput(oc)
	// /readyz reports the stage unready until the sink's runner has
	// connected the output (Sink.Health), and unhealthy while Langfuse
	// refuses the keys.
	s.set(nil, fmt.Errorf("langfuse: not connected yet to %s", e.Host))
	s.reg.release() // the previous sink's metrics give way to this one's
	sc := s.cfg.Sink
	sc.Log, sc.Registerer = log, s.reg
	sink, err := NewSink(ctx, s.nc, out, sc)
	if err != nil {
		_ = out.Close()
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	s.set(sink, nil)
	go func() {
		select {
		case <-ctx.Done():
		case <-sink.Ready():
			log.Info("langfuse stage running", "host", e.Host, "source", e.Source, "transport", out.Transport(), "consumer", sc.Consumer)
		}
	}()
	err = sink.Run(ctx)
	s.set(nil, fmt.Errorf("langfuse: switching from %s", e.Host))
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
