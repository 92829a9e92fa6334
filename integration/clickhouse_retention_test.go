package integration

import (
	"context"
	"os"
	"os/exec"
	"reflect"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/harness"
	"github.com/callpipe/callpipe/schema"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
)

func chPartitions(t *testing.T, out *chsink.Output, db, table string) []string {
	t.Helper()
	rows, err := out.Conn().Query(context.Background(), chsink.WithDB(chsink.PartitionsQuery(table), db))
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
// whole partitions once all their rows are past retention_days: calls by
// day, the rollups by month, each table on its own setting; the rest stays
// exact and a second run drops nothing.
func TestClickHouseRetentionDropsPartitions(t *testing.T) {
	out, db := chTestDB(t)
	if out.Server().Modern() {
		t.Fatalf("this test is for servers without TTL; got %s", out.Server())
	}
	calls := genCalls(41, "ret-"+chRandHex(t, 3), 7000, 7, 5, 50, chBase) // 2026-11-01 .. 07
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := out.WriteBatch(ctx, calls); err != nil {
		t.Fatal(err)
	}
	day := func(d int) string { return chBase.AddDate(0, 0, d).Format("20060102") }

	// calls kept 2 days, at 2026-11-06 12:00: days up to 11-03 are expired
	now := chBase.Add(5*24*time.Hour + 12*time.Hour)
	dropped, err := chsink.DropExpired(ctx, out.Conn(), db, chsink.Topology{}, chsink.Retention{Calls: 2}, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"calls/" + day(0), "calls/" + day(1), "calls/" + day(2)}; !reflect.DeepEqual(dropped, want) {
		t.Fatalf("dropped %v, want %v", dropped, want)
	}
	if got, want := chPartitions(t, out, db, "calls"), []string{day(3), day(4), day(5), day(6)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("calls partitions %v, want %v", got, want)
	}
	var kept uint64
	for i := range calls {
		if !calls[i].StartTime.Before(chBase.AddDate(0, 0, 3)) {
			kept++
		}
	}
	if d, _, err := chsink.CallCounts(ctx, out.Conn(), db); err != nil || d != kept {
		t.Fatalf("calls after retention: %d (err %v), want %d", d, err, kept)
	}
	// the rollups have their own retention (none here): still every call
	checkUsage(t, out.Conn(), db, calls, chBase, chBase.AddDate(0, 0, 7))
	if again, err := chsink.DropExpired(ctx, out.Conn(), db, chsink.Topology{}, chsink.Retention{Calls: 2}, now, nil); err != nil || len(again) != 0 {
		t.Fatalf("second run dropped %v (err %v), want nothing", again, err)
	}

	// hour rollup kept 10 days, at 2026-12-12: November ended 12-01, +10 days passed
	dec := time.Date(2026, 12, 12, 0, 0, 0, 0, time.UTC)
	dropped, err = chsink.DropExpired(ctx, out.Conn(), db, chsink.Topology{}, chsink.Retention{UsageHourModel: 10, UsageDayModelUser: 12}, dec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"usage_hour_model/202611"}; !reflect.DeepEqual(dropped, want) {
		t.Fatalf("dropped %v, want %v (day rollup kept 12 days: November not yet expired on 12-12)", dropped, want)
	}
	rows, err := chsink.Usage(ctx, out.Conn(), db, chBase, chBase.AddDate(0, 0, 7), chsink.GroupBy{Bucket: chsink.BucketHour, Model: true})
	if err != nil || len(rows) != 0 {
		t.Fatalf("hour x model after its retention: %d rows (err %v), want none", len(rows), err)
	}
	g := chsink.GroupBy{Bucket: chsink.BucketDay, Model: true, User: true}
	got, err := chsink.Usage(ctx, out.Conn(), db, chBase, chBase.AddDate(0, 0, 7), g)
	if err != nil {
		t.Fatal(err)
	}
	if err := diffUsage(got, groundTruth(calls, chBase, chBase.AddDate(0, 0, 7), g)); err != nil {
		t.Fatalf("day x model x user after the hour rollup's retention: %v", err)
	}
}

// TestClickHouseMigrateRetentionBinary: `callpipe migrate --retention` with
// clickhouse.retention_days.calls=5 drops the calls partitions older than
// that (wall clock) and keeps the rest.
func TestClickHouseMigrateRetentionBinary(t *testing.T) {
	out, db := chTestDB(t)
	today := time.Now().UTC().Truncate(24 * time.Hour)
	base := today.AddDate(0, 0, -9)
	calls := genCalls(42, "mret-"+chRandHex(t, 3), 2000, 10, 3, 3, base) // 10 days up to today
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
	cmd := exec.CommandContext(ctx, callpipeBinary(t), "migrate", "--retention")
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
