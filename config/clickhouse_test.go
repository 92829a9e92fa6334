package config

import (
	"strings"
	"testing"
	"time"
)

func TestClickHouseSettings(t *testing.T) {
	c, err := Load(Sources{File: writeFile(t, "clickhouse:\n  cluster: prod\n  retention_days:\n    calls: 14\n  rollup:\n    seal_after: 45m\n"), Getenv: env(map[string]string{
		"CALLPIPE_CLICKHOUSE_RETENTION_DAYS_ROLLUPS": "90",
		"CALLPIPE_CLICKHOUSE_CONSUMER":               "ch-2",
	})})
	if err != nil {
		t.Fatal(err)
	}
	ch := c.ClickHouse
	if ch.Cluster != "prod" || ch.RetentionDays != (ClickHouseRetention{Calls: 14, Rollups: 90}) || ch.Consumer != "ch-2" || c.SealAfter() != 45*time.Minute {
		t.Fatalf("%+v", ch)
	}
	d := Default()
	if d.ClickHouse.RetentionDays != (ClickHouseRetention{Calls: 30, Rollups: 400}) || d.ClickHouse.Cluster != "" || d.ClickHouse.Subject != "callpipe.normalized.>" {
		t.Fatalf("defaults: one server, calls 30 days, rollups 400: %+v", d.ClickHouse)
	}
	// derived horizon: 10m duplicate window + 30s x 10 normalize deliveries +
	// 2 x 2m sink ack wait + 1s flush, rounded up to the minute
	if got := d.SealAfter(); got != 20*time.Minute {
		t.Fatalf("derived seal_after %s, want 20m", got)
	}
	for name, tc := range map[string]struct{ env, key string }{
		"addr":               {"CALLPIPE_CLICKHOUSE_ADDR=nohost", "clickhouse.addr"},
		"database":           {"CALLPIPE_CLICKHOUSE_DATABASE=a-b", "clickhouse.database"},
		"cluster":            {"CALLPIPE_CLICKHOUSE_CLUSTER=a b", "clickhouse.cluster"},
		"subject":            {"CALLPIPE_CLICKHOUSE_SUBJECT=callpipe.calls.>", "clickhouse.subject"},
		"consumer":           {"CALLPIPE_CLICKHOUSE_CONSUMER=a.b", "clickhouse.consumer"},
		"negative retention": {"CALLPIPE_CLICKHOUSE_RETENTION_DAYS_CALLS=-1", "clickhouse.retention_days.calls"},
		"retention overflow": {"CALLPIPE_CLICKHOUSE_RETENTION_DAYS_ROLLUPS=40000", "clickhouse.retention_days.rollups"},
		"seal after":         {"CALLPIPE_CLICKHOUSE_ROLLUP_SEAL_AFTER=30s", "clickhouse.rollup.seal_after"},
		"slice rows":         {"CALLPIPE_CLICKHOUSE_ROLLUP_SLICE_ROWS=5", "clickhouse.rollup.slice_rows"},
		"unknown zone":       {"CALLPIPE_CLICKHOUSE_ROLLUP_ZONES=UTC,Mars/Olympus", "clickhouse.rollup.zones"},
		"half-hour zone":     {"CALLPIPE_CLICKHOUSE_ROLLUP_ZONES=America/New_York,Asia/Kolkata", "clickhouse.rollup.zones"},
		"retention interval": {"CALLPIPE_CLICKHOUSE_RETENTION_INTERVAL=1s", "clickhouse.retention_interval"},
		"batch":              {"CALLPIPE_CLICKHOUSE_BATCH_SIZE=0", "clickhouse.batch_size"},
		"ack wait":           {"CALLPIPE_CLICKHOUSE_ACK_WAIT=1s", "clickhouse.ack_wait"},
		"idle flush":         {"CALLPIPE_CLICKHOUSE_IDLE_FLUSH=-1s", "clickhouse.idle_flush"},
	} {
		k, v, _ := strings.Cut(tc.env, "=")
		_, err := Load(Sources{File: writeFile(t, ""), Getenv: env(map[string]string{k: v})})
		if err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%s: error %v does not name %s", name, err, tc.key)
		}
	}
}

// TestClickHouseIdleFlush: the sink's idle flush is on by default and reaches
// the runner's batch policy; 0 turns it off.
func TestClickHouseIdleFlush(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want time.Duration
	}{
		{nil, 200 * time.Millisecond},
		{map[string]string{"CALLPIPE_CLICKHOUSE_IDLE_FLUSH": "50ms"}, 50 * time.Millisecond},
		{map[string]string{"CALLPIPE_CLICKHOUSE_IDLE_FLUSH": "0"}, 0},
	} {
		c, err := Load(Sources{File: writeFile(t, ""), Getenv: env(tc.env)})
		if err != nil {
			t.Fatal(err)
		}
		st, err := c.ClickHouseStage(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Sink.Batch.Idle; got != tc.want {
			t.Errorf("%v: batch idle %s, want %s", tc.env, got, tc.want)
		}
	}
}
