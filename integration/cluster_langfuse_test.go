//go:build cluster

package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/sinks/langfuse"
)

// TestClusterLangfuseSinkReplicatedConsumer: on a JetStream cluster the
// Langfuse sink's durable consumer is replicated (R3, like its stream), and
// nats-server sends a replicated consumer's message only after its delivery
// is replicated, but the 409 "Batch Completed" status of a pull request at
// once. A one-shot Fetch whose count was met ended on that status before its
// message arrived, so every message went to nobody and came back after the
// ack wait, for ever (ack floor 0). The sink pulls with an iterator now:
// batched messages, few of them per batch of calls, all get through, once.
func TestClusterLangfuseSinkReplicatedConsumer(t *testing.T) {
	cl := harness.Cluster(t) // the cluster stack, or skip/fail as the suite does
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// the streams as migrate makes them on a cluster, before newLfEnv would
	// create missing ones with one replica
	ensureR3Streams(ctx, t, clusterJetStream(ctx, t, cl, false))
	e := newLfEnv(t, langfusetest.Options{})

	calls := lfCalls(e.run, 1000)
	lines := callLines(t, calls)
	subject := e.subject + "." + calls[0].Kind
	var last uint64
	for i := 0; i < len(lines); i += 25 {
		last = publishBatch(t, e.js, subject, fmt.Sprintf("calls:%s-%d", e.run, i), lines[i:i+25])
	}
	start := time.Now()
	e.startSink(func(_ *langfuse.OutputConfig, sc *langfuse.SinkConfig) {
		sc.Batch.Count = 100 // four messages a batch: a pull whose count is met
	})
	cons, err := e.js.Consumer(ctx, bus.NormalizedStream, e.consumer)
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("consumer %s is not replicated on 3 servers (cluster %+v): the test would not exercise R3 deliveries", e.consumer, info.Cluster)
	}
	// 1,000 calls take well under a second; the ack wait (30 s) is what a
	// lost delivery costs, so 20 s tells the two apart
	testkit.WaitFor(t, 20*time.Second, "every generation", func() (bool, string) {
		info, err := cons.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return len(e.srv.Observations()) == len(calls), fmt.Sprintf("%d generations; consumer: %d pending, %d ack-pending, %d redelivered, %d waiting, ack floor %d, leader %s",
			len(e.srv.Observations()), info.NumPending, info.NumAckPending, info.NumRedelivered, info.NumWaiting, info.AckFloor.Stream, info.Cluster.Leader)
	})
	e.waitSettled(20 * time.Second)
	if _, floor := e.consumerState(); floor < last {
		t.Fatalf("ack floor %d, want %d (the last message)", floor, last)
	}
	t.Logf("%d calls in %d batched messages through an R3 consumer in %s", len(calls), len(lines)/25, time.Since(start).Round(time.Millisecond))
	lfCheckStored(t, e.srv, calls)
	if dl := e.deadLetters(); len(dl) != 0 {
		t.Fatalf("%d dead letters", len(dl))
	}
}
