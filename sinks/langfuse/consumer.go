package langfuse

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/internal/retry"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks"
)

// The stage's row of the bus topology: stream, subject and default consumer.
var stage = bus.StageOf(bus.StageLangfuse)

// SinkConfig is the JetStream side of the sink.
type SinkConfig struct {
	// Config is the runner's: Consumer and FilterSubject default to the bus
	// topology's; Batch to 500 calls, 16 MiB, 1s, 2 batches written at
	// once; AckWait to 2m; DrainTimeout (how long Run keeps writing after
	// ctx ends) to 20s. Its backoff is RetryDelay's.
	sinks.Config
	// RetryDelay is the redelivery delay of a call left pending (default 5s).
	RetryDelay time.Duration
	Registerer prometheus.Registerer
}

// Sink is the Langfuse stage's sinks.Output on a sinks.Runner: it connects
// its Output (picks the transport), consumes CALLPIPE_NORMALIZED and writes
// every call through the Output: accepted calls are acknowledged,
// rejected ones are dead-lettered (bus.DeadLetters), pending ones are
// negatively acknowledged with RetryDelay. Nothing is acknowledged before
// Langfuse accepted it or the DLQ stored it. While Langfuse refuses the keys
// the runner pauses (sinks.Pause), longer after each refusal.
type Sink struct {
	out *Output
	run *sinks.Runner[schema.Call]
	cfg SinkConfig
	log *slog.Logger

	accepted, rejected, pending, skipped prometheus.Counter
	// authRefused is 1 while Langfuse refuses the credentials.
	authRefused prometheus.Gauge

	mu       sync.Mutex
	refusals int // batches refused in a row
}

// NewSink creates (or updates) the durable consumer. out may be connected
// already; else Run connects it first.
func NewSink(ctx context.Context, nc *nats.Conn, out *Output, cfg SinkConfig) (*Sink, error) {
	b := &cfg.Batch
	b.Count = defaults.IfNotPositive(b.Count, 500)
	b.Bytes = defaults.IfNotPositive(b.Bytes, 16<<20)
	b.MaxInFlight = defaults.IfNotPositive(b.MaxInFlight, 2)
	cfg.AckWait = defaults.IfNotPositive(cfg.AckWait, 2*time.Minute)
	cfg.MaxAckPending = defaults.IfNotPositive(cfg.MaxAckPending, max(20000, 2*b.Count*b.MaxInFlight))
	cfg.RetryDelay = defaults.IfNotPositive(cfg.RetryDelay, 5*time.Second)
	cfg.DrainTimeout = defaults.IfNotPositive(cfg.DrainTimeout, 20*time.Second)
	cfg.Log = cmp.Or(cfg.Log, slog.Default())
	s := &Sink{out: out, cfg: cfg, log: cfg.Log}
	counter := func(result string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{
			Name: "callpipe_langfuse_calls_total", Help: "Calls handled by the Langfuse sink, by result.",
			ConstLabels: prometheus.Labels{"result": result},
		})
	}
	s.accepted, s.rejected, s.pending = counter("accepted"), counter("dead_lettered"), counter("retried")
	s.skipped = counter("skipped_replay") // replayed for other sinks (Callpipe-Sinks)
	s.authRefused = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "callpipe_langfuse_credentials_refused",
		Help: "1 while Langfuse refuses the keys (401/403): nothing is sent or acknowledged until they are accepted.",
	})
	requests := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "callpipe_langfuse_requests_total", Help: "HTTP requests sent to Langfuse (every attempt).",
	}, func() float64 { r, _ := out.Stats(); return float64(r) })
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.accepted, s.rejected, s.pending, s.skipped, s.authRefused, requests} {
			if err := cfg.Registerer.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if !errors.As(err, &are) {
					return nil, err
				}
			}
		}
	}
	rc := cfg.Config
	rc.Stage, rc.Stream, rc.Description = stage.Name, "", "callpipe langfuse sink"
	// a Langfuse that is still starting must not fail the worker: Connect
	// (with transport auto, the health probe) is retried every 5s
	rc.Destination = "langfuse"
	if rc.Connect == (retry.Backoff{}) {
		rc.Connect = retry.Backoff{First: 5 * time.Second, Max: 5 * time.Second}
	}
	// the read-ahead is bounded in bytes, so that batched messages
	// (bus/batch.go) cannot make it hold many batches of calls; the
	// hand-off is of one: every message taken is in a batch (kept alive)
	rc.PullBytes, rc.PullBuffer = 4<<20, 1
	// a pending call comes back after RetryDelay, not later
	rc.BackoffMin, rc.BackoffMax = cfg.RetryDelay, cfg.RetryDelay
	// a call Langfuse rejects is dead-lettered with its message's bytes; on
	// stop, what is read ahead goes to the next sink rather than to a slow
	// Langfuse within the drain timeout
	rc.KeepMessages, rc.HandBack = true, true
	rc.Counters = sinks.Counters{Skipped: s.skipped, DeadLetters: s.rejected}
	var err error
	s.run, err = sinks.New(nc, sinks.Output[schema.Call](s), rc)
	if err != nil {
		return nil, err
	}
	if _, err := s.run.Consumer(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Health is an error until the output is connected, then the output's
// health (credentials refused → error); a batch not taken yet (5xx,
// timeouts) comes back and does not make the worker unready.
func (s *Sink) Health() error {
	if err := s.run.Connected(); err != nil {
		return err
	}
	return s.out.Health()
}

// Ready is closed once the output is connected.
func (s *Sink) Ready() <-chan struct{} { return s.run.Ready() }

// Run connects the output, consumes until ctx ends, then finishes the
// batches in flight (acknowledging what Langfuse accepted) within
// DrainTimeout, hands back (nak) what it had received but not started,
// closes the output and returns (sinks.Runner).
func (s *Sink) Run(ctx context.Context) error { return s.run.Run(ctx) }

// Connect connects the output (Output.Connect: the transport, read from
// Langfuse's health endpoint with transport auto) unless it came connected.
func (s *Sink) Connect(ctx context.Context) error {
	if s.out.Transport() != "" {
		return nil
	}
	if err := s.out.Connect(ctx); err != nil {
		return fmt.Errorf("%s: %w", s.out.cfg.Host, err)
	}
	return nil
}

// Close releases the output's idle connections.
func (s *Sink) Close(context.Context) error { return s.out.Close() }

// Decode decodes a normalized call; an error makes it poison.
func (s *Sink) Decode(_ jetstream.Msg, _ *jetstream.MsgMetadata, data []byte) (schema.Call, error) {
	return schema.DecodeCall(data)
}

// WriteBatch sends the calls and settles each by its Outcome; while Langfuse
// refuses the keys it asks for a pause of AuthPause (a few requests an outage).
func (s *Sink) WriteBatch(ctx context.Context, b *sinks.Batch[schema.Call]) error {
	calls := b.Values()
	outcomes, err := s.out.WriteBatch(ctx, calls)
	for i, o := range outcomes {
		switch o.State {
		case Accepted:
			b.Written(i)
			s.accepted.Inc()
		case Rejected:
			b.Reject(i, o.Reason)
		default:
			b.Retry(i)
			s.pending.Inc()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !errors.Is(err, ErrUnauthorized) {
		// A batch that started before a refusal may end well after it; only
		// the output knows whether the keys work now.
		if s.out.Health() == nil {
			s.refusals = 0
			s.authRefused.Set(0)
		}
		return err
	}
	s.authRefused.Set(1)
	pause := AuthPause(s.cfg.RetryDelay, s.refusals)
	s.refusals++
	s.log.Error("langfuse refused the credentials: not sending, nothing acknowledged; check langfuse.public_key/secret_key",
		"err", err, "refusals", s.refusals, "retry_in", pause)
	return sinks.Pause(err, pause)
}

// AuthPauseMax caps the pause after repeated credential refusals.
const AuthPauseMax = 2 * time.Minute

// AuthPause is the pause after the n-th refusal in a row (n from 0):
// base doubled n times, at most max(base, AuthPauseMax).
func AuthPause(base time.Duration, n int) time.Duration {
	d := base << min(n, 16)
	if d > AuthPauseMax || d <= 0 {
		d = max(base, AuthPauseMax)
	}
	return d
}
