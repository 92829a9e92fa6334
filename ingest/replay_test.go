package ingest

import (
	"testing"

	"github.com/nats-io/nats.go"
)

func TestSinkSelected(t *testing.T) {
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
		if got := SinkSelected(h, c.sink); got != c.want {
			t.Errorf("SinkSelected(%q, %q) = %v, want %v", c.sinks, c.sink, got, c.want)
		}
	}
	if !SinkSelected(nil, "clickhouse") {
		t.Error("a message without headers must reach every sink")
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
