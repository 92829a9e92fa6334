package transform

import (
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/freelist"
	"github.com/callpipe/callpipe/schema"
)

// batcher gathers a pipeline's normalized calls into CALLPIPE_NORMALIZED
// messages (bus/batch.go): one open batch per subject and replay marks, so a
// batch never mixes kinds or replay routing. A batch is published when it
// holds maxCalls calls or maxBytes bytes, or when the pipeline has nothing
// more to read right now and its oldest call has waited a moment (flush,
// after batchLinger and batchMinAge): under load batches fill, at a few
// hundred calls a second they hold a few, at a trickle a call goes out
// alone after batchMinAge. The raw messages of a batch are settled together
// when its publish is acknowledged.
type batcher struct {
	maxCalls, maxBytes int
	publish            func(*nats.Msg) (jetstream.PubAckFuture, error)
	q                  chan<- pending
	open               map[string]*openBatch
	keys               []string              // open batches in the order they were opened
	lastLen            int                   // bytes of the last batch sent
	lastCalls          int                   // calls in the last batch sent
	bodies             freelist.List[[]byte] // settled batch buffers (Worker.bodies); zero: none
	spare              []*openBatch          // flushed batches, kept for their id sets
}

type openBatch struct {
	since   time.Time // when its first call came; zero while it holds none
	subject string
	raw     nats.Header // replay marks shared by every call
	body    []byte
	ids     []string
	msgs    []jetstream.Msg
	has     map[string]struct{} // ids, to store a call once per batch
}

// add appends call, normalized from raw message msg, to its open batch.
func (b *batcher) add(call *schema.Call, msg jetstream.Msg) {
	h := msg.Headers()
	subject := bus.NormalizedSubjectPrefix + "." + call.Kind
	key := subject
	if bus.IsReplay(h) {
		key += "\x00" + h.Get(bus.HeaderReplay) + "\x00" + h.Get(bus.HeaderSinks)
	}
	ob := b.open[key]
	if ob == nil {
		ob = b.openBatch(subject, h)
		b.open[key] = ob
		b.keys = append(b.keys, key)
	}
	if _, dup := ob.has[call.ID]; dup {
		// the same call again (a replay re-sent, a redelivery): its raw
		// message is settled with the batch, the call is stored once
		ob.msgs = append(ob.msgs, msg)
		return
	}
	if len(ob.msgs) == 0 {
		ob.since = time.Now()
	}
	start := len(ob.body)
	if start > 0 {
		ob.body = append(ob.body, '\n')
	}
	line := len(ob.body)
	ob.body = schema.AppendCall(ob.body, call) // one line: the batch's item
	if len(ob.body) > b.maxBytes && len(ob.msgs) > 0 {
		// this call does not fit: send the batch without it, start the next with it
		next := append(b.newBody(), ob.body[line:]...)
		ob.body = ob.body[:start]
		b.send(ob, next)
		ob.since = time.Now()
	}
	ob.has[call.ID] = struct{}{}
	ob.ids = append(ob.ids, call.ID)
	ob.msgs = append(ob.msgs, msg)
	if len(ob.msgs) >= b.maxCalls || len(ob.body) >= b.maxBytes {
		b.send(ob, nil)
	}
}

// pending reports whether a batch is open.
func (b *batcher) pending() bool { return len(b.keys) > 0 }

// due is when the oldest call of the open batches has waited batchMinAge;
// false when they hold none.
func (b *batcher) due() (time.Time, bool) {
	var oldest time.Time
	for _, k := range b.keys {
		if ob := b.open[k]; len(ob.msgs) > 0 && (oldest.IsZero() || ob.since.Before(oldest)) {
			oldest = ob.since
		}
	}
	return oldest.Add(batchMinAge), !oldest.IsZero()
}

// flush publishes every open batch.
func (b *batcher) flush() {
	for _, k := range b.keys {
		ob := b.open[k]
		if len(ob.msgs) > 0 {
			b.send(ob, nil)
		}
		delete(b.open, k)
		if len(b.spare) < maxSpareBatches {
			b.spare = append(b.spare, ob)
		}
	}
	b.keys = b.keys[:0]
}

// maxSpareBatches bounds the flushed batches a batcher keeps: one per kind
// of call flowing at once is plenty; a replay's batches, one per job, are
// not kept beyond it.
const maxSpareBatches = 8

// openBatch is an empty batch for subject, from the spare ones when there
// is one: its id set keeps the room it grew to.
func (b *batcher) openBatch(subject string, raw nats.Header) *openBatch {
	if n := len(b.spare); n > 0 {
		ob := b.spare[n-1]
		b.spare = b.spare[:n-1]
		ob.subject, ob.raw = subject, raw
		if ob.body == nil {
			ob.body = b.newBody()
		}
		return ob
	}
	return &openBatch{subject: subject, raw: raw, body: b.newBody(), has: make(map[string]struct{}, b.lastCalls)}
}

// send starts the publish of ob and empties it, its next calls going to
// next (nil: a new buffer). The body sent is not reused until the publish
// is settled (the pipeline's acknowledger hands it back through bodies).
func (b *batcher) send(ob *openBatch, next []byte) {
	b.lastLen, b.lastCalls = len(ob.body), len(ob.ids)
	out := recordMsg(ob.subject, ob.raw, ob.body, ob.ids)
	fut, err := b.publish(out)
	b.q <- pending{msgs: ob.msgs, fut: fut, pubErr: err, body: ob.body}
	ob.since = time.Time{}
	if next == nil {
		next = b.newBody()
	}
	ob.body = next
	// the slices went with the publish; the next batch likely holds as many
	ob.ids, ob.msgs = make([]string, 0, b.lastCalls), make([]jetstream.Msg, 0, b.lastCalls)
	clear(ob.has)
}

// newBody is a batch's buffer, sized from the last batch sent: under load
// batches are full and one allocation of their size beats growing the
// buffer call by call (copies, garbage); at a trickle batches hold a call
// or two and get a small buffer. A settled buffer is taken when it is big
// enough and no larger than a full batch needs, or than twice what is
// wanted: batch sizes swing between full and lingered, and a buffer
// dropped for being too large for the last batch costs an allocation for
// the next full one.
func (b *batcher) newBody() []byte {
	full := b.maxBytes + b.maxBytes/8
	want := min(max(b.lastLen+b.lastLen/4, 16<<10), full)
	if p, ok := b.bodies.Get(); ok && cap(p) >= want && cap(p) <= max(2*want, full) {
		return p[:0]
	}
	return make([]byte, 0, want)
}

// recordMsg is the CALLPIPE_NORMALIZED message of the calls ids, encoded in
// body (one call per line), whose raw events had the replay marks of raw.
// One call is sent in the single-call format with its call id as
// Nats-Msg-Id; several as a batch (bus.HeaderCalls) whose Nats-Msg-Id is
// bus.BatchMsgID of the ids, so the same raw events normalized again are
// stored once. A replay's records carry its marks and an id under the
// replay's job, so the live records in the duplicate window do not swallow
// them (bus/route.go).
func recordMsg(subject string, raw nats.Header, body []byte, ids []string) *nats.Msg {
	out := &nats.Msg{Subject: subject, Data: body, Header: make(nats.Header, 4)}
	id := ids[0]
	if len(ids) > 1 {
		id = bus.BatchMsgID(ids)
		out.Header.Set(bus.HeaderCalls, strconv.Itoa(len(ids)))
	}
	if bus.IsReplay(raw) {
		bus.CopyReplayHeaders(out.Header, raw)
		id = bus.ReplayMsgID(raw.Get(bus.HeaderReplay), id)
	}
	out.Header.Set(bus.HeaderMsgID, id)
	return out
}
