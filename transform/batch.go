package transform

import (
	"bytes"
	"encoding/json"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/schema"
)

// batcher gathers a pipeline's normalized calls into CALLPIPE_NORMALIZED
// messages (bus/batch.go): one open batch per subject and replay marks, so a
// batch never mixes kinds or replay routing. A batch is published when it
// holds maxCalls calls or maxBytes bytes, or when the pipeline has nothing
// more to read right now (flush, after a short linger): under load batches
// fill, at a trickle every call goes out at once. The raw messages of a batch are settled
// together when its publish is acknowledged.
type batcher struct {
	maxCalls, maxBytes int
	publish            func(*nats.Msg) (jetstream.PubAckFuture, error)
	q                  chan<- pending
	open               map[string]*openBatch
	keys               []string    // open batches in the order they were opened
	lastLen            int         // bytes of the last batch sent
	bodies             chan []byte // settled batch buffers (Worker.bodies); nil: none
}

type openBatch struct {
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
		ob = &openBatch{subject: subject, raw: h, body: b.newBody(), has: make(map[string]struct{})}
		b.open[key] = ob
		b.keys = append(b.keys, key)
	}
	if _, dup := ob.has[call.ID]; dup {
		// the same call again (a replay re-sent, a redelivery): its raw
		// message is settled with the batch, the call is stored once
		ob.msgs = append(ob.msgs, msg)
		return
	}
	start := len(ob.body)
	if start > 0 {
		ob.body = append(ob.body, '\n')
	}
	line := len(ob.body)
	ob.body = schema.AppendCall(ob.body, call)
	if bytes.IndexByte(ob.body[line:], '\n') >= 0 {
		// a raw value (input, metadata) kept its own line breaks: compact
		// it so the call stays one line of the batch
		var c bytes.Buffer
		if err := json.Compact(&c, ob.body[line:]); err == nil {
			ob.body = append(ob.body[:line], c.Bytes()...)
		}
	}
	if len(ob.body) > b.maxBytes && len(ob.msgs) > 0 {
		// this call does not fit: send the batch without it, start the next with it
		next := append(b.newBody(), ob.body[line:]...)
		ob.body = ob.body[:start]
		b.send(ob)
		ob.body = next
	}
	ob.has[call.ID] = struct{}{}
	ob.ids = append(ob.ids, call.ID)
	ob.msgs = append(ob.msgs, msg)
	if len(ob.msgs) >= b.maxCalls || len(ob.body) >= b.maxBytes {
		b.send(ob)
	}
}

// pending reports whether a batch is open.
func (b *batcher) pending() bool { return len(b.keys) > 0 }

// flush publishes every open batch.
func (b *batcher) flush() {
	for _, k := range b.keys {
		if ob := b.open[k]; len(ob.msgs) > 0 {
			b.send(ob)
		}
		delete(b.open, k)
	}
	b.keys = b.keys[:0]
}

// send starts the publish of ob and empties it; the body is not reused (the
// publish keeps it until JetStream acknowledges).
func (b *batcher) send(ob *openBatch) {
	b.lastLen = len(ob.body)
	out := recordMsg(ob.subject, ob.raw, ob.body, ob.ids)
	fut, err := b.publish(out)
	b.q <- pending{msgs: ob.msgs, fut: fut, pubErr: err, body: ob.body}
	ob.body = b.newBody()
	ob.ids, ob.msgs = nil, nil
	clear(ob.has)
}

// newBody is a batch's buffer, sized from the last batch sent: under load
// batches are full and one allocation of their size beats growing the
// buffer call by call (copies, garbage); at a trickle batches hold a call
// or two and get a small buffer.
func (b *batcher) newBody() []byte {
	want := min(max(b.lastLen+b.lastLen/4, 16<<10), b.maxBytes+b.maxBytes/8)
	select {
	case p := <-b.bodies:
		if cap(p) >= want && cap(p) <= 2*want {
			return p[:0]
		}
	default:
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
