package callsdb

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestExpiredPartitions(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	// calls kept 10 days: a row from day D expires at D+10d; the whole
	// partition of day D once D+1d+10d <= now, i.e. D <= 2026-11-16
	got, err := ExpiredPartitions([]string{"20261115", "20261116", "20261117", "20261126"}, false, 10, now)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"20261115", "20261116"}; !reflect.DeepEqual(got, want) {
		t.Errorf("daily: got %v want %v", got, want)
	}
	// monthly, 30 days: October ends 2026-11-01, + 30d = 2026-12-01 > now
	got, err = ExpiredPartitions([]string{"202609", "202610", "202611"}, true, 30, now)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"202609"}; !reflect.DeepEqual(got, want) {
		t.Errorf("monthly: got %v want %v", got, want)
	}
	if got, _ := ExpiredPartitions([]string{"20000101"}, false, 0, now); got != nil {
		t.Errorf("0 days keeps everything, got %v", got)
	}
	for _, bad := range []struct {
		id      string
		monthly bool
	}{{"2026111", false}, {"202611", false}, {"20261101", true}, {"all", false}} {
		if _, err := ExpiredPartitions([]string{bad.id}, bad.monthly, 1, now); err == nil {
			t.Errorf("partition %q (monthly=%v): no error", bad.id, bad.monthly)
		}
	}
}

func TestTableSettingStatements(t *testing.T) {
	old, _ := ParseServerVersion("18.16.1")
	modern, _ := ParseServerVersion("24.8.1.1")
	engines := map[string]string{
		"calls":             "ReplacingMergeTree(version) PARTITION BY toYYYYMMDD(start_time) ORDER BY (toStartOfHour(start_time), id) SETTINGS index_granularity = 8192",
		"usage_rollup":      "ReplacingMergeTree(version) PARTITION BY toYYYYMM(period) ORDER BY (by_user, grain, period) TTL period + toIntervalDay(400) SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000",
		"usage_dirty_hours": "ReplacingMergeTree(marked_at) PARTITION BY toYYYYMM(hour) ORDER BY hour TTL hour + toIntervalDay(5) SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000",
	}
	ret := Retention{Calls: 30, Rollups: 400}
	if got := TableSettingStatements(old, Topology{}, ret, engines); len(got) != 0 {
		t.Errorf("18.16 must get no TTL or dedup settings, got %q", got)
	}
	got := TableSettingStatements(modern, Topology{}, ret, engines)
	want := []string{
		"ALTER TABLE {db}.calls MODIFY TTL start_time + toIntervalDay(30)",
		"ALTER TABLE {db}.calls MODIFY SETTING non_replicated_deduplication_window = 1000",
		"ALTER TABLE {db}.usage_dirty_hours MODIFY TTL hour + toIntervalDay(30)",
		// usage_rollup already has both: nothing
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("modern:\n got %q\nwant %q", got, want)
	}
	clustered := map[string]string{}
	for k, v := range engines {
		clustered[k+"_local"] = strings.Replace(v, "ReplacingMergeTree(", "ReplicatedReplacingMergeTree('/p', '{replica}', ", 1)
	}
	got = TableSettingStatements(modern, Topology{Cluster: "c1"}, ret, clustered)
	want = []string{
		"ALTER TABLE {db}.calls_local ON CLUSTER c1 MODIFY TTL start_time + toIntervalDay(30)",
		"ALTER TABLE {db}.usage_dirty_hours_local ON CLUSTER c1 MODIFY TTL hour + toIntervalDay(30)",
	}
	if got := TableSettingStatements(modern, Topology{}, Retention{}, engines); !reflect.DeepEqual(got, []string{
		"ALTER TABLE {db}.calls MODIFY SETTING non_replicated_deduplication_window = 1000",
		"ALTER TABLE {db}.usage_dirty_hours REMOVE TTL",
		"ALTER TABLE {db}.usage_rollup REMOVE TTL",
	}) {
		t.Errorf("keep forever: %q", got)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("cluster:\n got %q\nwant %q", got, want)
	}
}

func TestDropPartitionStatement(t *testing.T) {
	if got := DropPartitionStatement(Topology{}, "calls", "20261101"); got != "ALTER TABLE {db}.calls DROP PARTITION ID '20261101'" {
		t.Error(got)
	}
	if got := DropPartitionStatement(Topology{Cluster: "c"}, "calls_local", "20261101"); got != "ALTER TABLE {db}.calls_local ON CLUSTER c DROP PARTITION ID '20261101'" {
		t.Error(got)
	}
}
