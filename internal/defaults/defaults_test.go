package defaults

import (
	"testing"
	"time"
)

func TestIfNotPositive(t *testing.T) {
	for _, c := range []struct{ v, want int }{{5, 5}, {0, 7}, {-3, 7}} {
		if got := IfNotPositive(c.v, 7); got != c.want {
			t.Errorf("IfNotPositive(%d, 7) = %d, want %d", c.v, got, c.want)
		}
	}
	if got := IfNotPositive(time.Duration(0), time.Second); got != time.Second {
		t.Errorf("duration: got %s", got)
	}
	if got := IfNotPositive(uint64(0), 9); got != 9 {
		t.Errorf("uint64: got %d", got)
	}
}
