package integration

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// TestLeaseOneHolderAndTakeover: two processes' leases on one key run their
// work one at a time; when the holder stops, the other takes over.
func TestLeaseOneHolderAndTakeover(t *testing.T) {
	_, js := testkit.PipelineJetStream(t, ingest.NATSOptions{URL: harness.NATS(t)})
	key := "test-" + testkit.RandomHex(t, 4)
	var running, maxRunning, ran [2]atomic.Int32
	var total atomic.Int32
	ctxs := make([]context.CancelFunc, 2)
	done := make(chan struct{}, 2)
	for i := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		ctxs[i] = cancel
		l := &bus.Lease{JS: js, Key: key, Owner: []string{"a", "b"}[i], TTL: 3 * time.Second, Log: slog.New(slog.DiscardHandler)}
		go func() {
			defer func() { done <- struct{}{} }()
			_ = l.Run(ctx, func(ctx context.Context) {
				n := total.Add(1)
				running[i].Add(1)
				if n > maxRunning[0].Load() {
					maxRunning[0].Store(n)
				}
				ran[i].Add(1)
				<-ctx.Done()
				running[i].Add(-1)
				total.Add(-1)
			})
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for ran[0].Load()+ran[1].Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	holder := 0
	if ran[1].Load() > 0 {
		holder = 1
	}
	time.Sleep(3 * time.Second) // several renewals: the other must not get in
	if maxRunning[0].Load() != 1 || ran[1-holder].Load() != 0 {
		t.Fatalf("work ran %d at once; the waiting process ran %d times", maxRunning[0].Load(), ran[1-holder].Load())
	}
	ctxs[holder]() // the holder stops (and releases)
	deadline = time.Now().Add(5 * time.Second)
	for ran[1-holder].Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if ran[1-holder].Load() != 1 || maxRunning[0].Load() != 1 {
		t.Fatalf("after the holder stopped: the other ran %d times, at most %d at once", ran[1-holder].Load(), maxRunning[0].Load())
	}
	ctxs[1-holder]()
	<-done
	<-done
}
