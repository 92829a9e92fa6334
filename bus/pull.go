package bus

import (
	"errors"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"
)

// Pulled is a consumer's messages on a channel (Pull) and the pull that
// fills it.
type Pulled[T any] struct {
	// C yields the messages, each turned into a T, until the pull has been
	// stopped or drained (or has ended by itself: the consumer is gone or the
	// connection closed); then it is closed.
	C  <-chan T
	cc jetstream.ConsumeContext
}

// Drain stops pulling more; what was already delivered still comes on C,
// which is then closed.
func (p *Pulled[T]) Drain() { p.cc.Drain() }

// Stop stops pulling: C yields at most the message being handed on, then
// closes; what was delivered behind it is dropped (JetStream redelivers it
// after AckWait). After Drain or Stop, C must be read until closed.
func (p *Pulled[T]) Stop() { p.cc.Stop() }

// ConsumerGone reports whether a pull's error ends it for good: its durable
// consumer was deleted or is not found.
func ConsumerGone(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound)
}

// Pull hands cons's messages, each turned into a T by conv in the goroutine
// that delivers them (so that per-message work overlaps the consumer of the
// channel), to a channel of buf slots. A full channel holds the delivery and
// with it the pull requests: back-pressure, not read-ahead without bound.
// Errors the pull recovers from by itself (a missed heartbeat, a reconnect)
// are logged under what.
//
// It consumes with a callback rather than a MessagesContext iterator: the
// iterator arms two timers for every message it returns (the heartbeat check
// and the wait), which costs a stage reading one message per call a tenth of
// its CPU.
func Pull[T any](cons jetstream.Consumer, buf int, log *slog.Logger, what string, conv func(jetstream.Msg) T, opts ...jetstream.PullConsumeOpt) (*Pulled[T], error) {
	out := make(chan T, buf)
	onErr := jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if ConsumerGone(err) {
			log.Error(what+": pull ended", "err", err)
			return
		}
		log.Warn(what+": pull", "err", err)
	})
	cc, err := cons.Consume(func(m jetstream.Msg) { out <- conv(m) }, append(opts, onErr)...)
	if err != nil {
		return nil, err
	}
	go func() {
		// Closed is signalled once the subscription's delivery goroutine has
		// returned from its last callback: nothing sends on out after it.
		<-cc.Closed()
		close(out)
	}()
	return &Pulled[T]{C: out, cc: cc}, nil
}
