package config

import (
	"strings"
	"testing"
)

func TestClickHouseSettings(t *testing.T) {
	c, err := Load(Sources{File: writeFile(t, "clickhouse:\n  cluster: prod\n  retention_days:\n    calls: 30\n    usage_hour_model: 90\n"), Getenv: env(map[string]string{
		"CALLPIPE_CLICKHOUSE_RETENTION_DAYS_USAGE_DAY_MODEL_USER": "400",
		"CALLPIPE_CLICKHOUSE_CONSUMER":                            "ch-2",
	})})
	if err != nil {
		t.Fatal(err)
	}
	ch := c.ClickHouse
	if ch.Cluster != "prod" || ch.RetentionDays != (ClickHouseRetention{Calls: 30, UsageDayModelUser: 400, UsageHourModel: 90}) || ch.Consumer != "ch-2" {
		t.Fatalf("%+v", ch)
	}
	if d := Default().ClickHouse; d.RetentionDays != (ClickHouseRetention{}) || d.Cluster != "" || d.Subject != "callpipe.normalized.>" {
		t.Fatalf("defaults keep everything on one server: %+v", d)
	}
	for name, tc := range map[string]struct{ env, key string }{
		"addr":               {"CALLPIPE_CLICKHOUSE_ADDR=nohost", "clickhouse.addr"},
		"database":           {"CALLPIPE_CLICKHOUSE_DATABASE=a-b", "clickhouse.database"},
		"cluster":            {"CALLPIPE_CLICKHOUSE_CLUSTER=a b", "clickhouse.cluster"},
		"subject":            {"CALLPIPE_CLICKHOUSE_SUBJECT=callpipe.calls.>", "clickhouse.subject"},
		"consumer":           {"CALLPIPE_CLICKHOUSE_CONSUMER=a.b", "clickhouse.consumer"},
		"negative retention": {"CALLPIPE_CLICKHOUSE_RETENTION_DAYS_CALLS=-1", "clickhouse.retention_days.calls"},
		"retention overflow": {"CALLPIPE_CLICKHOUSE_RETENTION_DAYS_USAGE_HOUR_MODEL=40000", "clickhouse.retention_days.usage_hour_model"},
		"retention interval": {"CALLPIPE_CLICKHOUSE_RETENTION_INTERVAL=1s", "clickhouse.retention_interval"},
		"batch":              {"CALLPIPE_CLICKHOUSE_BATCH_SIZE=0", "clickhouse.batch_size"},
		"ack wait":           {"CALLPIPE_CLICKHOUSE_ACK_WAIT=1s", "clickhouse.ack_wait"},
	} {
		k, v, _ := strings.Cut(tc.env, "=")
		_, err := Load(Sources{File: writeFile(t, ""), Getenv: env(map[string]string{k: v})})
		if err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%s: error %v does not name %s", name, err, tc.key)
		}
	}
}
