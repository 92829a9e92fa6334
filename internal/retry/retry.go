// Package retry waits for a dependency that is not ready yet. A stage that
// starts before ClickHouse, S3, Langfuse or the NATS KV bucket answers must
// wait for it (reporting unready meanwhile) rather than exit, so that the
// order in which an orchestrator starts things does not matter.
package retry

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// Backoff is how often Until tries.
type Backoff struct {
	First   time.Duration // wait after the first failure; doubled per failure
	Max     time.Duration // longest wait (First when smaller)
	Attempt time.Duration // timeout of one attempt; 0: only ctx bounds it
}

// Until calls try until it returns nil or ctx ends. After each failure it
// calls failed (which reports the stage unready and logs) with the error and
// the wait before the next attempt. It returns nil once try succeeded, the
// error of a try that returned Permanent(err), or ctx's error when ctx ended
// first.
func Until(ctx context.Context, b Backoff, try func(context.Context) error, failed func(err error, wait time.Duration)) error {
	wait := b.First
	for {
		err := attempt(ctx, b.Attempt, try)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if p := (*permanentError)(nil); errors.As(err, &p) {
			return err
		}
		failed(err, wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = max(b.First, min(2*wait, b.Max))
	}
}

// Permanent marks err as a failure another attempt cannot change (the
// dependency answered, and said no: an invalid configuration), so that
// Until returns it instead of retrying. It reads as err (Error, errors.Is
// and errors.As see through it) where nothing retries.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

func attempt(ctx context.Context, timeout time.Duration, try func(context.Context) error) error {
	if timeout <= 0 {
		return try(ctx)
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return try(actx)
}

// Reporting is the failed callback of a stage waiting for what: it tells
// waiting (nil: nobody) why the stage is not ready and logs
// "<what> not ready; retrying" with the error and the wait.
func Reporting(what string, waiting func(error), log *slog.Logger) func(err error, wait time.Duration) {
	return func(err error, wait time.Duration) {
		if waiting != nil {
			waiting(err)
		}
		log.Warn(what+" not ready; retrying", "err", err, "retry_in", wait)
	}
}
