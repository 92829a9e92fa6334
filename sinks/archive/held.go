package archive

import "github.com/callpipe/callpipe/bus"

// A buffered call is held as a bus.AckRef, not as its message: the
// builder already holds its line, and the message would keep a second copy
// of every raw call alive until its object is stored.

func (s *Sink) ackHeld(h bus.AckRef) {
	if err := h.Ack(s.nc); err != nil {
		s.log.Warn("archive sink: ack (the call will be redelivered and recognized as archived)", "seq", h.Seq, "err", err)
	}
}

func (s *Sink) nakHeld(h bus.AckRef) { _ = h.Nak(s.nc, s.cfg.BackoffMax) }

func (s *Sink) inProgress(held []bus.AckRef) {
	for _, h := range held {
		_ = h.InProgress(s.nc)
	}
}
