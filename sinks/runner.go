package sinks

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/internal/freelist"
	"github.com/callpipe/callpipe/internal/retry"
)

// BatchPolicy decides when the runner hands a batch to its output: at Count
// values, at Bytes of message bodies, or when the oldest value of the batch
// is Period old, whichever comes first; MaxInFlight batches are written at
// once. A field left 0 takes the sink's default (else 1000, 8 MiB, 1s, 1).
//
// Idle, when set, also hands over a batch of at least IdleCount values (0:
// 1) once no message has come for Idle: the last batch of a burst goes out
// when the stream goes quiet instead of waiting out Period, while a trickle
// (whose batches stay under IdleCount) and a steady flow (whose messages
// come closer together than Idle) are batched by Count, Bytes and Period
// as before: no write made for being idle holds fewer than IdleCount
// values. Idle 0 is off.
type BatchPolicy struct {
	Count, Bytes int
	Period       time.Duration
	MaxInFlight  int
	Idle         time.Duration
	IdleCount    int
}

// Output is a sink's side of the contract (Benthos's BatchOutput): Connect,
// Decode, WriteBatch, Close. The runner calls Connect and Close on Run's
// goroutine holding none of its locks; Decode on the pulling goroutine;
// WriteBatch on its flushers, up to MaxInFlight at once.
//
// There is no ErrNotConnected: Connect runs once per Run. Every destination
// reconnects on its own once connected (the ClickHouse driver's pool dials
// again, Langfuse and S3 are plain HTTP), so a connection lost later is a
// failed write like any other (nak'ed with the backoff, unhealthy until a
// write succeeds), not a state the runner must repair.
type Output[T any] interface {
	// Connect makes the destination ready to write. The runner calls it
	// before it pulls anything, retrying it (internal/retry, Config.Connect)
	// until it returns nil or Run's ctx ends; meanwhile nothing is pulled and
	// Healthy says why it is not connected.
	Connect(ctx context.Context) error
	// Decode turns one item of a message (its body, or one line of a
	// batched message: bus.Items) into a value, in the pulling goroutine. An
	// error makes the item poison: dead-lettered, alone in a batched message.
	Decode(m jetstream.Msg, md *jetstream.MsgMetadata, item []byte) (T, error)
	// WriteBatch writes b and may say what became of each value (Written,
	// Retry, Reject, Hold, Abandon); the others are written when it returns
	// nil, retried otherwise. An error marks the runner unhealthy until a
	// write succeeds and grows the backoff; a PauseError pauses pulling.
	WriteBatch(ctx context.Context, b *Batch[T]) error
	// Close releases what Connect took, once, as Run returns: after the
	// drain settled every message taken (or gave up at DrainTimeout), with
	// no WriteBatch or Flush running or to come; also when ctx ended before
	// Connect succeeded. Its ctx ends CloseTimeout later; its error is logged.
	Close(ctx context.Context) error
}

// Holder is an Output that keeps values past WriteBatch (Batch.Hold). Flush
// runs every Batch.Period on the runner's goroutine (the output guards its
// state against the flushers'), and once at the drain with final set: then
// it closes everything and releases each hold, stored or, when ctx ends, not.
type Holder interface {
	Flush(ctx context.Context, final bool)
}

// PauseError is a write error after which every write would fail for For
// (Langfuse refusing the keys): the runner stops pulling, hands back what
// it read ahead and was batching for the end of the pause, then pulls again.
type PauseError struct {
	Err error
	For time.Duration
}

func (e *PauseError) Error() string { return e.Err.Error() }
func (e *PauseError) Unwrap() error { return e.Err }

// Pause wraps err as a PauseError of d.
func Pause(err error, d time.Duration) error { return &PauseError{Err: err, For: d} }

// Counters are the runner's counts in the sink's own metrics (nil: not
// counted): replays for other stages acked unwritten, messages and items
// stored in CALLPIPE_DLQ, dead letters the DLQ refused (the message nak'ed).
type Counters struct{ Skipped, DeadLetters, DeadLetterErrors prometheus.Counter }

func inc(c prometheus.Counter) {
	if c != nil {
		c.Inc()
	}
}

// Config is the JetStream side of a sink.
type Config struct {
	// Stage is the bus stage (routing, callpipe.dlq.<stage>, logs); Stream,
	// Consumer and FilterSubject default to its row of the bus topology.
	Stage                           string
	Stream, Consumer, FilterSubject string
	Description                     string
	Batch                           BatchPolicy
	// AckWait is the consumer's (default 2m); a message held gets an
	// in-progress ack once it has gone AckWait/3 without one.
	AckWait       time.Duration
	MaxAckPending int // default Batch.Count × (MaxInFlight+1) + PullBuffer
	// PullBytes bounds the read-ahead (default min(Batch.Bytes, 8 MiB), at
	// least the max payload); PullBuffer, the hand-off after it (default 64).
	PullBytes, PullBuffer int
	// The backoff (nak delay, and pause of a flusher after a failed write)
	// starts at BackoffMin and doubles up to BackoffMax (250ms, 30s).
	BackoffMin, BackoffMax time.Duration
	// DrainTimeout bounds the drain after ctx ends (default 30s).
	DrainTimeout time.Duration
	// Connect is how Output.Connect is retried until it succeeds (default:
	// after 250ms, doubled up to 30s; an attempt bounded by ctx only).
	// Destination names what it connects to in the logs ("<destination> not
	// ready; retrying"; default the stage).
	Connect     retry.Backoff
	Destination string
	// HandBack naks the read-ahead on stop (a slow destination: another
	// worker takes it now) instead of writing it with the last batch.
	HandBack bool
	// KeepMessages keeps each message (not only its AckRef) for Batch.Reject.
	KeepMessages bool
	Log          *slog.Logger
	Counters     Counters
}

// Runner consumes a durable JetStream consumer and writes what it reads
// through an Output, in batches; see the package comment for its contract.
type Runner[T any] struct {
	core
	out    Output[T]
	holder Holder

	fill *Batch[T] // the batch being filled (main goroutine only)
	// fillCap is the length of the last batch dispatched: the next one's
	// items are allocated at that size once, instead of grown (and copied)
	// from empty to a batch of thousands of calls (main goroutine only).
	fillCap int
	pauseCh chan time.Duration
	// spareItems and spareValues are the slices of batches written,
	// emptied, for the next batches: a batch's slices are thousands of
	// values long, and allocating them anew each time was much of what a
	// sink allocated (and the garbage collector then cleared and scanned).
	spareItems  freelist.List[[]Item[T]]
	spareValues freelist.List[[]T]
	// spareDecoded: the value slices of batched messages, once take has
	// copied them into a batch, for the next messages' decode.
	spareDecoded freelist.List[[]T]

	// notConnected is why the output is not connected (nil once it is);
	// connected is closed then.
	notConnected atomic.Pointer[error]
	connected    chan struct{}
}

// CloseTimeout bounds Output.Close.
const CloseTimeout = 10 * time.Second

// core is the part of the runner that settles messages; Hold reaches it.
type core struct {
	cfg  Config
	nc   *nats.Conn
	js   jetstream.JetStream
	log  *slog.Logger
	dead bus.DeadLetters
	what string

	mu      sync.Mutex
	held    map[uint64]*message // every message taken and not settled, by stream sequence
	backoff time.Duration
	lastErr atomic.Pointer[error]
}

// New returns a runner of stage reading with nc and writing to out.
func New[T any](nc *nats.Conn, out Output[T], cfg Config) (*Runner[T], error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("%s sink: jetstream: %w", cfg.Stage, err)
	}
	bus.StageOf(cfg.Stage).Defaults(&cfg.Stream, &cfg.Consumer, &cfg.FilterSubject)
	b := &cfg.Batch
	b.Count = defaults.IfNotPositive(b.Count, 1000)
	b.Bytes = defaults.IfNotPositive(b.Bytes, 8<<20)
	b.MaxInFlight = defaults.IfNotPositive(b.MaxInFlight, 1)
	b.Period = defaults.IfNotPositive(b.Period, time.Second)
	b.IdleCount = defaults.IfNotPositive(b.IdleCount, 1)
	cfg.AckWait = defaults.IfNotPositive(cfg.AckWait, 2*time.Minute)
	cfg.PullBuffer = defaults.IfNotPositive(cfg.PullBuffer, 64)
	cfg.PullBytes = max(defaults.IfNotPositive(cfg.PullBytes, min(b.Bytes, 8<<20)), int(nc.MaxPayload())+64<<10)
	cfg.MaxAckPending = defaults.IfNotPositive(cfg.MaxAckPending, b.Count*(b.MaxInFlight+1)+cfg.PullBuffer)
	cfg.BackoffMin = defaults.IfNotPositive(cfg.BackoffMin, 250*time.Millisecond)
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(30*time.Second, cfg.BackoffMin)
	}
	cfg.DrainTimeout = defaults.IfNotPositive(cfg.DrainTimeout, 30*time.Second)
	cfg.Connect.First = defaults.IfNotPositive(cfg.Connect.First, 250*time.Millisecond)
	cfg.Connect.Max = defaults.IfNotPositive(cfg.Connect.Max, 30*time.Second)
	cfg.Destination = cmp.Or(cfg.Destination, cfg.Stage)
	cfg.Log = cmp.Or(cfg.Log, slog.New(slog.DiscardHandler))
	r := &Runner[T]{out: out, pauseCh: make(chan time.Duration, 1), connected: make(chan struct{}),
		spareItems: freelist.New[[]Item[T]](spareBatches), spareValues: freelist.New[[]T](spareBatches),
		spareDecoded: freelist.New[[]T](spareBatches)}
	r.setNotConnected(errors.New("connecting"))
	r.holder, _ = out.(Holder)
	r.core = core{cfg: cfg, nc: nc, js: js, log: cfg.Log, dead: bus.DeadLetters{JS: js, Stage: cfg.Stage},
		what: cfg.Stage + " sink", held: map[uint64]*message{}}
	return r, nil
}

// Healthy is nil unless the output is not connected or the last write failed.
func (r *Runner[T]) Healthy() error {
	if err := r.Connected(); err != nil {
		return err
	}
	if p := r.lastErr.Load(); p != nil {
		return fmt.Errorf("%s: last write failed: %w", r.what, *p)
	}
	return nil
}

// Connected is nil once Output.Connect succeeded, else why it has not.
func (r *Runner[T]) Connected() error {
	if p := r.notConnected.Load(); p != nil {
		return fmt.Errorf("%s: not connected: %w", r.what, *p)
	}
	return nil
}

// Ready is closed once Output.Connect succeeded (what runs beside the sink
// on its destination starts then).
func (r *Runner[T]) Ready() <-chan struct{} { return r.connected }

func (r *Runner[T]) setNotConnected(err error) { r.notConnected.Store(&err) }

// connect calls Output.Connect until it succeeds (true) or ctx ends.
func (r *Runner[T]) connect(ctx context.Context) bool {
	err := retry.Until(ctx, r.cfg.Connect, r.out.Connect, retry.Reporting(r.cfg.Destination, r.setNotConnected, r.log))
	if err != nil {
		return false
	}
	r.notConnected.Store(nil)
	select {
	case <-r.connected:
	default:
		close(r.connected)
	}
	return true
}

// close calls Output.Close once, as Run returns.
func (r *Runner[T]) close(ctx context.Context) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), CloseTimeout)
	defer cancel()
	if err := r.out.Close(cctx); err != nil {
		r.log.Warn(r.what+": closing its output", "err", err)
	}
}

// Consumer creates or updates the durable consumer.
func (r *Runner[T]) Consumer(ctx context.Context) (jetstream.Consumer, error) {
	c := r.cfg
	cons, err := bus.ConsumerWhenReady(ctx, r.log, r.js, c.Stream, jetstream.ConsumerConfig{Durable: c.Consumer, Description: c.Description,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: c.AckWait, MaxDeliver: bus.NoMaxDeliver,
		DeliverPolicy: jetstream.DeliverAllPolicy, FilterSubject: c.FilterSubject, MaxAckPending: c.MaxAckPending})
	if err != nil {
		return nil, fmt.Errorf("%s: consumer %s on %s: %w", r.what, c.Consumer, c.Stream, err)
	}
	return cons, nil
}

// message is a taken message until settled: its last value settled settles it.
type message struct {
	c       *core
	ref     bus.AckRef
	msg     jetstream.Msg // Config.KeepMessages only
	batched bool          // bus.HeaderCalls: its values are dead-lettered alone
	left    atomic.Int32  // values not settled yet
	stored  atomic.Int32  // values written
	dead    atomic.Int32  // values dead-lettered alone
	retry   atomic.Bool   // some value must come again: nak
	gone    atomic.Bool   // terminated (dead-lettered whole) or abandoned: never settle
	delay   atomic.Int64  // the longest nak delay asked for
	// alive is when JetStream last heard of it (taken, or its last
	// in-progress ack); under core.mu
	alive time.Time
}

// Item is one value of a batch and where it came from: the message's
// AckRef and the value's place in it (0 unless the message is a batch).
type Item[T any] struct {
	Value T
	Ref   bus.AckRef
	Index int
	m     *message
}

type state uint8

const (
	unset state = iota
	written
	retried
	rejected
	held
	abandoned
)

// Batch is what the runner hands to WriteBatch.
type Batch[T any] struct {
	Items   []Item[T]
	state   []state
	reasons map[int]string
	bytes   int
	opened  time.Time
	values  []T
	spare   freelist.List[[]T] // the runner's spareValues
}

// Values returns the batch's values in order, in a slice the runner reuses
// once WriteBatch has returned: an output must not keep it.
func (b *Batch[T]) Values() []T {
	if b.values == nil {
		if v, ok := b.spare.Get(); ok {
			b.values = v[:0]
		} else {
			b.values = make([]T, 0, len(b.Items))
		}
		for i := range b.Items {
			b.values = append(b.values, b.Items[i].Value)
		}
	}
	return b.values
}

// spareBatches bounds the emptied slices a runner keeps of each kind.
const spareBatches = 4

// recycle hands b's slices to the next batches, emptied so that they pin
// none of b's values; b is not used again.
func (r *Runner[T]) recycle(b *Batch[T]) {
	clear(b.Items)
	r.spareItems.Put(b.Items[:0])
	if b.values != nil {
		clear(b.values)
		r.spareValues.Put(b.values[:0])
	}
	*b = Batch[T]{}
}

// newBatch is an empty batch for about n values.
func (r *Runner[T]) newBatch(n int) *Batch[T] {
	b := &Batch[T]{opened: time.Now(), spare: r.spareValues}
	if items, ok := r.spareItems.Get(); ok {
		b.Items = items
	} else {
		b.Items = make([]Item[T], 0, n)
	}
	return b
}

// Written says value i is stored.
func (b *Batch[T]) Written(i int) { b.state[i] = written }

// Retry says value i is not stored: its message is nak'ed (with the backoff).
func (b *Batch[T]) Retry(i int) { b.state[i] = retried }

// Reject says value i can never be stored: it is dead-lettered with reason
// (alone when its message is a batch). Needs Config.KeepMessages.
func (b *Batch[T]) Reject(i int, reason string) {
	b.state[i] = rejected
	if b.reasons == nil {
		b.reasons = map[int]string{}
	}
	b.reasons[i] = reason
}

// Hold says the output keeps value i past WriteBatch: the runner keeps its
// message alive until the output calls Release on the returned Hold.
func (b *Batch[T]) Hold(i int) Hold {
	b.state[i] = held
	return Hold{b.Items[i].m}
}

// Abandon forgets b's messages unsettled, as a crash between write and ack
// would (fault injection): JetStream redelivers them after AckWait.
func (b *Batch[T]) Abandon() {
	for i := range b.state {
		b.state[i] = abandoned
	}
}

// Hold is a value the output keeps (Batch.Hold).
type Hold struct{ m *message }

// Release settles a held value: stored (its message is acked once all its
// values are settled) or not (nak'ed, redelivered after the backoff).
func (h Hold) Release(stored bool) {
	if stored {
		h.m.stored.Add(1)
	} else {
		h.m.c.retryLater(h.m, h.m.c.cfg.BackoffMin)
	}
	h.m.c.settle(h.m)
}

// Release releases every hold of hs alike.
func Release(hs []Hold, stored bool) {
	for _, h := range hs {
		h.Release(stored)
	}
}

// Holds reports whether the runner holds a delivery of sequence seq.
func (r *Runner[T]) Holds(seq uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.held[seq]
	return ok
}

// decoded is a message as the pulling goroutine leaves it.
type decoded[T any] struct {
	m       jetstream.Msg
	md      *jetstream.MsgMetadata
	skip    bool  // a replay for other stages
	err     error // poison as a whole
	batched bool  // values, index and bad; else one value in one (no allocation)
	one     T
	values  []T
	index   []int // of each value in the message
	bad     []badItem
}

type badItem struct {
	index  int
	data   []byte
	reason string
}

func (r *Runner[T]) decode(m jetstream.Msg) decoded[T] {
	d := decoded[T]{m: m}
	md, err := m.Metadata()
	if err != nil {
		d.err = fmt.Errorf("no JetStream metadata: %w", err)
		return d
	}
	d.md = md
	if !bus.Routed(m.Headers(), r.cfg.Stage) {
		d.skip = true
		return d
	}
	if d.batched = m.Headers().Get(bus.HeaderCalls) != ""; !d.batched {
		d.one, d.err = r.out.Decode(m, md, m.Data())
		return d
	}
	items, err := bus.Items(m.Headers(), m.Data())
	if err != nil {
		d.err = err
		return d
	}
	if v, ok := r.spareDecoded.Get(); ok {
		d.values = v[:0]
	} else {
		d.values = make([]T, 0, len(items))
	}
	d.index = make([]int, 0, len(items))
	for i, it := range items {
		if v, err := r.out.Decode(m, md, it); err != nil {
			d.bad = append(d.bad, badItem{i, it, err.Error()})
		} else {
			d.values, d.index = append(d.values, v), append(d.index, i)
		}
	}
	return d
}

// end is why consume returned.
type end int

const (
	stopped end = iota // ctx ended
	ended              // the pull ended by itself
	paused             // a write asked for a pause
)

// Run connects the output, consumes until ctx ends, then drains (package
// comment), closes the output and returns. It returns nil when ctx ends
// before the output connected, and may be called once.
func (r *Runner[T]) Run(ctx context.Context) error {
	defer r.close(ctx)
	if !r.connect(ctx) || ctx.Err() != nil {
		return nil // stopped before anything was taken
	}
	cons, err := r.Consumer(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while the consumer was being made: nothing taken
		}
		return err
	}
	// Writes get their own context: ctx ending stops pulling, not the
	// writes, which get DrainTimeout more.
	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer wcancel()
	stopTimer := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(r.cfg.DrainTimeout, wcancel)
		context.AfterFunc(wctx, func() { t.Stop() })
	})
	defer stopTimer()
	kctx, kcancel := context.WithCancel(context.Background())
	defer kcancel() // after the drain: what it holds stays alive until settled
	go r.keepAlive(kctx)

	slots := make(chan struct{}, r.cfg.Batch.MaxInFlight)
	var wg sync.WaitGroup
	for ctx.Err() == nil {
		it, err := bus.Pull(cons, r.cfg.PullBuffer, r.log, r.what, r.decode, jetstream.PullMaxBytes(r.cfg.PullBytes))
		if err != nil {
			r.log.Warn(r.what+": pull", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		msgs := it.C
		why, pause := r.consume(ctx, wctx, msgs, slots, &wg)
		switch {
		case why == stopped && r.cfg.HandBack:
			r.handBack(it, 0)
		case why == stopped:
			it.Drain() // what it read ahead is written by the drain
			for d := range msgs {
				r.take(wctx, d)
				if f := r.fill; f != nil && (len(f.Items) >= r.cfg.Batch.Count || f.bytes >= r.cfg.Batch.Bytes) {
					r.fill = nil
					slots <- struct{}{}
					r.write(ctx, wctx, f)
					<-slots
				}
			}
		case why == paused:
			// hold nothing while paused: what was read ahead or batched
			// comes back when the pause ends, not unrefreshed from here
			r.handBack(it, pause)
			r.dropFill(pause)
			sleep(ctx, pause)
		case why == ended:
			r.log.Warn(r.what + ": pull ended; pulling again")
			sleep(ctx, time.Second) // not in a tight loop if it ends again at once
		}
	}
	r.drain(ctx, wctx, &wg)
	return nil
}

// consume reads msgs into batches and hands full ones to flushers until ctx
// ends, msgs closes or a write asks for a pause.
func (r *Runner[T]) consume(ctx, wctx context.Context, msgs <-chan decoded[T], slots chan struct{}, wg *sync.WaitGroup) (end, time.Duration) {
	age := time.NewTimer(time.Hour) // read only while a batch is open (due)
	defer age.Stop()
	if r.fill != nil {
		age.Reset(max(time.Until(r.fill.opened.Add(r.cfg.Batch.Period)), 0))
	}
	// quiet fires Batch.Idle after the last message while the batch being
	// filled holds IdleCount values (idleArmed); a new message re-arms it
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	defer quiet.Stop()
	idleArmed := false
	var tick <-chan time.Time
	if r.holder != nil {
		t := time.NewTicker(r.cfg.Batch.Period)
		defer t.Stop()
		tick = t.C
	}
	for {
		var due, idle <-chan time.Time
		if r.fill != nil {
			due = age.C
			if idleArmed {
				idle = quiet.C
			}
		}
		select {
		case <-ctx.Done():
			return stopped, 0
		case d := <-r.pauseCh:
			return paused, d
		case d, ok := <-msgs:
			if !ok {
				return ended, 0
			}
			opened := r.fill == nil
			r.take(ctx, d)
			if opened && r.fill != nil {
				age.Reset(r.cfg.Batch.Period)
			}
			if f := r.fill; f != nil && (len(f.Items) >= r.cfg.Batch.Count || f.bytes >= r.cfg.Batch.Bytes) {
				if why, d, ok := r.dispatch(ctx, wctx, slots, wg); !ok {
					return why, d
				}
			}
			idleArmed = r.cfg.Batch.Idle > 0 && r.fill != nil && len(r.fill.Items) >= r.cfg.Batch.IdleCount
			if idleArmed {
				quiet.Reset(r.cfg.Batch.Idle)
			}
		case <-due:
			if why, d, ok := r.dispatch(ctx, wctx, slots, wg); !ok {
				return why, d
			}
		case <-idle:
			idleArmed = false
			if why, d, ok := r.dispatch(ctx, wctx, slots, wg); !ok {
				return why, d
			}
		case <-tick:
			r.holder.Flush(wctx, false)
		}
	}
}

// take adds a decoded message to the batch being filled, or settles it
// (a replay for other stages, poison; a second delivery of one held here).
func (r *Runner[T]) take(ctx context.Context, d decoded[T]) {
	m := d.m
	switch {
	case d.skip:
		if err := m.Ack(); err != nil {
			r.log.Warn(r.what+": ack of a record for other stages", "err", err)
		}
		inc(r.cfg.Counters.Skipped)
		return
	case d.md != nil && r.Holds(d.md.Sequence.Stream):
		return // a second delivery of a message held here: the held one settles it
	case d.err != nil:
		if !r.dlq(r.dead.Write(ctx, m, d.err.Error()), m, 0, d.err.Error()) {
			_ = m.NakWithDelay(r.cfg.BackoffMax)
		}
		return
	}
	for _, b := range d.bad {
		if !r.dlq(r.dead.WriteItem(ctx, m, b.index, b.data, b.reason), m, b.index, b.reason) {
			_ = m.NakWithDelay(r.cfg.BackoffMax)
			return
		}
	}
	n := 1
	if d.batched {
		n = len(d.values)
	}
	if n == 0 {
		_ = m.Term() // every item of it is in the DLQ
		return
	}
	st := &message{c: &r.core, ref: bus.NewAckRef(m, d.md), batched: d.batched}
	if r.cfg.KeepMessages {
		st.msg = m
	}
	st.left.Store(int32(n))
	st.dead.Store(int32(len(d.bad)))
	st.alive = time.Now()
	r.mu.Lock()
	r.held[st.ref.Seq] = st
	r.mu.Unlock()
	if r.fill == nil {
		r.fill = r.newBatch(min(r.fillCap, r.cfg.Batch.Count))
	}
	f := r.fill
	if !d.batched {
		f.Items = append(f.Items, Item[T]{Value: d.one, Ref: st.ref, m: st})
	}
	for i, v := range d.values {
		f.Items = append(f.Items, Item[T]{Value: v, Ref: st.ref, Index: d.index[i], m: st})
	}
	if d.values != nil {
		clear(d.values) // copied into the batch: pin none of them
		r.spareDecoded.Put(d.values[:0])
	}
	f.bytes += len(m.Data())
}

// dispatch hands the batch being filled to a flusher once a slot is free; not
// ok when ctx ended first (the batch stays, for the drain) or a write paused.
func (r *Runner[T]) dispatch(ctx, wctx context.Context, slots chan struct{}, wg *sync.WaitGroup) (end, time.Duration, bool) {
	select {
	case slots <- struct{}{}:
	case <-ctx.Done():
		return stopped, 0, false
	}
	select {
	case d := <-r.pauseCh: // the write that freed the slot asked for it
		<-slots
		return paused, d, false
	default:
	}
	b := r.fill
	r.fill = nil
	r.fillCap = len(b.Items)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { <-slots }()
		r.write(ctx, wctx, b)
	}()
	return 0, 0, true
}

// write writes b, settles its values, and after a failure keeps its slot
// for the backoff (until stop ends), so that an outage slows reading down.
func (r *Runner[T]) write(stop, ctx context.Context, b *Batch[T]) {
	b.state = make([]state, len(b.Items))
	err := r.out.WriteBatch(ctx, b)
	delay := r.backoffAfter(err)
	var pause *PauseError
	if err == nil {
		r.lastErr.Store(nil)
	} else {
		r.lastErr.Store(&err)
		if errors.As(err, &pause) {
			delay = max(delay, pause.For)
		}
		r.log.Error(r.what+": write failed; not acked, will be redelivered", "values", len(b.Items), "retry_in", delay, "err", err)
	}
	for i := range b.Items {
		it := &b.Items[i]
		s := b.state[i]
		if s == unset {
			s = written
			if err != nil {
				s = retried
			}
		}
		switch s {
		case held:
			continue
		case written:
			it.m.stored.Add(1)
		case retried:
			r.retryLater(it.m, delay)
		case rejected:
			r.reject(ctx, it, b.reasons[i])
		case abandoned:
			it.m.gone.Store(true)
		}
		r.settle(it.m)
	}
	switch {
	case pause != nil:
		select {
		case r.pauseCh <- pause.For:
		default:
		}
	case err != nil:
		sleep(stop, delay)
	}
	r.recycle(b)
}

// reject dead-letters the value it (alone when its message is a batch).
func (r *Runner[T]) reject(ctx context.Context, it *Item[T], reason string) {
	m := it.m
	if m.msg == nil {
		r.log.Error(r.what+": a value was rejected but its message was not kept (Config.KeepMessages); nak'ed", "reason", reason)
		r.retryLater(m, r.cfg.BackoffMax)
		return
	}
	var err error
	if !m.batched {
		err = r.dead.Write(ctx, m.msg, reason) // terminates it
	} else if items, ierr := bus.Items(m.msg.Headers(), m.msg.Data()); ierr != nil {
		err = ierr
	} else {
		err = r.dead.WriteItem(ctx, m.msg, it.Index, items[it.Index], reason)
	}
	switch {
	case !r.dlq(err, m.msg, it.Index, reason):
		r.retryLater(m, r.cfg.BackoffMax)
	case m.batched:
		m.dead.Add(1)
	default:
		m.gone.Store(true)
	}
}

// dlq counts and logs the dead letter of item of m (err: the DLQ's
// answer); false when it was not stored (the caller naks m).
func (c *core) dlq(err error, m jetstream.Msg, item int, reason string) bool {
	if err != nil {
		inc(c.cfg.Counters.DeadLetterErrors)
		c.log.Error(c.what+": dead letter publish failed; message nak'ed", "err", err, "reason", reason)
		return false
	}
	inc(c.cfg.Counters.DeadLetters)
	c.log.Warn(c.what+": dead-lettered", "reason", reason, "subject", m.Subject(), "item", item)
	return true
}

func (c *core) retryLater(m *message, d time.Duration) {
	m.retry.Store(true)
	for {
		old := m.delay.Load()
		if int64(d) <= old || m.delay.CompareAndSwap(old, int64(d)) {
			return
		}
	}
}

// settle counts one value of m settled; the last one settles m: nak when
// a value must come again, term when every value went to the DLQ, else ack.
func (c *core) settle(m *message) {
	if m.left.Add(-1) != 0 {
		return
	}
	c.mu.Lock()
	if c.held[m.ref.Seq] == m {
		delete(c.held, m.ref.Seq)
	}
	c.mu.Unlock()
	var err error
	switch {
	case m.gone.Load():
	case m.retry.Load():
		err = m.ref.Nak(c.nc, time.Duration(m.delay.Load()))
	case m.stored.Load() == 0 && m.dead.Load() > 0:
		err = m.ref.Term(c.nc)
	default:
		err = m.ref.Ack(c.nc)
	}
	if err != nil {
		c.log.Warn(c.what+": settling a message failed (it will be redelivered)", "seq", m.ref.Seq, "err", err)
	}
}

// keepAlive sends an in-progress ack for each message held that has gone
// AckWait/3 without one.
func (c *core) keepAlive(ctx context.Context) {
	// A message is refreshed once it has gone a third of AckWait without
	// word; ticking every sixth, that is before half of AckWait. Messages
	// settled sooner (most: a batch is written, an object uploaded, well
	// within it) cost no in-progress ack at all.
	every := c.cfg.AckWait / 3
	t := time.NewTicker(max(every/2, 10*time.Millisecond))
	defer t.Stop()
	var refs []bus.AckRef
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		}
		refs = refs[:0]
		c.mu.Lock()
		for _, m := range c.held {
			if now.Sub(m.alive) >= every {
				m.alive = now
				refs = append(refs, m.ref)
			}
		}
		c.mu.Unlock()
		for _, ref := range refs {
			_ = ref.InProgress(c.nc)
		}
	}
}

// handBack ends the pull and naks what it had read ahead, for
// redelivery after delay (at once when 0).
func (r *Runner[T]) handBack(it *bus.Pulled[decoded[T]], delay time.Duration) {
	it.Drain()
	for d := range it.C {
		_ = d.m.NakWithDelay(delay)
	}
}

// dropFill naks the batch being filled, for redelivery after delay.
func (r *Runner[T]) dropFill(delay time.Duration) {
	if r.fill == nil {
		return
	}
	for i := range r.fill.Items {
		m := r.fill.Items[i].m
		r.retryLater(m, delay)
		r.settle(m)
	}
	r.fill = nil
}

// drain waits for the flushers, writes the batch being filled, flushes the
// output's holds and waits for every held message to be settled; ctx ends
// DrainTimeout after stop (Run's ctx, ended: no flusher waits out a backoff).
func (r *Runner[T]) drain(stop, ctx context.Context, wg *sync.WaitGroup) {
	wg.Wait()
	if b := r.fill; b != nil {
		r.fill = nil
		r.write(stop, ctx, b)
	}
	if r.holder != nil {
		r.holder.Flush(ctx, true)
	}
	// the output releases what it holds once stored, or when ctx ends
	for r.holding() > 0 && ctx.Err() == nil {
		sleep(ctx, 20*time.Millisecond)
	}
	if left := r.holding(); left > 0 {
		r.log.Error(r.what+": drain timeout; what is still held will be redelivered", "messages", left, "timeout", r.cfg.DrainTimeout)
	}
	if err := r.nc.FlushTimeout(5 * time.Second); err != nil {
		r.log.Warn(r.what+": flushing acks", "err", err)
	}
}

func (c *core) holding() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.held)
}

// backoffAfter is the nak delay after a write that returned err: the
// backoff grown after a failure, reset after a success.
func (c *core) backoffAfter(err error) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err == nil:
		c.backoff = 0
	case c.backoff == 0:
		c.backoff = c.cfg.BackoffMin
	default:
		c.backoff = min(2*c.backoff, c.cfg.BackoffMax)
	}
	return max(c.backoff, c.cfg.BackoffMin)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
