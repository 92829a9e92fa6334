package callsdb

import (
	"sync"
	"testing"
)

// TestVersionsIncrease: versions follow the clock, and still increase when
// it stalls or steps back, also when handed out concurrently.
func TestVersionsIncrease(t *testing.T) {
	var v Versions
	for i, step := range []struct{ tick, want uint64 }{{100, 100}, {100, 101}, {50, 102}, {200, 200}, {199, 201}} {
		if got := v.Next(step.tick); got != step.want {
			t.Fatalf("step %d: Next(%d) = %d, want %d", i, step.tick, got, step.want)
		}
	}
	seen := make(chan uint64, 4000)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 1000 {
				seen <- v.Next(300)
			}
		})
	}
	wg.Wait()
	close(seen)
	got := map[uint64]bool{}
	for n := range seen {
		if got[n] {
			t.Fatalf("version %d handed out twice", n)
		}
		got[n] = true
	}
	if !got[300] || !got[4299] {
		t.Errorf("concurrent versions are not 300..4299")
	}
}
