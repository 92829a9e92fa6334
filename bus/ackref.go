package bus

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// AckRef is what a sink keeps of a JetStream message whose acknowledgement
// waits for a write (an insert, an object upload): its stream sequence,
// stored time and ack subject. Keeping the jetstream.Msg would keep its
// payload alive as well — a second copy of every call a batch already holds
// in decoded or compressed form, which was most of a sink worker's memory.
type AckRef struct {
	Seq    uint64
	Stored time.Time
	reply  string
}

// NewAckRef takes what is needed to acknowledge m later; md is m.Metadata().
func NewAckRef(m jetstream.Msg, md *jetstream.MsgMetadata) AckRef {
	return AckRef{Seq: md.Sequence.Stream, Stored: md.Timestamp, reply: m.Reply()}
}

// JetStream's acknowledgement protocol: the bodies jetstream.Msg's Ack,
// InProgress and NakWithDelay publish on the message's reply subject.
var (
	ackBody      = []byte("+ACK")
	progressBody = []byte("+WPI")
	termBody     = []byte("+TERM")
)

// Ack acknowledges the message.
func (r AckRef) Ack(nc *nats.Conn) error { return nc.Publish(r.reply, ackBody) }

// InProgress resets the message's redelivery timer.
func (r AckRef) InProgress(nc *nats.Conn) error { return nc.Publish(r.reply, progressBody) }

// Nak asks for redelivery after delay.
func (r AckRef) Nak(nc *nats.Conn, delay time.Duration) error {
	return nc.Publish(r.reply, fmt.Appendf(nil, `-NAK {"delay": %d}`, delay.Nanoseconds()))
}

// Term tells JetStream never to deliver the message again.
func (r AckRef) Term(nc *nats.Conn) error { return nc.Publish(r.reply, termBody) }
