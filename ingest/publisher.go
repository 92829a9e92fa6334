package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/schema/capture"
)

// ErrClosed is returned by a Publisher after Close.
var ErrClosed = errors.New("publisher closed")

// PublisherOptions bound what a Publisher keeps in flight.
type PublisherOptions struct {
	// MaxInFlight is the most published events not yet acknowledged by
	// JetStream; a publish beyond it waits up to StallWait.
	MaxInFlight int
	StallWait   time.Duration
	// AckTimeout fails an unacknowledged publish, so that a NATS outage
	// surfaces as an error instead of a hang.
	AckTimeout time.Duration
	// Capture is applied to every event PublishAsync and Publish take,
	// before it is encoded (capture.Policy.Event). Nil: none.
	Capture *capture.Policy
}

func (o *PublisherOptions) defaults() {
	o.MaxInFlight = defaults.IfNotPositive(o.MaxInFlight, 4096)
	o.StallWait = defaults.IfNotPositive(o.StallWait, 5*time.Second)
	o.AckTimeout = defaults.IfNotPositive(o.AckTimeout, 5*time.Second)
}

// Publisher stores call events in CALLPIPE_CALLS with Nats-Msg-Id = event id,
// so a resent event is stored once. It hashes API keys and applies its
// capture policy before anything leaves the process. It is safe for
// concurrent use.
type Publisher struct {
	nc        *nats.Conn
	js        jetstream.JetStream
	opts      PublisherOptions
	stallWait jetstream.PublishOpt // built once: an option is a closure, allocated where it is made
	closed    atomic.Bool
}

// NewPublisher publishes over nc.
func NewPublisher(nc *nats.Conn, o PublisherOptions) (*Publisher, error) {
	o.defaults()
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(o.MaxInFlight),
		jetstream.WithPublishAsyncTimeout(o.AckTimeout),
	)
	if err != nil {
		return nil, fmt.Errorf("jetstream context: %w", err)
	}
	return &Publisher{nc: nc, js: js, opts: o, stallWait: jetstream.WithStallWait(o.StallWait)}, nil
}

// Pending is a publish awaiting its JetStream acknowledgement.
type Pending struct {
	future jetstream.PubAckFuture
}

// Wait returns whether JetStream already held the id, or why it did not store the event.
func (p Pending) Wait(ctx context.Context) (duplicate bool, err error) {
	select {
	case ack := <-p.future.Ok():
		return ack.Duplicate, nil
	case err := <-p.future.Err():
		return false, fmt.Errorf("jetstream publish %s: %w", p.future.Msg().Header.Get(bus.HeaderMsgID), err)
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// Subject is where an event is published: callpipe.calls.<source>.
func Subject(ev *schema.Event) string {
	switch ev.Source {
	case "", schema.SourceOnline:
		return onlineSubject // the common case, without building it
	}
	return bus.CallsSubjectPrefix + "." + ev.Source
}

var onlineSubject = bus.CallsSubjectPrefix + "." + schema.SourceOnline

// Encode hashes the event's API key, validates it and returns the stream message.
func Encode(ev *schema.Event) (*nats.Msg, error) {
	ev.RedactAPIKey()
	if err := ev.Validate(); err != nil {
		return nil, err
	}
	return Message(ev), nil
}

// Message hashes the API key of an event that is already valid (as
// schema.Decode returns it) and builds its stream message.
func Message(ev *schema.Event) *nats.Msg {
	m := new(nats.Msg)
	FillMessage(m, make([]byte, 0, len(ev.Request)+len(ev.Response)+512), ev)
	return m
}

// FillMessage is Message made in m, with the event encoded into buf[:0]
// (which m then owns until JetStream has acknowledged it). A header m
// already has from an earlier FillMessage is reused: m must then be done
// with, acknowledged.
func FillMessage(m *nats.Msg, buf []byte, ev *schema.Event) {
	ev.RedactAPIKey()
	h := m.Header
	if id, v := h[bus.HeaderMsgID], h[bus.HeaderSchema]; len(h) == 2 && len(id) == 1 && len(v) == 1 && v[0] == "1" {
		id[0] = ev.ID
	} else {
		// both header values in one allocation; the keys are canonical already
		vals := make([]string, 2)
		vals[0], vals[1] = ev.ID, "1"
		h = nats.Header{bus.HeaderMsgID: vals[0:1:1], bus.HeaderSchema: vals[1:2:2]}
	}
	*m = nats.Msg{Subject: Subject(ev), Data: schema.AppendEvent(buf[:0], ev), Header: h}
}

// PublishAsync applies the capture policy to ev and sends it without
// waiting for the acknowledgement.
func (p *Publisher) PublishAsync(ev *schema.Event) (Pending, error) {
	p.opts.Capture.Event(ev)
	msg, err := Encode(ev)
	if err != nil {
		return Pending{}, err
	}
	return p.PublishMsgAsync(msg)
}

// PublishMsgAsync sends an already encoded message (see Encode).
func (p *Publisher) PublishMsgAsync(msg *nats.Msg) (Pending, error) {
	if p.closed.Load() {
		return Pending{}, ErrClosed
	}
	f, err := p.js.PublishMsgAsync(msg, p.stallWait)
	if err != nil {
		return Pending{}, fmt.Errorf("jetstream publish %s: %w", msg.Header.Get(bus.HeaderMsgID), err)
	}
	return Pending{future: f}, nil
}

// Publish stores ev and waits for JetStream's acknowledgement.
func (p *Publisher) Publish(ctx context.Context, ev *schema.Event) (duplicate bool, err error) {
	pending, err := p.PublishAsync(ev)
	if err != nil {
		return false, err
	}
	return pending.Wait(ctx)
}

// PublishResult is what became of one event of PublishBatch.
type PublishResult struct {
	Duplicate bool // JetStream already held its id
	Err       error
}

// PublishBatch stores evs: it sends them all, then waits for their
// acknowledgements, so a batch costs about one round trip to JetStream
// instead of one per event. res[i] (len(res) >= len(evs)) is what became of
// evs[i]; an event that fails does not stop the others.
func (p *Publisher) PublishBatch(ctx context.Context, evs []*schema.Event, res []PublishResult) {
	pending := make([]Pending, len(evs))
	for i, ev := range evs {
		pending[i], res[i].Err = p.PublishAsync(ev)
	}
	for i, pd := range pending {
		if pd.future != nil {
			res[i].Duplicate, res[i].Err = pd.Wait(ctx)
		}
	}
}

// Connected reports whether the NATS connection is up.
func (p *Publisher) Connected() bool { return p.nc.IsConnected() }

// Flush waits until every publish so far is acknowledged or failed.
func (p *Publisher) Flush(ctx context.Context) error {
	select {
	case <-p.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flush: %d publishes still pending: %w", p.js.PublishAsyncPending(), ctx.Err())
	}
}

// Close refuses new publishes and waits for those in flight.
func (p *Publisher) Close(ctx context.Context) error {
	p.closed.Store(true)
	return p.Flush(ctx)
}
