package transform

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/internal/freelist"
	"github.com/callpipe/callpipe/schema"
)

// stage is the normalize stage's row of the bus topology: it reads
// CALLPIPE_CALLS through one durable consumer shared by every normalize
// worker and feeds CALLPIPE_NORMALIZED.
var stage = bus.StageOf(bus.StageNormalize)

// WorkerOptions configure a normalize Worker.
type WorkerOptions struct {
	Consumer      string        // durable name (default: the bus topology's)
	FilterSubject string        // subjects consumed (default: the bus topology's)
	Concurrency   int           // pipelines per process (GOMAXPROCS)
	Batch         int           // messages buffered per pull (500)
	MaxInFlight   int           // records awaiting a JetStream ack per pipeline (1000)
	AckWait       time.Duration // redelivery after this long without an ack (30s)
	MaxDeliver    int           // deliveries before a call is dead-lettered (10), counted by the worker (bus.DeliveryLimit)
	MaxAckPending int           // consumer-wide unacknowledged messages (20000)
	RetryDelay    time.Duration // first NakWithDelay after a transient failure, doubled per delivery (1s, capped at 1m)
	Log           *slog.Logger
	Metrics       *Metrics
}

func (o *WorkerOptions) defaults() {
	stage.Defaults(nil, &o.Consumer, &o.FilterSubject)
	o.Concurrency = defaults.IfNotPositive(o.Concurrency, runtime.GOMAXPROCS(0))
	o.Batch = defaults.IfNotPositive(o.Batch, 500)
	o.MaxInFlight = defaults.IfNotPositive(o.MaxInFlight, 1000)
	o.AckWait = defaults.IfNotPositive(o.AckWait, 30*time.Second)
	o.MaxDeliver = defaults.IfNotPositive(o.MaxDeliver, 10)
	o.MaxAckPending = defaults.IfNotPositive(o.MaxAckPending, 20000)
	o.RetryDelay = defaults.IfNotPositive(o.RetryDelay, time.Second)
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
}

// Worker runs the normalize stage: it consumes CALLPIPE_CALLS through a
// durable pull consumer shared by all replicas, publishes the schema.Call of
// every call to CALLPIPE_NORMALIZED, many calls per message (bus/batch.go,
// batch.go), and acknowledges a raw event only after JetStream acknowledged
// the message holding its record. Poison events go to
// CALLPIPE_DLQ (bus.Failure) and are terminated. Events routed to other
// stages only (bus.Routed: a retried archive dead letter) are acknowledged.
// An event whose record could not be stored on its MaxDeliver-th delivery,
// or that comes back after it, is dead-lettered by the worker itself
// (bus.DeliveryLimit): the consumer has no JetStream MaxDeliver, so no
// event depends on a max-deliveries advisory to reach the DLQ.
type Worker struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	n    *Normalizer
	o    WorkerOptions
	cons jetstream.Consumer
	// batchBytes bounds a batched record message: bus.MaxBatchBytes, less
	// on a server with a smaller max_payload.
	batchBytes int
	// bodies are record batch buffers whose publish is settled, for the
	// next batches (batches of half a megabyte were otherwise allocated and
	// zeroed again and again).
	bodies freelist.List[[]byte]
}

// NewWorker creates or updates the durable consumer. Streams must exist
// (bus.EnsureStreams).
func NewWorker(ctx context.Context, nc *nats.Conn, n *Normalizer, o WorkerOptions) (*Worker, error) {
	o.defaults()
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(o.MaxInFlight*o.Concurrency+o.Batch),
		jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	cons, err := bus.ConsumerWhenReady(ctx, o.Log, js, stage.Reads, ConsumerConfig(o))
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", o.Consumer, stage.Reads, err)
	}
	batchBytes := bus.MaxBatchBytes
	if mp := int(nc.MaxPayload()); mp > 0 {
		batchBytes = min(batchBytes, mp-mp/8)
	}
	return &Worker{nc: nc, js: js, n: n, o: o, cons: cons, batchBytes: batchBytes, bodies: freelist.New[[]byte](4 * o.Concurrency)}, nil
}

// ConsumerConfig is the durable consumer of the normalize stage.
func ConsumerConfig(o WorkerOptions) jetstream.ConsumerConfig {
	o.defaults()
	return jetstream.ConsumerConfig{
		Durable:       o.Consumer,
		Description:   "callpipe normalize stage (shared by all worker replicas)",
		FilterSubject: o.FilterSubject,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.AckWait,
		MaxDeliver:    bus.NoMaxDeliver, // o.MaxDeliver is enforced by the worker (bus.DeliveryLimit)
		MaxAckPending: o.MaxAckPending,
	}
}

// Run consumes until ctx ends, then stops fetching, finishes and acknowledges
// what it holds, and returns.
func (w *Worker) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make(chan error, w.o.Concurrency)
	for range w.o.Concurrency {
		wg.Go(func() {
			if err := w.pipeline(ctx); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := w.nc.Flush(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		w.o.Log.Warn("flush acks", "err", err)
	}
	return <-errs
}

// pending is a publish and the raw messages it settles: the calls of a
// record batch, or one message's dead letter or skip.
type pending struct {
	msgs   []jetstream.Msg
	fut    jetstream.PubAckFuture
	pubErr error
	dead   bool // a dead letter: Term after the DLQ ack
	skip   bool // routed to other stages only: Ack
	// body is a record batch's buffer, reused once its publish is settled
	// (the connection copied it when it was published).
	body []byte
}

// pipeline consumes raw events, normalizes them and publishes their records
// asynchronously in batches, and hands the publish futures, in order, to an
// acknowledger. Events are handled in the consumer's delivery callback (a
// MessagesContext iterator arms two timers for every message it returns);
// open batches are sent by the loop below once no event has come for
// batchLinger and their oldest call has waited batchMinAge.
func (w *Worker) pipeline(ctx context.Context) error {
	held := newHeld()
	q := make(chan pending, w.o.MaxInFlight)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for p := range q {
			w.settle(p)
			for _, m := range p.msgs {
				held.remove(m)
			}
			if p.body != nil {
				w.bodies.Put(p.body[:0])
			}
		}
	}()
	keepAlive := make(chan struct{})
	go func() {
		tick := time.NewTicker(w.o.AckWait / 3)
		defer tick.Stop()
		for {
			select {
			case <-keepAlive:
				return
			case now := <-tick.C:
				held.touchOlder(now, w.o.AckWait/3)
			}
		}
	}()
	defer func() { close(q); <-done; close(keepAlive) }()

	b := &batcher{maxCalls: bus.MaxBatchCalls, maxBytes: w.batchBytes, q: q, open: map[string]*openBatch{}, bodies: w.bodies,
		publish: func(m *nats.Msg) (jetstream.PubAckFuture, error) {
			return w.js.PublishMsgAsync(m, jetstream.WithExpectStream(stage.Feeds))
		}}
	// Lock order: mu (the batcher), then q's capacity (a full q holds the
	// callback, and with it the pull, until the acknowledger catches up).
	var mu sync.Mutex
	var lastEvent atomic.Int64       // UnixNano of the newest event added to an open batch
	opened := make(chan struct{}, 1) // a batch opened: the linger timer is due to be armed
	var ended atomic.Pointer[error]  // why the pull ended, when JetStream ended it
	cc, err := w.cons.Consume(func(msg jetstream.Msg) {
		held.add(msg)
		mu.Lock()
		wasOpen := b.pending()
		w.handle(ctx, msg, b, q)
		open := b.pending()
		mu.Unlock()
		if open {
			lastEvent.Store(time.Now().UnixNano())
		}
		if open && !wasOpen { // the loop below sleeps until a batch opens
			select {
			case opened <- struct{}{}:
			default:
			}
		}
	}, jetstream.PullMaxMessages(w.o.Batch), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if bus.ConsumerGone(err) {
			ended.Store(&err)
			return
		}
		w.o.Log.Warn("fetch", "err", err)
	}))
	if err != nil {
		return fmt.Errorf("consume %s: %w", w.o.Consumer, err)
	}
	stop := context.AfterFunc(ctx, cc.Drain)
	defer stop()
	closed := cc.Closed() // after the last callback has returned
	flush := func() {
		mu.Lock()
		b.flush()
		mu.Unlock()
	}
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for {
		select {
		case <-closed:
			flush()
			switch {
			case ctx.Err() != nil:
				return nil // drained
			case ended.Load() != nil:
				return fmt.Errorf("consumer %s: %w", w.o.Consumer, *ended.Load())
			}
			return fmt.Errorf("consumer %s: %w", w.o.Consumer, jetstream.ErrMsgIteratorClosed)
		case <-opened:
		case <-linger.C:
		}
		mu.Lock()
		if b.pending() {
			at := time.Unix(0, lastEvent.Load()).Add(batchLinger)
			if due, ok := b.due(); ok && due.After(at) {
				at = due
			}
			if wait := time.Until(at); wait > 0 {
				linger.Reset(wait)
			} else {
				b.flush()
			}
		}
		mu.Unlock()
	}
}

// handle normalizes one raw event and adds its call to a batch, or queues
// its skip or dead letter.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg, b *batcher, q chan<- pending) {
	if !bus.Routed(msg.Headers(), stage.Name) {
		q <- pending{msgs: []jetstream.Msg{msg}, skip: true}
		return
	}
	if w.limit().Exceeded(msg) {
		q <- w.deadLetter(msg, w.limit().Reason(nil))
		return
	}
	call, err := w.n.Normalize(ctx, msg.Data())
	if err != nil {
		var poison *PoisonError
		if !errors.As(err, &poison) {
			q <- pending{msgs: []jetstream.Msg{msg}, pubErr: err}
			return
		}
		q <- w.deadLetter(msg, poison.Reason)
		return
	}
	b.add(call, msg)
}

// normalizedMsg is the single-call CALLPIPE_NORMALIZED message of call,
// whose raw event had headers raw (recordMsg).
func normalizedMsg(call *schema.Call, raw nats.Header) *nats.Msg {
	return recordMsg(bus.NormalizedSubjectPrefix+"."+call.Kind, raw, schema.AppendCall(nil, call), []string{call.ID})
}

// deadLetter starts the publish of msg to CALLPIPE_DLQ.
func (w *Worker) deadLetter(msg jetstream.Msg, reason string) pending {
	dl := bus.FailureOf(stage.Name, msg, reason).Msg(time.Now())
	fut, err := w.js.PublishMsgAsync(dl, jetstream.WithExpectStream(bus.DeadLetterStream))
	return pending{msgs: []jetstream.Msg{msg}, fut: fut, pubErr: err, dead: true}
}

// settle waits for p's publish and acknowledges (or terminates) the raw
// message, or naks it with a growing delay when the publish failed.
func (w *Worker) settle(p pending) {
	m := w.o.Metrics
	n := float64(len(p.msgs))
	if p.skip {
		m.events.WithLabelValues("skipped").Add(n)
		for _, msg := range p.msgs {
			_ = msg.Ack()
		}
		return
	}
	err := p.pubErr
	if err == nil {
		select {
		case <-p.fut.Ok():
		case err = <-p.fut.Err():
		}
	}
	if err != nil {
		for i, msg := range p.msgs {
			if !p.dead && w.limit().Last(msg) {
				// The last delivery: the event goes to the DLQ now, or comes
				// back (nak) over the limit and its dead letter is tried again.
				dl := bus.DeadLetters{JS: w.js, Stage: stage.Name}
				dlErr := dl.Write(context.Background(), msg, w.limit().Reason(err))
				if dlErr == nil {
					m.events.WithLabelValues("dead_letter").Inc()
					w.o.Log.Warn("dead-lettered after max deliveries", "subject", msg.Subject(), "err", err)
					continue
				}
				w.o.Log.Error("max deliveries: dead letter failed; retrying later", "subject", msg.Subject(), "err", dlErr)
			}
			delivered := bus.Delivered(msg)
			delay := retryDelay(w.o.RetryDelay, delivered)
			m.events.WithLabelValues("retry").Inc()
			if i == 0 {
				w.o.Log.Warn("publish failed; retrying later", "subject", msg.Subject(), "err", err,
					"delivery", delivered, "delay", delay, "calls", len(p.msgs))
			}
			_ = msg.NakWithDelay(delay)
		}
		return
	}
	if p.dead {
		m.events.WithLabelValues("dead_letter").Add(n)
		for _, msg := range p.msgs {
			_ = msg.Term()
		}
		return
	}
	m.events.WithLabelValues("normalized").Add(n)
	for _, msg := range p.msgs {
		_ = msg.Ack()
	}
}

// limit is the bound on deliveries the worker enforces.
func (w *Worker) limit() bus.DeliveryLimit { return bus.DeliveryLimit{Max: uint64(w.o.MaxDeliver)} }

// batchLinger is how long open record batches wait for the next raw event
// once their oldest call has waited batchMinAge. The minimum age makes
// batches of a dozen calls out of a stream of a few hundred a second, whose
// gaps often exceed batchLinger: each record message costs a publish, its
// acknowledgement and a delivery to every sink, whatever it holds (at 330
// calls/s, 50 ms against 10 ms took the Langfuse and ClickHouse sinks from
// about 120 to 75 µs per call and normalize from 330 to 250). Under load
// batches fill before either matters; at a trickle a call waits
// batchMinAge, next to the sinks' flush interval of a second.
const (
	batchLinger = 2 * time.Millisecond
	batchMinAge = 50 * time.Millisecond
)

// maxRetryDelay caps the backoff of transient failures.
const maxRetryDelay = time.Minute

// retryDelay is the NakWithDelay of a message's delivery-th failed attempt:
// first, doubled per further delivery, at most maxRetryDelay.
func retryDelay(first time.Duration, delivered uint64) time.Duration {
	d := first
	for i := uint64(1); i < delivered && d < maxRetryDelay; i++ {
		d *= 2
	}
	return min(d, maxRetryDelay)
}

// held is the set of raw messages a pipeline has taken from the consumer
// and not yet settled: the one being normalized and those whose publish is
// pending. When a batch is slow (JetStream slow to acknowledge the records,
// a slow lookup), every message held longer than a third of AckWait gets an
// in-progress ack, so JetStream does not redeliver work that is under way.
type held struct {
	mu   sync.Mutex
	msgs map[jetstream.Msg]time.Time // last sign of life
}

func newHeld() *held { return &held{msgs: make(map[jetstream.Msg]time.Time)} }

func (h *held) add(m jetstream.Msg) {
	h.mu.Lock()
	h.msgs[m] = time.Now()
	h.mu.Unlock()
}

func (h *held) remove(m jetstream.Msg) {
	h.mu.Lock()
	delete(h.msgs, m)
	h.mu.Unlock()
}

// touchOlder sends an in-progress ack for every message last touched more
// than age before now.
func (h *held) touchOlder(now time.Time, age time.Duration) {
	h.mu.Lock()
	var stale []jetstream.Msg
	for m, t := range h.msgs {
		if now.Sub(t) >= age {
			stale = append(stale, m)
			h.msgs[m] = now
		}
	}
	h.mu.Unlock()
	for _, m := range stale {
		_ = m.InProgress()
	}
}
