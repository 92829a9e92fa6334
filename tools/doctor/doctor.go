// Package doctor checks the dependencies of a callpipe deployment (NATS and
// its JetStream streams and consumers, ClickHouse and its schema version, the
// S3 bucket, Redis, Langfuse) and reports one line per thing checked: ok, or
// what is wrong and how to fix it.
//
// The caller builds the checks from its configuration (clients, addresses,
// ExpectPipeline for the bus) and prints them; Skipped stands for a
// dependency that is not configured, LangfuseSettings checks the Langfuse
// settings in effect (saved from the dashboard over configured, the secret
// unsealed) and Probe is the image's healthcheck. Encrypted marks a
// dependency's line with how its connection travels: [TLS] or [plain text].
package doctor

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Status is the outcome of one check.
type Status int

const (
	// OK: the dependency works as configured.
	OK Status = iota
	// Skip: the dependency is not configured, so nothing was checked.
	Skip
	// Warn: it works, but something needs attention (nothing is lost yet).
	Warn
	// Fail: it is broken; the pipeline (or part of it) cannot work.
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Skip:
		return "skip"
	case Warn:
		return "warn"
	default:
		return "FAIL"
	}
}

// Result is one line of the report.
type Result struct {
	Name   string // what was checked, e.g. "nats", "stream CALLPIPE_CALLS", "clickhouse schema"
	Status Status
	Detail string // what was found
	Fix    string // what to do about it (empty when OK)
}

func ok(name, format string, args ...any) Result {
	return Result{Name: name, Status: OK, Detail: fmt.Sprintf(format, args...)}
}

func fail(name, fix, format string, args ...any) Result {
	return Result{Name: name, Status: Fail, Detail: fmt.Sprintf(format, args...), Fix: fix}
}

func warn(name, fix, format string, args ...any) Result {
	return Result{Name: name, Status: Warn, Detail: fmt.Sprintf(format, args...), Fix: fix}
}

func skip(name, format string, args ...any) Result {
	return Result{Name: name, Status: Skip, Detail: fmt.Sprintf(format, args...)}
}

// Check examines one dependency and returns its lines (the first names the
// dependency itself; more follow only when it is reachable).
type Check func(ctx context.Context) []Result

// Run runs the checks concurrently, each under its own timeout, and returns
// their results in the order of checks.
func Run(ctx context.Context, timeout time.Duration, checks ...Check) []Result {
	out := make([][]Result, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			out[i] = c(cctx)
		})
	}
	wg.Wait()
	var all []Result
	for _, rs := range out {
		all = append(all, rs...)
	}
	return all
}

// Encrypted marks the first line of c (the dependency's) with how its
// connection travels: "TLS", or "plain text" — credentials and call data
// readable on the network path.
func Encrypted(c Check, tls bool) Check {
	return func(ctx context.Context) []Result {
		rs := c(ctx)
		if len(rs) > 0 && rs[0].Status != Skip {
			if tls {
				rs[0].Detail += " [TLS]"
			} else {
				rs[0].Detail += " [plain text]"
			}
		}
		return rs
	}
}

// Broken counts the failed results.
func Broken(rs []Result) int {
	n := 0
	for _, r := range rs {
		if r.Status == Fail {
			n++
		}
	}
	return n
}

// Print writes one aligned line per result, then a summary line.
func Print(w io.Writer, rs []Result) error {
	width := 0
	for _, r := range rs {
		width = max(width, len(r.Name))
	}
	var b strings.Builder
	warns := 0
	for _, r := range rs {
		if r.Status == Warn {
			warns++
		}
		fmt.Fprintf(&b, "%-4s  %-*s  %s", r.Status, width, r.Name, oneLine(r.Detail))
		if r.Fix != "" {
			fmt.Fprintf(&b, " → fix: %s", oneLine(r.Fix))
		}
		b.WriteByte('\n')
	}
	switch broken := Broken(rs); {
	case broken > 0:
		fmt.Fprintf(&b, "doctor: %d broken, %d warning(s)\n", broken, warns)
	case warns > 0:
		fmt.Fprintf(&b, "doctor: everything reachable, %d warning(s)\n", warns)
	default:
		b.WriteString("doctor: all good\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// oneLine keeps a multi-line error (e.g. a driver's) on its report line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
