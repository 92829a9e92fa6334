package sinks

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/nettest"
	"github.com/callpipe/callpipe/internal/retry"
)

// These tests run the runner against the NATS JetStream server of the local
// services (deploy/local/services.sh; CALLPIPE_NATS_URL), each on a stream
// of its own; dead letters go to the stack's CALLPIPE_DLQ.

type rtEnv struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	stream  string
	subject string
}

func newRTEnv(t *testing.T) *rtEnv {
	t.Helper()
	nc, js := nettest.JetStream(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	e := &rtEnv{nc: nc, js: js, stream: "RUNNERTEST_" + id, subject: "runnertest." + id}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: e.stream, Subjects: []string{e.subject + ".>"}, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, js, bus.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, e.stream)
	})
	return e
}

// publish sends bodies, each a message; a body holding '\n' is a batch of lines.
func (e *rtEnv) publish(t *testing.T, bodies ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, b := range bodies {
		m := nats.NewMsg(e.subject + ".x")
		m.Data = []byte(b)
		if n := strings.Count(b, "\n"); n > 0 {
			m.Header.Set(bus.HeaderCalls, strconv.Itoa(n+1))
		}
		if _, err := e.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *rtEnv) consumer(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.js.Consumer(ctx, e.stream, "rt")
	if err != nil {
		t.Fatal(err)
	}
	ci, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ci
}

func (e *rtEnv) config(b BatchPolicy) Config {
	return Config{Stage: bus.StageClickHouse, Stream: e.stream, Consumer: "rt", FilterSubject: e.subject + ".>",
		Batch: b, AckWait: 30 * time.Second, BackoffMin: 50 * time.Millisecond, BackoffMax: 400 * time.Millisecond,
		DrainTimeout: 10 * time.Second, KeepMessages: true}
}

// fakeOut records the batches it is given. Values are the message bodies
// (lines); "poison" does not decode.
type fakeOut struct {
	mu      sync.Mutex
	batches [][]string
	at      []time.Time
	fail    func(n int) error // n: the write's number, from 0
	delay   time.Duration
	gate    chan struct{} // when set, writes wait until it is closed
	reject  string        // a value rejected by WriteBatch
	writes  int
	started chan struct{}

	connect  func(n int) error // n: the attempt's number, from 0; nil: connected at once
	connects int
	closes   int
	onClose  func() // called in Close
}

func (o *fakeOut) Connect(context.Context) error {
	o.mu.Lock()
	n := o.connects
	o.connects++
	o.mu.Unlock()
	if o.connect != nil {
		return o.connect(n)
	}
	return nil
}

func (o *fakeOut) Close(context.Context) error {
	o.mu.Lock()
	o.closes++
	o.mu.Unlock()
	if o.onClose != nil {
		o.onClose()
	}
	return nil
}

func (o *fakeOut) Decode(_ jetstream.Msg, _ *jetstream.MsgMetadata, data []byte) (string, error) {
	if string(data) == "poison" {
		return "", errors.New("poison value")
	}
	return string(data), nil
}

func (o *fakeOut) WriteBatch(ctx context.Context, b *Batch[string]) error {
	o.mu.Lock()
	n := o.writes
	o.writes++
	o.at = append(o.at, time.Now())
	o.mu.Unlock()
	if o.started != nil {
		select {
		case o.started <- struct{}{}:
		default:
		}
	}
	if o.delay > 0 {
		time.Sleep(o.delay)
	}
	if o.gate != nil {
		<-o.gate
	}
	if o.fail != nil {
		if err := o.fail(n); err != nil {
			return err
		}
	}
	var vals []string
	for i, it := range b.Items {
		if it.Value == o.reject && o.reject != "" {
			b.Reject(i, "rejected by the test")
			continue
		}
		vals = append(vals, it.Value)
	}
	o.mu.Lock()
	o.batches = append(o.batches, vals)
	o.mu.Unlock()
	return nil
}

func (o *fakeOut) written() (batches [][]string, all []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, b := range o.batches {
		batches = append(batches, slices.Clone(b))
		all = append(all, b...)
	}
	return batches, all
}

// start runs r until the returned stop is called; stop waits for Run.
func start[T any](t *testing.T, r *Runner[T]) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return")
		}
	}
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool, last ...*string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			if len(last) > 0 {
				what += " (last: " + *last[0] + ")"
			}
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func bodies(prefix string, n, size int) []string {
	out := make([]string, n)
	for i := range out {
		s := fmt.Sprintf("%s-%04d", prefix, i)
		out[i] = s + strings.Repeat(".", max(0, size-len(s)))
	}
	return out
}

func newRunner(t *testing.T, e *rtEnv, out *fakeOut, cfg Config) *Runner[string] {
	t.Helper()
	r, err := New[string](e.nc, out, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Consumer(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRunnerBatchesByCount: full batches of Count values are written while
// the period is far away; the rest is written by the drain, and everything
// is acked.
func TestRunnerBatchesByCount(t *testing.T) {
	e := newRTEnv(t)
	e.publish(t, bodies("c", 25, 10)...)
	out := &fakeOut{}
	stop := start(t, newRunner(t, e, out, e.config(BatchPolicy{Count: 10, Period: time.Hour})))
	waitFor(t, 10*time.Second, "two full batches", func() bool { b, _ := out.written(); return len(b) == 2 })
	time.Sleep(200 * time.Millisecond)
	if b, _ := out.written(); len(b) != 2 || len(b[0]) != 10 || len(b[1]) != 10 {
		t.Fatalf("batches before the drain: %v, want two of 10", b)
	}
	stop()
	b, all := out.written()
	if len(b) != 3 || len(b[2]) != 5 {
		t.Fatalf("batches after the drain: %d (%v), want 10, 10, 5", len(b), b)
	}
	if !slices.Equal(all, bodies("c", 25, 10)) {
		t.Fatalf("written %v", all)
	}
	if ci := e.consumer(t); ci.NumAckPending != 0 || ci.NumPending != 0 || ci.AckFloor.Stream != 25 {
		t.Fatalf("consumer: %d ack pending, %d pending, ack floor %d; want all 25 acked", ci.NumAckPending, ci.NumPending, ci.AckFloor.Stream)
	}
}

// TestRunnerBatchesByBytes: a batch is cut when its messages reach Bytes.
func TestRunnerBatchesByBytes(t *testing.T) {
	e := newRTEnv(t)
	e.publish(t, bodies("b", 12, 300)...)
	out := &fakeOut{}
	start(t, newRunner(t, e, out, e.config(BatchPolicy{Count: 1000, Bytes: 1000, Period: time.Hour})))
	waitFor(t, 10*time.Second, "three batches", func() bool { b, _ := out.written(); return len(b) == 3 })
	if b, _ := out.written(); len(b[0]) != 4 || len(b[1]) != 4 || len(b[2]) != 4 {
		t.Fatalf("batch sizes %d, %d, %d; want 4 (4 × 300 bytes ≥ 1000)", len(b[0]), len(b[1]), len(b[2]))
	}
}

// TestRunnerBatchesByAge: a batch far from full is written once its oldest
// value is Period old, and acked.
func TestRunnerBatchesByAge(t *testing.T) {
	e := newRTEnv(t)
	out := &fakeOut{}
	start(t, newRunner(t, e, out, e.config(BatchPolicy{Count: 1000, Period: 300 * time.Millisecond})))
	t0 := time.Now()
	e.publish(t, "a1", "a2", "a3")
	waitFor(t, 10*time.Second, "the batch by age", func() bool { b, _ := out.written(); return len(b) == 1 })
	if took := time.Since(t0); took < 250*time.Millisecond {
		t.Fatalf("batch written after %s, before its period", took)
	}
	if b, _ := out.written(); len(b[0]) != 3 {
		t.Fatalf("batch %v, want the 3 values", b[0])
	}
	waitFor(t, 5*time.Second, "acks", func() bool { return e.consumer(t).AckFloor.Stream == 3 })
}

// TestRunnerBatchesWhenIdle: with Idle set, a batch of IdleCount values or
// more is written once no message has come for Idle, far before its period;
// a smaller one waits for its period (here: the drain).
func TestRunnerBatchesWhenIdle(t *testing.T) {
	e := newRTEnv(t)
	out := &fakeOut{}
	stop := start(t, newRunner(t, e, out, e.config(BatchPolicy{Count: 1000, Period: time.Hour, Idle: 250 * time.Millisecond, IdleCount: 5})))
	e.publish(t, bodies("i", 7, 10)...)
	waitFor(t, 10*time.Second, "the batch written once the stream went quiet", func() bool { b, _ := out.written(); return len(b) == 1 })
	if b, _ := out.written(); len(b[0]) != 7 {
		t.Fatalf("batch %v, want the 7 values", b[0])
	}
	waitFor(t, 5*time.Second, "acks", func() bool { return e.consumer(t).AckFloor.Stream == 7 })

	e.publish(t, "small-1", "small-2", "small-3")
	waitFor(t, 5*time.Second, "the small batch taken", func() bool { return e.consumer(t).NumAckPending == 3 })
	time.Sleep(time.Second) // four times Idle
	if b, _ := out.written(); len(b) != 1 {
		t.Fatalf("%d batches: one under IdleCount was written when the stream went quiet", len(b))
	}
	stop()
	if b, _ := out.written(); len(b) != 2 || len(b[1]) != 3 {
		t.Fatalf("batches after the drain: %v, want the 3 small values last", b)
	}
}

// TestRunnerNakBackoff: failed writes nak the batch with a growing delay,
// the runner is unhealthy meanwhile, and the values are written once the
// output works again.
func TestRunnerNakBackoff(t *testing.T) {
	e := newRTEnv(t)
	e.publish(t, "n1", "n2")
	out := &fakeOut{fail: func(n int) error {
		if n < 4 {
			return errors.New("destination down")
		}
		return nil
	}}
	r := newRunner(t, e, out, e.config(BatchPolicy{Count: 2, Period: time.Hour}))
	start(t, r)
	waitFor(t, 10*time.Second, "a failed write", func() bool { return r.Healthy() != nil })
	waitFor(t, 20*time.Second, "the write after the outage", func() bool { _, all := out.written(); return len(all) == 2 })
	if r.Healthy() != nil {
		t.Fatalf("unhealthy after a good write: %v", r.Healthy())
	}
	out.mu.Lock()
	at := slices.Clone(out.at)
	out.mu.Unlock()
	// 50, 100, 200, 400 ms between the attempts (each the nak delay and the
	// flusher's pause)
	var gaps []time.Duration
	for i := 1; i < len(at); i++ {
		gaps = append(gaps, at[i].Sub(at[i-1]))
	}
	if len(gaps) != 4 || gaps[0] < 40*time.Millisecond || gaps[3] < 350*time.Millisecond || gaps[3] < 2*gaps[0] {
		t.Fatalf("gaps between attempts %v: want a backoff growing from 50ms to 400ms", gaps)
	}
	waitFor(t, 5*time.Second, "acks", func() bool { return e.consumer(t).AckFloor.Stream == 2 })
	if ci := e.consumer(t); ci.NumRedelivered != 0 || ci.NumAckPending != 0 {
		t.Fatalf("consumer: %d redelivered pending, %d ack pending", ci.NumRedelivered, ci.NumAckPending)
	}
}

// deadLetters are the dead letters in CALLPIPE_DLQ of the env's stream.
func (e *rtEnv) deadLetters(t *testing.T) []*nats.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.js.OrderedConsumer(ctx, bus.DeadLetterStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.DeadLetterSubjectPrefix + "." + bus.StageClickHouse}})
	if err != nil {
		t.Fatal(err)
	}
	var out []*nats.Msg
	for {
		b, err := c.FetchNoWait(500)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range b.Messages() {
			n++
			if m.Headers().Get(bus.HeaderSourceStream) == e.stream {
				out = append(out, &nats.Msg{Subject: m.Subject(), Data: m.Data(), Header: m.Headers()})
			}
		}
		if n == 0 {
			return out
		}
	}
}

// TestRunnerDeadLetters: a poison message goes to CALLPIPE_DLQ whole and is
// terminated; a poison line of a batched message goes there alone and the
// rest of the message is written; a value the output rejects goes there
// too; every message is settled and none comes back.
func TestRunnerDeadLetters(t *testing.T) {
	e := newRTEnv(t)
	e.publish(t, "good1", "poison", "good2\npoison\ngood3", "rejectme")
	out := &fakeOut{reject: "rejectme"}
	start(t, newRunner(t, e, out, e.config(BatchPolicy{Count: 3, Period: 100 * time.Millisecond})))
	waitFor(t, 10*time.Second, "all settled", func() bool {
		ci := e.consumer(t)
		return ci.AckFloor.Stream == 4 && ci.NumAckPending == 0
	})
	_, all := out.written()
	if !slices.Equal(all, []string{"good1", "good2", "good3"}) {
		t.Fatalf("written %v", all)
	}
	var got []string
	waitFor(t, 5*time.Second, "3 dead letters", func() bool {
		got = got[:0]
		for _, m := range e.deadLetters(t) {
			got = append(got, fmt.Sprintf("%s|%s|%s", m.Data, m.Header.Get(bus.HeaderMsgID), m.Header.Get(bus.HeaderSourceSeq)))
		}
		return len(got) >= 3
	})
	slices.Sort(got)
	want := []string{
		"poison|clickhouse:" + e.stream + ":2|2",
		"poison|clickhouse:" + e.stream + ":3:1|3",
		"rejectme|clickhouse:" + e.stream + ":4|4",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("dead letters\n got %q\nwant %q", got, want)
	}
	time.Sleep(300 * time.Millisecond)
	if ci := e.consumer(t); ci.NumRedelivered != 0 || ci.NumPending != 0 {
		t.Fatalf("a dead-lettered message comes back: %+v", ci)
	}
}

// TestRunnerDrainLosesNothing: on stop the runner finishes the write in
// flight and writes the batch it was filling (both acked), and hands back
// what it had read ahead, so that the next runner gets every other message
// at once (not after the ack wait) and none twice.
func TestRunnerDrainLosesNothing(t *testing.T) {
	e := newRTEnv(t)
	const n = 300
	e.publish(t, bodies("d", n, 20)...)
	slow := &fakeOut{gate: make(chan struct{})}
	cfg := e.config(BatchPolicy{Count: 10, Period: time.Hour, MaxInFlight: 1})
	cfg.AckWait, cfg.HandBack = time.Minute, true
	r := newRunner(t, e, slow, cfg)
	stop := start(t, r)
	// a write in flight (1-10), a full batch waiting for its slot (11-20),
	// more read ahead
	waitFor(t, 10*time.Second, "two batches taken", func() bool { return r.Holds(20) })
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	time.Sleep(200 * time.Millisecond) // the stop is under way: then the write ends
	close(slow.gate)
	<-stopped
	_, first := slow.written()
	if len(first) != 20 {
		t.Fatalf("the stopped runner wrote %d of %d, want 20: the batch in flight and the one it was filling", len(first), n)
	}
	last := ""
	// the written acked (what is not was nak'ed: JetStream counts it ack
	// pending until it goes out again; the next runner getting it within
	// seconds, not after the ack wait of a minute, shows the hand-back)
	waitFor(t, 5*time.Second, fmt.Sprintf("the %d written acked", len(first)), func() bool {
		ci := e.consumer(t)
		last = fmt.Sprintf("ack floor %d", ci.AckFloor.Stream)
		return ci.AckFloor.Stream == uint64(len(first))
	}, &last)
	fast := &fakeOut{}
	t0 := time.Now()
	start(t, newRunner(t, e, fast, e.config(BatchPolicy{Count: 50, Period: 50 * time.Millisecond})))
	waitFor(t, 15*time.Second, "the rest", func() bool { _, all := fast.written(); return len(first)+len(all) >= n })
	if took := time.Since(t0); took > 15*time.Second {
		t.Fatalf("the rest took %s: not handed back", took)
	}
	time.Sleep(200 * time.Millisecond)
	_, second := fast.written()
	got := append(slices.Clone(first), second...)
	slices.Sort(got)
	if !slices.Equal(got, bodies("d", n, 20)) {
		t.Fatalf("written %d values over both runners (%d + %d), want each of %d once", len(got), len(first), len(second), n)
	}
}

// holdOut holds every value until Flush(final) or release is closed.
type holdOut struct {
	fakeOut
	mu2   sync.Mutex
	holds []Hold
}

func (o *holdOut) WriteBatch(_ context.Context, b *Batch[string]) error {
	o.mu2.Lock()
	defer o.mu2.Unlock()
	for i := range b.Items {
		o.holds = append(o.holds, b.Hold(i))
	}
	return nil
}

func (o *holdOut) Flush(_ context.Context, final bool) {
	if !final {
		return
	}
	o.mu2.Lock()
	defer o.mu2.Unlock()
	Release(o.holds, true)
	o.holds = nil
}

// startHolding runs a runner, with ackWait, whose output holds every value
// until the drain.
func startHolding(t *testing.T, e *rtEnv, ackWait time.Duration) (*holdOut, *Runner[string], func()) {
	t.Helper()
	out := &holdOut{}
	cfg := e.config(BatchPolicy{Count: 10, Period: 50 * time.Millisecond})
	cfg.AckWait = ackWait
	r, err := New[string](e.nc, out, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Consumer(context.Background()); err != nil {
		t.Fatal(err)
	}
	return out, r, start(t, r)
}

// TestRunnerHoldsAndKeepsAlive: values the output holds past WriteBatch
// are kept alive (no redelivery although they are held for several ack
// waits) and acked when the output releases them at the drain.
func TestRunnerHoldsAndKeepsAlive(t *testing.T) {
	e := newRTEnv(t)
	e.publish(t, "h1", "h2", "h3")
	out, r, stop := startHolding(t, e, 1500*time.Millisecond)
	waitFor(t, 10*time.Second, "held", func() bool { out.mu2.Lock(); defer out.mu2.Unlock(); return len(out.holds) == 3 })
	time.Sleep(4500 * time.Millisecond) // three ack waits
	if !r.Holds(1) || !r.Holds(3) {
		t.Fatal("the runner does not hold the held values")
	}
	if ci := e.consumer(t); ci.NumRedelivered != 0 || ci.NumAckPending != 3 || ci.Delivered.Stream != 3 || ci.Delivered.Consumer != 3 {
		t.Fatalf("held values were redelivered: %d redelivered, %d ack pending, %d deliveries", ci.NumRedelivered, ci.NumAckPending, ci.Delivered.Consumer)
	}
	stop()
	waitFor(t, 5*time.Second, "the release at the drain acked", func() bool {
		ci := e.consumer(t)
		return ci.NumAckPending == 0 && ci.AckFloor.Stream == 3
	})
}

// TestRunnerKeepsOnlyOldMessagesAlive: a held message gets its first
// in-progress ack once it has gone a third of AckWait without word, not
// before: messages settled within that cost none.
func TestRunnerKeepsOnlyOldMessagesAlive(t *testing.T) {
	e := newRTEnv(t)
	var mu sync.Mutex
	var progress []time.Time
	sub, err := e.nc.Subscribe("$JS.ACK."+e.stream+".>", func(m *nats.Msg) {
		if string(m.Data) == "+WPI" {
			mu.Lock()
			progress = append(progress, time.Now())
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	const ackWait = 3 * time.Second
	out, _, stop := startHolding(t, e, ackWait)
	defer stop()
	// taken just before the keep-alive's first tick at AckWait/3 (a tick
	// that refreshed every message held would refresh them at once)
	time.Sleep(800 * time.Millisecond)
	e.publish(t, "k1", "k2", "k3")
	waitFor(t, 10*time.Second, "held", func() bool { out.mu2.Lock(); defer out.mu2.Unlock(); return len(out.holds) == 3 })
	held := time.Now()
	time.Sleep(700 * time.Millisecond) // ticks of the keep-alive, messages younger than AckWait/3
	mu.Lock()
	early := len(progress)
	mu.Unlock()
	if early != 0 {
		t.Fatalf("%d in-progress acks for messages held %s of an ack wait of %s", early, time.Since(held), ackWait)
	}
	waitFor(t, 5*time.Second, "in-progress acks once a third of the ack wait passed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(progress) >= 3
	})
	mu.Lock()
	first := progress[0].Sub(held)
	mu.Unlock()
	if first < ackWait/3-100*time.Millisecond || first > ackWait/2+200*time.Millisecond {
		t.Fatalf("first in-progress ack %s after the messages were held; want between AckWait/3 and AckWait/2 (%s)", first, ackWait)
	}
}

// TestRunnerPause: a write that asks for a pause stops the runner pulling;
// what it had read ahead is handed back for the end of the pause, and it
// pulls again then.
func TestRunnerPause(t *testing.T) {
	e := newRTEnv(t)
	e.publish(t, bodies("p", 40, 10)...)
	out := &fakeOut{fail: func(n int) error {
		if n == 0 {
			return Pause(errors.New("keys refused"), 700*time.Millisecond)
		}
		return nil
	}}
	r := newRunner(t, e, out, e.config(BatchPolicy{Count: 5, Period: time.Hour, MaxInFlight: 1}))
	start(t, r)
	waitFor(t, 15*time.Second, "all written after the pause", func() bool { _, all := out.written(); return len(all) == 40 })
	out.mu.Lock()
	gap := out.at[1].Sub(out.at[0])
	out.mu.Unlock()
	if gap < 600*time.Millisecond {
		t.Fatalf("second write %s after the refused one: no pause", gap)
	}
	_, all := out.written()
	slices.Sort(all)
	if !slices.Equal(all, bodies("p", 40, 10)) {
		t.Fatalf("written %v", all)
	}
	waitFor(t, 5*time.Second, "acks", func() bool { return e.consumer(t).AckFloor.Stream == 40 })
}

// TestRunnerConnectsBeforePulling: while Connect fails the runner retries
// it, pulls nothing and reports unhealthy (saying why); once it succeeds
// every message is written exactly once and acked, and Connect is not
// called again.
func TestRunnerConnectsBeforePulling(t *testing.T) {
	e := newRTEnv(t)
	want := bodies("k", 30, 10)
	e.publish(t, want...)
	var up atomic.Bool
	out := &fakeOut{connect: func(int) error {
		if !up.Load() {
			return errors.New("destination still starting")
		}
		return nil
	}}
	cfg := e.config(BatchPolicy{Count: 10, Period: 50 * time.Millisecond})
	cfg.Connect = retry.Backoff{First: 20 * time.Millisecond, Max: 20 * time.Millisecond}
	r := newRunner(t, e, out, cfg)
	if r.Healthy() == nil {
		t.Fatal("healthy before Run connected")
	}
	start(t, r)
	connects := func() int { out.mu.Lock(); defer out.mu.Unlock(); return out.connects }
	waitFor(t, 10*time.Second, "four failed connects", func() bool { return connects() >= 4 })
	if err := r.Healthy(); err == nil || !strings.Contains(err.Error(), "destination still starting") {
		t.Fatalf("health while not connected: %v, want the connect error", err)
	}
	select {
	case <-r.Ready():
		t.Fatal("ready while Connect fails")
	default:
	}
	time.Sleep(300 * time.Millisecond)
	if ci := e.consumer(t); ci.Delivered.Consumer != 0 || ci.NumAckPending != 0 || ci.AckFloor.Stream != 0 || ci.NumPending != 30 {
		t.Fatalf("pulled before connected: %d delivered, %d ack pending, ack floor %d, %d pending",
			ci.Delivered.Consumer, ci.NumAckPending, ci.AckFloor.Stream, ci.NumPending)
	}
	if _, all := out.written(); len(all) != 0 {
		t.Fatalf("written before connected: %v", all)
	}
	failed := connects()
	up.Store(true)
	select {
	case <-r.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("not ready after Connect succeeded")
	}
	waitFor(t, 10*time.Second, "all written", func() bool { _, all := out.written(); return len(all) >= len(want) })
	waitFor(t, 5*time.Second, "all acked", func() bool {
		ci := e.consumer(t)
		return ci.AckFloor.Stream == 30 && ci.NumAckPending == 0
	})
	time.Sleep(200 * time.Millisecond)
	_, all := out.written()
	slices.Sort(all)
	if !slices.Equal(all, want) {
		t.Fatalf("written %d values %v, want each of %d once", len(all), all, len(want))
	}
	if err := r.Healthy(); err != nil {
		t.Fatalf("unhealthy once connected and written: %v", err)
	}
	if n := connects(); n != failed && n != failed+1 {
		t.Fatalf("%d Connect calls after %d failed ones: called again after it succeeded", n, failed)
	}
	if ci := e.consumer(t); ci.NumRedelivered != 0 {
		t.Fatalf("%d redelivered", ci.NumRedelivered)
	}
}

// TestRunnerStopsWhileConnecting: ctx ending while Connect fails ends Run
// (nil) without pulling, and the output is closed once.
func TestRunnerStopsWhileConnecting(t *testing.T) {
	e := newRTEnv(t)
	e.publish(t, "s1", "s2")
	out := &fakeOut{connect: func(int) error { return errors.New("down") }}
	cfg := e.config(BatchPolicy{Count: 10, Period: 50 * time.Millisecond})
	cfg.Connect = retry.Backoff{First: 20 * time.Millisecond, Max: 20 * time.Millisecond}
	r := newRunner(t, e, out, cfg)
	stop := start(t, r)
	waitFor(t, 10*time.Second, "a failed connect", func() bool { out.mu.Lock(); defer out.mu.Unlock(); return out.connects >= 2 })
	stop()
	out.mu.Lock()
	closes := out.closes
	out.mu.Unlock()
	if closes != 1 {
		t.Fatalf("closed %d times, want once", closes)
	}
	if ci := e.consumer(t); ci.Delivered.Consumer != 0 || ci.NumPending != 2 {
		t.Fatalf("pulled without a connection: %d delivered, %d pending", ci.Delivered.Consumer, ci.NumPending)
	}
}

// TestRunnerStopsWhileMakingItsConsumer: a stop that lands while the
// durable consumer is being created (SIGTERM just after the output
// connected) is a clean stop, not an error: Run returns nil and takes
// nothing.
func TestRunnerStopsWhileMakingItsConsumer(t *testing.T) {
	e := newRTEnv(t)
	e.publish(t, "m1", "m2")
	var slow atomic.Bool
	nc, err := nats.Connect(e.nc.ConnectedUrl(), nats.SetCustomDialer(nettest.SlowDialer{Slow: &slow, Delay: 500 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stoppedAt time.Time
	out := &fakeOut{connect: func(int) error {
		// the consumer request goes out next; its answer is held back
		// past the stop
		slow.Store(true)
		time.AfterFunc(100*time.Millisecond, func() { stoppedAt = time.Now(); cancel() })
		return nil
	}}
	r, err := New[string](nc, out, e.config(BatchPolicy{Count: 10, Period: 50 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	err = r.Run(ctx)
	slow.Store(false)
	if err != nil {
		t.Fatalf("stopped while making the consumer: Run returned %v, want a clean stop", err)
	}
	if stoppedAt.IsZero() {
		t.Fatal("Run returned before the stop: the consumer request was not in flight")
	}
	if _, all := out.written(); len(all) != 0 {
		t.Fatalf("wrote %v after a stop before pulling", all)
	}
}

// lateOut holds every value and, at Flush(final), releases them as stored
// from its own goroutine a while later (as an upload finishing would).
type lateOut struct {
	holdOut
	after time.Duration
}

func (o *lateOut) WriteBatch(ctx context.Context, b *Batch[string]) error {
	o.mu.Lock()
	for i := range b.Items {
		o.batches = append(o.batches, []string{b.Items[i].Value})
	}
	o.mu.Unlock()
	return o.holdOut.WriteBatch(ctx, b)
}

func (o *lateOut) Flush(_ context.Context, final bool) {
	if !final {
		return
	}
	o.mu2.Lock()
	hs := o.holds
	o.holds = nil
	o.mu2.Unlock()
	time.AfterFunc(o.after, func() { Release(hs, true) })
}

// TestRunnerClosesOnceAfterDrain: Close comes once, after the drain
// settled every message, including those the output released late, and
// after the last write; every message is acked.
func TestRunnerClosesOnceAfterDrain(t *testing.T) {
	e := newRTEnv(t)
	want := bodies("z", 25, 10)
	e.publish(t, want...)
	out := &lateOut{after: 500 * time.Millisecond}
	r, err := New[string](e.nc, out, e.config(BatchPolicy{Count: 10, Period: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Consumer(context.Background()); err != nil {
		t.Fatal(err)
	}
	var (
		mu                   sync.Mutex
		heldAtClose, written int
	)
	out.onClose = func() {
		mu.Lock()
		defer mu.Unlock()
		heldAtClose = r.holding()
		_, all := out.written()
		written = len(all)
	}
	stop := start(t, r)
	waitFor(t, 10*time.Second, "two batches held", func() bool { return r.Holds(20) })
	out.mu.Lock()
	closes := out.closes
	out.mu.Unlock()
	if closes != 0 {
		t.Fatalf("closed while running")
	}
	stop()
	out.mu.Lock()
	closes = out.closes
	out.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	if closes != 1 {
		t.Fatalf("closed %d times, want once", closes)
	}
	if heldAtClose != 0 || written != len(want) {
		t.Fatalf("at Close %d messages were not settled and %d of %d written", heldAtClose, written, len(want))
	}
	waitFor(t, 5*time.Second, "all acked", func() bool {
		ci := e.consumer(t)
		return ci.AckFloor.Stream == 25 && ci.NumAckPending == 0
	})
}
