package clickhouse

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/store/callsdb"
)

// Stage is the clickhouse worker stage: it writes CALLPIPE_NORMALIZED into
// ClickHouse through a Sink until ctx ends, then flushes and acks the batch
// it holds. The sink's Connect connects and migrates (its runner retries it
// for ever, reporting unhealthy meanwhile); once it has, the stage runs
// what one clickhouse worker owes the database beside it: retention by
// partition drops on servers without TTL, and the rollup sealer under a
// lease so that one worker seals at a time. The caller provisions the
// streams first.
type Stage struct {
	Output            OutputConfig
	Sink              SinkConfig // Log, Registerer, Migrate and Retention are the stage's
	Retention         callsdb.Retention
	RetentionInterval time.Duration
	Rollup            callsdb.RollupConfig
	// LeaseReplicas is the replica count of the lease bucket (the streams').
	LeaseReplicas int

	Log        *slog.Logger
	Registerer prometheus.Registerer
	// Running is given the sink's health (unhealthy until ClickHouse is
	// connected and migrated) when the stage starts; nil: nobody.
	Running func(healthy func() error)
}

// Run runs the stage until ctx ends. It returns nil when ctx ends before
// ClickHouse became ready.
func (st *Stage) Run(ctx context.Context, nc *nats.Conn) error {
	if st.Log == nil {
		st.Log = slog.New(slog.DiscardHandler)
	}
	log := st.Log
	out := NewOutput(st.Output)
	sc := st.Sink
	sc.Log, sc.Registerer, sc.Migrate, sc.Retention = log, st.Registerer, true, st.Retention
	s, err := NewSink(nc, out, sc)
	if err != nil {
		return err
	}
	if st.Running != nil {
		st.Running(s.Healthy)
	}
	go func() {
		select {
		case <-ctx.Done():
			return
		case <-s.Ready():
		}
		log.Info("clickhouse sink running", "database", st.Output.Database, "batch_size", sc.Batch.Count, "batch_bytes", int64(sc.Batch.Bytes),
			"flush_interval", sc.Batch.Period.String(), "max_in_flight", st.Output.MaxInFlight)
		go st.runRetention(ctx, out)
		st.runSealer(ctx, nc, out)
	}()
	return s.Run(ctx)
}

// runRetention drops expired partitions every RetentionInterval until ctx
// ends, on servers without TTL (modern servers expire rows by TTL, set by
// the migrator). Several workers doing it at once is harmless: a dropped
// partition is gone for all and DROP PARTITION of a missing one is a no-op.
func (st *Stage) runRetention(ctx context.Context, out *Output) {
	log := st.Log
	if out.Server().Modern() || st.Retention == (callsdb.Retention{}) {
		return
	}
	log.Info("clickhouse retention by partition drops", "server", out.Server().String(), "every", st.RetentionInterval.String())
	t := time.NewTicker(st.RetentionInterval)
	defer t.Stop()
	for {
		if _, err := callsdb.DropExpired(ctx, out.Conn(), st.Output.Database, st.Output.Topology, st.Retention, time.Now(), log); err != nil && ctx.Err() == nil {
			log.Error("clickhouse retention failed; retried next interval", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runSealer seals the usage rollups (Sealer.Pass every Rollup.Interval)
// while this worker holds the database's sealing lease, so one clickhouse
// worker seals at a time. A pass stopped by shutdown or a lost lease leaves
// only rows no seal record names: reads never see them and the next holder
// seals those hours again.
func (st *Stage) runSealer(ctx context.Context, nc *nats.Conn, out *Output) {
	log := st.Log
	js, err := jetstream.New(nc)
	if err != nil {
		log.Error("rollup sealer not started", "err", err)
		return
	}
	m := newRollupMetrics(st.Registerer)
	host, _ := os.Hostname()
	sealer := callsdb.NewSealer(out.Conn(), st.Output.Config, st.Rollup, log)
	lease := &bus.Lease{JS: js, Key: "rollup-sealer-" + st.Output.Database, Owner: fmt.Sprintf("%s/%d", host, os.Getpid()),
		TTL: st.Rollup.Lease, Replicas: st.LeaseReplicas, Log: log,
		OnChange: func(held bool) { m.leader.Set(map[bool]float64{false: 0, true: 1}[held]) }}
	log.Info("rollup sealer waiting for its lease", "seal_after", st.Output.SealAfter.String(), "interval", st.Rollup.Interval.String())
	err = lease.Run(ctx, func(ctx context.Context) {
		for {
			t0 := time.Now()
			res, err := sealer.Pass(ctx)
			m.observe(res, err, time.Since(t0))
			switch {
			case err != nil && ctx.Err() == nil:
				log.Error("rollup seal pass failed; retried next interval", "err", err)
			case res.HoursSealed+res.EmptyHours+res.DaysSealed+res.DaysSoFarSealed+res.WeeksSealed+res.FourWeeksSealed+res.Deleted > 0:
				log.Info("rollup sealed", "hours", res.HoursSealed, "empty_hours", res.EmptyHours, "resealed", res.Resealed, "days", res.DaysSealed, "days_so_far", res.DaysSoFarSealed, "weeks", res.WeeksSealed, "four_weeks", res.FourWeeksSealed,
					"deleted_superseded", res.Deleted, "sealed_through", res.SealedThrough, "dirty_hours", res.DirtyHours, "took", time.Since(t0).Round(time.Millisecond))
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(st.Rollup.Interval):
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
		dirty:         f.NewGauge(prometheus.GaugeOpts{Name: "callpipe_rollup_dirty_periods", Help: "Sealed hours with late calls not yet sealed again (read from per-call rows meanwhile)."}),
		seals:         f.NewCounterVec(prometheus.CounterOpts{Name: "callpipe_rollup_seals_total", Help: "Seals written, by kind (hour, empty_hour, reseal, day, day_so_far, week, four_weeks)."}, []string{"kind"}),
		errors:        f.NewCounter(prometheus.CounterOpts{Name: "callpipe_rollup_seal_errors_total", Help: "Seal passes that failed (retried next interval)."}),
		passSeconds:   f.NewHistogram(prometheus.HistogramOpts{Name: "callpipe_rollup_pass_seconds", Help: "Time of one seal pass.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 10)}),
	}
}

func (m *rollupMetrics) observe(res callsdb.PassResult, err error, took time.Duration) {
	m.passSeconds.Observe(took.Seconds())
	m.seals.WithLabelValues("hour").Add(float64(res.HoursSealed - res.Resealed))
	m.seals.WithLabelValues("reseal").Add(float64(res.Resealed))
	m.seals.WithLabelValues("empty_hour").Add(float64(res.EmptyHours))
	m.seals.WithLabelValues("day").Add(float64(res.DaysSealed))
	m.seals.WithLabelValues("day_so_far").Add(float64(res.DaysSoFarSealed))
	m.seals.WithLabelValues("week").Add(float64(res.WeeksSealed))
	m.seals.WithLabelValues("four_weeks").Add(float64(res.FourWeeksSealed))
	if err != nil {
		m.errors.Inc()
		return
	}
	m.sealedThrough.Set(float64(res.SealedThrough.Unix()))
	m.lag.Set(time.Since(res.SealedThrough).Seconds())
	m.dirty.Set(float64(res.DirtyHours))
}

// EnvKillAfterInsert is fault injection for integration tests: when set to
// N, the process SIGKILLs itself right after its Nth successful insert,
// before acknowledging that batch (a crash between INSERT and ack).
const EnvKillAfterInsert = "CALLPIPE_TEST_CLICKHOUSE_KILL_AFTER_INSERT"

// KillAfterInsertFromEnv is the SinkConfig.DropAcks of EnvKillAfterInsert:
// nil (production) when the variable is unset.
func KillAfterInsertFromEnv(log *slog.Logger) func(int) bool {
	n, err := strconv.Atoi(os.Getenv(EnvKillAfterInsert))
	if err != nil || n <= 0 {
		return nil
	}
	var inserts atomic.Int64
	log.Warn("fault injection: this process kills itself after an insert", "env", EnvKillAfterInsert, "insert", n)
	return func(calls int) bool {
		if inserts.Add(1) == int64(n) {
			log.Warn("fault injection: SIGKILL after insert, before ack", "calls", calls)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the kill is asynchronous: never ack
		}
		return false
	}
}
