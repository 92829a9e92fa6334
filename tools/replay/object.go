package replay

import (
	"context"
	"errors"
	"fmt"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// segmentsInFlight is how many segments one object has at a time: one being
// decoded, one waiting, one being published.
const segmentsInFlight = 3

// object replays one archive object, checkpointing every CheckpointEvery
// lines. A reader goroutine decompresses, decodes and filters the lines into
// segments (the lines between two checkpoints) while this goroutine publishes
// the previous segment: decoding and waiting for JetStream overlap.
func (r *runner) object(ctx context.Context, ob rawarchive.Object) error {
	skip := int64(0)
	if r.st.Object == ob.Key {
		skip = r.st.Line
	}
	// the segments (and their grown buffers) are kept across objects
	if r.segments == nil {
		for range segmentsInFlight {
			r.segments = append(r.segments, &segment{})
		}
	}
	free := make(chan *segment, segmentsInFlight)
	for _, s := range r.segments {
		free <- s
	}
	full := make(chan *segment, segmentsInFlight)
	quit, done := make(chan struct{}), make(chan struct{})
	var readErr error
	go func() {
		defer close(done)
		readErr = r.read(ctx, ob.Key, skip, free, full, quit)
	}()
	defer func() {
		close(quit)
		<-done // the reader updates r.res: it must be gone before the caller reads it
	}()

	for seg := range full {
		if r.o.DryRun {
			if seg.stopped {
				return ErrStopped
			}
			free <- seg
			continue
		}
		sent, err := r.publishSegment(ctx, seg)
		// a stop shows as ctx's own error; any other error is real even when
		// ctx ended meanwhile, and must not be checkpointed over
		stopped := ctx.Err() != nil
		if err != nil && (!stopped || !errors.Is(err, ctx.Err())) {
			return err
		}
		r.committed += int64(sent)
		switch {
		case sent < len(seg.msgs):
			// the lines before the first unsent call are done
			if err := r.checkpoint(context.WithoutCancel(ctx), ob.Key, seg.msgs[sent].line-1, ""); err != nil {
				return err
			}
			return ErrStopped
		case seg.last:
			if err := r.checkpoint(context.WithoutCancel(ctx), "", 0, ob.Key); err != nil {
				return err
			}
		default:
			if err := r.checkpoint(context.WithoutCancel(ctx), ob.Key, seg.end, ""); err != nil {
				return err
			}
		}
		if stopped || seg.stopped {
			return ErrStopped
		}
		free <- seg
	}
	<-done // full is closed: the reader is done
	if readErr != nil {
		return fmt.Errorf("replay: %w", readErr)
	}
	if ctx.Err() != nil {
		return ErrStopped
	}
	return nil
}

// read decodes and filters the lines of object key after the first skip into
// segments, sent on full (closed at the end). The last segment has last set,
// or stopped when ctx ended the job. It returns when quit is closed.
func (r *runner) read(ctx context.Context, key string, skip int64, free <-chan *segment, full chan<- *segment, quit <-chan struct{}) error {
	defer close(full)
	var seg *segment
	var line int64
	take := func() bool {
		select {
		case seg = <-free:
			seg.reset(line)
			return true
		case <-quit:
			return false
		}
	}
	send := func() bool {
		select {
		case full <- seg:
			seg = nil
			return true
		case <-quit:
			return false
		}
	}
	if !take() {
		return nil
	}
	errQuit := errors.New("quit")
	// reading stops on ErrStopped, not on ctx, so that the position is known
	err := rawarchive.ReadObject(context.WithoutCancel(ctx), r.s3, r.o.Bucket, key, func(raw []byte) error {
		if ctx.Err() != nil {
			return ErrStopped
		}
		line++
		r.res.Lines++
		seg.end = line
		if line <= skip {
			return nil
		}
		ev, err := schema.Decode(raw, r.o.Limits)
		if err != nil {
			r.res.Undecodable++
			r.o.Log.Warn("replay: archived line does not decode; not replayed", "object", key, "line", line, "err", err)
		} else if r.match(ctx, ev) {
			r.matched.Add(1)
			if !r.o.DryRun {
				seg.add(raw, bus.ReplayMsgID(r.o.Job, ev.ID), line)
			}
		}
		if line%int64(r.o.CheckpointEvery) == 0 || seg.size() >= maxSegmentBytes {
			if !send() || !take() {
				return errQuit
			}
		}
		return nil
	})
	switch {
	case errors.Is(err, errQuit):
		return nil
	case errors.Is(err, ErrStopped):
		seg.stopped = true
	case err != nil:
		return err
	default:
		seg.last = true
	}
	send()
	return nil
}
