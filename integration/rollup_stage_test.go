package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/callsdb"
)

// TestClickHouseStageSealsRollups: the clickhouse worker stage seals the
// hours of the calls it stores once they are past the horizon (two workers:
// one holds the lease), `callpipe rollup status` reports them sealed, and
// the usage equals the calls; calls that arrive later for a sealed day are
// counted at once and sealed again.
func TestClickHouseStageSealsRollups(t *testing.T) {
	out, db := chTestDB(t)
	n := newCHNATS(t)
	base := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -3)
	calls := genCalls(61, "seal-"+testkit.RandomHex(t, 3), 6000, 2, 4, 20, base)
	n.publish(t, calls, "")
	env := []string{"CALLPIPE_CLICKHOUSE_ROLLUP_INTERVAL=1s", "CALLPIPE_CLICKHOUSE_ROLLUP_LEASE=3s"}
	w1, w2 := startCHWorker(t, n, db, env...), startCHWorker(t, n, db, env...)
	waitStored(t, n, out, db, uint64(len(calls)), 2*time.Minute)

	status := func() callsdb.RollupStatus {
		t.Helper()
		cmd := exec.Command(testkit.Binary(t), "rollup", "status", "--json")
		cmd.Env = append(os.Environ(), "CALLPIPE_CLICKHOUSE_ADDR="+harness.ClickHouse(t).Native, "CALLPIPE_CLICKHOUSE_DATABASE="+db)
		b, err := cmd.Output()
		if err != nil {
			t.Fatalf("callpipe rollup status: %v", err)
		}
		var st callsdb.RollupStatus
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatalf("rollup status --json: %v\n%s", err, b)
		}
		return st
	}
	sealedDays := func(want int) callsdb.RollupStatus {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			st := status()
			if st.SealedDays >= want && len(st.Unsealed) == 0 && len(st.Dirty) == 0 {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("rollups not sealed within a minute: %+v\nworker 1:\n%s\nworker 2:\n%s", st, w1.Out.String(), w2.Out.String())
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	// The two days with calls and yesterday are whole days to seal once
	// yesterday's last hour is past seal_after; in the first minutes after
	// a UTC midnight only the two are.
	wantDays := 3
	if st := status(); st.SealableBefore.Before(base.AddDate(0, 0, 3)) {
		wantDays = 2
	}
	st := sealedDays(wantDays)
	t.Logf("sealed through %s, %d hours and %d days sealed", st.SealedThrough, st.SealedHours, st.SealedDays)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	got, err := callsdb.UsageOf(ctx, out.Conn(), db, callsdb.UsageSpec{From: base, To: base.AddDate(0, 0, 2), Group: callsdb.GroupBy{Model: true}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 || !got[0].Histogram {
		t.Fatalf("usage not read from the sealed rollups: %+v", got)
	}
	checkUsage(t, out.Conn(), db, calls, base, base.AddDate(0, 0, 2))

	// late calls for the sealed days: counted at once, sealed again
	late := genCalls(62, "seal-late-"+testkit.RandomHex(t, 3), 500, 2, 4, 20, base)
	n.publish(t, late, "")
	all := append(append(calls[:0:0], calls...), late...)
	waitStored(t, n, out, db, uint64(len(all)), 2*time.Minute)
	checkUsage(t, out.Conn(), db, all, base, base.AddDate(0, 0, 2))
	time.Sleep(callsdb.ClockSkew) // marks within the skew of a seal keep the hour dirty a pass longer
	st = sealedDays(wantDays)
	checkUsage(t, out.Conn(), db, all, base, base.AddDate(0, 0, 2))
	t.Logf("late calls sealed again: %d hours, %d days sealed", st.SealedHours, st.SealedDays)

	for _, w := range []*chWorker{w1, w2} {
		if err := w.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := w.wait(t, time.Minute); err != nil {
			t.Fatalf("worker exit after SIGTERM: %v\n%s", err, w.Out.String())
		}
	}
}
