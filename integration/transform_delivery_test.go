package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/internal/nettest"
	"github.com/callpipe/callpipe/transform"
)

// A transient failure to store the normalized record (here: CALLPIPE_NORMALIZED
// refuses every message as too large) makes the worker nak the raw event
// with a delay that doubles per delivery, not redeliver it at once nor wait
// for AckWait; when the stream accepts records again the call is normalized
// once.
func TestTransformPublishFailureBacksOff(t *testing.T) {
	e := newTrEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := e.js.Stream(ctx, bus.NormalizedStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	orig := info.Config
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if _, err := e.js.UpdateStream(context.Background(), orig); err != nil {
				t.Errorf("restore %s: %v", bus.NormalizedStream, err)
			}
		}
	}
	t.Cleanup(restore)
	w := e.startWorker("CALLPIPE_TRANSFORM_RETRY_DELAY=300ms", "CALLPIPE_TRANSFORM_ACK_WAIT=30s",
		"CALLPIPE_TRANSFORM_MAX_DELIVER=8")
	// after the worker's start-up, which provisions the stream as configured
	broken := orig
	broken.MaxMsgSize = 64
	if _, err := e.js.UpdateStream(ctx, broken); err != nil {
		t.Fatal(err)
	}
	id := e.run + "-000001"
	e.publish([]string{id}, [][]byte{trChatEvent(id, "", "")})

	// The time of each failed attempt, from the worker's own log (a poll of
	// its metrics would add the poller's delays on a busy machine).
	var at []time.Time
	testkit.WaitFor(t, time.Minute, "4 failed attempts", func() (bool, string) {
		at = at[:0]
		for _, line := range strings.Split(w.Out.String(), "\n") {
			var rec struct {
				Time time.Time `json:"time"`
				Msg  string    `json:"msg"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "publish failed; retrying later" {
				at = append(at, rec.Time)
			}
		}
		return len(at) >= 4, fmt.Sprintf("%d failed attempts logged", len(at))
	})
	gaps := []time.Duration{at[1].Sub(at[0]), at[2].Sub(at[1]), at[3].Sub(at[2])}
	t.Logf("gaps between failed attempts: %v (naks of 300ms, 600ms, 1.2s)", gaps)
	for i, want := range []time.Duration{300 * time.Millisecond, 600 * time.Millisecond, 1200 * time.Millisecond} {
		// JetStream's redelivery timer and the worker's scheduling blur the gaps a little
		if gaps[i] < want*8/10 || gaps[i] > want*3+time.Second {
			t.Errorf("gap %d = %s, want about %s", i+1, gaps[i], want)
		}
	}
	if gaps[2] < gaps[0]*3 {
		t.Errorf("backoff does not grow: gaps %v", gaps)
	}

	restore()
	var recs trRecords
	testkit.WaitFor(t, time.Minute, "the call normalized after the stream recovered", func() (bool, string) {
		e.readNormalized(&recs)
		return len(recs.calls) == 1, fmt.Sprint(len(recs.calls))
	})
	testkit.WaitFor(t, 30*time.Second, "the raw event acknowledged", func() (bool, string) {
		info := e.consumerInfo(e.consumer)
		return info.NumAckPending == 0 && info.NumPending == 0, fmt.Sprintf("%+v", info)
	})
	if len(recs.dups) > 0 || len(e.readDLQ()) > 0 {
		t.Fatalf("duplicates %v or dead letters after a transient failure", recs.dups)
	}
	w.stop(t)
}

// Replay contract (bus/route.go): a replayed raw event's record carries
// Callpipe-Replay and Callpipe-Sinks and has Nats-Msg-Id
// bus.ReplayMsgID(job, call id), so the live record of the same call in
// the duplicate window does not swallow it, while a replay re-sent after a
// crash is stored once.
func TestTransformReplayHeaders(t *testing.T) {
	e := newTrEnv(t)
	id := e.run + "-000001"
	ev := trChatEvent(id, "", "")
	live := e.startWorker()
	e.publish([]string{id}, [][]byte{ev})

	type rec struct {
		msgID, replay, sinks string
	}
	read := func() []rec {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cons, err := e.js.OrderedConsumer(ctx, bus.NormalizedStream, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: e.normStart})
		if err != nil {
			t.Fatal(err)
		}
		var out []rec
		last := e.lastSeq(bus.NormalizedStream)
		for seq := e.normStart; seq <= last; {
			batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for m := range batch.Messages() {
				n++
				md, _ := m.Metadata()
				seq = md.Sequence.Stream + 1
				items, err := bus.Items(m.Headers(), m.Data())
				if err != nil {
					t.Fatalf("record %d: %v", md.Sequence.Stream, err)
				}
				for _, it := range items {
					var c struct {
						ID string `json:"id"`
					}
					if json.Unmarshal(it, &c) != nil || c.ID != id {
						continue
					}
					h := m.Headers()
					out = append(out, rec{h.Get(jetstream.MsgIDHeader), h.Get(bus.HeaderReplay), h.Get(bus.HeaderSinks)})
				}
			}
			if n == 0 {
				break
			}
		}
		return out
	}
	var recs []rec
	testkit.WaitFor(t, time.Minute, "the live record", func() (bool, string) {
		recs = read()
		return len(recs) == 1, fmt.Sprint(recs)
	})

	job := e.run
	replaySubject := bus.ReplaySubjectPrefix + "." + job
	replay := e.startWorker("CALLPIPE_TRANSFORM_SUBJECT="+replaySubject,
		"CALLPIPE_TRANSFORM_CONSUMER="+e.consumer+"-replay")
	for i := range 2 { // the second time as a crashed replay job would re-send it
		m := &nats.Msg{Subject: replaySubject, Data: ev, Header: nats.Header{}}
		m.Header.Set(bus.HeaderReplay, job)
		m.Header.Set(bus.HeaderSinks, "clickhouse")
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%s#%d", bus.ReplayMsgID(job, id), i))
		if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}

	testkit.WaitFor(t, time.Minute, "the live and the replayed record", func() (bool, string) {
		recs = read()
		return len(recs) >= 2, fmt.Sprint(recs)
	})
	// both replay deliveries are settled before the count is final
	testkit.WaitFor(t, 30*time.Second, "the replay consumer done", func() (bool, string) {
		info := e.consumerInfo(e.consumer + "-replay")
		return info.NumAckPending == 0 && info.NumPending == 0 && info.AckFloor.Stream > 0, fmt.Sprintf("%+v", info)
	})
	recs = read()
	want := []rec{{id, "", ""}, {bus.ReplayMsgID(job, id), job, "clickhouse"}}
	if fmt.Sprint(recs) != fmt.Sprint(want) {
		t.Fatalf("records of %s:\n got %v\nwant %v", id, recs, want)
	}
	live.stop(t)
	replay.stop(t)
}

// consumerInfo returns the state of durable consumer name on CALLPIPE_CALLS.
func (e *trEnv) consumerInfo(name string) *jetstream.ConsumerInfo {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.js.Consumer(ctx, bus.CallsStream, name)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info
}

// No silent loss at max deliveries: a call whose record can never be stored
// reaches the DLQ with its reason although JetStream sends no
// max-deliveries advisory (the consumer has no MaxDeliver: the worker counts
// deliveries itself) and although the DLQ refused its first dead letters
// (the call stays pending and its dead letter is written on a later
// delivery).
func TestTransformMaxDeliveriesWithoutAdvisory(t *testing.T) {
	e := newTrEnv(t)
	var advisories atomic.Int64
	sub, err := e.nc.Subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>", func(*nats.Msg) { advisories.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	w := e.startWorker("CALLPIPE_TRANSFORM_RETRY_DELAY=100ms", "CALLPIPE_TRANSFORM_MAX_DELIVER=3")
	var cons *jetstream.ConsumerInfo
	testkit.WaitFor(t, 30*time.Second, "the worker's consumer", func() (bool, string) {
		c, err := e.js.Consumer(context.Background(), bus.CallsStream, e.consumer)
		if err == nil {
			cons, err = c.Info(context.Background())
		}
		return err == nil, fmt.Sprint(err)
	})
	if got := cons.Config.MaxDeliver; got != bus.NoMaxDeliver {
		t.Fatalf("consumer MaxDeliver = %d: JetStream would give up on calls and only send an advisory", got)
	}
	// After the worker's start-up, which provisions the streams as
	// configured: CALLPIPE_NORMALIZED takes no record, CALLPIPE_DLQ no dead letter.
	restoreNorm := shrinkStream(t, e.js, bus.NormalizedStream)
	defer restoreNorm()
	restoreDLQ := shrinkStream(t, e.js, bus.DeadLetterStream)
	defer restoreDLQ()

	id := e.run + "-000001"
	ev := trChatEvent(id, "", "")
	e.publish([]string{id}, [][]byte{ev})
	const retries = `callpipe_transform_events_total{result="retry"}`
	testkit.WaitFor(t, time.Minute, "deliveries past max_deliver=3 with the DLQ refusing", func() (bool, string) {
		n := w.metric(t, retries)
		return n >= 5, fmt.Sprint(n)
	})
	if info := e.consumerInfo(e.consumer); info.NumAckPending+int(info.NumPending) != 1 {
		t.Fatalf("the call is no longer pending on the consumer before its dead letter is stored: %+v", info)
	}
	if dls := e.readDLQ(); len(dls) > 0 {
		t.Fatalf("dead letter stored while the DLQ refused it: %+v", dls)
	}

	restoreDLQ()
	var dls []trDeadLetter
	testkit.WaitFor(t, time.Minute, "the call in the DLQ", func() (bool, string) {
		dls = e.readDLQ()
		return len(dls) > 0, ""
	})
	testkit.WaitFor(t, 30*time.Second, "the raw event settled", func() (bool, string) {
		info := e.consumerInfo(e.consumer)
		return info.NumAckPending == 0 && info.NumPending == 0, fmt.Sprintf("%+v", info)
	})
	dls = e.readDLQ()
	if len(dls) != 1 || dls[0].data != string(ev) || dls[0].stage != bus.StageNormalize ||
		!strings.Contains(dls[0].errText, "max deliveries (3) exceeded") {
		t.Fatalf("dead letters %+v, want the event once, stage normalize, reason max deliveries (3) exceeded", dls)
	}
	t.Logf("dead letter: %q", dls[0].errText)
	restoreNorm()
	var recs trRecords
	e.readNormalized(&recs)
	if len(recs.calls) != 0 {
		t.Fatalf("a dead-lettered call was also normalized: %v", recs.calls)
	}
	if n := advisories.Load(); n != 0 {
		t.Errorf("%d max-deliveries advisories: the consumer should have no MaxDeliver", n)
	}
	w.stop(t)
}

// shrinkStream makes stream refuse every message over 64 bytes until the
// returned function (also run at cleanup) restores its configuration.
func shrinkStream(t *testing.T, js jetstream.JetStream, name string) func() {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	orig := info.Config
	broken := orig
	broken.MaxMsgSize = 64
	if _, err := js.UpdateStream(ctx, broken); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	restore := func() {
		once.Do(func() {
			if _, err := js.UpdateStream(context.Background(), orig); err != nil {
				t.Errorf("restore %s: %v", name, err)
			}
		})
	}
	t.Cleanup(restore)
	return restore
}

// A consumer created by an earlier version, with a JetStream MaxDeliver, is
// updated to none when a worker starts: after an upgrade no call depends on
// a max-deliveries advisory.
func TestTransformConsumerUpgradeDropsMaxDeliver(t *testing.T) {
	e := newTrEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	old := transform.ConsumerConfig(transform.WorkerOptions{Consumer: e.consumer, FilterSubject: e.subject})
	old.MaxDeliver = 10
	if _, err := e.js.CreateConsumer(ctx, bus.CallsStream, old); err != nil {
		t.Fatal(err)
	}
	w := e.startWorker()
	testkit.WaitFor(t, 30*time.Second, "the consumer without MaxDeliver", func() (bool, string) {
		info := e.consumerInfo(e.consumer)
		return info.Config.MaxDeliver == bus.NoMaxDeliver, fmt.Sprint(info.Config.MaxDeliver)
	})
	w.stop(t)
}

// TestNormalizeStageStopsWhileMakingItsConsumer: a stop that lands while
// the stage is creating its durable consumer (a SIGTERM right after the
// process started, the server slow to answer) is a clean stop: Run returns
// nil, so the process exits 0.
func TestNormalizeStageStopsWhileMakingItsConsumer(t *testing.T) {
	e := newTrEnv(t)
	var slow atomic.Bool
	nc, err := nats.Connect(e.natsURL, nats.SetCustomDialer(nettest.SlowDialer{Slow: &slow, Delay: 500 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var running atomic.Bool
	s := &transform.Stage{
		Normalizer: &transform.Normalizer{},
		Worker:     transform.WorkerOptions{Consumer: e.consumer, FilterSubject: e.subject + ".>"},
		Registerer: prometheus.NewRegistry(),
		Log:        slog.New(slog.DiscardHandler),
		Running:    func(func() error) { running.Store(true) },
	}
	// from here the server's answers come late: the consumer request is
	// in flight when the stop comes
	slow.Store(true)
	stop := time.AfterFunc(100*time.Millisecond, cancel)
	err = s.Run(ctx, nc)
	slow.Store(false)
	if err != nil {
		t.Fatalf("stopped while making the consumer: Run returned %v, want a clean stop", err)
	}
	if stop.Stop() {
		t.Fatal("Run returned before the stop")
	}
	if running.Load() {
		t.Fatal("the stage said it was running though its consumer was never made")
	}
}
