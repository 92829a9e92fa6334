package callsdb

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Config is how a callpipe component reaches the calls database: the sink
// that writes it, and serve, export, doctor, replay and the rollup commands
// that read and maintain it.
type Config struct {
	// Addr is host:port of the native protocol, or a comma-separated list
	// of servers (any node of a cluster: every one serves the Distributed
	// tables), tried in order so that a stopped server is skipped.
	Addr     string
	Database string
	User     string
	Password string
	TLS      *tls.Config
	// DialTimeout bounds connecting (default 5s).
	DialTimeout time.Duration
	// MaxConns is the connection pool's size (default 3).
	MaxConns int
	// Topology: in a cluster, inserts go through the Distributed table
	// synchronously (insert_distributed_sync=1), so an ack means the shards
	// stored the rows.
	Topology Topology
	// SealAfter is the rollups' redelivery horizon (DefaultSealAfter when 0):
	// calls for hours older than it are late and mark their hours dirty
	// (see rollup.go). The sink and the sealer must agree on it.
	SealAfter time.Duration
}

// Open dials ClickHouse with the settings every callpipe component uses
// (no per-query settings: 18.16 rejects unknown ones) and pings it.
func Open(ctx context.Context, cfg Config) (driver.Conn, error) {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 3
	}
	conn, err := ch.Open(&ch.Options{
		Protocol:         ch.Native,
		Addr:             Addrs(cfg.Addr),
		Auth:             ch.Auth{Database: "default", Username: cfg.User, Password: cfg.Password},
		TLS:              cfg.TLS,
		DialTimeout:      cfg.DialTimeout,
		MaxOpenConns:     cfg.MaxConns,
		MaxIdleConns:     cfg.MaxConns,
		ConnMaxLifetime:  time.Hour,
		Compression:      &ch.Compression{Method: ch.CompressionLZ4},
		ReadTimeout:      5 * time.Minute,
		ConnOpenStrategy: ch.ConnOpenInOrder,
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse open %s: %w", cfg.Addr, err)
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if err := conn.Ping(pctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("clickhouse ping %s: %w", cfg.Addr, err)
	}
	return conn, nil
}

// Addrs splits a comma-separated list of host:port (Config.Addr).
func Addrs(addr string) []string {
	var out []string
	for _, a := range strings.Split(addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// Migrate brings the schema of cfg's database up to date (Migrator.Up) and,
// with dropExpired, drops the partitions past retention.
func Migrate(ctx context.Context, cfg Config, ret Retention, log *slog.Logger, dropExpired bool) error {
	conn, err := Open(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	m := &Migrator{Conn: conn, Database: cfg.Database, Topology: cfg.Topology, Retention: ret, Log: log,
		Addrs: Addrs(cfg.Addr), Dial: func(ctx context.Context, addr string) (driver.Conn, error) {
			one := cfg
			one.Addr, one.MaxConns = addr, 1
			return Open(ctx, one)
		}}
	done, err := m.Up(ctx)
	if err != nil {
		return err
	}
	log.Info("clickhouse schema current", "database", cfg.Database, "server", m.Server.String(),
		"cluster", cfg.Topology.Cluster, "applied_now", done)
	if dropExpired {
		dropped, err := DropExpired(ctx, conn, cfg.Database, cfg.Topology, ret, time.Now(), log)
		if err != nil {
			return err
		}
		log.Info("clickhouse retention applied", "dropped_partitions", len(dropped))
	}
	return nil
}

// eachRow runs query and calls row for each result row (row scans it). The
// error of the query, of a row or of the result set is returned as it is:
// the caller says which read failed.
func eachRow(ctx context.Context, conn driver.Conn, query string, row func(driver.Rows) error) error {
	rows, err := conn.Query(ctx, query)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := row(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}
