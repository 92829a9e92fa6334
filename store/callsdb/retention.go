package callsdb

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Retention is how many days each table keeps rows (0 = forever), counted
// from the call's start time.
//
// Modern servers (Server.Modern) get a table TTL (`ALTER TABLE ... MODIFY
// TTL col + toIntervalDay(N)`, applied by the migrator, exact to the row).
// 18.16 has no TTL: DropExpired drops whole partitions once every row in
// them is expired (ALTER TABLE ... DROP PARTITION ID), run periodically by
// the clickhouse stage and by `callpipe migrate --retention`. Its grain is
// the partition: a day for calls, a month for the rollups. The per-call
// tables (calls, calls_by_user, usage_dirty_hours) keep Calls days, the
// sealed rollups (usage_rollup and its copies, usage_seals) Rollups days; a calls day is
// dropped only once its day is sealed, so no usage is lost with it.
type Retention struct {
	Calls   int
	Rollups int
}

// retainedTable is a table with a retention setting: the column its age is
// measured on and its partition grain (see the PARTITION BY of the migrations).
type retainedTable struct {
	name, column string
	monthly      bool // toYYYYMM partitions; else toYYYYMMDD
	days         func(Retention) int
	perCall      bool // dropped only once the day is sealed
}

func callsDays(r Retention) int   { return r.Calls }
func rollupsDays(r Retention) int { return r.Rollups }

var retainedTables = []retainedTable{
	{name: "calls", column: "start_time", days: callsDays, perCall: true},
	{name: "calls_by_user", column: "start_time", days: callsDays, perCall: true},
	{name: "usage_dirty_hours", column: "hour", monthly: true, days: callsDays},
	{name: "usage_rollup", column: "period", monthly: true, days: rollupsDays},
	{name: userCopyTable, column: "period", monthly: true, days: rollupsDays},
	{name: legacyUserCopyTable, column: "period", monthly: true, days: rollupsDays},
	{name: modelCopyTable, column: "period", monthly: true, days: rollupsDays},
	{name: "usage_seals", column: "period", monthly: true, days: rollupsDays},
}

// ttlExpr is the TTL expression of a table kept days days.
func ttlExpr(column string, days int) string {
	return fmt.Sprintf("%s + toIntervalDay(%d)", column, days)
}

// TableSettingStatements returns the ALTERs that bring the tables' TTL and
// dedup settings to what srv, topo and ret ask for, given each table's
// current engine_full (system.tables; missing tables are skipped). They are
// idempotent and empty for 18.16, where neither TTL nor the dedup window
// exist.
func TableSettingStatements(srv Server, topo Topology, ret Retention, engines map[string]string) []string {
	if !srv.Modern() {
		return nil
	}
	var out []string
	for _, t := range retainedTables {
		local := topo.LocalTable(t.name)
		engine, ok := engines[local]
		if !ok {
			continue
		}
		alter := "ALTER TABLE {db}." + local + topo.onCluster()
		if n := t.days(ret); n > 0 {
			if !strings.Contains(engine, "TTL "+ttlExpr(t.column, n)) {
				out = append(out, alter+" MODIFY TTL "+ttlExpr(t.column, n))
			}
		} else if strings.Contains(engine, " TTL ") {
			out = append(out, alter+" REMOVE TTL")
		}
		// a resent batch with the same insert_deduplication_token is dropped
		// (Replicated tables deduplicate by default)
		if !topo.Clustered() && !strings.Contains(engine, "non_replicated_deduplication_window = "+strconv.Itoa(DedupWindow)) {
			out = append(out, alter+" MODIFY SETTING non_replicated_deduplication_window = "+strconv.Itoa(DedupWindow))
		}
	}
	return out
}

// DedupWindow is how many recent insert blocks a table remembers for
// insert_deduplication_token on modern single servers.
const DedupWindow = 1000

// tableEngines returns engine_full per table of the database.
func tableEngines(ctx context.Context, conn driver.Conn, db string) (map[string]string, error) {
	out := map[string]string{}
	err := eachRow(ctx, conn, WithDB(QueryTableEngines, db), func(rows driver.Rows) error {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			return err
		}
		out[name] = engine
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse: list tables of %s: %w", db, err)
	}
	return out, nil
}

// PartitionEnd returns when the last row a partition can hold stops being
// current: the day after a toYYYYMMDD partition, the first day of the next
// month for a toYYYYMM one.
func PartitionEnd(id string, monthly bool) (time.Time, error) {
	layout := "20060102"
	if monthly {
		layout = "200601"
	}
	t, err := time.ParseInLocation(layout, id, time.UTC)
	if err != nil || len(id) != len(layout) {
		return time.Time{}, fmt.Errorf("partition id %q is not %s", id, map[bool]string{false: "YYYYMMDD", true: "YYYYMM"}[monthly])
	}
	if monthly {
		return t.AddDate(0, 1, 0), nil
	}
	return t.AddDate(0, 0, 1), nil
}

// ExpiredPartitions returns the ids whose every row is older than days at now.
func ExpiredPartitions(ids []string, monthly bool, days int, now time.Time) ([]string, error) {
	if days <= 0 {
		return nil, nil
	}
	var out []string
	for _, id := range ids {
		end, err := PartitionEnd(id, monthly)
		if err != nil {
			return nil, err
		}
		if !end.AddDate(0, 0, days).After(now) {
			out = append(out, id)
		}
	}
	return out, nil
}

// DropExpired drops every partition of the retained tables whose rows are
// all past their retention at now, and returns "table/partition" of each.
// Dropping a partition is atomic and cheap (its parts are unlinked), works on
// every server version, and is idempotent. In cluster mode partitions are
// listed on the node conn talks to and dropped ON CLUSTER (with id
// sharding, every shard holds every day).
func DropExpired(ctx context.Context, conn driver.Conn, db string, topo Topology, ret Retention, now time.Time, log *slog.Logger) ([]string, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var dropped []string
	for _, t := range retainedTables {
		days := t.days(ret)
		if days <= 0 {
			continue
		}
		local := topo.LocalTable(t.name)
		ids, err := partitionIDs(ctx, conn, db, local)
		if err != nil {
			return dropped, err
		}
		expired, err := ExpiredPartitions(ids, t.monthly, days, now)
		if err != nil {
			return dropped, fmt.Errorf("clickhouse retention %s.%s: %w", db, local, err)
		}
		if t.perCall && len(expired) > 0 {
			if expired, err = sealedDays(ctx, conn, db, expired, log); err != nil {
				return dropped, fmt.Errorf("clickhouse retention %s.%s: %w", db, local, err)
			}
		}
		for _, id := range expired {
			stmt := WithDB(DropPartitionStatement(topo, local, id), db)
			if err := conn.Exec(ctx, stmt); err != nil {
				return dropped, fmt.Errorf("clickhouse retention: %s: %w", stmt, err)
			}
			log.Info("clickhouse retention: partition dropped", "table", db+"."+local, "partition", id, "retention_days", days)
			dropped = append(dropped, t.name+"/"+id)
		}
	}
	return dropped, nil
}

func partitionIDs(ctx context.Context, conn driver.Conn, db, table string) ([]string, error) {
	var ids []string
	err := eachRow(ctx, conn, WithDB(PartitionsQuery(table), db), func(rows driver.Rows) error {
		var id string
		if err := rows.Scan(&id); err != nil {
			return err
		}
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse retention: partitions of %s.%s: %w", db, table, err)
	}
	return ids, nil
}

// sealedDays keeps the YYYYMMDD partition ids whose day has a seal of all
// its hours: their usage is in the rollups. The others wait for the sealer
// (and are logged).
func sealedDays(ctx context.Context, conn driver.Conn, db string, ids []string, log *slog.Logger) ([]string, error) {
	var keep []string
	for _, id := range ids {
		end, err := PartitionEnd(id, false)
		if err != nil {
			return nil, err
		}
		d := end.AddDate(0, 0, -1).Unix()
		st, err := loadSeals(ctx, conn, db, d, d+86400)
		if err != nil {
			return nil, err
		}
		if st.wholeDay(d) {
			keep = append(keep, id)
			continue
		}
		log.Warn("clickhouse retention: day past retention kept until the rollups seal it", "partition", id)
	}
	return keep, nil
}
