package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/transform"
)

func init() { stages["clickhouse"] = runClickHouseStage }

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
	}, nil
}

// migrateClickHouse applies the ClickHouse migrations (idempotent, safe to run
// from several processes at once). An empty clickhouse.addr skips it.
func migrateClickHouse(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	if cfg.ClickHouse.Addr == "" {
		log.Info("clickhouse.addr is empty: ClickHouse migrations skipped")
		return nil
	}
	oc, err := clickhouseOutputConfig(cfg)
	if err != nil {
		return err
	}
	conn, err := chsink.Open(ctx, oc)
	if err != nil {
		return err
	}
	defer conn.Close()
	done, err := (&chsink.Migrator{Conn: conn, Database: cfg.ClickHouse.Database, Log: log}).Up(ctx)
	if err != nil {
		return err
	}
	log.Info("clickhouse schema current", "database", cfg.ClickHouse.Database, "applied_now", done)
	return nil
}

// runClickHouseStage writes CALLPIPE_NORMALIZED into ClickHouse (durable
// consumer callpipe-clickhouse) until ctx ends, then flushes and acks the
// batch it holds. It waits for ClickHouse at start (reporting unhealthy) and
// applies the migrations itself.
func runClickHouseStage(ctx context.Context, env *workerEnv, log *slog.Logger) error {
	cfg := env.cfg
	if cfg.ClickHouse.Addr == "" {
		return fmt.Errorf("%w: clickhouse.addr: required by the clickhouse stage", errConfig)
	}
	oc, err := clickhouseOutputConfig(cfg)
	if err != nil {
		return err
	}
	var state atomic.Pointer[error]
	starting := errors.New("clickhouse: connecting")
	state.Store(&starting)
	var sink atomic.Pointer[chsink.Sink]
	env.addHealth(func() error {
		if s := sink.Load(); s != nil {
			return s.Healthy()
		}
		return *state.Load()
	})

	js, err := jetstream.New(env.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = transform.EnsureStreams(pctx, js, streamOptions(cfg), time.Duration(cfg.Transform.DLQMaxAge))
	cancel()
	if err != nil {
		return err
	}

	out := chsink.NewOutput(oc)
	for wait := 250 * time.Millisecond; ; wait = min(2*wait, 30*time.Second) {
		err := out.Connect(ctx)
		if err == nil {
			err = migrateClickHouse(ctx, cfg, log)
		}
		if err == nil {
			break
		}
		state.Store(&err)
		log.Warn("clickhouse not ready; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	defer out.Close()

	s, err := chsink.NewSink(env.nc, out, chsink.SinkConfig{
		Batch:      chsink.BatchPolicy{Count: cfg.ClickHouse.BatchSize, Period: time.Duration(cfg.ClickHouse.FlushInterval)},
		AckWait:    time.Duration(cfg.ClickHouse.AckWait),
		Log:        log,
		Registerer: env.reg,
	})
	if err != nil {
		return err
	}
	sink.Store(s)
	log.Info("clickhouse sink running", "database", cfg.ClickHouse.Database, "batch_size", cfg.ClickHouse.BatchSize,
		"flush_interval", cfg.ClickHouse.FlushInterval.String(), "max_in_flight", cfg.ClickHouse.MaxInFlight)
	return s.Run(ctx)
}
