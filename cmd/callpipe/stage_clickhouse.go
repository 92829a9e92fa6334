package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/store/callsdb"
)

func init() { stages[bus.StageClickHouse] = runClickHouseStage }

// clickhouseStoreConfig maps the clickhouse section to how components
// reach the calls database.
func clickhouseStoreConfig(cfg *config.Config) (callsdb.Config, error) {
	tlsCfg, err := cfg.ClickHouse.TLS.Build()
	if err != nil {
		return callsdb.Config{}, fmt.Errorf("%w: clickhouse.tls: %w", errConfig, err)
	}
	c := cfg.ClickHouse
	return callsdb.Config{
		Addr: c.Addr, Database: c.Database, User: c.User, Password: c.Password, TLS: tlsCfg,
		Topology: callsdb.Topology{Cluster: c.Cluster}, SealAfter: cfg.SealAfter(),
	}, nil
}

// clickhouseOutputConfig maps the clickhouse section to the sink's output.
func clickhouseOutputConfig(cfg *config.Config) (chsink.OutputConfig, error) {
	sc, err := clickhouseStoreConfig(cfg)
	if err != nil {
		return chsink.OutputConfig{}, err
	}
	c := cfg.ClickHouse
	return chsink.OutputConfig{Config: sc, MaxTextBytes: int(c.MaxTextBytes), MaxInFlight: c.MaxInFlight}, nil
}

// openClickHouse connects to the configured ClickHouse (callsdb.Open pings);
// an empty clickhouse.addr is a configuration error saying why it is needed.
func openClickHouse(ctx context.Context, cfg *config.Config, why string) (driver.Conn, callsdb.Config, error) {
	if cfg.ClickHouse.Addr == "" {
		return nil, callsdb.Config{}, fmt.Errorf("%w: clickhouse.addr: %s", errConfig, why)
	}
	sc, err := clickhouseStoreConfig(cfg)
	if err != nil {
		return nil, sc, err
	}
	conn, err := callsdb.Open(ctx, sc)
	return conn, sc, err
}

func clickhouseRetention(cfg *config.Config) callsdb.Retention {
	r := cfg.ClickHouse.RetentionDays
	return callsdb.Retention{Calls: r.Calls, Rollups: r.Rollups}
}

func clickhouseRollup(cfg *config.Config) callsdb.RollupConfig {
	r := cfg.ClickHouse.Rollup
	return callsdb.RollupConfig{Interval: time.Duration(r.Interval), Lease: time.Duration(r.Lease),
		SliceRows: uint64(r.SliceRows), Grace: time.Duration(r.Grace)}
}

// migrateClickHouse runs callsdb.Migrate with the configuration; an empty
// clickhouse.addr skips it.
func migrateClickHouse(ctx context.Context, cfg *config.Config, log *slog.Logger, dropExpired bool) error {
	if cfg.ClickHouse.Addr == "" {
		log.Info("clickhouse.addr is empty: ClickHouse migrations skipped")
		return nil
	}
	sc, err := clickhouseStoreConfig(cfg)
	if err != nil {
		return err
	}
	return callsdb.Migrate(ctx, sc, clickhouseRetention(cfg), log, dropExpired)
}

// runClickHouseStage runs chsink.Stage (the durable consumer
// callpipe-clickhouse, migrations, retention and the rollup sealer).
func runClickHouseStage(ctx context.Context, env *workerEnv, log *slog.Logger) error {
	cfg := env.cfg
	if cfg.ClickHouse.Addr == "" {
		return fmt.Errorf("%w: clickhouse.addr: required by the clickhouse stage", errConfig)
	}
	oc, err := clickhouseOutputConfig(cfg)
	if err != nil {
		return err
	}
	ready := env.health.Stage("clickhouse: connecting")
	if err := env.provisionStreams(ctx); err != nil {
		return err
	}
	c := cfg.ClickHouse
	st := &chsink.Stage{
		Output: oc,
		Sink: chsink.SinkConfig{
			Consumer:      c.Consumer,
			FilterSubject: c.Subject,
			Batch:         chsink.BatchPolicy{Count: c.BatchSize, Bytes: int(c.BatchBytes), Period: time.Duration(c.FlushInterval)},
			AckWait:       time.Duration(c.AckWait),
			DropAcks:      chsink.KillAfterInsertFromEnv(log),
		},
		Retention:         clickhouseRetention(cfg),
		RetentionInterval: time.Duration(c.RetentionInterval),
		Rollup:            clickhouseRollup(cfg),
		LeaseReplicas:     cfg.NATS.Stream.Replicas,
		Log:               log, Registerer: env.reg,
		Waiting: ready.Waiting, Running: ready.Running,
	}
	return st.Run(ctx, env.nc)
}
