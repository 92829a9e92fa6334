package bus

import (
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// NoMaxDeliver is the MaxDeliver of every stage's durable consumer: JetStream
// never stops delivering a message on its own. When JetStream gives up on a
// message it only says so in a core-NATS advisory, delivered at most once;
// a lost advisory, or a dead-letter publish that failed in answer to it,
// would leave the message in no stage and in no dead letter. A stage that
// bounds deliveries does it itself, with DeliveryLimit.
const NoMaxDeliver = -1

// DeliveryLimit is a stage's bound on the deliveries of one message. The
// stage dead-letters a message (DeadLetters, Failure) instead of naking it
// once the limit is reached, and terminates it only after the DLQ stored it;
// when the DLQ does not take it the message is nak'ed and comes back, still
// over the limit, so the dead letter is written on a later delivery. A
// message is therefore either processed, or in the DLQ, or still pending on
// the consumer: never only logged.
type DeliveryLimit struct {
	Max uint64 // deliveries a message gets; at least 1
}

// Delivered is m's delivery count (1 when its metadata cannot be read).
func Delivered(m jetstream.Msg) uint64 {
	if md, err := m.Metadata(); err == nil && md.NumDelivered > 0 {
		return md.NumDelivered
	}
	return 1
}

// Exceeded reports whether m was delivered more often than the limit: the
// stage dead-letters it without processing it again (an earlier delivery
// failed on its last try, a worker died holding it, or its dead letter
// could not be stored).
func (l DeliveryLimit) Exceeded(m jetstream.Msg) bool { return Delivered(m) > l.Max }

// Last reports whether this is m's last allowed delivery: a transient
// failure now is dead-lettered instead of nak'ed.
func (l DeliveryLimit) Last(m jetstream.Msg) bool { return Delivered(m) >= l.Max }

// Reason is the Callpipe-Error of a message dead-lettered for reaching the
// limit; cause is the last failure, when known.
func (l DeliveryLimit) Reason(cause error) string {
	if cause == nil {
		return fmt.Sprintf("max deliveries (%d) exceeded", l.Max)
	}
	return fmt.Sprintf("max deliveries (%d) exceeded: %v", l.Max, cause)
}
