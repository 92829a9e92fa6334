package archive

import (
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// heldMsg is what the sink keeps of a message from the moment its line is in
// an object until the object is stored: its stream sequence and ack subject.
// Keeping the jetstream.Msg would keep its payload alive too — a second copy
// of every raw call the builder already holds, up to FlushBytes per open hour
// plus the objects uploading — which is most of the sink's memory.
type heldMsg struct {
	seq   uint64
	reply string
}

func holdMsg(m jetstream.Msg, seq uint64) heldMsg { return heldMsg{seq: seq, reply: m.Reply()} }

// JetStream's acknowledgement protocol (what jetstream.Msg's Ack, InProgress
// and NakWithDelay publish on the reply subject).
var (
	ackBody      = []byte("+ACK")
	progressBody = []byte("+WPI")
)

func nakBody(delay int64) []byte { return fmt.Appendf(nil, `-NAK {"delay": %d}`, delay) }

func (s *Sink) ackHeld(h heldMsg) {
	if err := s.nc.Publish(h.reply, ackBody); err != nil {
		s.log.Warn("archive sink: ack (the call will be redelivered and recognized as archived)", "seq", h.seq, "err", err)
	}
}

func (s *Sink) nakHeld(h heldMsg) {
	_ = s.nc.Publish(h.reply, nakBody(s.cfg.BackoffMax.Nanoseconds()))
}

func (s *Sink) inProgress(held []heldMsg) {
	for _, h := range held {
		_ = s.nc.Publish(h.reply, progressBody)
	}
}
