package ingest

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/schema"
)

// AppendMessage encodes into the buffer it is given (so that a caller can
// reuse it once JetStream acknowledged the message), hashes the API key, and
// sets the subject and headers as Message does.
func TestAppendMessageReusesTheBuffer(t *testing.T) {
	end := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ev := &schema.Event{ID: "e-1", StartTime: end.Add(-time.Second), EndTime: &end, Endpoint: "/v1/embeddings",
		Model: "bge-m3", Status: 200, APIKey: "sk-live-1234567890", Request: json.RawMessage(`{"input":"hi"}`)}
	buf := make([]byte, 0, 4096)
	msg := AppendMessage(buf[:0], ev)
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
	ev.Source = schema.SourceBatch
	if s := Subject(ev); s != bus.CallsSubjectPrefix+"."+schema.SourceBatch {
		t.Errorf("batch subject %q", s)
	}
}
