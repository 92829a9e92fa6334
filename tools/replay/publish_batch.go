package replay

import (
	"context"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/callpipe/callpipe/bus"
)

// Fast batches (ADR-50, nats-server 2.14+, stream option allow_batched) let
// the server acknowledge a flow window of calls at a time instead of each
// call, and the commit acknowledges the whole batch: one checkpoint segment is
// one batch, and the checkpoint is saved only after its commit ack. Nats-Msg-Id
// deduplication applies inside a batch, so a segment whose batch failed is
// re-sent call by call on the async path without doubling what did land.
const (
	batchFlow               = 500 // calls per flow ack (the server may change it)
	batchMaxOutstandingAcks = 4
	// batchMaxFailures consecutive failed batches turn the fast path off for
	// the rest of the run: a stream that keeps rejecting batches would
	// otherwise cost an ack timeout per segment.
	batchMaxFailures = 3
	// maxSegmentBytes ends a checkpoint segment early: its calls are kept in
	// memory until the batch commit, so large events must not multiply by
	// CheckpointEvery.
	maxSegmentBytes = 32 << 20
)

// batchAllowed reports whether the stream that captures subject accepts fast
// batches. A failed lookup (e.g. no permission for the stream API) is logged
// by the caller, which then publishes call by call.
func batchAllowed(ctx context.Context, js jetstream.JetStream, subject string) (bool, error) {
	name, err := js.StreamNameBySubject(ctx, subject)
	if err != nil {
		return false, fmt.Errorf("stream for %s: %w", subject, err)
	}
	s, err := js.Stream(ctx, name)
	if err != nil {
		return false, fmt.Errorf("stream %s: %w", name, err)
	}
	return s.CachedInfo().Config.AllowBatchPublish, nil
}

// batcher sends the calls of one checkpoint segment as one fast batch.
type batcher struct {
	js jetstream.JetStream
	fp jetstreamext.FastPublisher // open batch, nil until the segment's first call
	st *batchStatus               // of fp
	n  int64                      // calls added to fp
	// msg is reused for every call: AddMsg copies it into the connection's
	// write buffer before it returns.
	msg      *nats.Msg
	msgID    []string // msg's Nats-Msg-Id value, replaced per call
	failures int      // consecutive failed batches
}

func newBatcher(js jetstream.JetStream, subject string, hdr nats.Header) *batcher {
	b := &batcher{js: js, msg: &nats.Msg{Subject: subject, Header: nats.Header{}}, msgID: make([]string, 1)}
	for k, v := range hdr {
		b.msg.Header[k] = v
	}
	b.msg.Header[bus.HeaderMsgID] = b.msgID
	return b
}

// batchStatus keeps the first gap or error frame the server reported for a
// batch. Those frames are informational (they may be lost, and say nothing
// certain about which calls were stored), so any of them fails the batch.
type batchStatus struct {
	mu  sync.Mutex
	err error
}

func (s *batchStatus) report(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

func (s *batchStatus) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// add publishes one call into the segment's batch, opening it first if needed.
// After an error the batch is abandoned: the caller re-sends the segment.
func (b *batcher) add(data []byte, msgID string) error {
	if b.fp == nil {
		st := &batchStatus{}
		fp, err := jetstreamext.NewFastPublisher(b.js,
			jetstreamext.FastPublishFlowControl{Flow: batchFlow, MaxOutstandingAcks: batchMaxOutstandingAcks},
			jetstreamext.WithFastPublisherErrorHandler(st.report))
		if err != nil {
			return fmt.Errorf("fast batch: %w", err)
		}
		b.fp, b.st, b.n = fp, st, 0
	}
	b.msg.Data, b.msg.Reply = data, ""
	b.msgID[0] = msgID
	_, err := b.fp.AddMsg(b.msg)
	b.msg.Data = nil
	if err == nil {
		err = b.st.failure()
	}
	if err != nil {
		b.abandon()
		return fmt.Errorf("fast batch: call %d: %w", b.n+1, err)
	}
	b.n++
	return nil
}

// commit closes the segment's batch and waits for its ack: n calls are then
// stored (or were duplicates). n is 0 when no batch is open.
func (b *batcher) commit(ctx context.Context) (n int64, err error) {
	if b.fp == nil {
		return 0, nil
	}
	fp, st, n := b.fp, b.st, b.n
	b.fp, b.st, b.n = nil, nil, 0
	ack, err := fp.Close(ctx)
	if err == nil {
		err = st.failure()
	}
	if err == nil && (ack == nil || ack.BatchSize != uint64(n)) {
		size := uint64(0)
		if ack != nil {
			size = ack.BatchSize
		}
		err = fmt.Errorf("commit ack counts %d calls, %d were sent", size, n)
	}
	if err != nil {
		return 0, fmt.Errorf("fast batch of %d calls: %w", n, err)
	}
	return n, nil
}

// abandon drops the open batch after a failed add; the server discards or
// keeps what it got, and the re-sent segment is deduplicated either way.
func (b *batcher) abandon() {
	b.fp, b.st, b.n = nil, nil, 0
}

// segment is the lines between two checkpoints of one object: the calls among
// them to publish, kept until the checkpoint after them is saved (the fast
// path re-sends them when their batch fails, the async path re-sends a failed
// publish). The line ReadObject passes is valid only during its callback, so
// payloads are copied into one buffer reused across segments instead of one
// allocation per call.
type segment struct {
	buf  []byte
	msgs []segmentMsg
	end  int64 // lines of the object read when the segment ends
	// last: the object ends with this segment; stopped: ctx ended the job
	// while reading it
	last, stopped bool
}

type segmentMsg struct {
	start, end int
	line       int64
	msgID      string
}

// add copies raw, the call on line line, into the segment.
func (s *segment) add(raw []byte, msgID string, line int64) {
	start := len(s.buf)
	s.buf = append(s.buf, raw...)
	s.msgs = append(s.msgs, segmentMsg{start: start, end: len(s.buf), line: line, msgID: msgID})
}

// data is m's payload. The slice stays valid after buf grows (it keeps the
// old array) until reset reuses the memory.
func (s *segment) data(m segmentMsg) []byte { return s.buf[m.start:m.end:m.end] }

func (s *segment) size() int { return len(s.buf) }

// reset empties the segment for the lines after line; only after every call
// in it is acknowledged.
func (s *segment) reset(line int64) {
	s.buf, s.msgs = s.buf[:0], s.msgs[:0]
	s.end, s.last, s.stopped = line, false, false
}
