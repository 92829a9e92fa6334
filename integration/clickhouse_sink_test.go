package integration

import (
	"context"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/callsdb"
)

var chBase = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// TestClickHouseSinkExactUnderRedelivery: N calls through NATS; then a random
// subset published again (a replay after the duplicate window: new msg ids,
// same call ids); one batch inserted 3 more times directly (an insert whose
// acks were lost, redelivered 3 times); then the consumer is deleted and every
// message replayed from the stream start. Calls and every usage number must
// still equal the ground truth.
func TestClickHouseSinkExactUnderRedelivery(t *testing.T) {
	out, db := chTestDB(t)
	n := newCHNATS(t)
	const total = 20000
	calls := genCalls(1, "red-"+testkit.RandomHex(t, 3), total, 7, 5, 50, chBase)
	for i := range calls[:total/2] { // half with long texts, half short: publishing dominates the run time
		calls[i].InputText = "What is the capital of France?"
	}
	from, to := chBase, chBase.Add(7*24*time.Hour)

	n.publish(t, calls, "")
	_, stop := runSink(t, n, out, n.sinkConfig(10000, time.Second))
	waitStored(t, n, out, db, total, 2*time.Minute)
	t.Logf("first delivery stored")

	r := mrand.New(mrand.NewPCG(7, 7))
	var subset []schema.Call
	for i := range calls {
		if r.IntN(5) == 0 {
			subset = append(subset, calls[i])
		}
	}
	n.publish(t, subset, "replay1-")
	waitStored(t, n, out, db, total, 2*time.Minute)
	stop()
	t.Logf("replayed subset of %d stored", len(subset))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	batch := calls[100:1100]
	for i := 0; i < 3; i++ {
		if err := out.WriteBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}

	// replay everything: a new consumer from the start of the stream
	if err := n.js.DeleteConsumer(ctx, bus.NormalizedStream, n.consumer); err != nil {
		t.Fatal(err)
	}
	_, stop2 := runSink(t, n, out, n.sinkConfig(10000, time.Second))
	waitStored(t, n, out, db, total, 2*time.Minute)
	stop2()
	t.Logf("full replay stored")

	d, stored, err := callsdb.CallCounts(ctx, out.Conn(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d calls stored as %d rows (%d redelivered copies)", d, stored, stored-d)
	checkUsage(t, out.Conn(), db, calls, from, to)
	// a sub-range that cuts days and hours
	checkUsage(t, out.Conn(), db, calls, from.Add(30*time.Hour+17*time.Minute), from.Add(75*time.Hour+3*time.Second))
}

// TestClickHouseSinkDeadLetter: an undecodable message goes to CALLPIPE_DLQ
// with the reason and is terminated; the good ones are stored.
func TestClickHouseSinkDeadLetter(t *testing.T) {
	out, db := chTestDB(t)
	n := newCHNATS(t)
	calls := genCalls(2, "dlq-"+testkit.RandomHex(t, 3), 10, 1, 2, 2, chBase)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dlq, err := n.js.Stream(ctx, bus.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := dlq.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	poisonID := "poison-" + testkit.RandomHex(t, 4)
	bad := nats.NewMsg(n.subject)
	bad.Data = []byte(`{"id": "` + poisonID + `", "start_time": 12}`)
	bad.Header.Set(nats.MsgIdHdr, poisonID)
	if _, err := n.js.PublishMsg(ctx, bad); err != nil {
		t.Fatal(err)
	}
	n.publish(t, calls, "")
	runSink(t, n, out, n.sinkConfig(100, 100*time.Millisecond))
	waitStored(t, n, out, db, uint64(len(calls)), time.Minute)

	var found bool
	testkit.WaitFor(t, 30*time.Second, "the dead letter", func() (bool, string) {
		cons, err := dlq.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{bus.DeadLetterSubjectPrefix + "." + bus.StageClickHouse},
			DeliverPolicy:  jetstream.DeliverByStartSequencePolicy, OptStartSeq: info.State.LastSeq + 1,
		})
		if err != nil {
			return false, err.Error()
		}
		batch, err := cons.FetchNoWait(1000)
		if err != nil {
			return false, err.Error()
		}
		for m := range batch.Messages() {
			if string(m.Data()) == string(bad.Data) {
				found = m.Headers().Get(bus.HeaderError) != "" && m.Headers().Get(bus.HeaderStage) == bus.StageClickHouse
			}
		}
		return found, "not yet"
	})
	// and the poison message is no longer pending
	testkit.WaitFor(t, 30*time.Second, "nothing pending", func() (bool, string) {
		c, err := n.js.Consumer(ctx, bus.NormalizedStream, n.consumer)
		if err != nil {
			return false, err.Error()
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return ci.NumAckPending == 0 && ci.NumPending == 0, "pending"
	})
}

// TestClickHouseSinkGracefulShutdown: a stop with a half-full batch (period far
// away) flushes it and acks it before Run returns.
func TestClickHouseSinkGracefulShutdown(t *testing.T) {
	out, db := chTestDB(t)
	n := newCHNATS(t)
	calls := genCalls(4, "gs-"+testkit.RandomHex(t, 3), 777, 1, 3, 3, chBase)
	n.publish(t, calls, "")
	s, stop := runSink(t, n, out, n.sinkConfig(100000, time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// JetStream counts a message unacked once it sends it, before it reaches
	// the sink; the sink takes its messages in order, so holding the last one
	// sent means it holds them all.
	testkit.WaitFor(t, 30*time.Second, "the sink to hold every message", func() (bool, string) {
		c, err := n.js.Consumer(ctx, bus.NormalizedStream, n.consumer)
		if err != nil {
			return false, err.Error()
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return ci.NumPending == 0 && ci.NumAckPending == len(calls) && s.Holds(ci.Delivered.Stream), "delivering"
	})
	if d, _, err := callsdb.CallCounts(ctx, out.Conn(), db); err != nil || d != 0 {
		t.Fatalf("before stop: %d calls stored (err %v), want 0 (batch not due)", d, err)
	}
	stop()
	d, r, err := callsdb.CallCounts(ctx, out.Conn(), db)
	if err != nil || d != uint64(len(calls)) || r != uint64(len(calls)) {
		t.Fatalf("after stop: %d calls / %d rows (err %v), want %d", d, r, err, len(calls))
	}
	c, err := n.js.Consumer(ctx, bus.NormalizedStream, n.consumer)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ci.NumAckPending != 0 {
		t.Fatalf("after stop: %d messages not acked", ci.NumAckPending)
	}
	checkUsage(t, out.Conn(), db, calls, chBase, chBase.Add(24*time.Hour))
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// TestClickHouseOutputOneInsertOnePart: a batch far larger than the driver's
// block, in rows (20,011 short calls) or in bytes (600 calls of 8 KB of
// text), is sent as several blocks of one INSERT and stored whole and as one
// part of calls and one of calls_by_user, as one block would be: the server
// squashes the blocks of an INSERT. Unsquashed, each block would be a part of
// its own (or, merged already, one part above level 0).
func TestClickHouseOutputOneInsertOnePart(t *testing.T) {
	long := benchCalls(600, "ob")
	for i := range long {
		long[i].InputText = strings.Repeat("What is the capital of France? ", 270) // 8 KB
	}
	for name, calls := range map[string][]schema.Call{"rows": benchCalls(20_011, "or"), "bytes": long} {
		t.Run(name, func(t *testing.T) {
			out, db := chTestDB(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := out.WriteBatch(ctx, calls); err != nil {
				t.Fatal(err)
			}
			for _, table := range []string{"calls", "calls_by_user"} {
				var rows, ids uint64
				if err := out.Conn().QueryRow(ctx, "SELECT toUInt64(count()), toUInt64(uniqExact(id)) FROM "+db+"."+table).Scan(&rows, &ids); err != nil {
					t.Fatalf("%s: %v", table, err)
				}
				if rows != uint64(len(calls)) || ids != uint64(len(calls)) {
					t.Errorf("%s: %d rows of %d ids, want %d of each", table, rows, ids, len(calls))
				}
				var parts, maxLevel uint64
				if err := out.Conn().QueryRow(ctx, "SELECT toUInt64(count()), toUInt64(max(level)) FROM system.parts WHERE database = ? AND table = ? AND active",
					db, table).Scan(&parts, &maxLevel); err != nil {
					t.Fatalf("%s parts: %v", table, err)
				}
				if parts != 1 || maxLevel != 0 {
					t.Errorf("%s: %d active parts, highest level %d; want one part as inserted (level 0)", table, parts, maxLevel)
				}
			}
		})
	}
}
