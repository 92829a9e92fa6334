package retry

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestUntilDoublesUpToMaxAndStopsOnSuccess(t *testing.T) {
	var waits []time.Duration
	calls := 0
	err := Until(context.Background(), Backoff{First: time.Millisecond, Max: 4 * time.Millisecond}, func(context.Context) error {
		calls++
		if calls < 5 {
			return errors.New("not yet")
		}
		return nil
	}, func(_ error, wait time.Duration) { waits = append(waits, wait) })
	if err != nil || calls != 5 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
	want := []time.Duration{time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond, 4 * time.Millisecond}
	if len(waits) != len(want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits %v, want %v", waits, want)
		}
	}
}

func TestUntilEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	err := Until(ctx, Backoff{First: time.Hour, Max: time.Hour, Attempt: time.Second}, func(actx context.Context) error {
		if _, ok := actx.Deadline(); !ok {
			t.Error("attempt without its timeout")
		}
		return errors.New("down")
	}, func(error, time.Duration) { cancel() })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}

func TestUntilReturnsAPermanentErrorAtOnce(t *testing.T) {
	invalid := errors.New("replicas > 1 not supported in non-clustered mode")
	calls := 0
	err := Until(context.Background(), Backoff{First: time.Millisecond, Max: time.Millisecond}, func(context.Context) error {
		calls++
		if calls == 1 {
			return errors.New("timeout") // transient: retried
		}
		return fmt.Errorf("provision stream X: %w", Permanent(invalid))
	}, func(error, time.Duration) {})
	if calls != 2 {
		t.Fatalf("%d calls, want 2 (one retry of the transient failure, none of the permanent one)", calls)
	}
	if !errors.Is(err, invalid) || err.Error() != "provision stream X: "+invalid.Error() {
		t.Fatalf("err %v, want the permanent error as try wrapped it", err)
	}
	wrapped := fmt.Errorf("provision: %w", Permanent(invalid))
	if !errors.Is(wrapped, invalid) || wrapped.Error() != "provision: "+invalid.Error() {
		t.Fatalf("Permanent is not transparent: %v", wrapped)
	}
	if Permanent(nil) != nil {
		t.Fatal("Permanent(nil) is not nil")
	}
}
