package ingest

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/schema"
)

// FillMessage encodes into the buffer it is given (so that a caller can
// reuse it once JetStream acknowledged the message), hashes the API key,
// and sets the subject and headers as Message does; filling the same
// message again reuses its header with the new id.
func TestFillMessageReusesBufferAndHeader(t *testing.T) {
	end := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ev := &schema.Event{ID: "e-1", StartTime: end.Add(-time.Second), EndTime: &end, Endpoint: "/v1/embeddings",
		Model: "bge-m3", Status: 200, APIKey: "sk-live-1234567890", Request: json.RawMessage(`{"input":"hi"}`)}
	buf := make([]byte, 0, 4096)
	var msg nats.Msg
	FillMessage(&msg, buf[:0], ev)
	if &msg.Data[0] != &buf[:1][0] {
		t.Error("the message's data is not in the given buffer")
	}
	if msg.Subject != bus.CallsSubjectPrefix+"."+schema.SourceOnline {
		t.Errorf("subject %q", msg.Subject)
	}
	if msg.Header.Get(bus.HeaderMsgID) != "e-1" || msg.Header.Get(bus.HeaderSchema) != "1" {
		t.Errorf("headers %v", msg.Header)
	}
	if ev.APIKey != "" || ev.APIKeyHash == "" {
		t.Errorf("key %q hash %q: want the key hashed", ev.APIKey, ev.APIKeyHash)
	}
	want := string(Message(ev).Data)
	if string(msg.Data) != want {
		t.Errorf("data\n%s\nwant\n%s", msg.Data, want)
	}
	h := msg.Header
	ev2 := *ev
	ev2.ID, ev2.Source = "e-2", schema.SourceBatch
	FillMessage(&msg, buf[:0], &ev2)
	if reflect.ValueOf(msg.Header).UnsafePointer() != reflect.ValueOf(h).UnsafePointer() {
		t.Error("the second fill made a new header")
	}
	if len(msg.Header) != 2 || msg.Header.Get(bus.HeaderMsgID) != "e-2" || msg.Header.Get(bus.HeaderSchema) != "1" {
		t.Errorf("second fill: headers %v", msg.Header)
	}
	if want := string(Message(&ev2).Data); string(msg.Data) != want || msg.Subject != bus.CallsSubjectPrefix+"."+schema.SourceBatch {
		t.Errorf("second fill: %s %s, want %s", msg.Subject, msg.Data, want)
	}
	// a header that is not one FillMessage made is not written into
	other := nats.Header{bus.HeaderMsgID: {"x"}, "X-Other": {"y"}}
	msg.Header = other
	FillMessage(&msg, buf[:0], ev)
	if other.Get(bus.HeaderMsgID) != "x" || msg.Header.Get("X-Other") != "" || msg.Header.Get(bus.HeaderMsgID) != "e-1" {
		t.Errorf("foreign header %v, message header %v", other, msg.Header)
	}
	ev.Source = schema.SourceBatch
	if s := Subject(ev); s != bus.CallsSubjectPrefix+"."+schema.SourceBatch {
		t.Errorf("batch subject %q", s)
	}
}
