package clickhouse

import (
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks"
)

// TestBatchToken: a batch redelivered with the same messages gets the same
// token; another message, a recreated stream (same sequence, other publish
// time) or another call id gets another.
func TestBatchToken(t *testing.T) {
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	batch := func(seqs []uint64, ts time.Time, ids ...string) []sinks.Item[schema.Call] {
		var out []sinks.Item[schema.Call]
		for i, s := range seqs {
			out = append(out, sinks.Item[schema.Call]{Value: schema.Call{ID: ids[i]}, Ref: bus.AckRef{Seq: s, Stored: ts}})
		}
		return out
	}
	base := batchToken(batch([]uint64{1, 2, 3}, at, "a", "b", "c"))
	if !strings.HasPrefix(base, "callpipe-") || base != batchToken(batch([]uint64{1, 2, 3}, at, "a", "b", "c")) {
		t.Fatalf("token %q is not stable", base)
	}
	for name, other := range map[string][]sinks.Item[schema.Call]{
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
