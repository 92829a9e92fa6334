package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LeaseBucket is the NATS KV bucket of callpipe's leases. Its TTL is the
// lease time: a holder that stops renewing loses its key that long after
// the last renewal, and another process can take it.
const LeaseBucket = "callpipe_leases"

// Lease runs work in at most one process at a time among those asking for
// the same key: the holder renews its key every TTL/3 with a compare-and-set
// on the key's revision; one that cannot renew stops its work at once. Work
// is safe to run twice anyway (the lease saves effort, not correctness):
// a holder paused longer than TTL may overlap with the next one until its
// renewal fails.
type Lease struct {
	JS       jetstream.JetStream
	Key      string
	Owner    string
	TTL      time.Duration
	Replicas int
	Log      *slog.Logger
	// OnChange is told when this process gains or loses the lease.
	OnChange func(held bool)
}

// Run calls work with a context that is cancelled when the lease is lost,
// each time the lease is acquired, until ctx ends.
func (l *Lease) Run(ctx context.Context, work func(context.Context)) error {
	kv, err := l.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: LeaseBucket, Description: "callpipe leases (one worker at a time for periodic jobs)",
		TTL: l.TTL, History: 1, Storage: jetstream.FileStorage, Replicas: max(l.Replicas, 1),
	})
	if err != nil {
		return fmt.Errorf("lease bucket %s: %w", LeaseBucket, err)
	}
	every := l.TTL / 3
	for {
		rev, err := kv.Create(ctx, l.Key, []byte(l.Owner))
		if err == nil {
			l.hold(ctx, kv, rev, every, work)
		} else if !errors.Is(err, jetstream.ErrKeyExists) && ctx.Err() == nil {
			l.Log.Warn("lease: cannot ask for it; retrying", "key", l.Key, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// hold runs work while renewing the lease, then releases it.
func (l *Lease) hold(ctx context.Context, kv jetstream.KeyValue, rev uint64, every time.Duration, work func(context.Context)) {
	l.Log.Info("lease acquired", "key", l.Key, "owner", l.Owner)
	l.change(true)
	defer l.change(false)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		work(wctx)
	}()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			cancel()
			l.release(kv, rev)
			return
		case <-t.C:
			next, err := kv.Update(ctx, l.Key, []byte(l.Owner), rev)
			if err != nil {
				if ctx.Err() == nil {
					l.Log.Warn("lease lost; work stopped", "key", l.Key, "err", err)
				}
				cancel()
				<-done
				return
			}
			rev = next
		}
	}
}

// release deletes the key so another process need not wait for the TTL.
func (l *Lease) release(kv jetstream.KeyValue, rev uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := kv.Delete(ctx, l.Key, jetstream.LastRevision(rev)); err != nil {
		l.Log.Debug("lease release", "key", l.Key, "err", err)
	}
	l.Log.Info("lease released", "key", l.Key)
}

func (l *Lease) change(held bool) {
	if l.OnChange != nil {
		l.OnChange(held)
	}
}
