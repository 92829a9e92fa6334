package transform

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
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
	if o.Consumer == "" {
		o.Consumer = stage.Consumer
	}
	if o.FilterSubject == "" {
		o.FilterSubject = stage.Subject
	}
	if o.Concurrency <= 0 {
		o.Concurrency = runtime.GOMAXPROCS(0)
	}
	if o.Batch <= 0 {
		o.Batch = 500
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 1000
	}
	if o.AckWait <= 0 {
		o.AckWait = 30 * time.Second
	}
	if o.MaxDeliver <= 0 {
		o.MaxDeliver = 10
	}
	if o.MaxAckPending <= 0 {
		o.MaxAckPending = 20000
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
}

// Worker runs the normalize stage: it consumes CALLPIPE_CALLS through a
// durable pull consumer shared by all replicas, publishes one schema.Call per
// call to CALLPIPE_NORMALIZED (Nats-Msg-Id = call id) and acknowledges the raw
// event only after JetStream acknowledged the record. Poison events go to
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
	cons, err := js.CreateOrUpdateConsumer(ctx, stage.Reads, ConsumerConfig(o))
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", o.Consumer, stage.Reads, err)
	}
	return &Worker{nc: nc, js: js, n: n, o: o, cons: cons}, nil
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

type pending struct {
	msg    jetstream.Msg
	fut    jetstream.PubAckFuture
	pubErr error
	dead   bool // a dead letter: Term after the DLQ ack
	skip   bool // routed to other stages only: Ack
}

// pipeline reads messages, normalizes and publishes them asynchronously, and
// hands the publish futures, in order, to an acknowledger.
func (w *Worker) pipeline(ctx context.Context) error {
	it, err := w.cons.Messages(jetstream.PullMaxMessages(w.o.Batch))
	if err != nil {
		return fmt.Errorf("consume %s: %w", w.o.Consumer, err)
	}
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()
	defer it.Stop()

	held := newHeld()
	q := make(chan pending, w.o.MaxInFlight)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for p := range q {
			w.settle(p)
			held.remove(p.msg)
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

	for {
		msg, err := it.Next()
		if err != nil {
			switch {
			case ctx.Err() != nil && errors.Is(err, jetstream.ErrMsgIteratorClosed):
				return nil // drained
			case errors.Is(err, jetstream.ErrMsgIteratorClosed), errors.Is(err, jetstream.ErrConsumerDeleted),
				errors.Is(err, jetstream.ErrConsumerNotFound):
				return fmt.Errorf("consumer %s: %w", w.o.Consumer, err)
			}
			w.o.Log.Warn("fetch", "err", err)
			continue
		}
		held.add(msg)
		q <- w.handle(ctx, msg)
	}
}

// handle normalizes one raw event and starts its publish.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) pending {
	if !bus.Routed(msg.Headers(), stage.Name) {
		return pending{msg: msg, skip: true}
	}
	if w.limit().Exceeded(msg) {
		return w.deadLetter(msg, w.limit().Reason(nil))
	}
	call, err := w.n.Normalize(ctx, msg.Data())
	if err != nil {
		var poison *PoisonError
		if !errors.As(err, &poison) {
			return pending{msg: msg, pubErr: err}
		}
		return w.deadLetter(msg, poison.Reason)
	}
	fut, err := w.js.PublishMsgAsync(normalizedMsg(call, msg.Headers(), len(msg.Data())),
		jetstream.WithExpectStream(stage.Feeds))
	return pending{msg: msg, fut: fut, pubErr: err}
}

// normalizedMsg is the CALLPIPE_NORMALIZED message of call, whose raw event
// had headers raw and size rawSize. Its Nats-Msg-Id is the call id, so a
// redelivered call is stored once; a replayed call carries the replay marks
// of its raw event and the replay's own id, so the original record in the
// duplicate window does not swallow it (bus/route.go).
func normalizedMsg(call *schema.Call, raw nats.Header, rawSize int) *nats.Msg {
	body := schema.AppendCall(make([]byte, 0, 2*rawSize), call)
	out := &nats.Msg{Subject: bus.NormalizedSubjectPrefix + "." + call.Kind, Data: body, Header: make(nats.Header, 3)}
	id := call.ID
	if bus.IsReplay(raw) {
		bus.CopyReplayHeaders(out.Header, raw)
		id = bus.ReplayMsgID(raw.Get(bus.HeaderReplay), call.ID)
	}
	out.Header.Set(bus.HeaderMsgID, id)
	return out
}

// deadLetter starts the publish of msg to CALLPIPE_DLQ.
func (w *Worker) deadLetter(msg jetstream.Msg, reason string) pending {
	dl := bus.FailureOf(stage.Name, msg, reason).Msg(time.Now())
	fut, err := w.js.PublishMsgAsync(dl, jetstream.WithExpectStream(bus.DeadLetterStream))
	return pending{msg: msg, fut: fut, pubErr: err, dead: true}
}

// settle waits for p's publish and acknowledges (or terminates) the raw
// message, or naks it with a growing delay when the publish failed.
func (w *Worker) settle(p pending) {
	m := w.o.Metrics
	if p.skip {
		m.events.WithLabelValues("skipped").Inc()
		_ = p.msg.Ack()
		return
	}
	err := p.pubErr
	if err == nil {
		select {
		case <-p.fut.Ok():
		case err = <-p.fut.Err():
		}
	}
	if err != nil && !p.dead && w.limit().Last(p.msg) {
		// The last delivery: the event goes to the DLQ now, or comes back
		// (nak) over the limit and its dead letter is tried again.
		dl := bus.DeadLetters{JS: w.js, Stage: stage.Name}
		dlErr := dl.Write(context.Background(), p.msg, w.limit().Reason(err))
		if dlErr == nil {
			m.events.WithLabelValues("dead_letter").Inc()
			w.o.Log.Warn("dead-lettered after max deliveries", "subject", p.msg.Subject(), "err", err)
			return
		}
		w.o.Log.Error("max deliveries: dead letter failed; retrying later", "subject", p.msg.Subject(), "err", dlErr)
	}
	if err != nil {
		delivered := bus.Delivered(p.msg)
		delay := retryDelay(w.o.RetryDelay, delivered)
		m.events.WithLabelValues("retry").Inc()
		w.o.Log.Warn("publish failed; retrying later", "subject", p.msg.Subject(), "err", err,
			"delivery", delivered, "delay", delay)
		_ = p.msg.NakWithDelay(delay)
		return
	}
	if p.dead {
		m.events.WithLabelValues("dead_letter").Inc()
		_ = p.msg.Term()
		return
	}
	m.events.WithLabelValues("normalized").Inc()
	_ = p.msg.Ack()
}

// limit is the bound on deliveries the worker enforces.
func (w *Worker) limit() bus.DeliveryLimit { return bus.DeliveryLimit{Max: uint64(w.o.MaxDeliver)} }

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
