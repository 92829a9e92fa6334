package clickhouse

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks"
	"github.com/callpipe/callpipe/store/callsdb"
)

// The sink's batches: DefaultBatchCalls calls or DefaultBatchBytes of
// messages. Each INSERT is one part, which ClickHouse merges again in the
// background: at 8 MiB an 8 KB call cost clickhouse-server 95-209 µs, at 32
// MiB 71-92 (README, "Benchmarks").
const (
	DefaultBatchCalls = 50000
	DefaultBatchBytes = 32 << 20
)

// A batch of IdleFlushCalls or more is also inserted once no message has
// come for its Idle (config clickhouse.idle_flush, default DefaultIdleFlush):
// the end of a burst is inserted without waiting for the flush interval.
// ClickHouse's guidance is inserts of at least 1,000 rows, so a trickle's
// batches (fewer calls) still wait for the interval; and normalize publishes
// every 50 ms at most while calls come, so a steady flow never looks idle.
const (
	DefaultIdleFlush = 200 * time.Millisecond
	IdleFlushCalls   = 1000
)

// SinkConfig configures the JetStream side of the sink.
type SinkConfig struct {
	// Config is the runner's. Stream, Consumer and FilterSubject default to
	// the clickhouse stage's row of the bus topology (tests use their own);
	// Batch to DefaultBatchCalls, DefaultBatchBytes, 1s and the output's
	// MaxInFlight, with IdleCount IdleFlushCalls (Idle is off unless set);
	// AckWait to 2m, and an insert taking longer than AckWait/2 is abandoned
	// and its batch nak'ed; DrainTimeout (30s) bounds the last flush on
	// shutdown.
	sinks.Config
	Registerer prometheus.Registerer // nil: metrics are not registered

	// Migrate applies the migrations (callsdb.Migrate, with Retention) in
	// Connect, before the first insert; unset, the caller migrated.
	Migrate   bool
	Retention callsdb.Retention

	// DropAcks is fault injection for tests: called after a successful
	// insert, true makes the sink forget the batch without acking it, as a
	// crash between insert and ack would (JetStream redelivers it after
	// AckWait). Nil in production.
	DropAcks func(calls int) bool
}

// Sink is the ClickHouse stage's sinks.Output on a sinks.Runner
// (sinks/doc.go): it connects out (and migrates), inserts each batch of
// CALLPIPE_NORMALIZED calls with one Output.WriteBatch, then acks.
type Sink struct {
	run *sinks.Runner[schema.Call]
	out *Output
	cfg SinkConfig
	m   *sinkMetrics
	// owned: Connect connected out, so Close closes it; an output handed
	// over connected is its owner's to close.
	owned bool
}

// NewSink returns a sink reading with nc and writing with out: connected
// (its owner closes it) or not (the sink connects it before it reads and
// closes it when Run returns).
func NewSink(nc *nats.Conn, out *Output, cfg SinkConfig) (*Sink, error) {
	m, err := newSinkMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	cfg.Log = cmp.Or(cfg.Log, slog.New(slog.DiscardHandler))
	s := &Sink{out: out, cfg: cfg, m: m}
	rc := cfg.Config
	rc.Stage, rc.Description, rc.Destination = bus.StageClickHouse, "callpipe ClickHouse sink", "clickhouse"
	b := &rc.Batch
	b.Count = defaults.IfNotPositive(b.Count, DefaultBatchCalls)
	b.Bytes = defaults.IfNotPositive(b.Bytes, DefaultBatchBytes)
	b.MaxInFlight = defaults.IfNotPositive(b.MaxInFlight, out.cfg.MaxInFlight)
	b.IdleCount = defaults.IfNotPositive(b.IdleCount, IdleFlushCalls)
	rc.AckWait = defaults.IfNotPositive(rc.AckWait, 2*time.Minute)
	// every batch in flight, the one being filled and the client's buffer
	rc.MaxAckPending = b.Count*(b.MaxInFlight+1) + min(max(b.Count, 500), 10000)
	rc.Counters = sinks.Counters{Skipped: m.skipped, DeadLetters: m.deadLetters}
	s.cfg.AckWait = rc.AckWait
	s.run, err = sinks.New(nc, sinks.Output[schema.Call](s), rc)
	return s, err
}

// Healthy is nil unless ClickHouse is not connected (and migrated) yet or
// the last insert failed.
func (s *Sink) Healthy() error { return s.run.Healthy() }

// Ready is closed once Connect succeeded: Output.Conn may be used then.
func (s *Sink) Ready() <-chan struct{} { return s.run.Ready() }

// Holds reports whether the sink holds (has taken, not yet settled) the
// delivery of stream sequence seq.
func (s *Sink) Holds(seq uint64) bool { return s.run.Holds(seq) }

// Run connects, consumes until ctx ends, then flushes the batch being
// filled, acks it, and returns after every insert finished and the output
// is closed.
func (s *Sink) Run(ctx context.Context) error { return s.run.Run(ctx) }

// Connect connects the output unless it came connected, then applies the
// migrations when SinkConfig.Migrate; the runner retries it until it
// succeeds. The pool opened by a failed attempt is kept for the next.
func (s *Sink) Connect(ctx context.Context) error {
	if s.out.Conn() == nil {
		if err := s.out.Connect(ctx); err != nil {
			return err
		}
		s.owned = true
	}
	if s.cfg.Migrate {
		return callsdb.Migrate(ctx, s.out.cfg.Config, s.cfg.Retention, s.cfg.Log, false)
	}
	return nil
}

// Close closes the output if Connect connected it.
func (s *Sink) Close(context.Context) error {
	if !s.owned {
		return nil
	}
	return s.out.Close()
}

// Decode is decodeCall: an error makes the call poison.
func (s *Sink) Decode(_ jetstream.Msg, _ *jetstream.MsgMetadata, data []byte) (schema.Call, error) {
	return decodeCall(data)
}

// decodeCall decodes a normalized call (schema.DecodeCall) that ClickHouse
// can store.
func decodeCall(data []byte) (schema.Call, error) {
	c, err := schema.DecodeCall(data)
	if err != nil {
		return c, err
	}
	if c.StartTime.Unix() < 0 || c.StartTime.Unix() >= 1<<32 {
		return c, fmt.Errorf("start_time %s outside ClickHouse DateTime (1970..2106)", c.StartTime)
	}
	return c, nil
}

// WriteBatch inserts the batch's calls as one INSERT: all written, or all
// retried.
func (s *Sink) WriteBatch(ctx context.Context, b *sinks.Batch[schema.Call]) error {
	calls := b.Values()
	start := time.Now()
	token := ""
	if s.out.Server().Modern() { // older servers have no insert_deduplication_token
		token = batchToken(b.Items)
	}
	// an insert that hangs (server stuck behind a lock, half-open
	// connection) must not hold its slot for ever: give up before the ack
	// wait ends and let the batch be redelivered
	ctx, cancel := context.WithTimeout(ctx, s.cfg.AckWait/2)
	err := s.out.WriteBatch(ctx, calls, token)
	cancel()
	s.m.batchSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		s.m.batches.WithLabelValues("error").Inc()
		return err
	}
	s.m.rows.Add(float64(len(calls)))
	s.m.batches.WithLabelValues("ok").Inc()
	if s.cfg.DropAcks != nil && s.cfg.DropAcks(len(calls)) {
		b.Abandon()
	}
	return nil
}

// batchToken names a batch by its messages: stream sequence, publish time
// and call id of each, in order. A redelivery of the same messages in the
// same batch gets the same token (and modern servers drop the repeated
// insert); a replay (new messages) or a recreated stream (new publish times)
// never collides with an earlier batch.
func batchToken(batch []sinks.Item[schema.Call]) string {
	h := sha256.New()
	var buf [16]byte
	for i := range batch {
		binary.LittleEndian.PutUint64(buf[:8], batch[i].Ref.Seq)
		binary.LittleEndian.PutUint64(buf[8:], uint64(batch[i].Ref.Stored.UnixNano()))
		h.Write(buf[:])
		h.Write([]byte(batch[i].Value.ID))
	}
	return "callpipe-" + hex.EncodeToString(h.Sum(nil)[:16])
}

type sinkMetrics struct {
	rows         prometheus.Counter
	batches      *prometheus.CounterVec
	deadLetters  prometheus.Counter
	skipped      prometheus.Counter
	batchSeconds prometheus.Histogram
}

func newSinkMetrics(reg prometheus.Registerer) (*sinkMetrics, error) {
	m := &sinkMetrics{
		rows: prometheus.NewCounter(prometheus.CounterOpts{Name: "callpipe_clickhouse_rows_written_total",
			Help: "Calls inserted into ClickHouse (and acked)."}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callpipe_clickhouse_batches_total",
			Help: "Batch inserts by result (ok, error)."}, []string{"result"}),
		deadLetters: prometheus.NewCounter(prometheus.CounterOpts{Name: "callpipe_clickhouse_dead_letters_total",
			Help: "Messages sent to CALLPIPE_DLQ by the ClickHouse sink."}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "callpipe_clickhouse_skipped_total",
			Help: "Replayed records acked without insert because their Callpipe-Sinks header does not name clickhouse."}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "callpipe_clickhouse_batch_seconds",
			Help: "Duration of one batch insert.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.rows, m.batches, m.deadLetters, m.skipped, m.batchSeconds} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
