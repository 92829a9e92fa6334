package clickhouse

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/schema"
)

// TestDecodeCallMatchesEncodingJSON: the sink's decoder gives the same
// schema.Call as encoding/json for the records normalize writes, and rejects
// what is not a call.
func TestDecodeCallMatchesEncodingJSON(t *testing.T) {
	calls := benchCalls(3)
	calls[1].TTFTMS, calls[1].FirstTokenTime, calls[1].CostUSD, calls[1].Metadata, calls[1].Tags = nil, nil, nil, nil, nil
	calls[2].InputText = "ünïcode \u2028 \"quoted\" \\ <html>"
	calls[2].Error = strings.Repeat("e", 10000)
	for i := range calls {
		data, err := json.Marshal(&calls[i])
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeCall(data)
		if err != nil {
			t.Fatal(err)
		}
		var want schema.Call
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("call %d:\n got  %+v\n want %+v", i, got, want)
		}
	}
	for _, bad := range []string{`{"id": 12}`, `{"id":"x"}`, `not json`, `{"id":"x","start_time":"2026-11-01T00:00:00Z","latency_ms":"slow"}`} {
		if _, err := decodeCall([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// TestBatchToken: a batch redelivered with the same messages gets the same
// token; another message, a recreated stream (same sequence, other publish
// time) or another call id gets another.
func TestBatchToken(t *testing.T) {
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	batch := func(seqs []uint64, ts time.Time, ids ...string) []pending {
		var out []pending
		for i, s := range seqs {
			out = append(out, pending{call: schema.Call{ID: ids[i]}, ref: bus.AckRef{Seq: s, Stored: ts}})
		}
		return out
	}
	base := batchToken(batch([]uint64{1, 2, 3}, at, "a", "b", "c"))
	if !strings.HasPrefix(base, "callpipe-") || base != batchToken(batch([]uint64{1, 2, 3}, at, "a", "b", "c")) {
		t.Fatalf("token %q is not stable", base)
	}
	for name, other := range map[string][]pending{
		"other message":      batch([]uint64{1, 2, 4}, at, "a", "b", "c"),
		"recreated stream":   batch([]uint64{1, 2, 3}, at.Add(time.Hour), "a", "b", "c"),
		"other call":         batch([]uint64{1, 2, 3}, at, "a", "b", "x"),
		"fewer messages":     batch([]uint64{1, 2}, at, "a", "b"),
		"different grouping": batch([]uint64{2, 1, 3}, at, "b", "a", "c"),
	} {
		if batchToken(other) == base {
			t.Errorf("%s: same token", name)
		}
	}
}
