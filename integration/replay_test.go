package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/store/callsdb"
)

// TestReplayDayIntoFreshClickHouse archives a day of calls while normalize
// and clickhouse write them into database A, then replays the day from the
// archive with `callpipe replay` into a fresh database B: every usage grouping
// of B equals A's. Running the same replay again does nothing (checkpoint);
// replaying the day under a second job id re-sends every call and leaves B's
// rollups unchanged.
func TestReplayDayIntoFreshClickHouse(t *testing.T) {
	e := newArchEnv(t)
	const n = 10_000
	day := archDay(t) // a day of its own: redeliveries left over from earlier runs cannot land in it
	evs := archEvents(e.run, n, day, 24, 50, 21)
	e.publish(t, eventRaws(evs), func(i int) string { return evs[i].id }, nil)
	last := e.lastSeq(t)
	outA, dbA := chTestDB(t)
	outB, dbB := chTestDB(t)
	from, to := day, day.Add(24*time.Hour)

	chEnv := func(db, consumer, subject string, extra ...string) []string {
		// the archived calls are from 2021: kept past the default 30 days
		return e.env(append([]string{"CALLPIPE_CLICKHOUSE_DATABASE=" + db, "CALLPIPE_CLICKHOUSE_FLUSH_INTERVAL=200ms", "CALLPIPE_CLICKHOUSE_RETENTION_DAYS_CALLS=0",
			"CALLPIPE_TRANSFORM_CONSUMER=" + consumer, "CALLPIPE_TRANSFORM_SUBJECT=" + subject,
			"CALLPIPE_ARCHIVE_FLUSH_INTERVAL=2s", "CALLPIPE_ARCHIVE_ACK_WAIT=30s", "CALLPIPE_WORKER_LISTEN=" + testkit.FreeAddr(t)}, extra...)...)
	}
	total := func(out *chsink.Output, db string) (uint64, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		rows, err := callsdb.Usage(ctx, out.Conn(), db, from, to, callsdb.GroupBy{})
		if err != nil {
			return 0, err.Error()
		}
		var c uint64
		for _, r := range rows {
			c += r.Calls
		}
		return c, fmt.Sprintf("%d calls in %s", c, db)
	}
	cleanupConsumer := func(name string) {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = e.js.DeleteConsumer(ctx, bus.CallsStream, name)
		})
	}

	testkit.Binary(t)
	t0 := time.Now()
	phase := func(what string) { t.Logf("%s: %s", what, time.Since(t0).Round(time.Millisecond)); t0 = time.Now() }
	// original pipeline: archive + normalize + clickhouse into A
	cleanupConsumer(e.run + "-norm")
	w := e.start(t, chEnv(dbA, e.run+"-norm", e.subject+".>"), "worker", "--stages", "archive,normalize,clickhouse")
	testkit.WaitFor(t, 2*time.Minute, "day in database A", func() (bool, string) { c, s := total(outA, dbA); return c == n, s })
	e.waitArchived(t, time.Minute, last)
	w.Stop(t, 30*time.Second)
	phase("original pipeline into A")

	// replay into B with only normalize + clickhouse running
	replayRun := func(job string, stopAfter time.Duration, extra ...string) string {
		p := e.start(t, chEnv(dbB, "", ""), append([]string{"replay", "--from", from.Format(time.DateOnly), "--to", to.Format(time.DateOnly),
			"--sinks", "clickhouse", "--job", job}, extra...)...)
		if stopAfter > 0 {
			time.Sleep(stopAfter)
			_ = p.Cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-p.Done():
		case <-time.After(2 * time.Minute):
			t.Fatalf("replay %s did not finish", job)
		}
		if !p.Cmd.ProcessState.Success() {
			t.Fatalf("replay %s: %s\n%s", job, p.Cmd.ProcessState, p.Out.String())
		}
		return p.Out.String()
	}
	job1, job2 := e.run+"-r1", e.run+"-r2"
	cleanupConsumer(e.run + "-norm-r1")
	listen := testkit.FreeAddr(t)
	w = e.start(t, chEnv(dbB, e.run+"-norm-r1", "callpipe.calls.replay."+job1, "CALLPIPE_WORKER_LISTEN="+listen), "worker", "--stages", "normalize,clickhouse")
	// stopped part way (rate-limited, SIGTERM), then resumed from the Redis checkpoint
	out := replayRun(job1, 3*time.Second, "--rate", "2000")
	if !strings.Contains(out, "stopped after") || !strings.Contains(out, "ETA") {
		t.Fatalf("stopped replay: want 'stopped after' and progress, got:\n%s", out)
	}
	out = replayRun(job1, 0)
	if !strings.Contains(out, fmt.Sprintf("%d calls published", n)) || !strings.Contains(out, "finished earlier") {
		t.Fatalf("resumed replay output lacks the published count:\n%s", out)
	}
	t.Logf("resumed: %s", out[strings.LastIndex(out, "replay "+job1+": done"):])
	testkit.WaitFor(t, 2*time.Minute, "day in database B", func() (bool, string) { c, s := total(outB, dbB); return c == n, s })
	e.waitConsumer(t, e.run+"-norm-r1")
	phase("replay into B")
	compareUsage(t, outA, dbA, outB, dbB, from, to)
	phase("compare")

	// the same job again: finished, nothing sent
	if out := replayRun(job1, 0); !strings.Contains(out, "already finished") {
		t.Fatalf("second run of job %s: want 'already finished', got:\n%s", job1, out)
	}
	w.Stop(t, 30*time.Second)

	// a second job re-sends the whole day: B must not change
	cleanupConsumer(e.run + "-norm-r2")
	listen = testkit.FreeAddr(t)
	w = e.start(t, chEnv(dbB, e.run+"-norm-r2", "callpipe.calls.replay."+job2, "CALLPIPE_WORKER_LISTEN="+listen), "worker", "--stages", "normalize,clickhouse")
	if out := replayRun(job2, 0); !strings.Contains(out, fmt.Sprintf("%d calls published", n)) {
		t.Fatalf("replay %s output:\n%s", job2, out)
	}
	e.waitConsumer(t, e.run+"-norm-r2")
	// every re-sent call reached ClickHouse again before comparing
	testkit.WaitFor(t, 2*time.Minute, "second replay inserted", func() (bool, string) {
		v, err := metricValue(listen, "callpipe_clickhouse_rows_written_total")
		return err == nil && v >= n, fmt.Sprintf("rows written %v (err %v)", v, err)
	})
	w.Stop(t, 30*time.Second)
	phase("second replay")
	compareUsage(t, outA, dbA, outB, dbB, from, to)
}

// archDay is a random UTC day in 2021..2025 for one test run.
func archDay(t testing.TB) time.Time {
	var n uint64
	fmt.Sscanf(testkit.RandomHex(t, 4), "%x", &n)
	return time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, int(n%1800))
}

// metricValue reads one unlabelled sample from a process's /metrics.
func metricValue(listen, name string) (float64, error) {
	resp, err := http.Get("http://" + listen + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			return f, err
		}
	}
	return 0, fmt.Errorf("%s not in /metrics", name)
}

// waitConsumer waits until the named consumer on CALLPIPE_CALLS has nothing
// pending or unacked.
func (e *archEnv) waitConsumer(t testing.TB, name string) {
	t.Helper()
	testkit.WaitFor(t, 2*time.Minute, "consumer "+name+" caught up", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := e.js.Consumer(ctx, bus.CallsStream, name)
		if err != nil {
			return false, err.Error()
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return ci.NumPending == 0 && ci.NumAckPending == 0 && ci.Delivered.Consumer > 0,
			fmt.Sprintf("pending=%d unacked=%d", ci.NumPending, ci.NumAckPending)
	})
}

// compareUsage requires every grouping of Usage to be the same in both databases.
func compareUsage(t testing.TB, outA *chsink.Output, dbA string, outB *chsink.Output, dbB string, from, to time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, g := range callsdb.AllGroupings() {
		a, err := callsdb.Usage(ctx, outA.Conn(), dbA, from, to, g)
		if err != nil {
			t.Fatal(err)
		}
		b, err := callsdb.Usage(ctx, outB.Conn(), dbB, from, to, g)
		if err != nil {
			t.Fatal(err)
		}
		if len(a) == 0 {
			t.Fatalf("usage %s: no rows in %s", g, dbA)
		}
		if err := diffUsage(b, a); err != nil {
			t.Fatalf("usage %s: replayed %s differs from original %s: %v", g, dbB, dbA, err)
		}
	}
}
