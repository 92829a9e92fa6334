package transform

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"

	"github.com/callpipe/callpipe/bus"
)

// fakeMsg records how a raw message was settled.
type fakeMsg struct {
	jetstream.Msg // methods the worker must not call panic (nil)
	delivered     uint64
	hdr           nats.Header

	mu         sync.Mutex
	acks       []string
	nakDelay   time.Duration
	inProgress int
}

func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{NumDelivered: m.delivered}, nil
}
func (m *fakeMsg) Subject() string      { return "callpipe.calls.test" }
func (m *fakeMsg) Data() []byte         { return []byte(`{"id":"x"}`) }
func (m *fakeMsg) Headers() nats.Header { return m.hdr }
func (m *fakeMsg) record(a string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.acks = append(m.acks, a)
	return nil
}
func (m *fakeMsg) Ack() error  { return m.record("ack") }
func (m *fakeMsg) Term() error { return m.record("term") }
func (m *fakeMsg) Nak() error  { return m.record("nak") }
func (m *fakeMsg) NakWithDelay(d time.Duration) error {
	m.nakDelay = d
	return m.record("nak-delay")
}
func (m *fakeMsg) InProgress() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.inProgress++
	return nil
}
func (m *fakeMsg) settled() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return fmt.Sprint(m.acks)
}

// fakeFuture is a publish whose JetStream ack arrives (or fails) when the
// test says so.
type fakeFuture struct {
	jetstream.PubAckFuture
	ok  chan *jetstream.PubAck
	err chan error
}

func newFuture() *fakeFuture {
	return &fakeFuture{ok: make(chan *jetstream.PubAck, 1), err: make(chan error, 1)}
}
func (f *fakeFuture) Ok() <-chan *jetstream.PubAck { return f.ok }
func (f *fakeFuture) Err() <-chan error            { return f.err }

// fakeJS stores dead letters, or refuses them with err.
type fakeJS struct {
	jetstream.JetStream
	err    error
	stored []*nats.Msg
}

func (j *fakeJS) PublishMsg(_ context.Context, m *nats.Msg, _ ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if j.err != nil {
		return nil, j.err
	}
	j.stored = append(j.stored, m)
	return &jetstream.PubAck{}, nil
}

func testWorker() *Worker {
	o := WorkerOptions{RetryDelay: 100 * time.Millisecond, MaxDeliver: 4, Log: slog.New(slog.DiscardHandler)}
	o.defaults()
	return &Worker{o: o, js: &fakeJS{}}
}

func TestRetryDelayGrows(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second,
		32 * time.Second, time.Minute, time.Minute}
	for i, w := range want {
		if got := retryDelay(time.Second, uint64(i+1)); got != w {
			t.Errorf("delivery %d: delay %s, want %s", i+1, got, w)
		}
	}
	if got := retryDelay(time.Second, 1000); got != time.Minute {
		t.Errorf("delivery 1000: delay %s, want the 1m cap", got)
	}
}

// A failed publish (refused at once or failed later) naks with the delay of
// the delivery; a stored record acks; a stored dead letter terminates; a
// dead letter that could not be stored naks instead of losing the event.
func TestSettle(t *testing.T) {
	w := testWorker()
	for _, tc := range []struct {
		name       string
		delivered  uint64
		pubErr     error
		futErr     error
		dead       bool
		dlqErr     error
		want       string
		wantDelay  time.Duration
		wantMetric string
	}{
		{name: "stored", delivered: 1, want: "[ack]", wantMetric: "normalized"},
		{name: "refused", delivered: 1, pubErr: errors.New("nats: connection closed"), want: "[nak-delay]", wantDelay: 100 * time.Millisecond, wantMetric: "retry"},
		{name: "failed third time", delivered: 3, futErr: errors.New("nats: timeout"), want: "[nak-delay]", wantDelay: 400 * time.Millisecond, wantMetric: "retry"},
		{name: "dead letter stored", delivered: 1, dead: true, want: "[term]", wantMetric: "dead_letter"},
		{name: "dead letter failed", delivered: 2, dead: true, futErr: errors.New("no responders"), want: "[nak-delay]", wantDelay: 200 * time.Millisecond, wantMetric: "retry"},
		{name: "failed on the last delivery", delivered: 4, futErr: errors.New("nats: timeout"), want: "[term]", wantMetric: "dead_letter"},
		{name: "failed on the last delivery, DLQ refused", delivered: 4, futErr: errors.New("nats: timeout"), dlqErr: errors.New("no responders"), want: "[nak-delay]", wantDelay: 800 * time.Millisecond, wantMetric: "retry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &fakeMsg{delivered: tc.delivered}
			f := newFuture()
			if tc.futErr != nil {
				f.err <- tc.futErr
			} else {
				f.ok <- &jetstream.PubAck{}
			}
			js := &fakeJS{err: tc.dlqErr}
			w.js = js
			before := counter(t, w.o.Metrics, tc.wantMetric)
			w.settle(pending{msgs: []jetstream.Msg{m}, fut: f, pubErr: tc.pubErr, dead: tc.dead})
			if wantDL := tc.delivered == 4 && tc.dlqErr == nil; wantDL != (len(js.stored) == 1) {
				t.Fatalf("dead letters written %d, want one: %v", len(js.stored), wantDL)
			} else if wantDL && js.stored[0].Header.Get(bus.HeaderError) != "max deliveries (4) exceeded: nats: timeout" {
				t.Fatalf("dead letter reason %q", js.stored[0].Header.Get(bus.HeaderError))
			}
			if got := m.settled(); got != tc.want {
				t.Fatalf("settled %s, want %s", got, tc.want)
			}
			if m.nakDelay != tc.wantDelay {
				t.Fatalf("nak delay %s, want %s", m.nakDelay, tc.wantDelay)
			}
			if after := counter(t, w.o.Metrics, tc.wantMetric); after != before+1 {
				t.Fatalf("metric %s: %v → %v", tc.wantMetric, before, after)
			}
		})
	}
}

func counter(t *testing.T, m *Metrics, result string) float64 {
	t.Helper()
	c, err := m.events.GetMetricWithLabelValues(result)
	if err != nil {
		t.Fatal(err)
	}
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

// Messages held longer than the age get in-progress acks, the others not;
// a touched message waits a full age again; a removed one is left alone.
func TestHeldInProgress(t *testing.T) {
	h := newHeld()
	old, fresh, gone := &fakeMsg{}, &fakeMsg{}, &fakeMsg{}
	t0 := time.Now()
	h.add(old)
	h.add(gone)
	h.remove(gone)
	h.mu.Lock()
	h.msgs[old] = t0.Add(-10 * time.Second)
	h.mu.Unlock()
	h.add(fresh)
	h.touchOlder(t0, 5*time.Second)
	if old.inProgress != 1 || fresh.inProgress != 0 || gone.inProgress != 0 {
		t.Fatalf("in-progress acks: old %d fresh %d removed %d, want 1 0 0", old.inProgress, fresh.inProgress, gone.inProgress)
	}
	h.touchOlder(t0.Add(time.Second), 5*time.Second)
	if old.inProgress != 1 {
		t.Fatalf("old touched again 1s after its in-progress ack")
	}
	h.touchOlder(t0.Add(6*time.Second), 5*time.Second)
	if old.inProgress != 2 || fresh.inProgress != 1 {
		t.Fatalf("after 6s: old %d fresh %d, want 2 1", old.inProgress, fresh.inProgress)
	}
}

// A live call's record is deduplicated by call id and has no replay marks;
// a replayed call's record carries Callpipe-Replay and Callpipe-Sinks and the
// replay's id, bus.ReplayMsgID(job, call id).
func TestNormalizedMsgReplayHeaders(t *testing.T) {
	c, err := testNormalizer(t).Normalize(context.Background(), benchChatEvent(7))
	if err != nil {
		t.Fatal(err)
	}
	live := normalizedMsg(c, nats.Header{"Nats-Msg-Id": []string{c.ID}})
	if got := live.Header.Get(jetstream.MsgIDHeader); got != c.ID {
		t.Fatalf("live Nats-Msg-Id %q, want %q", got, c.ID)
	}
	if bus.IsReplay(live.Header) || live.Header.Get(bus.HeaderSinks) != "" {
		t.Fatalf("live record has replay headers: %v", live.Header)
	}
	if live.Subject != bus.NormalizedSubjectPrefix+".chat" {
		t.Fatalf("subject %q", live.Subject)
	}
	raw := nats.Header{}
	raw.Set(bus.HeaderReplay, "job-42")
	raw.Set(bus.HeaderSinks, "clickhouse,langfuse")
	raw.Set(jetstream.MsgIDHeader, bus.ReplayMsgID("job-42", c.ID))
	rep := normalizedMsg(c, raw)
	if got, want := rep.Header.Get(jetstream.MsgIDHeader), bus.ReplayMsgID("job-42", c.ID); got != want {
		t.Fatalf("replay Nats-Msg-Id %q, want %q", got, want)
	}
	if rep.Header.Get(bus.HeaderReplay) != "job-42" || rep.Header.Get(bus.HeaderSinks) != "clickhouse,langfuse" {
		t.Fatalf("replay headers not copied: %v", rep.Header)
	}
	if !bus.Routed(rep.Header, "clickhouse") || bus.Routed(rep.Header, "archive") {
		t.Fatalf("sink selection of the replayed record: %v", rep.Header)
	}
}
