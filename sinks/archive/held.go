package archive

import "github.com/callpipe/callpipe/pipeline"

// A buffered call is held as a pipeline.AckRef, not as its message: the
// builder already holds its line, and the message would keep a second copy
// of every raw call alive until its object is stored.

func (s *Sink) ackHeld(h pipeline.AckRef) {
	if err := h.Ack(s.nc); err != nil {
		s.log.Warn("archive sink: ack (the call will be redelivered and recognized as archived)", "seq", h.Seq, "err", err)
	}
}

func (s *Sink) nakHeld(h pipeline.AckRef) { _ = h.Nak(s.nc, s.cfg.BackoffMax) }

func (s *Sink) inProgress(held []pipeline.AckRef) {
	for _, h := range held {
		_ = h.InProgress(s.nc)
	}
}
