package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
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
)

// The dead letters `dlq retry` is tested with come in two kinds:
//
//   - poison a stage really rejects (a call ClickHouse's DateTime cannot
//     hold, a non-JSON message with a line break the archive cannot store as
//     one NDJSON line): its retry is rejected again, by the same stage only;
//   - a good message in the bus's dead-letter format (bus.Failure, what the
//     stage writes), standing for a message the stage could not take at the
//     time and takes now (an operator retries after a fix): its retry must
//     land exactly once in that stage's sink and nowhere else. Publishing the
//     message live instead would already land it in every sink.

// dlqRetry runs `callpipe dlq retry seqs...` against the test NATS.
func dlqRetry(t *testing.T, seqs ...uint64) string {
	t.Helper()
	args := []string{"dlq", "retry"}
	for _, s := range seqs {
		args = append(args, fmt.Sprint(s))
	}
	cmd := exec.Command(testkit.Binary(t), args...)
	cmd.Env = append(os.Environ(), "CALLPIPE_NATS_URL="+harness.NATS(t), "CALLPIPE_LOG_LEVEL=warn")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("callpipe %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dlqFind lists the dead letters from sequence from on whose original bytes
// are data.
func dlqFind(t *testing.T, js jetstream.JetStream, from uint64, data []byte) []bus.DeadLetter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all, err := bus.ListDeadLetters(ctx, js, from, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []bus.DeadLetter
	for _, d := range all {
		if bytes.Equal(d.Data, data) {
			out = append(out, d)
		}
	}
	return out
}

// dlqWrite stores a dead letter of stage for data, read from subject of
// stream, in the bus's format, and returns its DLQ sequence.
func dlqWrite(t *testing.T, js jetstream.JetStream, stage, stream, subject string, data []byte) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := bus.Failure{Stage: stage, Stream: stream, Subject: subject, Attempts: 1, Data: data,
		Reason: "stage could not take it at the time"}.Msg(time.Now())
	ack, err := js.PublishMsg(ctx, m, jetstream.WithExpectStream(bus.DeadLetterStream))
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// checkRetriedAgain: the poison's first dead letter is gone and exactly one
// new one exists, from the same stage, with the attempts of both and the
// first failure time of the first. The stages must have settled every
// message: a stage terminates a message only after its dead letter is stored.
func checkRetriedAgain(t *testing.T, js jetstream.JetStream, first bus.DeadLetter, from uint64) {
	t.Helper()
	again := dlqFind(t, js, from, first.Data)
	if len(again) != 1 {
		t.Fatalf("retried poison: %d new dead letters, want 1 (from %s only): %+v", len(again), first.Stage, again)
	}
	d := again[0]
	if d.Stage != first.Stage || d.SourceSubject != first.SourceSubject || d.Attempts != first.Attempts+1 ||
		!d.FirstFailure.Equal(first.FirstFailure) {
		t.Fatalf("dead letter after retry: %+v; before: %+v", d, first)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := bus.GetDeadLetter(ctx, js, first.Seq); err == nil {
		t.Fatalf("retried dead letter %d still in the DLQ", first.Seq)
	}
}

// TestDLQRetryClickHouseDeadLetter: the ClickHouse and Langfuse sinks run on
// one subject. A retried ClickHouse dead letter of a good call lands in
// ClickHouse exactly once and never reaches Langfuse; a retried ClickHouse
// poison (accepted by Langfuse the first time) is dead-lettered again by
// ClickHouse only and not sent to Langfuse again. The archive does not read
// CALLPIPE_NORMALIZED, where the retries go.
func TestDLQRetryClickHouseDeadLetter(t *testing.T) {
	e := newLfEnv(t, langfusetest.Options{})
	out, db := chTestDB(t)
	dlqFrom := streamState(t, e.js, bus.DeadLetterStream).LastSeq + 1

	calls := lfCalls(e.run, 3)
	live, poison, good := calls[0], calls[1], calls[2]
	// after 2106: ClickHouse's DateTime cannot hold it, Langfuse takes it
	poison.StartTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
	poison.EndTime = poison.StartTime.Add(time.Second)
	e.publish([]schema.Call{live, poison}, "")

	ch := &chNATS{nc: e.nc, js: e.js, subject: e.subject + ".>", consumer: "callpipe-clickhouse-" + e.run}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.js.DeleteConsumer(ctx, bus.NormalizedStream, ch.consumer)
	})
	cfg := ch.sinkConfig(100, 100*time.Millisecond)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	runSink(t, ch, out, cfg)
	e.startSink(nil)

	rows := func(id string) uint64 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var n uint64
		if err := out.Conn().QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(count()) FROM %s.calls WHERE id = ?", db), id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	poisonData, err := json.Marshal(&poison)
	if err != nil {
		t.Fatal(err)
	}
	var first []bus.DeadLetter
	testkit.WaitFor(t, time.Minute, "the live call stored and the poison dead-lettered", func() (bool, string) {
		first = dlqFind(t, e.js, dlqFrom, poisonData)
		return rows(live.ID) == 1 && len(first) == 1, fmt.Sprintf("%d rows, %d dead letters", rows(live.ID), len(first))
	})
	if d := first[0]; d.Stage != bus.StageClickHouse || d.SourceSubject != e.subject+"."+poison.Kind ||
		d.SourceStream != bus.NormalizedStream || d.Attempts != 1 || d.FirstFailure.IsZero() {
		t.Fatalf("clickhouse dead letter: %+v", d)
	}
	lfWait(t, time.Minute, "both live calls in Langfuse", func() bool {
		obs := e.srv.Observations()
		_, a := obs[live.ID]
		_, b := obs[poison.ID]
		return a && b
	})
	e.waitSettled(time.Minute)
	acceptedBefore, _, _ := e.srv.Counts()

	goodData, err := json.Marshal(&good)
	if err != nil {
		t.Fatal(err)
	}
	goodSeq := dlqWrite(t, e.js, bus.StageClickHouse, bus.NormalizedStream, e.subject+"."+good.Kind, goodData)
	retryFrom := streamState(t, e.js, bus.DeadLetterStream).LastSeq + 1
	if out := dlqRetry(t, first[0].Seq, goodSeq); !strings.Contains(out, "stage clickhouse") {
		t.Fatalf("dlq retry output:\n%s", out)
	}

	testkit.WaitFor(t, time.Minute, "the retried call in ClickHouse", func() (bool, string) {
		n := rows(good.ID)
		return n > 0, fmt.Sprintf("%d rows", n)
	})
	e.waitSettled(time.Minute)
	testkit.WaitFor(t, 30*time.Second, "clickhouse consumer settled", func() (bool, string) {
		return consumerIdle(e.js, bus.NormalizedStream, ch.consumer)
	})
	checkRetriedAgain(t, e.js, first[0], retryFrom)
	// rows written counts inserts (merges may collapse copies of a call in the table)
	if n := rows(good.ID); n != 1 || lfMetric(t, reg, "callpipe_clickhouse_rows_written_total", "") != 2 {
		t.Fatalf("retried call: %d rows; %v calls inserted in all, want 2 (the live one and the retried one)",
			n, lfMetric(t, reg, "callpipe_clickhouse_rows_written_total", ""))
	}
	if n := rows(live.ID); n != 1 {
		t.Fatalf("live call stored %d times after the retries, want 1", n)
	}
	if _, ok := e.srv.Observations()[good.ID]; ok {
		t.Fatal("the retried ClickHouse dead letter reached Langfuse")
	}
	if accepted, _, _ := e.srv.Counts(); accepted != acceptedBefore {
		t.Fatalf("Langfuse accepted %d events during the retries, want none", accepted-acceptedBefore)
	}
	// the retries went to CALLPIPE_NORMALIZED addressed to clickhouse
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, bus.NormalizedStream)
	if err != nil {
		t.Fatal(err)
	}
	last, err := st.GetLastMsgForSubject(ctx, e.subject+"."+good.Kind)
	if err != nil {
		t.Fatal(err)
	}
	if last.Header.Get(bus.HeaderSinks) != bus.StageClickHouse || !bus.IsReplay(last.Header) {
		t.Fatalf("retried message headers: %v", last.Header)
	}
}

// TestDLQRetryArchiveDeadLetter: normalize and archive run on one subject of
// CALLPIPE_CALLS. A retried archive dead letter of a good event is archived
// exactly once and never normalized (so no sink of CALLPIPE_NORMALIZED sees
// it); a retried archive poison is dead-lettered again by the archive only
// (normalize, which dead-lettered it too the first time, skips the retry).
func TestDLQRetryArchiveDeadLetter(t *testing.T) {
	e := newArchEnv(t)
	normConsumer := e.run + "-norm"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.js.DeleteConsumer(ctx, bus.CallsStream, normConsumer)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, e.js, bus.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	dlqFrom := streamState(t, e.js, bus.DeadLetterStream).LastSeq + 1
	normFrom := streamState(t, e.js, bus.NormalizedStream).LastSeq + 1

	day := archDay(t)
	evs := archEvents(e.run, 2, day, 1, 10, 7)
	live, good := evs[0], evs[1]
	poison := []byte("not json\nbut two lines " + e.run)
	e.publish(t, [][]byte{live.raw, poison}, func(i int) string { return fmt.Sprintf("%s-live-%d", e.run, i) }, nil)
	last := e.lastSeq(t)

	listen := testkit.FreeAddr(t)
	e.start(t, e.env("CALLPIPE_TRANSFORM_CONSUMER="+normConsumer, "CALLPIPE_TRANSFORM_SUBJECT="+e.subject+".>",
		"CALLPIPE_REDIS_ADDR=", "CALLPIPE_ARCHIVE_FLUSH_INTERVAL=1s", "CALLPIPE_ARCHIVE_ACK_WAIT=30s",
		"CALLPIPE_WORKER_LISTEN="+listen), "worker", "--stages", "archive,normalize")

	var first []bus.DeadLetter
	testkit.WaitFor(t, time.Minute, "the poison dead-lettered by archive and normalize", func() (bool, string) {
		first = dlqFind(t, e.js, dlqFrom, poison)
		return len(first) == 2, fmt.Sprintf("%d dead letters", len(first))
	})
	var archiveDL bus.DeadLetter
	for _, d := range first {
		if d.Stage == bus.StageArchive {
			archiveDL = d
		}
	}
	if archiveDL.SourceSubject != e.subject+".x" || archiveDL.SourceStream != bus.CallsStream || archiveDL.Attempts != 1 {
		t.Fatalf("archive dead letter: %+v (all: %+v)", archiveDL, first)
	}
	e.waitArchived(t, time.Minute, last)
	e.waitConsumer(t, normConsumer)

	goodSeq := dlqWrite(t, e.js, bus.StageArchive, bus.CallsStream, e.subject+".x", good.raw)
	retryFrom := streamState(t, e.js, bus.DeadLetterStream).LastSeq + 1
	dlqRetry(t, archiveDL.Seq, goodSeq)

	from, to := day, day.Add(time.Hour)
	testkit.WaitFor(t, time.Minute, "the retried event archived", func() (bool, string) {
		n := 0
		for _, o := range e.readArchive(t, from, to) {
			for _, l := range o.lines {
				if bytes.Equal(l, good.raw) {
					n++
				}
			}
		}
		return n > 0, "not yet"
	})
	e.waitArchived(t, time.Minute, e.lastSeq(t))
	e.waitConsumer(t, normConsumer)
	checkRetriedAgain(t, e.js, archiveDL, retryFrom)
	checkExactlyOnce(t, e.readArchive(t, from, to), [][]byte{live.raw, good.raw})

	// normalize skipped both retries: nothing of them in CALLPIPE_NORMALIZED
	for _, m := range streamMsgsFrom(t, e.js, bus.NormalizedStream, normFrom) {
		if bytes.Contains(m.Data, []byte(good.id)) {
			t.Fatalf("the retried archive dead letter was normalized: %s %s", m.Subject, m.Header)
		}
	}
	fams := scrape(t, listen)
	if v, _ := sample(fams, "callpipe_transform_events_total", map[string]string{"result": "skipped"}); v != 2 {
		t.Fatalf("normalize skipped %v retried messages, want 2", v)
	}
}

// streamMsgsFrom reads every message of stream from sequence from on.
func streamMsgsFrom(t *testing.T, js jetstream.JetStream, stream string, from uint64) []*nats.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	last := streamState(t, js, stream).LastSeq
	if last < from {
		return nil
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from})
	if err != nil {
		t.Fatal(err)
	}
	var out []*nats.Msg
	for {
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		done := false
		for m := range batch.Messages() {
			out = append(out, &nats.Msg{Subject: m.Subject(), Data: m.Data(), Header: m.Headers()})
			if md, err := m.Metadata(); err == nil && md.Sequence.Stream >= last {
				done = true
			}
		}
		if done || batch.Error() != nil {
			return out
		}
	}
}
