package integration

import (
	"context"
	"os"
	"os/exec"
	"reflect"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/store/callsdb"
)

func chPartitions(t *testing.T, out *chsink.Output, db, table string) []string {
	t.Helper()
	rows, err := out.Conn().Query(context.Background(), callsdb.WithDB(callsdb.PartitionsQuery(table), db))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// TestClickHouseRetentionDropsPartitions: on 18.16 (no TTL) retention drops
// whole partitions once all their rows are past retention_days: the per-call
// tables by day, and only days whose usage is sealed into the rollups; the
// rollups by month on their own setting. Usage stays exact from the rollups
// after the calls are gone, and a second run drops nothing.
func TestClickHouseRetentionDropsPartitions(t *testing.T) {
	out, db := chTestDB(t)
	if out.Server().Modern() {
		t.Fatalf("this test is for servers without TTL; got %s", out.Server())
	}
	calls := genCalls(41, "ret-"+testkit.RandomHex(t, 3), 7000, 7, 5, 50, chBase) // 2026-11-01 .. 07
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := out.WriteBatch(ctx, calls); err != nil {
		t.Fatal(err)
	}
	day := func(d int) string { return chBase.AddDate(0, 0, d).Format("20060102") }

	// calls kept 2 days, at 2026-11-06 12:00: days up to 11-03 are expired,
	// but nothing is sealed yet: their usage would be lost, so they stay
	now := chBase.Add(5*24*time.Hour + 12*time.Hour)
	dropped, err := callsdb.DropExpired(ctx, out.Conn(), db, callsdb.Topology{}, callsdb.Retention{Calls: 2}, now, nil)
	if err != nil || len(dropped) != 0 {
		t.Fatalf("unsealed days dropped: %v (err %v)", dropped, err)
	}
	// the sealer's clock a minute ahead of the marks the late writes just
	// made (else they are within ClockSkew of the seals, which stay dirty)
	sealer := &callsdb.Sealer{Conn: out.Conn(), Database: db, Now: func() time.Time { return time.Now().Add(time.Minute) }}
	if _, _, err := sealer.Rebuild(ctx, chBase, chBase.AddDate(0, 0, 7), nil); err != nil {
		t.Fatal(err)
	}
	dropped, err = callsdb.DropExpired(ctx, out.Conn(), db, callsdb.Topology{}, callsdb.Retention{Calls: 2}, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"calls/" + day(0), "calls/" + day(1), "calls/" + day(2), "calls_by_user/" + day(0), "calls_by_user/" + day(1), "calls_by_user/" + day(2)}; !reflect.DeepEqual(dropped, want) {
		t.Fatalf("dropped %v, want %v", dropped, want)
	}
	if got, want := chPartitions(t, out, db, "calls"), []string{day(3), day(4), day(5), day(6)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("calls partitions %v, want %v", got, want)
	}
	var kept []schema.Call
	for i := range calls {
		if !calls[i].StartTime.Before(chBase.AddDate(0, 0, 3)) {
			kept = append(kept, calls[i])
		}
	}
	if d, _, err := callsdb.CallCounts(ctx, out.Conn(), db); err != nil || d != uint64(len(kept)) {
		t.Fatalf("calls after retention: %d (err %v), want %d", d, err, len(kept))
	}
	// the rollups have their own retention (none here): still every call
	checkUsage(t, out.Conn(), db, calls, chBase, chBase.AddDate(0, 0, 7))
	if again, err := callsdb.DropExpired(ctx, out.Conn(), db, callsdb.Topology{}, callsdb.Retention{Calls: 2}, now, nil); err != nil || len(again) != 0 {
		t.Fatalf("second run dropped %v (err %v), want nothing", again, err)
	}

	// rollups kept 10 days, at 2026-12-12: November ended 12-01, +10 days
	// passed; the dirty marks follow the calls' retention (40 days: kept)
	dec := time.Date(2026, 12, 12, 0, 0, 0, 0, time.UTC)
	dropped, err = callsdb.DropExpired(ctx, out.Conn(), db, callsdb.Topology{}, callsdb.Retention{Calls: 40, Rollups: 10}, dec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"usage_rollup/202611", "usage_rollup_user_copy/202611", "usage_rollup_by_model/202611", "usage_seals/202611"}; !reflect.DeepEqual(dropped, want) {
		t.Fatalf("dropped %v, want %v", dropped, want)
	}
	// without seals every hour is read from the calls that are left
	g := callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true, User: true}
	got, err := callsdb.Usage(ctx, out.Conn(), db, chBase, chBase.AddDate(0, 0, 7), g)
	if err != nil {
		t.Fatal(err)
	}
	if err := diffUsage(got, groundTruth(kept, chBase, chBase.AddDate(0, 0, 7), g)); err != nil {
		t.Fatalf("usage after the rollups' retention: %v", err)
	}
}

// TestClickHouseMigrateRetentionBinary: `callpipe migrate --retention` with
// clickhouse.retention_days.calls=5 drops the calls partitions older than
// that (wall clock) and keeps the rest.
func TestClickHouseMigrateRetentionBinary(t *testing.T) {
	out, db := chTestDB(t)
	today := time.Now().UTC().Truncate(24 * time.Hour)
	base := today.AddDate(0, 0, -9)
	calls := genCalls(42, "mret-"+testkit.RandomHex(t, 3), 2000, 10, 3, 3, base) // 10 days up to today
	var past []schema.Call
	for _, c := range calls {
		if c.StartTime.Before(time.Now()) {
			past = append(past, c)
		}
	}
	calls = past
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := out.WriteBatch(ctx, calls); err != nil {
		t.Fatal(err)
	}
	// calls days are dropped only once sealed into the rollups: seal them
	// (the test's writes marked their hours late moments ago; those marks
	// would keep the fresh seals dirty for ClockSkew, so they are cleared)
	if err := out.Conn().Exec(ctx, "TRUNCATE TABLE "+db+".usage_dirty_hours"); err != nil {
		t.Fatal(err)
	}
	rebuild := exec.CommandContext(ctx, testkit.Binary(t), "rollup", "rebuild", "--from", base.Format(time.DateOnly), "--to", today.AddDate(0, 0, 1).Format(time.DateOnly))
	rebuild.Env = append(os.Environ(), "CALLPIPE_CLICKHOUSE_ADDR="+harness.ClickHouse(t).Native, "CALLPIPE_CLICKHOUSE_DATABASE="+db)
	if b, err := rebuild.CombinedOutput(); err != nil {
		t.Fatalf("callpipe rollup rebuild: %v\n%s", err, b)
	}
	cmd := exec.CommandContext(ctx, testkit.Binary(t), "migrate", "--retention")
	cmd.Env = append(os.Environ(),
		"CALLPIPE_NATS_URL="+harness.NATS(t),
		"CALLPIPE_CLICKHOUSE_ADDR="+harness.ClickHouse(t).Native,
		"CALLPIPE_CLICKHOUSE_DATABASE="+db,
		"CALLPIPE_CLICKHOUSE_RETENTION_DAYS_CALLS=5",
	)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("callpipe migrate --retention: %v\n%s", err, b)
	}
	// day D is expired once D+1+5 days <= now: D <= today-6
	var want []string
	for d := today.AddDate(0, 0, -5); !d.After(today); d = d.AddDate(0, 0, 1) {
		want = append(want, d.Format("20060102"))
	}
	if got := chPartitions(t, out, db, "calls"); !reflect.DeepEqual(got, want) {
		t.Fatalf("calls partitions after migrate --retention: %v, want %v", got, want)
	}
}
