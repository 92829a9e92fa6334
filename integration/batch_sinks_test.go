package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks/langfuse"
	"github.com/callpipe/callpipe/store/callsdb"
)

// publishBatch publishes lines as one batched CALLPIPE_NORMALIZED message
// (bus/batch.go) with Nats-Msg-Id id, and returns its stream sequence.
func publishBatch(t *testing.T, js jetstream.JetStream, subject, id string, lines [][]byte) uint64 {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = bytes.Join(lines, []byte("\n"))
	m.Header.Set(bus.HeaderCalls, strconv.Itoa(len(lines)))
	m.Header.Set(nats.MsgIdHdr, id)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func callLines(t *testing.T, calls []schema.Call) [][]byte {
	t.Helper()
	var out [][]byte
	for i := range calls {
		b, err := json.Marshal(&calls[i])
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// stageDeadLetters are the dead letters of stage from sequence from on whose
// source subject starts with subject.
func stageDeadLetters(t *testing.T, js jetstream.JetStream, stage, subject string, from uint64) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, bus.DeadLetterStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.DeadLetterSubjectPrefix + "." + stage},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy, OptStartSeq: from,
	})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.FetchNoWait(1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for m := range batch.Messages() {
		if strings.HasPrefix(m.Headers().Get(bus.HeaderSourceSubject), subject) {
			out = append(out, m)
		}
	}
	return out
}

func dlqNext(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, bus.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq + 1
}

// TestClickHouseSinkBatchedMessages: the sink reads batched messages next
// to single-call ones (a rolling upgrade). A poisoned call of a batch goes
// to CALLPIPE_DLQ alone, as that call's bytes, under its own id; the other
// calls of the batch are stored; calls stored twice (the same raw events
// regrouped by normalize after a redelivery) are one row per call in reads.
func TestClickHouseSinkBatchedMessages(t *testing.T) {
	out, db := chTestDB(t)
	n := newCHNATS(t)
	calls := genCalls(5, "batch-"+testkit.RandomHex(t, 3), 21, 1, 2, 2, chBase)
	lines := callLines(t, calls)
	from := dlqNext(t, n.js)

	poison := []byte(`{"id":"poison-` + testkit.RandomHex(t, 3) + `","start_time":12}`)
	a := append(append(append([][]byte{}, lines[:4]...), poison), lines[4:10]...) // poison is call 4 of 11
	seqA := publishBatch(t, n.js, n.subject, "calls:a-"+calls[0].ID, a)
	publishBatch(t, n.js, n.subject, "calls:b-"+calls[0].ID, lines[10:20])
	publishBatch(t, n.js, n.subject, "calls:c-"+calls[0].ID, lines[5:15]) // a regrouped redelivery
	n.publish(t, calls[20:], "")                                          // the single-call format
	runSink(t, n, out, n.sinkConfig(1000, 100*time.Millisecond))
	waitStored(t, n, out, db, uint64(len(calls)), time.Minute)

	var dls []jetstream.Msg
	testkit.WaitFor(t, 30*time.Second, "the poisoned call's dead letter", func() (bool, string) {
		dls = stageDeadLetters(t, n.js, bus.StageClickHouse, n.subject, from)
		return len(dls) >= 1, fmt.Sprintf("%d dead letters", len(dls))
	})
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want the poisoned call alone", len(dls))
	}
	d := dls[0]
	if !bytes.Equal(d.Data(), poison) {
		t.Fatalf("dead letter body %q, want the poisoned call %q", d.Data(), poison)
	}
	if got, want := d.Headers().Get(nats.MsgIdHdr), fmt.Sprintf("clickhouse:%s:%d:4", bus.NormalizedStream, seqA); got != want {
		t.Fatalf("dead letter Nats-Msg-Id %q, want %q", got, want)
	}
	if d.Headers().Get(bus.HeaderCalls) != "" || d.Headers().Get(bus.HeaderSourceSeq) != strconv.FormatUint(seqA, 10) {
		t.Fatalf("dead letter headers %v", d.Headers())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	distinct, rows, err := callsdb.CallCounts(ctx, out.Conn(), db)
	if err != nil {
		t.Fatal(err)
	}
	if distinct != uint64(len(calls)) {
		t.Fatalf("%d distinct calls (%d rows), want %d", distinct, rows, len(calls))
	}
	checkUsage(t, out.Conn(), db, calls, chBase, chBase.Add(48*time.Hour))

	// `dlq retry` sends the call back alone, in the single-call format, to
	// this sink only; still poisoned, it is dead-lettered again as a whole
	// message, its attempts added up.
	md, err := d.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.RetryDeadLetter(ctx, n.js, md.Sequence.Stream); err != nil {
		t.Fatal(err)
	}
	var again []jetstream.Msg
	testkit.WaitFor(t, 30*time.Second, "the retried call's dead letter", func() (bool, string) {
		again = stageDeadLetters(t, n.js, bus.StageClickHouse, n.subject, md.Sequence.Stream+1)
		return len(again) >= 1, fmt.Sprintf("%d dead letters", len(again))
	})
	h := again[0].Headers()
	if len(again) != 1 || !bytes.Equal(again[0].Data(), poison) || h.Get(bus.HeaderAttempts) != "2" ||
		h.Get(bus.HeaderReplay) != fmt.Sprintf("dlq-%d", md.Sequence.Stream) || h.Get(bus.HeaderSinks) != bus.StageClickHouse ||
		strings.Count(h.Get(nats.MsgIdHdr), ":") != 2 {
		t.Fatalf("after retry: %d dead letters, first %q with headers %v", len(again), again[0].Data(), h)
	}
	if d2, _, err := callsdb.CallCounts(ctx, out.Conn(), db); err != nil || d2 != uint64(len(calls)) {
		t.Fatalf("after retry: %d distinct calls (%v), want %d", d2, err, len(calls))
	}
}

// TestLangfuseSinkBatchedMessages: a call of a batch that Langfuse rejects
// goes to CALLPIPE_DLQ alone; the others of the batch get one trace and one
// generation each, also when the same calls arrive again in another batch.
func TestLangfuseSinkBatchedMessages(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{OpenAPI: lfSpec(t, "langfuse-3.225.4")})
	calls := lfCalls(e.run, 12)
	rejected := calls[3].ID
	e.srv.SetEventFault(func(typ, id string) (int, string) {
		if typ == "generation-create" && strings.HasPrefix(id, rejected) {
			return 400, "Invalid request data: injected rejection"
		}
		return 0, ""
	})
	lines := callLines(t, calls)
	subject := e.subject + "." + calls[0].Kind
	seq := publishBatch(t, e.js, subject, "calls:a-"+e.run, lines[:8])
	publishBatch(t, e.js, subject, "calls:b-"+e.run, lines[6:]) // 6, 7 again
	e.startSink(nil)
	lfWait(t, time.Minute, "generations and the dead letter", func() bool {
		return len(e.srv.Observations()) == len(calls)-1 && len(e.deadLetters()) == 1
	})
	e.waitSettled(30 * time.Second)
	dl := e.deadLetters()
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	var c schema.Call
	if err := json.Unmarshal(dl[0].Data, &c); err != nil || c.ID != rejected {
		t.Fatalf("dead letter holds %q (%v), want call %s alone", dl[0].Data, err, rejected)
	}
	if got, want := dl[0].Header.Get(nats.MsgIdHdr), fmt.Sprintf("langfuse:%s:%d:3", bus.NormalizedStream, seq); got != want {
		t.Fatalf("dead letter Nats-Msg-Id %q, want %q", got, want)
	}
	obs, traces := e.srv.Observations(), e.srv.Traces()
	for i := range calls {
		_, gen := obs[calls[i].ID]
		if gen == (calls[i].ID == rejected) {
			t.Errorf("call %s: generation stored %v", calls[i].ID, gen)
		}
	}
	if len(traces) != len(calls) {
		t.Errorf("%d traces for %d calls", len(traces), len(calls))
	}
	if v := e.srv.Violations(); len(v) != 0 {
		t.Fatalf("%d requests off Langfuse's OpenAPI definition, first: %.500s", len(v), v[0])
	}
}

// TestLangfuseSinkBatchedMessagesRetried: with Langfuse failing a third of
// the requests, a batch whose calls are partly pending is sent again until
// all are accepted; nothing is dead-lettered, every message is settled and
// each call has one trace and one generation.
func TestLangfuseSinkBatchedMessagesRetried(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{})
	calls := lfCalls(e.run, 200)
	e.srv.SetFailureRate(0.3, langfusetest.Fault{Status: 500}, langfusetest.Fault{Status: 429})
	lines := callLines(t, calls)
	subject := e.subject + "." + calls[0].Kind
	for i := 0; i < len(lines); i += 50 {
		publishBatch(t, e.js, subject, fmt.Sprintf("calls:%s-%d", e.run, i), lines[i:i+50])
	}
	e.startSink(func(oc *langfuse.OutputConfig, sc *langfuse.SinkConfig) {
		oc.MaxBatchCount = 20 // several requests per batch message, some of them failing
		oc.MaxRetries = -1    // no retry inside a write: a pending call naks its message
		sc.RetryDelay = 100 * time.Millisecond
	})
	lfWait(t, 2*time.Minute, "every generation", func() bool { return len(e.srv.Observations()) == len(calls) })
	e.srv.SetFailureRate(0)
	e.waitSettled(time.Minute)
	if dl := e.deadLetters(); len(dl) != 0 {
		t.Fatalf("%d dead letters", len(dl))
	}
	if traces := e.srv.Traces(); len(traces) != len(calls) {
		t.Fatalf("%d traces for %d calls", len(traces), len(calls))
	}
	// the calls Langfuse had accepted in a nak'ed message were sent again
	if accepted, _, _ := e.srv.Counts(); accepted <= 2*len(calls) {
		t.Fatalf("%d events accepted for %d calls: no message was sent again", accepted, len(calls))
	}
}
