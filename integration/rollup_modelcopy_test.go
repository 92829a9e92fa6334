package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestRollupModelCopy: every seal copies its rows summed over users (and an
// hour's rows per model) into usage_rollup_by_model (migration 0008), which
// reads without users read: the copy holds exactly those rows of the current
// seals, a row only in the copy is what such a read counts, and the answers
// equal the calls collapsed by id with the copy and without it (seals from
// before 0008, read from usage_rollup); rollup status counts the seals
// without, and a rebuild gives them their copy.
func TestRollupModelCopy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	from := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -3)
	to := from.AddDate(0, 0, 2)
	conn, db, o, sealer := sealedSynthetic(ctx, t, callsdb.SyntheticLoad{Calls: 40_000, From: from, Span: to.Sub(from), Models: 4, Users: 20, DuplicatePercent: 3, Seed: 37})
	status := func() callsdb.RollupStatus { return rollupStatus(ctx, t, conn, db) }
	if st := status(); st.WithoutModelCopy != 0 || st.SealedHours < 48 || st.SealedDays < 2 {
		t.Fatalf("after rebuild: %d seals without model copy (%d hours, %d days sealed)", st.WithoutModelCopy, st.SealedHours, st.SealedDays)
	}

	// the copy is usage_rollup's rows at levels 0 and 3 of the current
	// seals, row for row
	const current = "(grain, period, version) IN (SELECT grain, period, max(version) FROM %[1]s.usage_seals GROUP BY grain, period)"
	summary := func(table, where string) string {
		t.Helper()
		var out string
		q := fmt.Sprintf(`SELECT toString(groupArray((by_user, grain, n, c, i, lat, ttf))) FROM (
SELECT by_user, grain, count() AS n, sum(calls) AS c, sum(input_tokens) AS i, sum(arraySum(latency_counts)) AS lat, sum(length(ttft_q)) AS ttf
FROM %[1]s.%[2]s WHERE %[3]s AND `+current+`
GROUP BY by_user, grain ORDER BY by_user, grain)`, db, table, where)
		if err := conn.QueryRow(ctx, q).Scan(&out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	orig, copied := summary("usage_rollup", "by_user IN (0, 3)"), summary("usage_rollup_by_model", "1")
	if orig != copied || orig == "[]" {
		t.Fatalf("the copy without users differs from its rows in usage_rollup:\n%s\n%s", copied, orig)
	}
	checkRollupUsage(t, conn, db, o, from, to, "seals with copies without users")

	// a row only in the copy, at a sealed day's version, is what a read
	// per model counts (and one per user does not)
	var v uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT max(version) FROM %s.usage_seals WHERE grain = 2 AND period = toDateTime(%d, 'UTC')", db, from.Unix())).Scan(&v); err != nil {
		t.Fatal(err)
	}
	addMarkerRow(ctx, t, conn, db, "usage_rollup_by_model", 2, from, v)
	marker := func(g callsdb.GroupBy) uint64 { return markerCalls(ctx, t, conn, db, from, to, g) }
	if n := marker(callsdb.GroupBy{Model: true}); n != 7 {
		t.Fatalf("a read per model counted %d calls of the copy's marker row, want 7", n)
	}
	if n := marker(callsdb.GroupBy{Model: true, User: true}); n != 0 {
		t.Fatalf("a read per model and user counted %d calls of the copy without users", n)
	}

	// seals as recorded before migration 0008: no copy (the marker goes
	// with it), model_copy = 0
	sealsAsBefore(ctx, t, conn, db, "model_copy", -1)
	if err := conn.Exec(ctx, callsdb.WithDB("TRUNCATE TABLE {db}.usage_rollup_by_model", db)); err != nil {
		t.Fatal(err)
	}
	st := status()
	if st.WithoutModelCopy != st.SealedHours+st.SealedDays+st.SealedLocalDays+st.SealedWeeks {
		t.Fatalf("seals without model copy: %d of %d hours + %d days + %d local days + %d weeks", st.WithoutModelCopy, st.SealedHours, st.SealedDays, st.SealedLocalDays, st.SealedWeeks)
	}
	checkRollupUsageEvery(t, conn, db, o, from, to, "seals without copies (read from usage_rollup)", 2)

	if _, _, err := sealer.Rebuild(ctx, from, to, nil); err != nil {
		t.Fatal(err)
	}
	if st := status(); st.WithoutModelCopy != 0 {
		t.Fatalf("after the second rebuild: %d seals without model copy", st.WithoutModelCopy)
	}
	if got := summary("usage_rollup_by_model", "1"); got != summary("usage_rollup", "by_user IN (0, 3)") {
		t.Fatalf("after the second rebuild the copy differs:\n%s", got)
	}
	checkRollupUsageEvery(t, conn, db, o, from, to, "sealed again, with copies", 2)
}
