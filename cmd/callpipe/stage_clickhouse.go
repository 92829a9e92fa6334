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
)

func init() { stages[bus.StageClickHouse] = runClickHouseStage }

// clickhouseOutputConfig maps the clickhouse section to the sink's output.
func clickhouseOutputConfig(cfg *config.Config) (chsink.OutputConfig, error) {
	tlsCfg, err := cfg.ClickHouse.TLS.Build()
	if err != nil {
		return chsink.OutputConfig{}, fmt.Errorf("%w: clickhouse.tls: %w", errConfig, err)
	}
	c := cfg.ClickHouse
	return chsink.OutputConfig{
		Addr: c.Addr, Database: c.Database, User: c.User, Password: c.Password, TLS: tlsCfg,
		MaxTextBytes: int(c.MaxTextBytes), MaxInFlight: c.MaxInFlight,
		Topology: chsink.Topology{Cluster: c.Cluster}, SealAfter: cfg.SealAfter(),
	}, nil
}

// openClickHouse connects to the configured ClickHouse (chsink.Open pings);
// an empty clickhouse.addr is a configuration error saying why it is needed.
func openClickHouse(ctx context.Context, cfg *config.Config, why string) (driver.Conn, chsink.OutputConfig, error) {
	if cfg.ClickHouse.Addr == "" {
		return nil, chsink.OutputConfig{}, fmt.Errorf("%w: clickhouse.addr: %s", errConfig, why)
	}
	oc, err := clickhouseOutputConfig(cfg)
	if err != nil {
		return nil, oc, err
	}
	conn, err := chsink.Open(ctx, oc)
	return conn, oc, err
}

func clickhouseRetention(cfg *config.Config) chsink.Retention {
	r := cfg.ClickHouse.RetentionDays
	return chsink.Retention{Calls: r.Calls, Rollups: r.Rollups}
}

func clickhouseRollup(cfg *config.Config) chsink.RollupConfig {
	r := cfg.ClickHouse.Rollup
	return chsink.RollupConfig{Interval: time.Duration(r.Interval), Lease: time.Duration(r.Lease),
		SliceRows: uint64(r.SliceRows), Grace: time.Duration(r.Grace)}
}

// migrateClickHouse runs chsink.Migrate with the configuration; an empty
// clickhouse.addr skips it.
func migrateClickHouse(ctx context.Context, cfg *config.Config, log *slog.Logger, dropExpired bool) error {
	if cfg.ClickHouse.Addr == "" {
		log.Info("clickhouse.addr is empty: ClickHouse migrations skipped")
		return nil
	}
	oc, err := clickhouseOutputConfig(cfg)
	if err != nil {
		return err
	}
	return chsink.Migrate(ctx, oc, clickhouseRetention(cfg), log, dropExpired)
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
