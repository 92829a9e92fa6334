package bus

import (
	"testing"

	"github.com/nats-io/nats.go"
)

func TestRoutedSinks(t *testing.T) {
	cases := []struct {
		sinks string
		sink  string
		want  bool
	}{
		{"", "clickhouse", true},
		{"clickhouse,langfuse", "clickhouse", true},
		{"clickhouse, langfuse", "langfuse", true},
		{"clickhouse", "langfuse", false},
		{"clickhouse", "archive", false},
	}
	for _, c := range cases {
		h := nats.Header{}
		if c.sinks != "" {
			h.Set(HeaderSinks, c.sinks)
		}
		if got := Routed(h, c.sink); got != c.want {
			t.Errorf("Routed(%q, %q) = %v, want %v", c.sinks, c.sink, got, c.want)
		}
	}
	if !Routed(nil, "clickhouse") {
		t.Error("a message without headers must reach every sink")
	}
}

// Replays skip the archive unless they name it; a message for one sink of
// CALLPIPE_NORMALIZED passes normalize, one for the archive only does not.
func TestRoutedStages(t *testing.T) {
	cases := []struct {
		replay, sinks, stage string
		want                 bool
	}{
		{"", "", StageArchive, true},
		{"", "", StageNormalize, true},
		{"job", "", StageArchive, false},
		{"job", "", StageNormalize, true},
		{"job", "", StageLangfuse, true},
		{"job", StageArchive, StageArchive, true},
		{"job", StageArchive, StageNormalize, false},
		{"job", StageArchive, StageClickHouse, false},
		{"job", StageClickHouse, StageNormalize, true},
		{"job", StageClickHouse, StageArchive, false},
		{"job", StageLangfuse, StageClickHouse, false},
		{"job", "clickhouse,langfuse", StageNormalize, true},
	}
	for _, c := range cases {
		h := nats.Header{}
		if c.replay != "" {
			h.Set(HeaderReplay, c.replay)
		}
		if c.sinks != "" {
			h.Set(HeaderSinks, c.sinks)
		}
		if got := Routed(h, c.stage); got != c.want {
			t.Errorf("Routed(replay %q, sinks %q, %s) = %v, want %v", c.replay, c.sinks, c.stage, got, c.want)
		}
	}
}

func TestCopyReplayHeaders(t *testing.T) {
	src := nats.Header{}
	src.Set(HeaderReplay, "job1")
	src.Set(HeaderSinks, "clickhouse")
	src.Set("Other", "x")
	dst := nats.Header{}
	CopyReplayHeaders(dst, src)
	if dst.Get(HeaderReplay) != "job1" || dst.Get(HeaderSinks) != "clickhouse" || dst.Get("Other") != "" {
		t.Fatalf("copied headers = %v", dst)
	}
	if !IsReplay(dst) || IsReplay(nats.Header{}) {
		t.Fatal("IsReplay")
	}
	if got := ReplayMsgID("j", "c"); got != "replay:j:c" {
		t.Fatalf("ReplayMsgID = %q", got)
	}
}

func TestStageDefaults(t *testing.T) {
	s := StageOf(StageClickHouse)
	stream, consumer, subject := "", "mine", ""
	s.Defaults(&stream, &consumer, &subject)
	if stream != s.Reads || consumer != "mine" || subject != s.Subject {
		t.Errorf("defaults: %q %q %q", stream, consumer, subject)
	}
	s.Defaults(nil, &consumer, nil) // nil fields are left alone
}
