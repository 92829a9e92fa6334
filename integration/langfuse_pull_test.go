package integration

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/sinks/langfuse"
)

// TestLangfuseSinkStopHandsBack: the sink's pull iterator reads ahead of
// the batch it writes. On stop it finishes the batch in flight and hands
// back (naks) what it had read ahead, so the next sink gets those calls at
// once instead of after the ack wait.
func TestLangfuseSinkStopHandsBack(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{})
	const n = 2000
	calls := lfCalls(e.run, n)
	e.publish(calls, "")
	// a slow Langfuse: one small batch at a time, the rest waits read ahead
	e.srv.SetFailureRate(1, langfusetest.Fault{Delay: 200 * time.Millisecond})
	const ackWait = time.Minute
	s := e.startSink(func(_ *langfuse.OutputConfig, sc *langfuse.SinkConfig) {
		sc.Batch.Count, sc.Batch.MaxInFlight, sc.AckWait = 50, 1, ackWait
	})
	lfWait(t, 30*time.Second, "some stored", func() bool { return len(e.srv.Observations()) >= 100 })
	s.stop(t)
	stored := len(e.srv.Observations())
	if stored >= n {
		t.Fatalf("all %d calls stored before the stop: nothing was read ahead", n)
	}
	e.srv.SetFailureRate(0)
	restart := time.Now()
	e.startSink(nil)
	// without the hand-back the read-ahead calls would come back after the
	// ack wait (a minute)
	lfWait(t, 15*time.Second, "the rest stored by the next sink", func() bool { return len(e.srv.Observations()) == n })
	t.Logf("stopped with %d of %d stored; the next sink stored the rest in %s", stored, n, time.Since(restart).Round(time.Millisecond))
	e.waitSettled(30 * time.Second)
	lfCheckStored(t, e.srv, calls)
}

// TestLangfuseSinkPauseHandsBack: while Langfuse refuses the keys the sink
// pauses, longer than the ack wait here; what its iterator had read ahead
// is handed back for the end of the pause instead of waiting unrefreshed
// and being redelivered next to its stale copy, so once the keys work each
// call is sent once.
func TestLangfuseSinkPauseHandsBack(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{SecretKey: "sk-rotated"})
	const n = 2000
	calls := lfCalls(e.run, n)
	e.publish(calls, "")
	s := e.startSink(func(_ *langfuse.OutputConfig, sc *langfuse.SinkConfig) {
		// pauses of 3 s, 6 s, ... against an ack wait of 2 s
		sc.Batch.Count, sc.Batch.MaxInFlight, sc.AckWait, sc.RetryDelay = 50, 1, 2*time.Second, 3*time.Second
	})
	lfWait(t, 10*time.Second, "refused", func() bool { return s.sink.Health() != nil })
	time.Sleep(4 * time.Second) // into the second pause
	e.srv.SetCredentials("pk-lf-test", "sk-lf-test")
	lfWait(t, time.Minute, "all stored after the keys were fixed", func() bool { return len(e.srv.Observations()) == n })
	e.waitSettled(30 * time.Second)
	lfCheckStored(t, e.srv, calls)
	if accepted, _, _ := e.srv.Counts(); accepted != 2*n {
		t.Fatalf("%d events accepted for %d calls (a trace and a generation each): calls held through a pause were sent twice", accepted, n)
	}
}

// TestLangfuseSinkPullsAgain: when its pull iterator ends by itself (here
// the durable consumer is deleted and made again, as a redeploy may do),
// the sink pulls again and calls keep getting through.
func TestLangfuseSinkPullsAgain(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{})
	calls := lfCalls(e.run, 200)
	e.startSink(nil)
	e.publish(calls[:100], "")
	lfWait(t, 30*time.Second, "the first calls stored", func() bool { return len(e.srv.Observations()) == 100 })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := e.js.Consumer(ctx, bus.NormalizedStream, e.consumer)
	if err != nil {
		t.Fatal(err)
	}
	cfg := cons.CachedInfo().Config
	if err := e.js.DeleteConsumer(ctx, bus.NormalizedStream, e.consumer); err != nil {
		t.Fatal(err)
	}
	// made again from the first unsent call on
	cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, cons.CachedInfo().Delivered.Stream+1
	if _, err := e.js.CreateOrUpdateConsumer(ctx, bus.NormalizedStream, cfg); err != nil {
		t.Fatal(err)
	}
	e.publish(calls[100:], "")
	lfWait(t, 30*time.Second, "the calls after the consumer was made again", func() bool { return len(e.srv.Observations()) == len(calls) })
	e.waitSettled(30 * time.Second)
	lfCheckStored(t, e.srv, calls)
}
