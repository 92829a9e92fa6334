package bus

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// fakeKV is a KeyValue whose Watch hands out updates; the rest of the
// interface is not used.
type fakeKV struct {
	jetstream.KeyValue
	updates chan jetstream.KeyValueEntry
	err     error
	key     string
	stopped bool
}

func (f *fakeKV) Watch(_ context.Context, key string, _ ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	f.key = key
	return f, f.err
}
func (f *fakeKV) Updates() <-chan jetstream.KeyValueEntry { return f.updates }
func (f *fakeKV) Stop() error                             { f.stopped = true; return nil }

type fakeEntry struct {
	jetstream.KeyValueEntry
	value string
}

func (e fakeEntry) Value() []byte { return []byte(e.value) }

func TestWatchKey(t *testing.T) {
	t.Run("entries then ctx ends", func(t *testing.T) {
		kv := &fakeKV{updates: make(chan jetstream.KeyValueEntry, 3)}
		kv.updates <- fakeEntry{value: "a"}
		kv.updates <- nil
		kv.updates <- fakeEntry{value: "b"}
		ctx, cancel := context.WithCancel(context.Background())
		var got []string
		err := WatchKey(ctx, kv, "k", func(e jetstream.KeyValueEntry) {
			if e == nil {
				got = append(got, "<initial done>")
			} else {
				got = append(got, string(e.Value()))
			}
			if len(got) == 3 {
				cancel()
			}
		})
		if err != nil || strings.Join(got, " ") != "a <initial done> b" || kv.key != "k" || !kv.stopped {
			t.Errorf("err %v, got %q, key %q, stopped %v", err, got, kv.key, kv.stopped)
		}
	})
	t.Run("watch ends first", func(t *testing.T) {
		kv := &fakeKV{updates: make(chan jetstream.KeyValueEntry)}
		close(kv.updates)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := WatchKey(ctx, kv, "k", func(jetstream.KeyValueEntry) { t.Error("fn called") })
		if err == nil || !strings.Contains(err.Error(), "watch k: closed") || !kv.stopped {
			t.Errorf("err %v, stopped %v", err, kv.stopped)
		}
	})
	t.Run("watch cannot start", func(t *testing.T) {
		boom := errors.New("boom")
		err := WatchKey(context.Background(), &fakeKV{err: boom}, "k", func(jetstream.KeyValueEntry) {})
		if !errors.Is(err, boom) {
			t.Errorf("err %v", err)
		}
	})
}
