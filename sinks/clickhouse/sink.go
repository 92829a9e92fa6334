package clickhouse

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/schema"
)

// SinkConfig configures the JetStream side of the sink.
type SinkConfig struct {
	// Stream, Consumer and FilterSubject default to the clickhouse stage's
	// row of the bus topology (tests use their own).
	Stream, Consumer, FilterSubject string

	Batch BatchPolicy
	// AckWait is how long JetStream waits for an ack before redelivering
	// (default 2m). An insert taking longer than AckWait/2 is abandoned and
	// its batch nak'ed.
	AckWait time.Duration
	// Backoff bounds the wait after a failed insert: it starts at Min and
	// doubles up to Max (defaults 250ms and 30s).
	BackoffMin, BackoffMax time.Duration
	// ShutdownTimeout bounds the last flush on shutdown (default 30s).
	ShutdownTimeout time.Duration
	Log             *slog.Logger
	Registerer      prometheus.Registerer // nil: metrics are not registered

	// DropAcks is fault injection for tests: called after a successful
	// insert, true makes the sink forget the batch without acking it, as a
	// crash between insert and ack would (JetStream redelivers it after
	// AckWait). Nil in production.
	DropAcks func(calls int) bool
}

// Sink consumes schema.Call messages from CALLPIPE_NORMALIZED and writes them
// through an Output, in the style of Prometheus' queue manager: one reader
// fills a batch until it is Batch.Count calls or Batch.Period old, hands it to
// a flusher (at most Output.MaxInFlight run at once) and goes on reading.
//
// Delivery: a message is acked only after the INSERT holding its call
// succeeded. On an insert error the batch's messages are nak'ed with the
// current backoff as delay (JetStream redelivers them; the consumer has no
// delivery limit), the sink reports unhealthy and the flusher waits out the
// backoff before taking the next batch, so an outage slows reading down
// instead of spinning. A message that is not a valid call is published to
// CALLPIPE_DLQ with the reason in Callpipe-Error and then terminated.
// Redelivered or replayed calls are inserted again; reads deduplicate by id.
// A replayed record whose Callpipe-Sinks header does not name clickhouse
// (bus.Routed) is acked and skipped.
type Sink struct {
	js   jetstream.JetStream
	nc   *nats.Conn
	out  *Output
	cfg  SinkConfig
	log  *slog.Logger
	m    *sinkMetrics
	dead bus.DeadLetters

	lastErr atomic.Pointer[error]
	backoff time.Duration
	bmu     sync.Mutex
}

// NewSink returns a sink reading with nc and writing with out (connected).
func NewSink(nc *nats.Conn, out *Output, cfg SinkConfig) (*Sink, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	bus.StageOf(bus.StageClickHouse).Defaults(&cfg.Stream, &cfg.Consumer, &cfg.FilterSubject)
	if cfg.Batch.Count <= 0 {
		cfg.Batch.Count = 50000
	}
	if cfg.Batch.Bytes <= 0 {
		cfg.Batch.Bytes = 8 << 20
	}
	if cfg.Batch.Period <= 0 {
		cfg.Batch.Period = time.Second
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 2 * time.Minute
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 250 * time.Millisecond
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(30*time.Second, cfg.BackoffMin)
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 30 * time.Second
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newSinkMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Sink{js: js, nc: nc, out: out, cfg: cfg, log: log, m: m,
		dead: bus.DeadLetters{JS: js, Stage: bus.StageClickHouse}}, nil
}

// Healthy is nil unless the last insert failed.
func (s *Sink) Healthy() error {
	if p := s.lastErr.Load(); p != nil {
		return fmt.Errorf("clickhouse sink: last insert failed: %w", *p)
	}
	return nil
}

// Consumer creates or updates the durable consumer.
func (s *Sink) Consumer(ctx context.Context) (jetstream.Consumer, error) {
	pull := s.pullBuffer()
	return s.js.CreateOrUpdateConsumer(ctx, s.cfg.Stream, jetstream.ConsumerConfig{
		Durable:       s.cfg.Consumer,
		Description:   "callpipe ClickHouse sink",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.cfg.AckWait,
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: s.cfg.FilterSubject,
		// every batch in flight, the one being filled and the client's buffer
		MaxAckPending: s.cfg.Batch.Count*(s.out.cfg.MaxInFlight+1) + pull,
	})
}

func (s *Sink) pullBuffer() int { return min(max(s.cfg.Batch.Count, 500), 10000) }

func (s *Sink) pullBytes() int { return min(s.cfg.Batch.Bytes, 8<<20) }

// pending is a call waiting for its insert; its message is held as an
// AckRef so that the payload is not kept twice (the call holds its text).
// A message's calls are consecutive in one insert batch; only its last
// call settles it (settles), so a batched message is acknowledged once,
// after every call of it was inserted.
type pending struct {
	call    schema.Call
	ref     bus.AckRef
	settles bool
}

// Run consumes until ctx ends, then flushes the batch being filled (and what
// the client had buffered), acks it and returns after every flusher finished.
func (s *Sink) Run(ctx context.Context) error {
	cons, err := s.Consumer(ctx)
	if err != nil {
		return fmt.Errorf("clickhouse sink: consumer %s on %s: %w", s.cfg.Consumer, s.cfg.Stream, err)
	}
	// the client's read-ahead is bounded in bytes like the batches, so that
	// large calls do not multiply it
	it, err := cons.Messages(jetstream.PullMaxBytes(s.pullBytes()))
	if err != nil {
		return fmt.Errorf("clickhouse sink: pull: %w", err)
	}
	// a short hand-off: the iterator's read-ahead is bounded in bytes, this
	// channel in messages, and a message can hold a batch of calls (512 KiB)
	msgs := bus.Pull(it, 64, s.log, "clickhouse sink", func(m jetstream.Msg) jetstream.Msg { return m })

	var wg sync.WaitGroup
	slots := make(chan struct{}, s.out.cfg.MaxInFlight)
	flush := func(fctx context.Context, batch []pending) {
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			s.write(fctx, batch)
		}()
	}

	var batch []pending
	batchBytes := 0
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	stopping := false
	for {
		var tick <-chan time.Time
		if len(batch) > 0 {
			tick = timer.C
		}
		var done <-chan struct{}
		if !stopping {
			done = ctx.Done()
		}
		select {
		case <-done:
			stopping = true
			it.Drain() // deliver what is buffered, then close msgs
			continue
		case m, ok := <-msgs:
			if !ok {
				timer.Stop()
				if len(batch) > 0 {
					fctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
					s.writeFinal(fctx, batch)
					cancel()
				}
				wg.Wait()
				if err := s.nc.FlushTimeout(5 * time.Second); err != nil {
					s.log.Warn("clickhouse sink: flushing acks", "err", err)
				}
				return nil
			}
			if !bus.Routed(m.Headers(), bus.StageClickHouse) {
				// a replay addressed to other sinks only (Callpipe-Sinks)
				if err := m.Ack(); err != nil {
					s.log.Warn("clickhouse sink: ack of a record for other sinks", "err", err)
				}
				s.m.skipped.Inc()
				continue
			}
			md, err := m.Metadata()
			if err != nil {
				s.deadLetter(ctx, m, fmt.Errorf("no JetStream metadata: %w", err))
				continue
			}
			calls, ok := s.decodeMsg(ctx, m)
			if !ok {
				continue
			}
			if len(batch) == 0 {
				timer.Reset(s.cfg.Batch.Period)
			}
			ref := bus.NewAckRef(m, md)
			for i := range calls {
				batch = append(batch, pending{call: calls[i], ref: ref, settles: i == len(calls)-1})
			}
			batchBytes += len(m.Data())
			if len(batch) >= s.cfg.Batch.Count || batchBytes >= s.cfg.Batch.Bytes {
				timer.Stop()
				if stopping {
					s.writeFinal(context.Background(), batch)
				} else {
					flush(ctx, batch)
				}
				batch, batchBytes = nil, 0
			}
		case <-tick:
			if stopping {
				continue
			}
			flush(ctx, batch)
			batch, batchBytes = nil, 0
		}
	}
}

// writeFinal is the shutdown flush: one attempt, nak on failure.
func (s *Sink) writeFinal(ctx context.Context, batch []pending) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	s.write(fctx, batch)
}

func (s *Sink) write(ctx context.Context, batch []pending) {
	calls := make([]schema.Call, len(batch))
	for i := range batch {
		calls[i] = batch[i].call
	}
	start := time.Now()
	// an insert that hangs (server stuck behind a lock, half-open connection)
	// must not hold its in-flight slot for ever: give up before the ack wait
	// ends and let the batch be redelivered
	ictx, cancel := context.WithTimeout(ctx, s.cfg.AckWait/2)
	token := ""
	if s.out.Server().Modern() { // older servers have no insert_deduplication_token
		token = batchToken(batch)
	}
	err := s.out.WriteBatch(ictx, calls, token)
	cancel()
	s.m.batchSeconds.Observe(time.Since(start).Seconds())
	if err == nil {
		s.lastErr.Store(nil)
		s.resetBackoff()
		if s.cfg.DropAcks != nil && s.cfg.DropAcks(len(batch)) {
			return
		}
		for _, p := range batch {
			if !p.settles {
				continue
			}
			if aerr := p.ref.Ack(s.nc); aerr != nil {
				s.log.Warn("clickhouse sink: ack (the call will be redelivered and deduplicated)", "id", p.call.ID, "err", aerr)
			}
		}
		s.m.rows.Add(float64(len(batch)))
		s.m.batches.WithLabelValues("ok").Inc()
		return
	}
	s.lastErr.Store(&err)
	s.m.batches.WithLabelValues("error").Inc()
	wait := s.nextBackoff()
	s.log.Error("clickhouse sink: insert failed; batch not acked, will be redelivered", "calls", len(batch), "retry_in", wait, "err", err)
	for _, p := range batch {
		if p.settles {
			_ = p.ref.Nak(s.nc, wait)
		}
	}
	if ctx.Err() == nil {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
}

// batchToken names a batch by its messages: stream sequence, publish time
// and call id of each, in order. A redelivery of the same messages in the
// same batch gets the same token (and modern servers drop the repeated
// insert); a replay (new messages) or a recreated stream (new publish times)
// never collides with an earlier batch.
func batchToken(batch []pending) string {
	h := sha256.New()
	var buf [16]byte
	for i := range batch {
		binary.LittleEndian.PutUint64(buf[:8], batch[i].ref.Seq)
		binary.LittleEndian.PutUint64(buf[8:], uint64(batch[i].ref.Stored.UnixNano()))
		h.Write(buf[:])
		h.Write([]byte(batch[i].call.ID))
	}
	return "callpipe-" + hex.EncodeToString(h.Sum(nil)[:16])
}

func (s *Sink) nextBackoff() time.Duration {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	if s.backoff == 0 {
		s.backoff = s.cfg.BackoffMin
	} else {
		s.backoff = min(2*s.backoff, s.cfg.BackoffMax)
	}
	return s.backoff
}

func (s *Sink) resetBackoff() {
	s.bmu.Lock()
	s.backoff = 0
	s.bmu.Unlock()
}

// decodeCall decodes a normalized call (schema.DecodeCall) that ClickHouse
// can store; an error makes the message poison.
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

// decodeMsg decodes the calls of m (one, or a batch: bus.Items). A message
// that is not a call, or not a valid batch as a whole, is dead-lettered as
// a whole. In a batch, each call that is not valid goes to CALLPIPE_DLQ
// alone and the others are kept; when that dead letter cannot be stored the
// whole message is nak'ed (it comes back, and its calls are inserted again,
// which reads deduplicate). ok is false when m is settled here: nothing of
// it is left to insert.
func (s *Sink) decodeMsg(ctx context.Context, m jetstream.Msg) (calls []schema.Call, ok bool) {
	items, err := bus.Items(m.Headers(), m.Data())
	if err != nil {
		s.deadLetter(ctx, m, err)
		return nil, false
	}
	if len(items) == 1 && m.Headers().Get(bus.HeaderCalls) == "" {
		call, err := decodeCall(items[0])
		if err != nil {
			s.deadLetter(ctx, m, err)
			return nil, false
		}
		return []schema.Call{call}, true
	}
	calls = make([]schema.Call, 0, len(items))
	for i, it := range items {
		call, err := decodeCall(it)
		if err == nil {
			calls = append(calls, call)
			continue
		}
		if derr := s.dead.WriteItem(ctx, m, i, it, err.Error()); derr != nil {
			s.log.Error("clickhouse sink: dead letter publish failed; message nak'ed", "err", derr, "reason", err)
			_ = m.NakWithDelay(s.cfg.BackoffMax)
			return nil, false
		}
		s.m.deadLetters.Inc()
		s.log.Warn("clickhouse sink: call of a batch dead-lettered", "reason", err, "subject", m.Subject(), "item", i)
	}
	if len(calls) == 0 {
		_ = m.Term() // every call of it is in the DLQ
		return nil, false
	}
	return calls, true
}

// deadLetter stores m in CALLPIPE_DLQ with the reason (bus.DeadLetters). If
// the DLQ is unreachable the message is nak'ed and comes back later.
func (s *Sink) deadLetter(ctx context.Context, m jetstream.Msg, reason error) {
	if err := s.dead.Write(ctx, m, reason.Error()); err != nil {
		s.log.Error("clickhouse sink: dead letter publish failed; message nak'ed", "err", err, "reason", reason)
		_ = m.NakWithDelay(s.cfg.BackoffMax)
		return
	}
	s.m.deadLetters.Inc()
	s.log.Warn("clickhouse sink: message dead-lettered", "reason", reason, "subject", m.Subject())
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
