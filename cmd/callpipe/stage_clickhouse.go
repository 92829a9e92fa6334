package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	"github.com/callpipe/callpipe/internal/retry"
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

func clickhouseRetention(cfg *config.Config) chsink.Retention {
	r := cfg.ClickHouse.RetentionDays
	return chsink.Retention{Calls: r.Calls, Rollups: r.Rollups}
}

// migrateClickHouse applies the ClickHouse migrations (idempotent, safe to run
// from several processes at once) and the table settings of the server's
// version (TTL); dropExpired also drops the partitions past retention. An
// empty clickhouse.addr skips it.
func migrateClickHouse(ctx context.Context, cfg *config.Config, log *slog.Logger, dropExpired bool) error {
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
	m := &chsink.Migrator{Conn: conn, Database: cfg.ClickHouse.Database, Topology: oc.Topology,
		Retention: clickhouseRetention(cfg), Log: log}
	done, err := m.Up(ctx)
	if err != nil {
		return err
	}
	log.Info("clickhouse schema current", "database", cfg.ClickHouse.Database, "server", m.Server.String(),
		"cluster", cfg.ClickHouse.Cluster, "applied_now", done)
	if dropExpired {
		dropped, err := chsink.DropExpired(ctx, conn, cfg.ClickHouse.Database, oc.Topology, clickhouseRetention(cfg), time.Now(), log)
		if err != nil {
			return err
		}
		log.Info("clickhouse retention applied", "dropped_partitions", len(dropped))
	}
	return nil
}

// runRetention drops expired partitions every clickhouse.retention_interval
// until ctx ends, on servers without TTL (modern servers expire rows by TTL,
// set by the migrator). Several workers doing it at once is harmless: a
// dropped partition is gone for all and DROP PARTITION of a missing one is a
// no-op.
func runRetention(ctx context.Context, cfg *config.Config, out *chsink.Output, log *slog.Logger) {
	ret := clickhouseRetention(cfg)
	if out.Server().Modern() || ret == (chsink.Retention{}) {
		return
	}
	log.Info("clickhouse retention by partition drops", "server", out.Server().String(), "every", cfg.ClickHouse.RetentionInterval.String())
	t := time.NewTicker(time.Duration(cfg.ClickHouse.RetentionInterval))
	defer t.Stop()
	for {
		if _, err := chsink.DropExpired(ctx, out.Conn(), cfg.ClickHouse.Database, chsink.Topology{Cluster: cfg.ClickHouse.Cluster}, ret, time.Now(), log); err != nil && ctx.Err() == nil {
			log.Error("clickhouse retention failed; retried next interval", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// envKillAfterInsert is fault injection for integration tests: when set to
// N, the process SIGKILLs itself right after its Nth successful insert,
// before acknowledging that batch (a crash between INSERT and ack).
const envKillAfterInsert = "CALLPIPE_TEST_CLICKHOUSE_KILL_AFTER_INSERT"

func killAfterInsertHook(log *slog.Logger) func(int) bool {
	n, err := strconv.Atoi(os.Getenv(envKillAfterInsert))
	if err != nil || n <= 0 {
		return nil
	}
	var inserts atomic.Int64
	log.Warn("fault injection: this process kills itself after an insert", "env", envKillAfterInsert, "insert", n)
	return func(calls int) bool {
		if inserts.Add(1) == int64(n) {
			log.Warn("fault injection: SIGKILL after insert, before ack", "calls", calls)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the kill is asynchronous: never ack
		}
		return false
	}
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
	ready := env.readiness("clickhouse: connecting")

	if err := env.provisionStreams(ctx); err != nil {
		return err
	}

	out := chsink.NewOutput(oc)
	if err := retry.Until(ctx, retry.Backoff{First: 250 * time.Millisecond, Max: 30 * time.Second},
		func(ctx context.Context) error {
			if err := out.Connect(ctx); err != nil {
				return err
			}
			return migrateClickHouse(ctx, cfg, log, false)
		},
		func(err error, wait time.Duration) {
			ready.waiting(err)
			log.Warn("clickhouse not ready; retrying", "err", err, "retry_in", wait)
		}); err != nil {
		return nil
	}
	defer out.Close()

	s, err := chsink.NewSink(env.nc, out, chsink.SinkConfig{
		Consumer:      cfg.ClickHouse.Consumer,
		FilterSubject: cfg.ClickHouse.Subject,
		Batch:         chsink.BatchPolicy{Count: cfg.ClickHouse.BatchSize, Bytes: int(cfg.ClickHouse.BatchBytes), Period: time.Duration(cfg.ClickHouse.FlushInterval)},
		AckWait:       time.Duration(cfg.ClickHouse.AckWait),
		Log:           log,
		Registerer:    env.reg,
		DropAcks:      killAfterInsertHook(log),
	})
	if err != nil {
		return err
	}
	ready.running(s.Healthy)
	go runRetention(ctx, cfg, out, log)
	go runSealer(ctx, env, oc.Topology, out, log)
	log.Info("clickhouse sink running", "database", cfg.ClickHouse.Database, "batch_size", cfg.ClickHouse.BatchSize, "batch_bytes", int64(cfg.ClickHouse.BatchBytes),
		"flush_interval", cfg.ClickHouse.FlushInterval.String(), "max_in_flight", cfg.ClickHouse.MaxInFlight)
	return s.Run(ctx)
}

// runSealer seals the usage rollups (chsink.Sealer.Pass every
// clickhouse.rollup.interval) while this worker holds the database's sealing
// lease, so one clickhouse worker seals at a time. A pass stopped by
// shutdown or a lost lease leaves only rows no seal record names: reads
// never see them and the next holder seals those hours again.
func runSealer(ctx context.Context, env *workerEnv, topo chsink.Topology, out *chsink.Output, log *slog.Logger) {
	cfg := env.cfg
	js, err := jetstream.New(env.nc)
	if err != nil {
		log.Error("rollup sealer not started", "err", err)
		return
	}
	m := newRollupMetrics(env.reg)
	host, _ := os.Hostname()
	sealer := &chsink.Sealer{Conn: out.Conn(), Database: cfg.ClickHouse.Database, Topology: topo, SealAfter: cfg.SealAfter(),
		SliceRows: uint64(cfg.ClickHouse.Rollup.SliceRows), Grace: time.Duration(cfg.ClickHouse.Rollup.Grace), Log: log}
	lease := &bus.Lease{JS: js, Key: "rollup-sealer-" + cfg.ClickHouse.Database, Owner: fmt.Sprintf("%s/%d", host, os.Getpid()),
		TTL: time.Duration(cfg.ClickHouse.Rollup.Lease), Replicas: cfg.NATS.Stream.Replicas, Log: log,
		OnChange: func(held bool) { m.leader.Set(map[bool]float64{false: 0, true: 1}[held]) }}
	log.Info("rollup sealer waiting for its lease", "seal_after", cfg.SealAfter().String(), "interval", cfg.ClickHouse.Rollup.Interval.String())
	err = lease.Run(ctx, func(ctx context.Context) {
		for {
			t0 := time.Now()
			res, err := sealer.Pass(ctx)
			m.observe(res, err, time.Since(t0))
			switch {
			case err != nil && ctx.Err() == nil:
				log.Error("rollup seal pass failed; retried next interval", "err", err)
			case res.HoursSealed+res.EmptyHours+res.DaysSealed+res.Deleted > 0:
				log.Info("rollup sealed", "hours", res.HoursSealed, "empty_hours", res.EmptyHours, "resealed", res.Resealed, "days", res.DaysSealed,
					"deleted_superseded", res.Deleted, "sealed_through", res.SealedThrough, "dirty_hours", res.DirtyHours, "took", time.Since(t0).Round(time.Millisecond))
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(cfg.ClickHouse.Rollup.Interval)):
			}
		}
	})
	if err != nil {
		log.Error("rollup sealer stopped", "err", err)
	}
}

// rollupMetrics are the sealer's gauges and counters in /metrics.
type rollupMetrics struct {
	leader, sealedThrough, lag, dirty prometheus.Gauge
	seals                             *prometheus.CounterVec
	errors                            prometheus.Counter
	passSeconds                       prometheus.Histogram
}

func newRollupMetrics(reg prometheus.Registerer) *rollupMetrics {
	f := promauto.With(reg)
	return &rollupMetrics{
		leader:        f.NewGauge(prometheus.GaugeOpts{Name: "callpipe_rollup_sealer_leader", Help: "1 while this worker holds the rollup sealing lease."}),
		sealedThrough: f.NewGauge(prometheus.GaugeOpts{Name: "callpipe_rollup_sealed_through_timestamp_seconds", Help: "Every hour before this time is sealed and clean (Unix seconds; set by the lease holder)."}),
		lag:           f.NewGauge(prometheus.GaugeOpts{Name: "callpipe_rollup_lag_seconds", Help: "Now minus the sealed-through time (the redelivery horizon plus the open hour when the sealer keeps up)."}),
		dirty:         f.NewGauge(prometheus.GaugeOpts{Name: "callpipe_rollup_dirty_hours", Help: "Sealed hours with late calls not yet sealed again (read from per-call rows meanwhile)."}),
		seals:         f.NewCounterVec(prometheus.CounterOpts{Name: "callpipe_rollup_seals_total", Help: "Seals written, by kind (hour, empty_hour, reseal, day)."}, []string{"kind"}),
		errors:        f.NewCounter(prometheus.CounterOpts{Name: "callpipe_rollup_seal_errors_total", Help: "Seal passes that failed (retried next interval)."}),
		passSeconds:   f.NewHistogram(prometheus.HistogramOpts{Name: "callpipe_rollup_pass_seconds", Help: "Time of one seal pass.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 10)}),
	}
}

func (m *rollupMetrics) observe(res chsink.PassResult, err error, took time.Duration) {
	m.passSeconds.Observe(took.Seconds())
	m.seals.WithLabelValues("hour").Add(float64(res.HoursSealed - res.Resealed))
	m.seals.WithLabelValues("reseal").Add(float64(res.Resealed))
	m.seals.WithLabelValues("empty_hour").Add(float64(res.EmptyHours))
	m.seals.WithLabelValues("day").Add(float64(res.DaysSealed))
	if err != nil {
		m.errors.Inc()
		return
	}
	m.sealedThrough.Set(float64(res.SealedThrough.Unix()))
	m.lag.Set(time.Since(res.SealedThrough).Seconds())
	m.dirty.Set(float64(res.DirtyHours))
}
