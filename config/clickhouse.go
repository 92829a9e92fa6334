package config

import (
	"strings"
	"time"

	"github.com/callpipe/callpipe/bus"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
)

// ClickHouse configures the ClickHouse sink, `callpipe migrate` and the usage queries.
type ClickHouse struct {
	Addr     string `yaml:"addr" doc:"host:port of the native protocol; in a cluster a comma-separated list of servers, tried in order (the next one when a server is down)"`
	Database string `yaml:"database" doc:"database name"`
	User     string `yaml:"user" doc:"user"`
	Password string `yaml:"password" secret:"true" doc:"password"`
	TLS      TLS    `yaml:"tls"`

	Consumer string `yaml:"consumer" doc:"durable consumer name of the ClickHouse sink on CALLPIPE_NORMALIZED"`
	Subject  string `yaml:"subject" doc:"subject filter of the ClickHouse sink (under callpipe.normalized.)"`

	BatchSize     int      `yaml:"batch_size" doc:"calls per insert: the sink flushes when a batch reaches this size"`
	BatchBytes    ByteSize `yaml:"batch_bytes" doc:"the sink also flushes when a batch's messages reach this size; it bounds the worker's memory (about (max_in_flight+1) x batch_bytes x 3) whatever the call size"`
	FlushInterval Duration `yaml:"flush_interval" doc:"the sink flushes a batch at the latest this long after its first call"`
	IdleFlush     Duration `yaml:"idle_flush" doc:"once no call has come for this long, the sink flushes a batch of at least 1,000 calls without waiting for flush_interval: the end of a burst reaches ClickHouse sooner, while a trickle and a steady flow are batched as before; 0 turns it off"`
	MaxInFlight   int      `yaml:"max_in_flight" doc:"batch inserts running at once"`
	MaxTextBytes  ByteSize `yaml:"max_text_bytes" doc:"input/output text, structured input/output and error are cut to this size in the calls table; 0 keeps all"`
	AckWait       Duration `yaml:"ack_wait" doc:"a call not acknowledged by the sink within this is redelivered (must exceed one insert)"`

	Cluster string `yaml:"cluster" doc:"cluster name from the servers' remote_servers: tables become Replicated*MergeTree ({shard}/{replica} macros) behind Distributed tables, DDL runs ON CLUSTER; empty = one server"`

	Rollup            ClickHouseRollup    `yaml:"rollup"`
	RetentionDays     ClickHouseRetention `yaml:"retention_days"`
	RetentionInterval Duration            `yaml:"retention_interval" doc:"how often the clickhouse stage drops expired partitions on servers without TTL (before 22.2)"`
}

// ClickHouseRetention is how many days each table keeps; 0 keeps everything.
// A row expires when its start time is older than that many days.
type ClickHouseRetention struct {
	Calls   int `yaml:"calls" doc:"days the per-call tables keep (calls, calls_by_user, dirty-hour marks; 0 = forever); a day is dropped only once its rollups are sealed"`
	Rollups int `yaml:"rollups" doc:"days the sealed usage rollups keep (0 = forever)"`
}

// ClickHouseRollup configures the sealed usage rollups (the usage overview's
// pre-aggregates), sealed by the clickhouse stage.
type ClickHouseRollup struct {
	SealAfter Duration `yaml:"seal_after" doc:"an hour is sealed into the rollups this long after it ends (the redelivery horizon); later calls for it mark it dirty and it is sealed again. 0 derives it: nats.stream.duplicate_window + transform.ack_wait x transform.max_deliver + 2 x clickhouse.ack_wait + clickhouse.flush_interval, rounded up to a minute"`
	Interval  Duration `yaml:"interval" doc:"how often the clickhouse stage seals due and dirty hours"`
	Lease     Duration `yaml:"lease" doc:"the sealing lease (NATS KV): one clickhouse worker seals at a time; another takes over this long after the holder stops renewing"`
	SliceRows int      `yaml:"slice_rows" doc:"stored call rows one seal query aggregates at most; bigger hours are sealed in slices (bounds ClickHouse memory)"`
	Grace     Duration `yaml:"grace" doc:"rows of a replaced seal are deleted this long after (longer than any usage query runs)"`
	Zones     []string `yaml:"zones" doc:"IANA time zones (comma separated in env) whose local days and weeks are sealed too, beside UTC days and weeks: the usage overview bucketed by day in such a zone (the dashboard uses the browser's) reads one row set per day instead of a UTC day corrected by its edge hours, and a range of whole local weeks one row set per week; zones whose offset is not whole hours cannot be listed"`
}

// SealAfter is the rollups' redelivery horizon: clickhouse.rollup.seal_after
// or, when 0, derived from how late a call can still arrive through the
// pipeline's retries.
func (c *Config) SealAfter() time.Duration {
	if d := time.Duration(c.ClickHouse.Rollup.SealAfter); d > 0 {
		return d
	}
	d := time.Duration(c.NATS.Stream.DuplicateWindow) +
		time.Duration(c.Transform.AckWait)*time.Duration(c.Transform.MaxDeliver) +
		2*time.Duration(c.ClickHouse.AckWait) + time.Duration(c.ClickHouse.FlushInterval)
	return (d + time.Minute - 1).Truncate(time.Minute)
}

func defaultClickHouse() ClickHouse {
	return ClickHouse{Addr: "127.0.0.1:9000", Database: "callpipe", User: "default",
		Consumer: bus.StageOf(bus.StageClickHouse).Consumer, Subject: bus.StageOf(bus.StageClickHouse).Subject,
		BatchSize: chsink.DefaultBatchCalls, BatchBytes: chsink.DefaultBatchBytes, FlushInterval: Duration(time.Second), IdleFlush: Duration(chsink.DefaultIdleFlush), MaxInFlight: 2, MaxTextBytes: 32 << 10,
		AckWait: Duration(2 * time.Minute), RetentionInterval: Duration(time.Hour),
		Rollup: ClickHouseRollup{Interval: Duration(30 * time.Second), Lease: Duration(30 * time.Second),
			SliceRows: 4_000_000, Grace: Duration(10 * time.Minute)},
		RetentionDays: ClickHouseRetention{Calls: 30, Rollups: 400}}
}

func (c *Config) validateClickHouse() []error {
	ch := c.ClickHouse
	addrOK := true
	for _, a := range strings.Split(ch.Addr, ",") {
		addrOK = addrOK && validHostPort(strings.TrimSpace(a))
	}
	days := func(key string, v int) error {
		// DateTime ends in 2106: a longer TTL would overflow and expire everything
		return checkKey(v >= 0 && v <= 7300, key, v, "must be 0 (keep forever) .. 7300 days")
	}
	return []error{
		checkKey(ch.Addr == "" || addrOK, "clickhouse.addr", ch.Addr, "must be host:port, or a comma-separated list of host:port"),
		checkKey(validIdent(ch.Database), "clickhouse.database", ch.Database, "must be letters, digits and underscores, not starting with a digit"),
		checkConsumer(bus.StageClickHouse, "clickhouse", ch.Consumer, ch.Subject),
		checkKey(ch.BatchSize >= 1 && ch.BatchSize <= 1000000, "clickhouse.batch_size", ch.BatchSize, "must be 1..1000000"),
		checkKey(ch.BatchBytes >= 64<<10 && ch.BatchBytes <= 1<<30, "clickhouse.batch_bytes", ch.BatchBytes, "must be 64KiB..1GiB"),
		checkKey(ch.FlushInterval >= Duration(time.Millisecond), "clickhouse.flush_interval", ch.FlushInterval, "must be at least 1ms"),
		checkKey(ch.IdleFlush == 0 || ch.IdleFlush >= Duration(time.Millisecond), "clickhouse.idle_flush", ch.IdleFlush, "must be 0 (off) or at least 1ms"),
		checkKey(ch.MaxInFlight >= 1 && ch.MaxInFlight <= 64, "clickhouse.max_in_flight", ch.MaxInFlight, "must be 1..64"),
		checkKey(ch.MaxTextBytes >= 0, "clickhouse.max_text_bytes", ch.MaxTextBytes, "must not be negative"),
		checkKey(ch.AckWait >= Duration(10*time.Second) && ch.AckWait > ch.FlushInterval, "clickhouse.ack_wait", ch.AckWait, "must be at least 10s and more than clickhouse.flush_interval"),
		checkKey(ch.Cluster == "" || validIdent(ch.Cluster), "clickhouse.cluster", ch.Cluster, "must be empty or letters, digits and underscores, not starting with a digit"),
		days("clickhouse.retention_days.calls", ch.RetentionDays.Calls),
		days("clickhouse.retention_days.rollups", ch.RetentionDays.Rollups),
		checkKey(ch.Rollup.SealAfter == 0 || ch.Rollup.SealAfter >= Duration(2*time.Minute), "clickhouse.rollup.seal_after", ch.Rollup.SealAfter, "must be 0 (derived) or at least 2m"),
		checkKey(ch.Rollup.Interval >= Duration(time.Second), "clickhouse.rollup.interval", ch.Rollup.Interval, "must be at least 1s"),
		checkKey(ch.Rollup.Lease >= Duration(3*time.Second), "clickhouse.rollup.lease", ch.Rollup.Lease, "must be at least 3s"),
		checkKey(ch.Rollup.SliceRows >= 10000, "clickhouse.rollup.slice_rows", ch.Rollup.SliceRows, "must be at least 10000"),
		checkKey(ch.Rollup.Grace >= Duration(time.Minute), "clickhouse.rollup.grace", ch.Rollup.Grace, "must be at least 1m"),
		checkZones(ch.Rollup.Zones),
		checkKey(ch.RetentionInterval >= Duration(time.Minute), "clickhouse.retention_interval", ch.RetentionInterval, "must be at least 1m"),
	}
}

// checkZones checks clickhouse.rollup.zones: each a zone the time package
// knows whose offsets are whole hours (a local day sums whole UTC hours).
func checkZones(zones []string) error {
	for _, z := range zones {
		loc, err := time.LoadLocation(z)
		if err != nil {
			return &Error{Key: "clickhouse.rollup.zones", Value: z, Allowed: "must be IANA time zone names such as America/New_York (" + err.Error() + ")"}
		}
		if off, ok := fractionalOffset(loc); ok {
			return &Error{Key: "clickhouse.rollup.zones", Value: z, Allowed: "must be zones whose offset is whole hours (" + z + " has " + off.String() + "): a local day is summed from UTC hour rows"}
		}
	}
	return nil
}

// fractionalOffset returns an offset of loc within the last and the next
// year that is not a whole number of hours.
func fractionalOffset(loc *time.Location) (time.Duration, bool) {
	now := time.Now()
	for t := now.AddDate(-1, 0, 0); t.Before(now.AddDate(1, 0, 0)); t = t.Add(24 * time.Hour) {
		if _, off := t.In(loc).Zone(); off%3600 != 0 {
			return time.Duration(off) * time.Second, true
		}
	}
	return 0, false
}
