package amend

import (
	"testing"
	"time"
)

func TestSameCost(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	for _, c := range []struct {
		a, b *float64
		want bool
	}{
		{nil, nil, true},
		{f(1), nil, false},
		{nil, f(0), false},
		{f(0.1 + 0.2), f(0.3), true}, // stored as Float64: rounding is not a change
		{f(1.5), f(1.5000001), false},
	} {
		if got := SameCost(c.a, c.b); got != c.want {
			t.Errorf("SameCost(%v, %v) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

func TestJobID(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("x", 3600))
	if got := JobID("reprice", at); got != "reprice-20260304T040607" {
		t.Errorf("JobID = %q", got)
	}
}
