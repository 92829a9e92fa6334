package bus

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestFailureMsg(t *testing.T) {
	now := time.Date(2026, 12, 4, 17, 0, 0, 0, time.UTC)
	h := nats.Header{}
	h.Set(HeaderReplay, "job-1")
	h.Set(HeaderSinks, "clickhouse,langfuse")
	f := Failure{Stage: StageClickHouse, Stream: NormalizedStream, Subject: "callpipe.normalized.chat", Seq: 42,
		Attempts: 3, Header: h, Data: []byte("x"), Reason: "bad\r\ncall " + strings.Repeat("é", 2000)}
	m := f.Msg(now)
	want := map[string]string{
		HeaderStage: StageClickHouse, HeaderSourceStream: NormalizedStream, HeaderSourceSubject: "callpipe.normalized.chat",
		HeaderSourceSeq: "42", HeaderAttempts: "3", HeaderFirstFailure: "2026-12-04T17:00:00Z",
		HeaderReplay: "job-1", HeaderSinks: "clickhouse,langfuse", HeaderMsgID: "clickhouse:CALLPIPE_NORMALIZED:42",
	}
	for k, v := range want {
		if got := m.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if m.Subject != "callpipe.dlq.clickhouse" {
		t.Errorf("subject %q", m.Subject)
	}
	reason := m.Header.Get(HeaderError)
	if strings.ContainsAny(reason, "\r\n") || len(reason) > maxReasonBytes || !strings.HasPrefix(reason, "bad  call é") {
		t.Errorf("reason not sanitized: %d bytes %q…", len(reason), reason[:20])
	}

	// A retried dead letter failing again keeps its first failure time and
	// adds its attempts.
	d := deadLetterOf(&jetstream.RawStreamMsg{Sequence: 7, Header: m.Header, Data: m.Data})
	retry, err := d.RetryMsg()
	if err != nil {
		t.Fatal(err)
	}
	again := Failure{Stage: StageClickHouse, Stream: NormalizedStream, Subject: retry.Subject, Seq: 50, Attempts: 1,
		Header: retry.Header, Data: retry.Data, Reason: "bad"}.Msg(now.Add(time.Hour))
	if got := again.Header.Get(HeaderAttempts); got != "4" {
		t.Errorf("attempts after a retry = %s, want 4", got)
	}
	if got := again.Header.Get(HeaderFirstFailure); got != "2026-12-04T17:00:00Z" {
		t.Errorf("first failure after a retry = %s", got)
	}
}

// A retry goes back to the stage that failed only.
func TestRetryMsgRouting(t *testing.T) {
	cases := []struct {
		stage, subject, replay, sinks string
		wantReplay, wantSinks         string
		reaches, skips                []string
	}{
		{StageClickHouse, "callpipe.normalized.chat", "", "", "dlq-9", StageClickHouse, []string{StageClickHouse}, []string{StageLangfuse}},
		{StageLangfuse, "callpipe.normalized.chat", "job-1", "clickhouse,langfuse", "job-1", StageLangfuse, []string{StageLangfuse}, []string{StageClickHouse}},
		{StageArchive, "callpipe.calls.online", "", "", "dlq-9", StageArchive, []string{StageArchive}, []string{StageNormalize}},
		{StageNormalize, "callpipe.calls.online", "", "", "dlq-9", "", []string{StageNormalize, StageClickHouse, StageLangfuse}, []string{StageArchive}},
		{StageNormalize, "callpipe.calls.replay.job-2", "job-2", StageLangfuse, "job-2", StageLangfuse, []string{StageNormalize, StageLangfuse}, []string{StageArchive, StageClickHouse}},
	}
	for _, c := range cases {
		h := nats.Header{}
		h.Set(HeaderStage, c.stage)
		h.Set(HeaderSourceSubject, c.subject)
		if c.replay != "" {
			h.Set(HeaderReplay, c.replay)
		}
		if c.sinks != "" {
			h.Set(HeaderSinks, c.sinks)
		}
		m, err := deadLetterOf(&jetstream.RawStreamMsg{Sequence: 9, Header: h, Data: []byte("{}")}).RetryMsg()
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != c.subject || m.Header.Get(HeaderMsgID) != "retry:9" ||
			m.Header.Get(HeaderReplay) != c.wantReplay || m.Header.Get(HeaderSinks) != c.wantSinks {
			t.Errorf("%s: retry %s %v", c.stage, m.Subject, m.Header)
		}
		for _, s := range c.reaches {
			if !Routed(m.Header, s) {
				t.Errorf("%s dead letter: retry does not reach %s", c.stage, s)
			}
		}
		for _, s := range c.skips {
			if Routed(m.Header, s) {
				t.Errorf("%s dead letter: retry reaches %s", c.stage, s)
			}
		}
	}
	if _, err := deadLetterOf(&jetstream.RawStreamMsg{Sequence: 1, Header: nats.Header{HeaderStage: {StageArchive}}}).RetryMsg(); err == nil {
		t.Error("a dead letter without a source subject was retried")
	}
}

// Every stage of the table reads a stream of the table and has a consumer.
func TestTopology(t *testing.T) {
	for _, s := range Stages {
		if err := ValidSubject(s.Reads, s.Subject); err != nil || s.Consumer == "" {
			t.Errorf("stage %s: subject %q: %v, consumer %q", s.Name, s.Subject, err, s.Consumer)
		}
		if c := ConsumerOf(s.Name, ""); c.Name != s.Consumer || c.Stream != s.Reads {
			t.Errorf("ConsumerOf(%s) = %+v", s.Name, c)
		}
	}
	if c := ConsumerOf(StageClickHouse, "renamed"); c.Name != "renamed" {
		t.Errorf("configured name not kept: %+v", c)
	}
	if got := strings.Join(Readers(NormalizedStream), ","); got != "clickhouse,langfuse" {
		t.Errorf("Readers(normalized) = %s", got)
	}
}
