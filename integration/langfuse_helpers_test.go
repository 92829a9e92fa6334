package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks"
	"github.com/callpipe/callpipe/sinks/langfuse"
)

// lfEnv is one Langfuse test's slice of NATS: its own subject under
// callpipe.normalized, its own durable consumer, and a contract server.
type lfEnv struct {
	t        *testing.T
	nc       *nats.Conn
	js       jetstream.JetStream
	run      string
	subject  string
	consumer string
	dlqStart uint64
	srv      *langfusetest.Server
}

func lfRand(t testing.TB) string { return "lf" + testkit.RandomHex(t, 5) }

// lfEnsureStream creates a stream when it does not exist (the transform
// stage owns their settings; this only makes the test self-sufficient).
func lfEnsureStream(ctx context.Context, t *testing.T, js jetstream.JetStream, name, subjects string) {
	t.Helper()
	if _, err := js.Stream(ctx, name); err == nil {
		return
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatal(err)
	}
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: name, Subjects: []string{subjects}, Storage: jetstream.FileStorage, Duplicates: 10 * time.Minute,
	})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
}

func newLfEnv(t *testing.T, o langfusetest.Options) *lfEnv {
	t.Helper()
	e := &lfEnv{t: t, run: lfRand(t)}
	e.subject = "callpipe.normalized." + e.run
	e.consumer = "callpipe-langfuse-" + e.run
	nc, err := nats.Connect(harness.NATS(t), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e.nc = nc
	e.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lfEnsureStream(ctx, t, e.js, bus.NormalizedStream, bus.NormalizedSubjectPrefix+".>")
	lfEnsureStream(ctx, t, e.js, bus.DeadLetterStream, "callpipe.dlq.>")
	s, err := e.js.Stream(ctx, bus.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.dlqStart = info.State.LastSeq + 1
	e.srv = langfusetest.New(o)
	t.Cleanup(e.srv.Close)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.js.DeleteConsumer(ctx, bus.NormalizedStream, e.consumer)
	})
	return e
}

// lfSpec is Langfuse's OpenAPI definition (current, or "langfuse-3.225.4")
// for the contract server to check requests against.
func lfSpec(t *testing.T, name string) *langfusetest.OpenAPI {
	t.Helper()
	spec, err := langfusetest.LoadOpenAPI(filepath.Join(harness.RepoRoot(t), "integration", "fakes", "langfusetest", "testdata", name, "openapi.yml"))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// lfCall is a complete normalized call, distinct per i.
func lfCall(run string, i int) schema.Call {
	start := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Millisecond)
	lat := int64(100 + i%900)
	ttft := int64(20 + i%50)
	ft := start.Add(time.Duration(ttft) * time.Millisecond)
	cost := float64(i%100) / 1e4
	return schema.Call{
		ID: fmt.Sprintf("%s-c%06d", run, i), TraceID: fmt.Sprintf("%s-t%06d", run, i), SessionID: fmt.Sprintf("s%d", i%10),
		StartTime: start, EndTime: start.Add(time.Duration(lat) * time.Millisecond), FirstTokenTime: &ft,
		LatencyMS: lat, TTFTMS: &ttft,
		Endpoint: "/v1/chat/completions", Kind: schema.KindChat, Model: fmt.Sprintf("qwen-%d", i%3), Instance: "qwen-0",
		UserID: fmt.Sprintf("user-%d", i%17), UserSource: schema.UserExplicit, Status: 200, FinishReason: "stop",
		Input:           json.RawMessage(fmt.Sprintf(`[{"role":"user","content":"question %d"}]`, i)),
		Output:          json.RawMessage(fmt.Sprintf(`{"role":"assistant","content":"answer %d"}`, i)),
		ModelParameters: map[string]json.RawMessage{"temperature": json.RawMessage(`0.2`), "max_tokens": json.RawMessage(`128`)},
		InputTokens:     int64(10 + i%40), OutputTokens: int64(5 + i%60), TotalTokens: int64(15 + i%40 + i%60),
		UsageSource: schema.UsageReported, CostUSD: &cost, Source: "proxy", Tags: []string{"it"},
	}
}

// publish stores calls on the run's subject; msgIDPrefix makes a resend a new message.
func (e *lfEnv) publish(calls []schema.Call, msgIDPrefix string) {
	e.t.Helper()
	e.publishWith(calls, msgIDPrefix, nil)
}

// publishWith is publish with extra headers on every message (e.g. the
// replay routing headers of bus/route.go).
func (e *lfEnv) publishWith(calls []schema.Call, msgIDPrefix string, h nats.Header) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range calls {
		b, err := json.Marshal(&calls[i])
		if err != nil {
			e.t.Fatal(err)
		}
		m := &nats.Msg{Subject: e.subject + "." + calls[i].Kind, Data: b, Header: nats.Header{}}
		for k, v := range h {
			m.Header[k] = v
		}
		m.Header.Set(jetstream.MsgIDHeader, msgIDPrefix+calls[i].ID)
		if _, err := e.js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			e.t.Fatal(err)
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-ctx.Done():
		e.t.Fatal("publish timed out")
	}
}

type lfSink struct {
	out    *langfuse.Output
	sink   *langfuse.Sink
	cancel context.CancelFunc
	done   chan error
}

// startSink runs the sink on the run's subject until the test ends (or stop).
func (e *lfEnv) startSink(mod func(*langfuse.OutputConfig, *langfuse.SinkConfig)) *lfSink {
	e.t.Helper()
	oc := langfuse.OutputConfig{
		Host: e.srv.URL, PublicKey: "pk-lf-test", SecretKey: "sk-lf-test", Transport: langfuse.TransportAuto,
		Map:        langfuse.MapOptions{Environment: "it", MaxFieldBytes: 64 << 10},
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, MaxInFlight: 4,
	}
	sc := langfuse.SinkConfig{Config: sinks.Config{
		Consumer: e.consumer, FilterSubject: e.subject + ".>",
		Batch:   sinks.BatchPolicy{Count: 1000, Period: 200 * time.Millisecond, MaxInFlight: 2},
		AckWait: 30 * time.Second,
		Log:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	}, RetryDelay: 300 * time.Millisecond}
	if mod != nil {
		mod(&oc, &sc)
	}
	out := langfuse.NewOutput(oc)
	if err := out.Connect(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	sink, err := langfuse.NewSink(context.Background(), e.nc, out, sc)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &lfSink{out: out, sink: sink, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- sink.Run(ctx) }()
	e.t.Cleanup(func() { s.stop(e.t) })
	return s
}

func (s *lfSink) stop(t *testing.T) {
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("sink: %v", err)
		}
	case <-time.After(time.Minute):
		t.Error("sink did not stop")
	}
}

// consumerState is (pending + waiting for ack, acknowledged floor).
func (e *lfEnv) consumerState() (unsettled uint64, ackFloor uint64) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.js.Consumer(ctx, bus.NormalizedStream, e.consumer)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.NumPending + uint64(info.NumAckPending), info.AckFloor.Stream
}

func (e *lfEnv) waitSettled(timeout time.Duration) {
	e.t.Helper()
	lfWait(e.t, timeout, "consumer settled", func() bool {
		u, _ := e.consumerState()
		return u == 0
	})
}

func lfWait(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, timeout, what, func() (bool, string) { return cond(), "" })
}

// deadLetters returns this run's dead letters of the langfuse stage.
func (e *lfEnv) deadLetters() []*nats.Msg {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, bus.DeadLetterStream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*nats.Msg
	if info.State.LastSeq < e.dlqStart {
		return nil
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.DeadLetterSubjectPrefix + "." + bus.StageLangfuse},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy, OptStartSeq: e.dlqStart,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	for {
		batch, err := c.FetchNoWait(500)
		if err != nil {
			e.t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, _ := m.Metadata()
			if strings.HasPrefix(m.Headers().Get(bus.HeaderSourceSubject), e.subject+".") {
				out = append(out, &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
			}
			if md != nil && md.Sequence.Stream >= info.State.LastSeq {
				return out
			}
		}
		if n == 0 {
			return out
		}
	}
}

// lfMetric is the value of a gauge or counter in reg (0 when absent),
// matching the metric name and, if given, its "result" label.
func lfMetric(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := result == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					match = true
				}
			}
			if !match {
				continue
			}
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// lfSlow is the sink's request timeout in the slow-server tests and the
// delay of a slow answer, past it. Under -race the contract server itself
// can take over a second for a request on a busy machine, so both grow.
func lfSlow() (timeout, delay time.Duration) {
	if lfRace {
		return 3 * time.Second, 4 * time.Second
	}
	return time.Second, 1500 * time.Millisecond
}
