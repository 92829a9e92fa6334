package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/callsdb"
)

// TestClickHouseSink200kSevenDays: 200,000 calls over 7 days, 5 models and 50
// users through the sink. The first batch (2,000 calls, published alone) is
// inserted and its acks dropped three times in a row, so JetStream delivers
// that same batch 3 more times and it is inserted 4 times in all. Every
// usage grouping must equal the ground truth: counts and tokens exactly,
// quantiles within 1%.
func TestClickHouseSink200kSevenDays(t *testing.T) {
	out, db := chTestDB(t)
	n := newCHNATS(t)
	const total, first = 200000, 2000
	calls := genCalls(200, "big-"+testkit.RandomHex(t, 3), total, 7, 5, 50, chBase)
	for i := range calls { // short texts: the usage numbers do not depend on them
		calls[i].InputText, calls[i].OutputText = "What is the capital of France?", "Paris."
	}

	var inserts, dropped, insertedRows atomic.Int64
	// a batch is flushed only when full (the period is far away), so each
	// insert of phase 1 is the whole first batch; AckWait/2 bounds one
	// insert, so leave room for a loaded machine
	cfg := n.sinkConfig(first, time.Minute)
	cfg.AckWait = 6 * time.Second
	cfg.DropAcks = func(rows int) bool {
		insertedRows.Add(int64(rows))
		if inserts.Add(1) <= 3 {
			dropped.Add(int64(rows))
			return true
		}
		return false
	}
	n.publish(t, calls[:first], "")
	_, stop := runSink(t, n, out, cfg)
	waitStored(t, n, out, db, first, 2*time.Minute)
	if inserts.Load() < 4 || dropped.Load() != 3*first || insertedRows.Load() < 4*first {
		t.Fatalf("first batch: %d inserts, %d rows inserted, %d acks dropped; want 4 inserts of the same %d calls, 3 unacked",
			inserts.Load(), insertedRows.Load(), dropped.Load(), first)
	}
	d, rows, err := callsdb.CallCounts(context.Background(), out.Conn(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("same batch redelivered 3 times: %d calls inserted as %d rows (%d stored now, merges may have collapsed some)", d, insertedRows.Load(), rows)
	checkUsage(t, out.Conn(), db, calls[:first], chBase, chBase.Add(7*24*time.Hour))
	stop()

	cfg = n.sinkConfig(50000, time.Second)
	_, stop = runSink(t, n, out, cfg)
	start := time.Now()
	n.publish(t, calls[first:], "")
	waitStored(t, n, out, db, total, 4*time.Minute)
	t.Logf("%d calls published and stored in %s", total-first, time.Since(start).Round(time.Millisecond))
	stop()
	checkUsage(t, out.Conn(), db, calls, chBase, chBase.Add(7*24*time.Hour))
	checkUsage(t, out.Conn(), db, calls, chBase.Add(50*time.Hour+7*time.Minute), chBase.Add(101*time.Hour+59*time.Second))
}

// chWorker is `callpipe worker --stages clickhouse` on the test's database,
// subject and consumer.
type chWorker struct{ *testkit.Proc }

func startCHWorker(t *testing.T, n *chNATS, db string, env ...string) *chWorker {
	t.Helper()
	return &chWorker{testkit.Start(t, append(append(os.Environ(),
		"CALLPIPE_NATS_URL="+harness.NATS(t),
		"CALLPIPE_CLICKHOUSE_ADDR="+harness.ClickHouse(t).Native,
		"CALLPIPE_CLICKHOUSE_DATABASE="+db,
		// the test's calls are older than the default 30 days: kept
		"CALLPIPE_CLICKHOUSE_RETENTION_DAYS_CALLS=0",
		"CALLPIPE_CLICKHOUSE_CONSUMER="+n.consumer,
		"CALLPIPE_CLICKHOUSE_SUBJECT="+n.subject,
		"CALLPIPE_CLICKHOUSE_BATCH_SIZE=2000",
		"CALLPIPE_CLICKHOUSE_FLUSH_INTERVAL=200ms",
		"CALLPIPE_CLICKHOUSE_MAX_IN_FLIGHT=1",
		"CALLPIPE_CLICKHOUSE_ACK_WAIT=10s",
		"CALLPIPE_LOG_LEVEL=info",
	), env...), "worker", "--stages", "clickhouse", "--listen", testkit.FreeAddr(t))}
}

func (w *chWorker) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-w.Done():
		return w.Err()
	case <-time.After(timeout):
		t.Fatalf("worker still running after %s\n%s", timeout, w.Out.String())
		return nil
	}
}

// TestClickHouseWorkerKilledAfterInsert: the worker binary SIGKILLs itself
// right after its first successful INSERT, before acking it
// (CALLPIPE_TEST_CLICKHOUSE_KILL_AFTER_INSERT=1). Those calls are in
// ClickHouse and still unacked in JetStream, so the next worker inserts them
// again; totals must stay exact.
func TestClickHouseWorkerKilledAfterInsert(t *testing.T) {
	out, db := chTestDB(t)
	n := newCHNATS(t)
	const total = 8000
	calls := genCalls(21, "kill-"+testkit.RandomHex(t, 3), total, 2, 5, 50, chBase)
	t0 := time.Now()
	n.publish(t, calls, "")
	t.Logf("published %d calls in %s", total, time.Since(t0).Round(time.Millisecond))

	w := startCHWorker(t, n, db, "CALLPIPE_TEST_CLICKHOUSE_KILL_AFTER_INSERT=1")
	err := w.wait(t, time.Minute)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("worker exit %v, want killed by SIGKILL\n%s", err, w.Out.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before, _, err := callsdb.CallCounts(ctx, out.Conn(), db)
	if err != nil {
		t.Fatal(err)
	}
	c, err := n.js.Consumer(ctx, bus.NormalizedStream, n.consumer)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if before == 0 || ci.AckFloor.Consumer != 0 || ci.NumAckPending+int(ci.NumPending) != total {
		t.Fatalf("after the kill: %d calls stored, consumer ack floor %d, %d unacked + %d pending; want some stored and none acked of %d",
			before, ci.AckFloor.Consumer, ci.NumAckPending, ci.NumPending, total)
	}
	t.Logf("killed after inserting %d calls, none acked: they will be inserted again", before)

	w2 := startCHWorker(t, n, db)
	waitStored(t, n, out, db, total, 2*time.Minute)
	if err := w2.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := w2.wait(t, time.Minute); err != nil {
		t.Fatalf("worker exit after SIGTERM: %v\n%s", err, w2.Out.String())
	}
	d, rows, err := callsdb.CallCounts(ctx, out.Conn(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d calls stored as %d rows", d, rows)
	checkUsage(t, out.Conn(), db, calls, chBase, chBase.Add(2*24*time.Hour))
}

// TestClickHouseSinkOutage60s stops ClickHouse for 60 s while calls keep
// arriving: the sink reports unhealthy, acks nothing it could not store and
// keeps retrying; after the restart everything arrives, nothing is lost or
// counted twice.
func TestClickHouseSinkOutage60s(t *testing.T) {
	out, db := chTestDB(t)
	n := newCHNATS(t)
	const total, chunk, pace = 18000, 200, 800 * time.Millisecond // ~72 s of load
	calls := genCalls(3, "out-"+testkit.RandomHex(t, 3), total, 3, 5, 50, chBase)
	for i := range calls { // short texts: publishing must keep pace under -race
		calls[i].InputText = "What is the capital of France?"
	}
	cfg := n.sinkConfig(5000, 500*time.Millisecond)
	cfg.BackoffMax = 2 * time.Second
	sink, stop := runSink(t, n, out, cfg)

	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for lo := 0; lo < total; lo += chunk {
			if err := n.publishE(calls[lo:lo+chunk], ""); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(pace)
		}
	}()
	testkit.WaitFor(t, time.Minute, "some calls stored", func() (bool, string) {
		d, _, err := callsdb.CallCounts(context.Background(), out.Conn(), db)
		return err == nil && d >= 1000, fmt.Sprint(d, err)
	})
	harness.StopService(t, harness.ServiceClickHouse)
	down := time.Now()
	testkit.WaitFor(t, 30*time.Second, "the sink to report unhealthy", func() (bool, string) {
		return sink.Healthy() != nil, "healthy"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := n.js.Consumer(ctx, bus.NormalizedStream, n.consumer)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	floor := ci.AckFloor.Stream
	time.Sleep(60*time.Second - time.Since(down))
	if ci, err = c.Info(ctx); err != nil {
		t.Fatal(err)
	}
	if ci.AckFloor.Stream > floor+uint64(cfg.Batch.Count)*2 {
		// at most the batches whose insert finished just before the stop
		t.Fatalf("acks advanced from %d to %d while ClickHouse was down", floor, ci.AckFloor.Stream)
	}
	t.Logf("ClickHouse down 60 s: ack floor %d -> %d, %d unacked, %d pending", floor, ci.AckFloor.Stream, ci.NumAckPending, ci.NumPending)
	harness.StartService(t, harness.ServiceClickHouse)
	<-pubDone

	waitStored(t, n, out, db, total, 3*time.Minute)
	testkit.WaitFor(t, 30*time.Second, "the sink to report healthy", func() (bool, string) {
		err := sink.Healthy()
		return err == nil, errString(err)
	})
	stop()
	checkUsage(t, out.Conn(), db, calls, chBase, chBase.Add(3*24*time.Hour))
}

// TestClickHouseSinkReplayRouting: replayed records whose Callpipe-Sinks
// header does not name clickhouse are acked and not stored; replays for
// clickhouse (or for every sink) and live records are stored.
func TestClickHouseSinkReplayRouting(t *testing.T) {
	out, db := chTestDB(t)
	n := newCHNATS(t)
	calls := genCalls(31, "rr-"+testkit.RandomHex(t, 3), 40, 1, 2, 2, chBase)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	publish := func(cs []schema.Call, sinks string) {
		for i := range cs {
			b, err := json.Marshal(&cs[i])
			if err != nil {
				t.Fatal(err)
			}
			m := nats.NewMsg(n.subject)
			m.Data = b
			m.Header.Set(bus.HeaderReplay, "job1")
			if sinks != "" {
				m.Header.Set(bus.HeaderSinks, sinks)
			}
			m.Header.Set(nats.MsgIdHdr, bus.ReplayMsgID("job1", cs[i].ID))
			if _, err := n.js.PublishMsg(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(calls[:10], "langfuse")              // not for this sink
	publish(calls[10:20], "langfuse, archive")   // not for this sink
	publish(calls[20:30], "langfuse,clickhouse") // for it
	publish(calls[30:35], "")                    // replay to every sink
	n.publish(t, calls[35:], "")                 // live
	runSink(t, n, out, n.sinkConfig(100, 100*time.Millisecond))
	waitStored(t, n, out, db, 20, time.Minute) // waits for nothing pending or unacked as well

	rows, err := out.Conn().Query(ctx, "SELECT DISTINCT id FROM "+db+".calls ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		got = append(got, id)
	}
	var want []string
	for _, c := range calls[20:] {
		want = append(want, c.ID)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("stored %v\nwant %v", got, want)
	}
}
