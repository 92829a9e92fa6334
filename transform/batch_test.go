package transform

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/freelist"
	"github.com/callpipe/callpipe/schema"
)

func drainPending(q chan pending) []pending {
	var out []pending
	for {
		select {
		case p := <-q:
			out = append(out, p)
		default:
			return out
		}
	}
}

func normalizeN(t *testing.T, n int, kind func(i int) []byte) []*schema.Call {
	t.Helper()
	norm := testNormalizer(t)
	var calls []*schema.Call
	for i := range n {
		c, err := norm.Normalize(context.Background(), kind(i))
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, c)
	}
	return calls
}

// Calls of one kind and routing go out together, up to maxCalls per
// message; the items decode to the calls; the id is the batch's; the raw
// messages of a batch are settled by its publish.
func TestBatcherGroupsAndSplits(t *testing.T) {
	q := make(chan pending, 100)
	var sent []*nats.Msg
	b := &batcher{maxCalls: 3, maxBytes: 1 << 20, q: q, open: map[string]*openBatch{},
		publish: func(m *nats.Msg) (jetstream.PubAckFuture, error) { sent = append(sent, m); return nil, nil }}
	calls := normalizeN(t, 7, benchChatEvent)
	replay := nats.Header{}
	replay.Set(bus.HeaderReplay, "job-1")
	replay.Set(bus.HeaderSinks, "clickhouse")
	for i, c := range calls {
		h := nats.Header{}
		if i >= 5 { // the last two are a replay: never in a batch with live calls
			h = replay
		}
		b.add(c, &fakeMsg{hdr: h})
	}
	b.flush()
	ps := drainPending(q)
	if len(sent) != 3 || len(ps) != 3 {
		t.Fatalf("%d messages, %d pendings; want 3 (3 live, 2 live, 2 replayed)", len(sent), len(ps))
	}
	wantCalls := []int{3, 2, 2}
	seen := map[string]bool{}
	for i, m := range sent {
		items, err := bus.Items(m.Header, m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) != wantCalls[i] || len(ps[i].msgs) != wantCalls[i] || m.Header.Get(bus.HeaderCalls) != strconv.Itoa(wantCalls[i]) {
			t.Fatalf("message %d: %d items, %d raw messages, %s=%q; want %d", i, len(items), len(ps[i].msgs), bus.HeaderCalls, m.Header.Get(bus.HeaderCalls), wantCalls[i])
		}
		var ids []string
		for _, it := range items {
			var c schema.Call
			if err := json.Unmarshal(it, &c); err != nil {
				t.Fatalf("item of message %d: %v", i, err)
			}
			ids = append(ids, c.ID)
			seen[c.ID] = true
		}
		want := bus.BatchMsgID(ids)
		if i == 2 {
			want = bus.ReplayMsgID("job-1", want)
			if m.Header.Get(bus.HeaderReplay) != "job-1" || m.Header.Get(bus.HeaderSinks) != "clickhouse" {
				t.Fatalf("replayed batch lost its marks: %v", m.Header)
			}
		} else if bus.IsReplay(m.Header) {
			t.Fatalf("live batch %d has replay marks: %v", i, m.Header)
		}
		if got := m.Header.Get(bus.HeaderMsgID); got != want {
			t.Fatalf("message %d: Nats-Msg-Id %q, want %q", i, got, want)
		}
		if m.Subject != bus.NormalizedSubjectPrefix+".chat" {
			t.Fatalf("subject %q", m.Subject)
		}
	}
	if len(seen) != 7 {
		t.Fatalf("%d distinct calls in the batches, want 7", len(seen))
	}
}

// A batch of one is the single-call format (no count header, the call id as
// Nats-Msg-Id), which readers from before batches understand.
func TestBatcherOneCallIsSingleFormat(t *testing.T) {
	q := make(chan pending, 10)
	var sent []*nats.Msg
	b := &batcher{maxCalls: 256, maxBytes: 1 << 20, q: q, open: map[string]*openBatch{},
		publish: func(m *nats.Msg) (jetstream.PubAckFuture, error) { sent = append(sent, m); return nil, nil }}
	c := normalizeN(t, 1, benchChatEvent)[0]
	b.add(c, &fakeMsg{})
	b.flush()
	if len(sent) != 1 || sent[0].Header.Get(bus.HeaderCalls) != "" || sent[0].Header.Get(bus.HeaderMsgID) != c.ID {
		t.Fatalf("sent %d, headers %v; want one single-call message with id %s", len(sent), sent[0].Header, c.ID)
	}
	var got schema.Call
	if err := json.Unmarshal(sent[0].Data, &got); err != nil || got.ID != c.ID {
		t.Fatalf("body: %v %q", err, got.ID)
	}
}

// Bytes bound a batch too; a call whose raw values hold line breaks stays
// one line.
func TestBatcherBytesAndLineBreaks(t *testing.T) {
	q := make(chan pending, 100)
	var sent []*nats.Msg
	one := len(schema.AppendCall(nil, normalizeN(t, 1, benchChatEvent)[0]))
	b := &batcher{maxCalls: 256, maxBytes: 2*one + one/2, q: q, open: map[string]*openBatch{},
		publish: func(m *nats.Msg) (jetstream.PubAckFuture, error) { sent = append(sent, m); return nil, nil }}
	calls := normalizeN(t, 5, benchChatEvent)
	calls[1].Metadata = map[string]json.RawMessage{"note": json.RawMessage("{\n  \"a\": 1\n}")}
	for _, c := range calls {
		b.add(c, &fakeMsg{})
	}
	b.flush()
	total := 0
	for _, m := range sent {
		if len(m.Data) > b.maxBytes {
			t.Fatalf("message of %d bytes, bound %d", len(m.Data), b.maxBytes)
		}
		items, err := bus.Items(m.Header, m.Data)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			var c schema.Call
			if err := json.Unmarshal(it, &c); err != nil {
				t.Fatalf("item %q: %v", it, err)
			}
			if c.ID == calls[1].ID && string(c.Metadata["note"]) != `{"a":1}` {
				t.Fatalf("metadata %s", c.Metadata["note"])
			}
			total++
		}
	}
	if total != 5 || len(sent) < 3 {
		t.Fatalf("%d calls in %d messages; want 5 in at least 3", total, len(sent))
	}
}

// A batch's buffer follows the size of the last one: one call at a time
// must not cost a full-size buffer each, full batches must not regrow.
func TestBatcherBufferSize(t *testing.T) {
	q := make(chan pending, 1000)
	b := &batcher{maxCalls: 256, maxBytes: 512 << 10, q: q, open: map[string]*openBatch{},
		publish: func(m *nats.Msg) (jetstream.PubAckFuture, error) { return nil, nil }}
	calls := normalizeN(t, 300, benchChatEvent)
	b.add(calls[0], &fakeMsg{})
	b.flush()
	b.add(calls[1], &fakeMsg{})
	if c := cap(b.open[b.keys[0]].body); c > 32<<10 {
		t.Fatalf("buffer of %d bytes after a batch of one call", c)
	}
	b.flush()
	for _, c := range calls[2:] { // 256 fill a batch, the rest start the next
		b.add(c, &fakeMsg{})
	}
	ob := b.open[b.keys[0]]
	if full := b.lastLen; cap(ob.body) < full {
		t.Fatalf("buffer of %d bytes after a full batch of %d", cap(ob.body), full)
	}
}

// The same call twice in one batch (a replay re-sent after a crash, a
// redelivery) is stored once, and both raw messages are settled with it.
func TestBatcherStoresACallOncePerBatch(t *testing.T) {
	q := make(chan pending, 10)
	var sent []*nats.Msg
	b := &batcher{maxCalls: 256, maxBytes: 1 << 20, q: q, open: map[string]*openBatch{},
		publish: func(m *nats.Msg) (jetstream.PubAckFuture, error) { sent = append(sent, m); return nil, nil }}
	calls := normalizeN(t, 2, benchChatEvent)
	b.add(calls[0], &fakeMsg{hdr: nats.Header{}})
	b.add(calls[0], &fakeMsg{hdr: nats.Header{}})
	b.add(calls[1], &fakeMsg{hdr: nats.Header{}})
	b.flush()
	ps := drainPending(q)
	if len(sent) != 1 || len(ps) != 1 {
		t.Fatalf("%d messages, %d pendings; want 1", len(sent), len(ps))
	}
	items, err := bus.Items(sent[0].Header, sent[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 || len(ps[0].msgs) != 3 {
		t.Fatalf("%d calls stored, %d raw messages settled; want 2 and 3", len(items), len(ps[0].msgs))
	}
	if got, want := sent[0].Header.Get(bus.HeaderMsgID), bus.BatchMsgID([]string{calls[0].ID, calls[1].ID}); got != want {
		t.Fatalf("Nats-Msg-Id %q, want %q (of the distinct calls)", got, want)
	}
}

// A batch buffer handed back on the free list is the next batch's buffer
// (emptied) when its size fits: no smaller than wanted, no larger than a
// full batch or twice what is wanted; one far larger is dropped, and the
// batcher works without a free list.
func TestBatcherReusesFreeBuffers(t *testing.T) {
	free := freelist.New[[]byte](2)
	b := &batcher{maxCalls: 256, maxBytes: 1 << 20, bodies: free}
	spare := make([]byte, 5, 20<<10)
	free.Put(spare)
	if got := b.newBody(); cap(got) != cap(spare) || len(got) != 0 || &got[:1][0] != &spare[0] {
		t.Fatalf("free buffer not reused: len %d cap %d", len(got), cap(got))
	}
	free.Put(make([]byte, 0, 8<<20))
	if got := b.newBody(); cap(got) >= 8<<20 {
		t.Fatalf("a buffer of %d bytes reused for batches of 16 KB", cap(got))
	}
	// a full batch's buffer after a lingered small batch: kept, the next
	// full batch needs it
	b.lastLen = 2 << 10
	fullBuf := make([]byte, 0, b.maxBytes+b.maxBytes/8)
	free.Put(fullBuf)
	if got := b.newBody(); cap(got) != cap(fullBuf) {
		t.Fatalf("a full batch's buffer (%d bytes) dropped after a small batch; got %d", cap(fullBuf), cap(got))
	}
	free.Put(make([]byte, 0, 4<<10))
	if got := b.newBody(); cap(got) < 16<<10 {
		t.Fatalf("a buffer of %d bytes reused for batches of 16 KB", cap(got))
	}
	b.bodies = freelist.List[[]byte]{}
	if got := b.newBody(); cap(got) < 16<<10 {
		t.Fatalf("new buffer of %d bytes", cap(got))
	}
}

// Open batches are due batchMinAge after their oldest call came; a batch
// sent full leaves nothing due until the next call.
func TestBatcherDueAfterMinAge(t *testing.T) {
	q := make(chan pending, 10)
	b := &batcher{maxCalls: 2, maxBytes: 1 << 20, q: q, open: map[string]*openBatch{},
		publish: func(m *nats.Msg) (jetstream.PubAckFuture, error) { return nil, nil }}
	if _, ok := b.due(); ok {
		t.Fatal("due with no batch open")
	}
	calls := normalizeN(t, 3, benchChatEvent)
	before := time.Now()
	b.add(calls[0], &fakeMsg{hdr: nats.Header{}})
	due, ok := b.due()
	if !ok || due.Before(before.Add(batchMinAge)) || due.After(time.Now().Add(batchMinAge)) {
		t.Fatalf("due %v (%v), want batchMinAge after the first call", due, ok)
	}
	b.add(calls[1], &fakeMsg{hdr: nats.Header{}}) // full: sent
	if !b.pending() {
		t.Fatal("the batch sent full is no longer open")
	}
	if d, ok := b.due(); ok {
		t.Fatalf("due %v after the batch went out full", d)
	}
	time.Sleep(2 * time.Millisecond)
	later := time.Now()
	b.add(calls[2], &fakeMsg{hdr: nats.Header{}})
	if d, ok := b.due(); !ok || d.Before(later.Add(batchMinAge)) {
		t.Fatalf("due %v (%v): not counted from the next call", d, ok)
	}
}
