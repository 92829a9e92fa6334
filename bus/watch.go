package bus

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// WatchKey calls fn with every entry of key in kv — the current one, then
// each change (a put, or a delete or purge: see Operation) — and once with
// nil when the entries present at the start have been delivered (a key
// that does not exist yields only that nil), until ctx ends. It returns nil
// when ctx ends and an error when the watch cannot start or ends first.
// fn runs on the caller's goroutine, one entry at a time.
func WatchKey(ctx context.Context, kv jetstream.KeyValue, key string, fn func(jetstream.KeyValueEntry)) error {
	w, err := kv.Watch(ctx, key)
	if err != nil {
		return fmt.Errorf("watch %s: %w", key, err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("watch %s: closed", key)
			}
			fn(e)
		}
	}
}
