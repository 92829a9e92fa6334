package config

import (
	"net"
	"strings"
	"time"
)

// ClickHouse configures the ClickHouse sink, `callpipe migrate` and the usage queries.
type ClickHouse struct {
	Addr     string `yaml:"addr" doc:"host:port of the native protocol"`
	Database string `yaml:"database" doc:"database name"`
	User     string `yaml:"user" doc:"user"`
	Password string `yaml:"password" secret:"true" doc:"password"`
	TLS      TLS    `yaml:"tls"`

	Consumer string `yaml:"consumer" doc:"durable consumer name of the ClickHouse sink on CALLPIPE_NORMALIZED"`
	Subject  string `yaml:"subject" doc:"subject filter of the ClickHouse sink (under callpipe.normalized.)"`

	BatchSize     int      `yaml:"batch_size" doc:"calls per insert: the sink flushes when a batch reaches this size"`
	BatchBytes    ByteSize `yaml:"batch_bytes" doc:"the sink also flushes when a batch's messages reach this size; it bounds the worker's memory (about (max_in_flight+1) x batch_bytes x 3) whatever the call size"`
	FlushInterval Duration `yaml:"flush_interval" doc:"the sink flushes a batch at the latest this long after its first call"`
	MaxInFlight   int      `yaml:"max_in_flight" doc:"batch inserts running at once"`
	MaxTextBytes  ByteSize `yaml:"max_text_bytes" doc:"input/output text, structured input/output and error are cut to this size in the calls table; 0 keeps all"`
	AckWait       Duration `yaml:"ack_wait" doc:"a call not acknowledged by the sink within this is redelivered (must exceed one insert)"`

	Cluster string `yaml:"cluster" doc:"cluster name from the servers' remote_servers: tables become Replicated*MergeTree ({shard}/{replica} macros) behind Distributed tables, DDL runs ON CLUSTER; empty = one server"`

	RetentionDays     ClickHouseRetention `yaml:"retention_days"`
	RetentionInterval Duration            `yaml:"retention_interval" doc:"how often the clickhouse stage drops expired partitions on servers without TTL (before 22.2)"`
}

// ClickHouseRetention is how many days each table keeps; 0 keeps everything.
// A row expires when its start time is older than that many days.
type ClickHouseRetention struct {
	Calls             int `yaml:"calls" doc:"days the calls table keeps (0 = forever)"`
	UsageDayModelUser int `yaml:"usage_day_model_user" doc:"days the day x model x user rollup keeps (0 = forever)"`
	UsageHourModel    int `yaml:"usage_hour_model" doc:"days the hour x model rollup keeps (0 = forever)"`
}

func defaultClickHouse() ClickHouse {
	return ClickHouse{Addr: "127.0.0.1:9000", Database: "callpipe", User: "default",
		Consumer: "callpipe-clickhouse", Subject: "callpipe.normalized.>",
		BatchSize: 50000, BatchBytes: 8 << 20, FlushInterval: Duration(time.Second), MaxInFlight: 2, MaxTextBytes: 32 << 10,
		AckWait: Duration(2 * time.Minute), RetentionInterval: Duration(time.Hour)}
}

func (c *Config) validateClickHouse() []error {
	ch := c.ClickHouse
	_, port, err := net.SplitHostPort(ch.Addr)
	days := func(key string, v int) error {
		// DateTime ends in 2106: a longer TTL would overflow and expire everything
		return checkKey(v >= 0 && v <= 7300, key, v, "must be 0 (keep forever) .. 7300 days")
	}
	return []error{
		checkKey(ch.Addr == "" || err == nil && port != "", "clickhouse.addr", ch.Addr, "must be host:port"),
		checkKey(validIdent(ch.Database), "clickhouse.database", ch.Database, "must be letters, digits and underscores, not starting with a digit"),
		checkKey(validIdent(replaceDash(ch.Consumer)), "clickhouse.consumer", ch.Consumer, "must be letters, digits, - and _"),
		checkKey(strings.HasPrefix(ch.Subject, "callpipe.normalized.") && !strings.ContainsAny(ch.Subject, " \t"), "clickhouse.subject", ch.Subject, "must be a subject under callpipe.normalized."),
		checkKey(ch.BatchSize >= 1 && ch.BatchSize <= 1000000, "clickhouse.batch_size", ch.BatchSize, "must be 1..1000000"),
		checkKey(ch.BatchBytes >= 64<<10 && ch.BatchBytes <= 1<<30, "clickhouse.batch_bytes", ch.BatchBytes, "must be 64KiB..1GiB"),
		checkKey(ch.FlushInterval >= Duration(time.Millisecond), "clickhouse.flush_interval", ch.FlushInterval, "must be at least 1ms"),
		checkKey(ch.MaxInFlight >= 1 && ch.MaxInFlight <= 64, "clickhouse.max_in_flight", ch.MaxInFlight, "must be 1..64"),
		checkKey(ch.MaxTextBytes >= 0, "clickhouse.max_text_bytes", ch.MaxTextBytes, "must not be negative"),
		checkKey(ch.AckWait >= Duration(10*time.Second) && ch.AckWait > ch.FlushInterval, "clickhouse.ack_wait", ch.AckWait, "must be at least 10s and more than clickhouse.flush_interval"),
		checkKey(ch.Cluster == "" || validIdent(ch.Cluster), "clickhouse.cluster", ch.Cluster, "must be empty or letters, digits and underscores, not starting with a digit"),
		days("clickhouse.retention_days.calls", ch.RetentionDays.Calls),
		days("clickhouse.retention_days.usage_day_model_user", ch.RetentionDays.UsageDayModelUser),
		days("clickhouse.retention_days.usage_hour_model", ch.RetentionDays.UsageHourModel),
		checkKey(ch.RetentionInterval >= Duration(time.Minute), "clickhouse.retention_interval", ch.RetentionInterval, "must be at least 1m"),
	}
}
