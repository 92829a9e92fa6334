package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/ingest/spool"
	"github.com/callpipe/callpipe/schema"
)

// Reasons an event is dropped (label values of callpipe_proxy_events_dropped_total).
const (
	DropSpoolFull    = "spool_full"    // queue and spool both full
	DropTooLarge     = "too_large"     // larger than the whole spool
	DropNoSpool      = "no_spool"      // publishing failed and no spool is configured
	DropClosed       = "closed"        // captured after Close finished
	DropRejected     = "rejected"      // the publisher rejected it for good (Options.Permanent)
	DropSpoolError   = "spool_error"   // the spool could not write it
	DropSpoolCorrupt = "spool_corrupt" // a spooled record did not decode
	DropEncode       = "encode"        // the event did not encode
	DropInvalid      = "invalid"       // the event failed schema validation (a bug)
)

type metrics struct {
	captured      *prometheus.CounterVec
	published     *prometheus.CounterVec
	publishErrors prometheus.Counter
	spooled       prometheus.Counter
	dropped       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, p *Proxy) (*metrics, error) {
	m := &metrics{
		captured: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callpipe_proxy_events_captured_total",
			Help: "Call events captured by the proxy, by endpoint kind.",
		}, []string{"endpoint"}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callpipe_proxy_events_published_total",
			Help: "Call events stored by the publisher, by path (direct, spool) and result (stored, duplicate).",
		}, []string{"via", "result"}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "callpipe_proxy_publish_errors_total",
			Help: "Failed publish attempts (the event is spooled or retried).",
		}),
		spooled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "callpipe_proxy_events_spooled_total",
			Help: "Call events written to the on-disk spool.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callpipe_proxy_events_dropped_total",
			Help: "Call events lost, by reason.",
		}, []string{"reason"}),
	}
	for _, k := range allKinds {
		m.captured.WithLabelValues(k)
	}
	for _, via := range []string{"direct", "spool"} {
		for _, res := range []string{"stored", "duplicate"} {
			m.published.WithLabelValues(via, res)
		}
	}
	for _, r := range []string{DropSpoolFull, DropTooLarge, DropNoSpool, DropClosed, DropRejected, DropSpoolError, DropSpoolCorrupt, DropEncode, DropInvalid} {
		m.dropped.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	// spoolGauge reports value of the on-disk spool, 0 while there is none.
	spoolGauge := func(name, help string, value func(*spool.Spool) int64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			if p.spool == nil {
				return 0
			}
			return float64(value(p.spool))
		})
	}
	cs := []prometheus.Collector{m.captured, m.published, m.publishErrors, m.spooled, m.dropped,
		spoolGauge("callpipe_proxy_spool_bytes", "Bytes the on-disk spool of unpublished events takes.", (*spool.Spool).Size),
		spoolGauge("callpipe_proxy_spool_events", "Events waiting in the on-disk spool.", (*spool.Spool).Len),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "callpipe_proxy_queue_events",
			Help: "Events waiting in memory to be published.",
		}, func() float64 { return float64(len(p.queue)) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// queued is what waits for the emitter: an event, or a finished call whose
// event the emitter builds.
type queued struct {
	ev *schema.Event
	c  *call
}

func (q queued) event() *schema.Event {
	if q.c != nil {
		return q.c.event()
	}
	return q.ev
}

// emit hands a finished event to the emitter without blocking.
func (p *Proxy) emit(ev *schema.Event, kind string) {
	ev.RedactAPIKey() // the key never reaches the queue, the spool or a log
	p.enqueue(queued{ev: ev}, kind)
}

// emitCall hands a finished call (its API key already hashed) to the
// emitter, which builds its event.
func (p *Proxy) emitCall(c *call) { p.enqueue(queued{c: c}, c.kind) }

// enqueue puts q into the queue without blocking or, when the queue is
// full or closed, its event straight into the spool.
func (p *Proxy) enqueue(q queued, kind string) {
	p.m.captured.WithLabelValues(kind).Inc()
	p.mu.RLock()
	if !p.closing {
		select {
		case p.queue <- q:
			p.mu.RUnlock()
			return
		default:
		}
	}
	p.mu.RUnlock()
	if ev := q.event(); p.prepare(ev) && p.toSpool(ev) {
		p.dirty.Store(true) // the drainer fsyncs it
		p.wakeDrainer()
	}
}

// prepare readies an event for publishing, off the client's request path:
// client-controlled strings are made valid, the capture policy is applied,
// the event is cut to MaxEventBytes, and it is validated, so that the
// publisher never rejects it for good (which would wedge the spool). It
// reports whether ev is usable.
func (p *Proxy) prepare(ev *schema.Event) bool {
	sanitize(ev)
	p.opts.Capture.Event(ev)
	reqCut, respCut := fit(ev, p.opts.MaxEventBytes-64)
	ev.RequestTruncated = ev.RequestTruncated || reqCut
	if respCut {
		meta := map[string]any{}
		json.Unmarshal(ev.Metadata["proxy"], &meta)
		meta["response_truncated"] = true
		if b, err := json.Marshal(meta); err == nil {
			ev.Metadata = map[string]json.RawMessage{"proxy": b}
		}
	}
	if err := ev.Validate(); err != nil {
		p.drop(ev, DropInvalid, err)
		return false
	}
	return true
}

// toSpool appends ev to the spool (without fsync); it counts and logs a drop
// if it cannot.
func (p *Proxy) toSpool(ev *schema.Event) bool {
	if p.spool == nil {
		p.drop(ev, DropNoSpool, nil)
		return false
	}
	b, err := json.Marshal(ev)
	if err != nil {
		p.drop(ev, DropEncode, err)
		return false
	}
	err = p.spool.Append(b)
	switch {
	case err == nil:
		p.m.spooled.Inc()
		return true
	case errors.Is(err, spool.ErrFull):
		p.drop(ev, DropSpoolFull, err)
	case errors.Is(err, spool.ErrTooLarge):
		p.drop(ev, DropTooLarge, err)
	case errors.Is(err, spool.ErrClosed):
		p.drop(ev, DropClosed, err)
	default:
		p.drop(ev, DropSpoolError, err)
	}
	return false
}

func (p *Proxy) wakeDrainer() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *Proxy) drop(ev *schema.Event, reason string, err error) {
	p.m.dropped.WithLabelValues(reason).Inc()
	p.drops.warn(reason, ev, err)
}

func (p *Proxy) permanent(err error) bool {
	if p.opts.Permanent != nil {
		return p.opts.Permanent(err)
	}
	return DefaultPermanent(err)
}

// DefaultPermanent is the Options.Permanent used when none is set: schema
// validation errors and messages over the NATS payload limit are permanent.
func DefaultPermanent(err error) bool {
	var ve schema.ValidationError
	return errors.As(err, &ve) || errors.Is(err, nats.ErrMaxPayload)
}

// published counts an event JetStream acknowledged, by the path it took.
func (p *Proxy) published(via string, duplicate bool) {
	res := "stored"
	if duplicate {
		res = "duplicate"
	}
	p.m.published.WithLabelValues(via, res).Inc()
}

// backlog reports whether spooled events wait; new events then queue behind
// them in the spool so that events are published oldest first.
func (p *Proxy) backlog() bool { return p.spool != nil && p.spool.Len() > 0 }

// deliver publishes a batch of queued events together (one round trip to
// JetStream for the batch, not one per event), spools those it cannot, and
// makes the spooled ones durable with one fsync. While the spool holds a
// backlog, the batch goes behind it.
func (p *Proxy) deliver(ctx context.Context, batch []*schema.Event) {
	ready := make([]*schema.Event, 0, len(batch))
	for _, ev := range batch {
		if p.prepare(ev) {
			ready = append(ready, ev)
		}
	}
	if len(ready) == 0 {
		return
	}
	res := make([]ingest.PublishResult, len(ready))
	if ctx.Err() == nil && !p.backlog() {
		p.publish(ctx, ready, res)
	} else {
		for i := range res {
			res[i].Err = errBehindBacklog
		}
	}
	spooled := false
	for i, ev := range ready {
		switch err := res[i].Err; {
		case err == nil:
			p.published("direct", res[i].Duplicate)
			continue
		case err == errBehindBacklog:
		case p.permanent(err):
			p.drop(ev, DropRejected, err)
			continue
		case ctx.Err() == nil:
			p.m.publishErrors.Inc()
			p.drops.publishFailed(err)
		}
		if p.toSpool(ev) {
			spooled = true
		}
	}
	if spooled {
		if err := p.spool.Sync(); err != nil {
			p.log.Error("proxy: spool sync failed", "err", err)
		}
		p.wakeDrainer()
	}
}

// errBehindBacklog: an event not published because the spool holds older
// ones (or the proxy is stopping); it goes to the spool.
var errBehindBacklog = errors.New("spool backlog")

// Run publishes captured events until ctx is done or Close is called: a
// bounded in-memory queue feeds the publisher; events it fails to take go to
// the spool, and a drainer re-publishes the spool oldest first, backing off
// while publishing fails. Call Close afterwards to flush what is queued.
func (p *Proxy) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("proxy: Run called twice")
	}
	select {
	case <-p.stop:
		close(p.runDone)
		return errors.New("proxy: Run after Close")
	default:
	}
	defer close(p.runDone)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	var wg sync.WaitGroup
	wg.Go(func() { p.emitLoop(ctx) })
	if p.spool != nil {
		wg.Go(func() { p.drainLoop(ctx) })
	}
	wg.Wait()
	return nil
}

const maxBatch = 64

// yieldBelow is the queue length under which the emitter yields before
// each event (see emitLoop).
const yieldBelow = 16

// emitLoop builds the events of finished calls and publishes them in
// batches. Building an event (parsing the captured bodies, masking) takes
// tens of microseconds, and the goroutines answering clients share the same
// few Ps: while the queue is short the loop yields before each event, so
// that a handler woken meanwhile runs first instead of waiting behind a
// burst of them (at 500 requests/s this took the added p99 down by a
// quarter or more, `callpipe bench --proxy --proxy-baseline`). A longer
// queue means the emitter is falling behind: then it builds without
// yielding, as a yielded goroutine waits behind every runnable handler and
// a starved emitter would spill calls to the spool.
func (p *Proxy) emitLoop(ctx context.Context) {
	batch := make([]*schema.Event, 0, maxBatch)
	yield := func() {
		if len(p.queue) < yieldBelow {
			runtime.Gosched()
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case q := <-p.queue:
			yield()
			batch = append(batch[:0], q.event())
		more:
			for len(batch) < maxBatch {
				select {
				case q := <-p.queue:
					yield()
					batch = append(batch, q.event())
				default:
					break more
				}
			}
			p.deliver(ctx, batch)
			clear(batch)
		}
	}
}

func (p *Proxy) drainLoop(ctx context.Context) {
	backoff := p.opts.RetryMin
	idle := time.NewTicker(5 * time.Second)
	defer idle.Stop()
	for ctx.Err() == nil {
		if p.dirty.Swap(false) {
			if err := p.spool.Sync(); err != nil {
				p.log.Error("proxy: spool sync failed", "err", err)
			}
		}
		recs, err := p.spool.PeekN(maxBatch)
		if errors.Is(err, spool.ErrEmpty) || errors.Is(err, spool.ErrClosed) {
			select {
			case <-ctx.Done():
			case <-p.wake:
			case <-idle.C:
			}
			continue
		}
		if err != nil {
			p.log.Error("proxy: reading spool", "err", err)
			p.sleep(ctx, backoff)
			backoff = min(backoff*2, p.opts.RetryMax)
			continue
		}
		done, err := p.drainBatch(ctx, recs)
		if done > 0 {
			if aerr := p.spool.AckN(done); aerr != nil {
				p.log.Error("proxy: spool ack failed", "err", aerr)
			}
		}
		if err == nil {
			backoff = p.opts.RetryMin
			continue
		}
		if ctx.Err() != nil {
			return // the records stay for the next start
		}
		p.m.publishErrors.Inc()
		p.drops.publishFailed(err)
		p.sleep(ctx, backoff)
		backoff = min(backoff*2, p.opts.RetryMax)
	}
}

// drainBatch publishes spooled records together and reports how many of
// them, from the first, are done (stored, or dropped for good: corrupt or
// rejected), and the error that stopped the rest. Records after a failed
// one are published again later, even if they were stored this time:
// JetStream deduplicates them by id.
func (p *Proxy) drainBatch(ctx context.Context, recs [][]byte) (done int, err error) {
	evs := make([]*schema.Event, 0, len(recs))
	at := make([]int, len(recs))        // recs[i]'s index in evs, or -1 when corrupt
	corrupt := make([]error, len(recs)) // why recs[i] does not decode
	for i, rec := range recs {
		var ev schema.Event
		if corrupt[i] = json.Unmarshal(rec, &ev); corrupt[i] != nil {
			at[i] = -1
			continue
		}
		// Spooled by prepare, so redacted already, unless a version that
		// applied no policy spooled it; the pass is idempotent.
		p.opts.Capture.Event(&ev)
		at[i] = len(evs)
		evs = append(evs, &ev)
	}
	res := make([]ingest.PublishResult, len(evs))
	if len(evs) > 0 {
		p.publish(ctx, evs, res)
	}
	for i := range recs {
		if at[i] < 0 {
			p.drop(nil, DropSpoolCorrupt, corrupt[i])
			continue
		}
		switch r := res[at[i]]; {
		case r.Err == nil:
			p.published("spool", r.Duplicate)
		case p.permanent(r.Err):
			p.drop(evs[at[i]], DropRejected, r.Err)
		default:
			return i, r.Err
		}
	}
	return len(recs), nil
}

// sleep waits d, ±20%, or until ctx is done.
func (p *Proxy) sleep(ctx context.Context, d time.Duration) {
	d = time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Close stops Run, then publishes what is still queued — or spools it, when
// publishing fails or ctx ends — and closes the spool, so that a shutdown
// loses no captured event. Shut the HTTP server down first: events captured
// after Close are dropped (reason "closed").
func (p *Proxy) Close(ctx context.Context) error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closing = true
		p.mu.Unlock()
		close(p.stop)
		if p.running.Load() {
			<-p.runDone // Run's loops return promptly once stop is closed
		}
		batch := make([]*schema.Event, 0, maxBatch)
		for {
			select {
			case q := <-p.queue:
				batch = append(batch, q.event())
				if len(batch) < maxBatch {
					continue
				}
			default:
			}
			if len(batch) == 0 {
				break
			}
			p.deliver(ctx, batch)
			batch = batch[:0]
		}
		if p.spool != nil {
			p.closeErr = p.spool.Close()
		}
	})
	return p.closeErr
}

// dropLog logs drops and publish failures, at most once per interval per
// kind, with the number left unlogged in between: nothing is silent, and an
// outage does not flood the log.
type dropLog struct {
	log      *slog.Logger
	mu       sync.Mutex
	last     map[string]time.Time
	unlogged map[string]int
}

const logEvery = 10 * time.Second

func (d *dropLog) allow(key string) (ok bool, unlogged int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.last == nil {
		d.last, d.unlogged = map[string]time.Time{}, map[string]int{}
	}
	now := time.Now()
	if t, seen := d.last[key]; seen && now.Sub(t) < logEvery {
		d.unlogged[key]++
		return false, 0
	}
	d.last[key] = now
	n := d.unlogged[key]
	d.unlogged[key] = 0
	return true, n
}

func (d *dropLog) warn(reason string, ev *schema.Event, err error) {
	ok, n := d.allow("drop:" + reason)
	if !ok {
		return
	}
	attrs := []any{"reason", reason, "also_dropped_since_last_log", n}
	if ev != nil {
		attrs = append(attrs, "event_id", ev.ID, "endpoint", ev.Endpoint)
	}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	d.log.Warn("proxy: call event dropped", attrs...)
}

func (d *dropLog) publishFailed(err error) {
	if ok, n := d.allow("publish"); ok {
		d.log.Warn("proxy: publishing call events failed; spooling them", "err", err, "failures_since_last_log", n)
	}
}

// publish stores evs together within PublishTimeout; res[i] is what became
// of evs[i].
func (p *Proxy) publish(ctx context.Context, evs []*schema.Event, res []ingest.PublishResult) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.PublishTimeout)
	defer cancel()
	p.pub.PublishBatch(ctx, evs, res)
}
