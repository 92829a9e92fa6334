package langfuse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/schema"
)

// The stage's row of the bus topology: stream, subject and default consumer.
var stage = bus.StageOf(bus.StageLangfuse)

const (
	defaultAckWait       = 2 * time.Minute
	defaultMaxAckPending = 20000
)

// BatchPolicy decides when the sink hands a batch to the output: at Count
// calls or when Period has passed since it started waiting, whichever first.
type BatchPolicy struct {
	Count  int
	Period time.Duration
}

// SinkConfig is the JetStream side of the sink.
type SinkConfig struct {
	Consumer      string // durable name (default: the bus topology's)
	FilterSubject string // default: the bus topology's
	Batch         BatchPolicy
	MaxInFlight   int           // batches written at once (default 2)
	AckWait       time.Duration // default 2m; in-flight messages are kept alive with InProgress
	MaxAckPending int
	// RetryDelay is the redelivery delay of a call left pending (default 5s).
	RetryDelay time.Duration
	// DrainTimeout bounds how long Run keeps writing after ctx ends (default 20s).
	DrainTimeout time.Duration
	Log          *slog.Logger
	Registerer   prometheus.Registerer
}

// Sink consumes CALLPIPE_NORMALIZED and writes every call through an Output:
// accepted calls are acknowledged, rejected ones are published to
// CALLPIPE_DLQ with the reason (bus.DeadLetters) and then terminated, pending ones are
// negatively acknowledged with a delay. Nothing is acknowledged before
// Langfuse accepted it or the DLQ stored it.
type Sink struct {
	out  *Output
	js   jetstream.JetStream
	cons jetstream.Consumer
	cfg  SinkConfig
	log  *slog.Logger
	dead bus.DeadLetters

	accepted, rejected, pending, skipped prometheus.Counter
	// authRefused is 1 while Langfuse refuses the credentials.
	authRefused prometheus.Gauge
	// pullBytes bounds the iterator's read-ahead, so that batched
	// messages (bus/batch.go) cannot make it hold many batches of calls;
	// it is never below the server's max payload, or a message that large
	// could never be pulled.
	pullBytes int
}

// NewSink creates (or updates) the durable consumer.
func NewSink(ctx context.Context, nc *nats.Conn, out *Output, cfg SinkConfig) (*Sink, error) {
	if cfg.Consumer == "" {
		cfg.Consumer = stage.Consumer
	}
	if cfg.FilterSubject == "" {
		cfg.FilterSubject = stage.Subject
	}
	if cfg.Batch.Count <= 0 {
		cfg.Batch.Count = 500
	}
	if cfg.Batch.Period <= 0 {
		cfg.Batch.Period = time.Second
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 2
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = defaultAckWait
	}
	if cfg.MaxAckPending <= 0 {
		cfg.MaxAckPending = max(defaultMaxAckPending, 2*cfg.Batch.Count*cfg.MaxInFlight)
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = 5 * time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 20 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, stage.Reads, jetstream.ConsumerConfig{
		Durable:       cfg.Consumer,
		Description:   "callpipe langfuse sink",
		FilterSubject: cfg.FilterSubject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1, // never dropped: pending calls come back until Langfuse takes them
		MaxAckPending: cfg.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", cfg.Consumer, stage.Reads, err)
	}
	s := &Sink{out: out, js: js, cons: cons, cfg: cfg, log: cfg.Log, dead: bus.DeadLetters{JS: js, Stage: stage.Name}}
	s.pullBytes = max(4<<20, int(nc.MaxPayload())+64<<10)
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
	return s, nil
}

// Health is the output's health (credentials refused → error).
func (s *Sink) Health() error { return s.out.Health() }

// Run consumes until ctx ends, then finishes the batches in flight
// (acknowledging what Langfuse accepted) within DrainTimeout, hands back
// (nak) what it had received but not started, and returns.
//
// Messages come from the consumer's pull iterator (Messages), not from
// one-shot Fetch calls: on a replicated (R3) consumer nats-server sends a
// message only once its delivery is replicated, but the 409 "Batch
// Completed" status of a pull request at once, so a Fetch whose count was
// met ends on that status and unsubscribes before its message arrives. The
// message is then delivered to nobody and comes back after AckWait, to the
// same race, for ever (ack floor 0 on a cluster). The iterator keeps one
// subscription for all its pull requests, so a late message still lands;
// its heartbeats also notice a lost consumer leader and pull again.
func (s *Sink) Run(ctx context.Context) error {
	// Writes get their own context: SIGTERM stops pulling, not the batch in flight.
	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer wcancel()
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(s.cfg.DrainTimeout, wcancel)
		context.AfterFunc(wctx, func() { t.Stop() })
	})
	defer stop()

	sem := make(chan struct{}, s.cfg.MaxInFlight)
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		// the acks of the last batches are buffered publishes: send them
		// before the caller closes the connection
		if err := s.js.Conn().FlushTimeout(5 * time.Second); err != nil {
			s.log.Warn("langfuse sink: flushing acks", "err", err)
		}
	}()
	var pauseMu sync.Mutex
	var pauseUntil time.Time
	refusals := 0 // batches refused in a row

	for ctx.Err() == nil {
		p, err := s.pull()
		if err != nil {
			s.log.Warn("langfuse sink: pull", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		ended := false // the iterator ended by itself (connection closed, consumer deleted)
		for ctx.Err() == nil && !ended {
			pauseMu.Lock()
			wait := time.Until(pauseUntil)
			pauseMu.Unlock()
			if wait > 0 {
				// Hold nothing while the keys are refused: what the iterator
				// had read ahead comes back when the pause ends, instead of
				// waiting (unrefreshed) in this process's buffer.
				p.handBack(wait)
				sleep(ctx, wait)
				break
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				continue
			}
			msgs, open := s.collect(ctx, p.msgs)
			ended = !open
			if len(msgs) == 0 {
				<-sem
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				err := s.handle(wctx, msgs)
				pauseMu.Lock()
				defer pauseMu.Unlock()
				if !errors.Is(err, ErrUnauthorized) {
					// A batch that started before a refusal may end well after
					// it; only the output knows whether the keys work now.
					if s.out.Health() == nil {
						refusals = 0
						s.authRefused.Set(0)
					}
					return
				}
				// Stop sending while the keys are refused (every request would
				// be), longer after each refusal: RetryDelay doubling up to
				// AuthPauseMax, so a long outage costs a few requests.
				s.authRefused.Set(1)
				pause := AuthPause(s.cfg.RetryDelay, refusals)
				refusals++
				pauseUntil = time.Now().Add(pause)
				s.log.Error("langfuse refused the credentials: not sending, nothing acknowledged; check langfuse.public_key/secret_key",
					"err", err, "refusals", refusals, "retry_in", pause)
			}()
		}
		if ctx.Err() != nil {
			// stopping: another replica (or the next run) takes what was
			// read ahead at once
			p.handBack(0)
		} else if ended {
			s.log.Warn("langfuse sink: pull ended; pulling again")
			sleep(ctx, time.Second) // not in a tight loop if it ends again at once
		}
	}
	return nil
}

// puller is one pull iterator of the consumer and the channel it feeds.
type puller struct {
	it   jetstream.MessagesContext
	msgs <-chan jetstream.Msg
}

// pull starts an iterator. Its read-ahead is bounded in bytes (pullBytes),
// so that batched messages cannot make it hold many batches' worth of calls.
func (s *Sink) pull() (*puller, error) {
	it, err := s.cons.Messages(jetstream.PullMaxBytes(s.pullBytes))
	if err != nil {
		return nil, fmt.Errorf("langfuse sink: pull from %s: %w", s.cfg.Consumer, err)
	}
	// a hand-off of one: every message the sink has taken is in a batch
	// (kept alive once its write starts); the rest waits in the iterator
	return &puller{it: it, msgs: bus.Pull(it, 1, s.log, "langfuse sink", func(m jetstream.Msg) jetstream.Msg { return m })}, nil
}

// handBack ends the iterator and naks what it had read ahead, to be
// redelivered after delay.
func (p *puller) handBack(delay time.Duration) {
	p.it.Drain()
	for m := range p.msgs {
		if delay > 0 {
			_ = m.NakWithDelay(delay)
		} else {
			_ = m.Nak()
		}
	}
}

// collect takes messages until they hold Batch.Count calls or Batch.Period
// has passed since the first, or ctx ends. open is false when msgs was
// closed (the iterator ended).
func (s *Sink) collect(ctx context.Context, msgs <-chan jetstream.Msg) (batch []jetstream.Msg, open bool) {
	var period <-chan time.Time
	calls := 0
	for calls < s.cfg.Batch.Count {
		select {
		case m, ok := <-msgs:
			if !ok {
				return batch, false
			}
			if len(batch) == 0 {
				t := time.NewTimer(s.cfg.Batch.Period)
				defer t.Stop()
				period = t.C
			}
			batch = append(batch, m)
			calls += callsOf(m)
		case <-period:
			return batch, true
		case <-ctx.Done():
			return batch, true
		}
	}
	return batch, true
}

// callsOf is the number of calls message m holds, from its header (a
// malformed count is the handler's to dead-letter; here it counts as one).
func callsOf(m jetstream.Msg) int {
	if n, err := strconv.Atoi(m.Headers().Get(bus.HeaderCalls)); err == nil && n > 0 {
		return n
	}
	return 1
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

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// handle writes one batch of messages and settles every message.
func (s *Sink) handle(ctx context.Context, msgs []jetstream.Msg) error {
	// Keep the messages from being redelivered while we retry.
	keepAlive := time.NewTicker(max(s.cfg.AckWait/3, time.Second))
	done := make(chan struct{})
	defer func() { close(done); keepAlive.Stop() }()
	go func() {
		for {
			select {
			case <-keepAlive.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
			case <-done:
				return
			}
		}
	}()

	// Every call remembers its message and its place in it; a message is
	// settled once all its calls are (acked when each was accepted or
	// dead-lettered alone, nak'ed when one is pending or its dead letter
	// could not be stored).
	type msgState struct {
		batch       bool     // bus.HeaderCalls: calls are dead-lettered one by one
		items       [][]byte // the calls' JSON (batch only)
		calls       int
		retry, done bool
	}
	states := make([]msgState, len(msgs))
	calls := make([]schema.Call, 0, len(msgs))
	owner := make([]int, 0, len(msgs)) // message of each call
	item := make([]int, 0, len(msgs))  // its index in the message
	for k, m := range msgs {
		st := &states[k]
		// Replay routing (bus/route.go): a replayed message meant for other
		// sinks only is acknowledged and not sent.
		if !bus.Routed(m.Headers(), stage.Name) {
			if err := m.Ack(); err != nil {
				s.log.Warn("langfuse sink: ack", "subject", m.Subject(), "err", err)
			}
			s.skipped.Inc()
			st.done = true
			continue
		}
		items, err := bus.Items(m.Headers(), m.Data())
		if err != nil {
			s.deadLetter(ctx, m, "not a normalized call batch: "+err.Error())
			st.done = true
			continue
		}
		st.batch = m.Headers().Get(bus.HeaderCalls) != ""
		if st.batch {
			st.items = items
		}
		for i, it := range items {
			c, err := schema.DecodeCall(it)
			if err != nil {
				if !st.batch {
					s.deadLetter(ctx, m, err.Error())
					st.done = true
					break
				}
				s.deadLetterItem(ctx, m, st.items, i, err.Error(), &st.retry)
				continue
			}
			calls = append(calls, c)
			owner = append(owner, k)
			item = append(item, i)
			st.calls++
		}
	}
	var outcomes []Outcome
	var err error
	if len(calls) > 0 {
		outcomes, err = s.out.WriteBatch(ctx, calls)
	}
	npending := 0
	for i, o := range outcomes {
		k := owner[i]
		m, st := msgs[k], &states[k]
		switch o.State {
		case Accepted:
			if !st.batch {
				if aerr := m.Ack(); aerr != nil {
					s.log.Warn("langfuse sink: ack", "call", calls[i].ID, "err", aerr)
				}
			}
			s.accepted.Inc()
		case Rejected:
			if !st.batch {
				s.deadLetter(ctx, m, o.Reason)
				break
			}
			s.deadLetterItem(ctx, m, st.items, item[i], o.Reason, &st.retry)
		default:
			npending++
			s.pending.Inc()
			if !st.batch {
				_ = m.NakWithDelay(s.cfg.RetryDelay)
			}
			st.retry = true
		}
	}
	for k, m := range msgs {
		st := &states[k]
		if st.done || !st.batch {
			continue
		}
		switch {
		case st.retry:
			_ = m.NakWithDelay(s.cfg.RetryDelay)
		case st.calls == 0:
			_ = m.Term() // every call of it is in the DLQ
		default:
			if aerr := m.Ack(); aerr != nil {
				s.log.Warn("langfuse sink: ack", "subject", m.Subject(), "err", aerr)
			}
		}
	}
	if err != nil {
		s.log.Error("langfuse sink: calls left pending", "pending", npending, "batch", len(calls), "err", err)
	}
	return err
}

// deadLetterItem publishes call i of batched message m to CALLPIPE_DLQ
// alone; when the DLQ does not take it, *retry is set and the caller naks m.
func (s *Sink) deadLetterItem(ctx context.Context, m jetstream.Msg, items [][]byte, i int, reason string, retry *bool) {
	if err := s.dead.WriteItem(ctx, m, i, items[i], reason); err != nil {
		s.log.Error("langfuse sink: dead-letter publish failed, will retry", "err", err)
		*retry = true
		return
	}
	s.rejected.Inc()
	s.log.Warn("langfuse sink: call dead-lettered", "subject", m.Subject(), "item", i, "reason", reason)
}

// deadLetter publishes m to CALLPIPE_DLQ with the reason and terminates it;
// if the DLQ does not take it, m is nak'ed and comes back.
func (s *Sink) deadLetter(ctx context.Context, m jetstream.Msg, reason string) {
	if err := s.dead.Write(ctx, m, reason); err != nil {
		s.log.Error("langfuse sink: dead-letter publish failed, will retry", "err", err)
		_ = m.NakWithDelay(s.cfg.RetryDelay)
		return
	}
	s.rejected.Inc()
	s.log.Warn("langfuse sink: call dead-lettered", "subject", m.Subject(), "reason", reason)
}
