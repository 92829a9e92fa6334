package replay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
)

func TestJobIDDeterministic(t *testing.T) {
	from := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	o := Options{From: from, To: from.Add(24 * time.Hour), Model: "m", Sinks: []string{"clickhouse"}, Bucket: "b", Prefix: "raw/v1"}
	a, b := JobID(o), JobID(o)
	if a != b || !validJob.MatchString(a) || !strings.HasPrefix(a, "r-") {
		t.Fatalf("job ids %q %q", a, b)
	}
	o.User = "u"
	if JobID(o) == a {
		t.Fatal("different arguments give the same job id")
	}
	if Subject("j1") != "callpipe.calls.replay.j1" {
		t.Fatalf("subject %s", Subject("j1"))
	}
}

func TestRunRejectsBadArguments(t *testing.T) {
	from := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	if _, err := Run(context.Background(), nil, nil, nil, Options{From: from, To: from}); err == nil || !strings.Contains(err.Error(), "--to") {
		t.Fatalf("empty range: %v", err)
	}
	if _, err := Run(context.Background(), nil, nil, nil, Options{Job: "a.b", From: from, To: from.Add(time.Hour)}); err == nil || !strings.Contains(err.Error(), "job") {
		t.Fatalf("bad job: %v", err)
	}
	if _, err := Run(context.Background(), nil, nil, nil, Options{Job: "ok", From: from, To: from.Add(time.Hour)}); err == nil || !strings.Contains(err.Error(), "checkpoint") {
		t.Fatalf("no checkpoint store: %v", err)
	}
}

func TestMatch(t *testing.T) {
	from := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	r := &runner{o: Options{From: from, To: from.Add(time.Hour), Model: "m1", User: "alice"}}
	ev := func(start time.Time, model, user string) *schema.Event {
		return &schema.Event{ID: "x", StartTime: start, Model: model, User: user}
	}
	ctx := context.Background()
	cases := []struct {
		ev   *schema.Event
		want bool
	}{
		{ev(from, "m1", "alice"), true},
		{ev(from.Add(time.Hour), "m1", "alice"), false}, // end is exclusive
		{ev(from.Add(-time.Nanosecond), "m1", "alice"), false},
		{ev(from, "m2", "alice"), false},
		{ev(from, "m1", "bob"), false},
	}
	for i, c := range cases {
		if got := r.match(ctx, c.ev); got != c.want {
			t.Errorf("case %d: match %v, want %v", i, got, c.want)
		}
	}
	r.o.UserOf = func(context.Context, *schema.Event) string { return "alice" }
	if !r.match(ctx, ev(from, "m1", "")) {
		t.Error("UserOf is not used for the user filter")
	}
}
