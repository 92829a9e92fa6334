package replay

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
)

// publishSegment sends the calls of seg: into one fast batch, or on the async
// path when there is none. It returns how many it sent; fewer than all only
// with an error (ctx's own when the job was stopped).
func (r *runner) publishSegment(ctx context.Context, seg *segment) (int, error) {
	r.seg, r.segSent, r.segAsync = seg, 0, false
	for i, m := range seg.msgs {
		if err := ctx.Err(); err != nil {
			return i, err
		}
		if r.limit != nil {
			if err := r.limit.Wait(ctx); err != nil {
				return i, err
			}
		}
		data := seg.data(m)
		if r.batch != nil && !r.segAsync {
			r.segSent = i + 1
			if err := r.batch.add(data, m.msgID); err != nil {
				if err := r.batchFailed(ctx, err); err != nil {
					return i, err
				}
			}
			continue
		}
		if err := r.publishAsync(ctx, data, m.msgID); err != nil {
			return i, err
		}
		r.segSent = i + 1
	}
	return len(seg.msgs), nil
}

// batchFailed re-sends the calls of the segment sent so far on the async path
// (same Nats-Msg-Id: what the batch stored is dropped as a duplicate), and
// the rest of the segment goes there too.
func (r *runner) batchFailed(ctx context.Context, cause error) error {
	r.batch.failures++
	r.o.Log.Warn("replay: fast batch failed; re-sending its calls one by one", "calls", r.segSent, "err", cause)
	if r.batch.failures >= batchMaxFailures {
		r.o.Log.Warn("replay: fast batches keep failing; publishing call by call for the rest of the job", "failures", r.batch.failures)
		r.batch = nil
	}
	r.segAsync = true
	// not stopped by ctx: the checkpoint after a stop counts these calls as
	// sent, so the re-send must finish
	ctx = context.WithoutCancel(ctx)
	for _, m := range r.seg.msgs[:r.segSent] {
		if err := r.publishAsync(ctx, r.seg.data(m), m.msgID); err != nil {
			return err
		}
	}
	return nil
}

func (r *runner) publishAsync(ctx context.Context, data []byte, msgID string) error {
	m := &nats.Msg{Subject: r.subject, Data: data, Header: make(nats.Header, len(r.hdr)+1)}
	for k, v := range r.hdr {
		m.Header[k] = v
	}
	m.Header[bus.HeaderMsgID] = []string{msgID}
	for {
		f, err := r.js.PublishMsgAsync(m, r.asyncOpts...)
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			if err := r.wait(ctx); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("replay: publish %s: %w", msgID, err)
		}
		r.window = append(r.window, f)
		return nil
	}
}

// checkpoint commits the segment's batch and waits for the acks, then records
// the position: inside object (line lines done) or, with objectDone set,
// after that object.
func (r *runner) checkpoint(ctx context.Context, object string, line int64, objectDone string) error {
	if r.batch != nil {
		n, err := r.batch.commit(ctx)
		switch {
		case err != nil:
			if err := r.batchFailed(ctx, err); err != nil {
				return err
			}
		case n > 0:
			r.batch.failures = 0
			r.res.Published += n
			r.res.Batched += n
		}
	}
	if err := r.wait(ctx); err != nil {
		return err
	}
	r.st.Object, r.st.Line, r.st.Published, r.st.Matched = object, line, r.res.Published, r.baseMatched+r.committed
	if err := r.cp.Save(context.WithoutCancel(ctx), r.o.Job, r.st, objectDone); err != nil {
		return err
	}
	r.segSent, r.segAsync = 0, false
	return nil
}
