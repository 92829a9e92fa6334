package bus

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestItems(t *testing.T) {
	one, err := Items(nil, []byte(`{"id":"a"}`))
	if err != nil || len(one) != 1 || string(one[0]) != `{"id":"a"}` {
		t.Fatalf("single-call message: %q %v", one, err)
	}
	h := nats.Header{}
	h.Set(HeaderCalls, "3")
	items, err := Items(h, []byte("{\"id\":\"a\"}\n{\"id\":\"b\"}\nnot json"))
	if err != nil || len(items) != 3 || string(items[1]) != `{"id":"b"}` || string(items[2]) != "not json" {
		t.Fatalf("batch: %q %v", items, err)
	}
	for _, bad := range []struct{ count, body string }{{"2", "x\ny\nz"}, {"4", "x\ny"}, {"0", "x"}, {"two", "x\ny"}} {
		h.Set(HeaderCalls, bad.count)
		if _, err := Items(h, []byte(bad.body)); err == nil {
			t.Errorf("count %s, body %q: no error", bad.count, bad.body)
		}
	}
}

// The same calls give the same id in any order; other calls another id.
func TestBatchMsgID(t *testing.T) {
	a := BatchMsgID([]string{"c-1", "c-2", "c-3"})
	if b := BatchMsgID([]string{"c-3", "c-1", "c-2"}); a != b {
		t.Fatalf("order changed the id: %s %s", a, b)
	}
	for _, other := range [][]string{{"c-1", "c-2"}, {"c-1", "c-2", "c-4"}, {"c-1", "c-23"}} {
		if BatchMsgID(other) == a {
			t.Fatalf("%v has the id of c-1..3", other)
		}
	}
	if BatchMsgID([]string{"c-1", "c-23"}) == BatchMsgID([]string{"c-12", "c-3"}) {
		t.Fatal("ids are not separated in the hash")
	}
	if !strings.HasPrefix(a, "calls:") {
		t.Fatalf("id %q", a)
	}
}

// A call of a batch is dead-lettered under its own id, so that two calls of
// one message are two dead letters, while the same call again is one.
func TestFailureMsgOfBatchItem(t *testing.T) {
	now := time.Now()
	f := Failure{Stage: StageLangfuse, Stream: NormalizedStream, Subject: "callpipe.normalized.chat", Seq: 9, Data: []byte(`{"id":"x"}`), Reason: "r"}
	whole := f.Msg(now).Header.Get(HeaderMsgID)
	f.Item = 1
	first := f.Msg(now).Header.Get(HeaderMsgID)
	f.Item = 2
	second := f.Msg(now).Header.Get(HeaderMsgID)
	if whole != "langfuse:CALLPIPE_NORMALIZED:9" || first != "langfuse:CALLPIPE_NORMALIZED:9:0" || second != "langfuse:CALLPIPE_NORMALIZED:9:1" {
		t.Fatalf("ids %q %q %q", whole, first, second)
	}
	h := nats.Header{}
	h.Set(HeaderCalls, "5")
	f.Header = h
	if m := f.Msg(now); m.Header.Get(HeaderCalls) != "" || string(m.Data) != `{"id":"x"}` {
		t.Fatalf("a call's dead letter must be that call alone: %v %q", m.Header, m.Data)
	}
}
