package config

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/sinks"
	"github.com/callpipe/callpipe/sinks/archive"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/sinks/langfuse"
	"github.com/callpipe/callpipe/store/settings"
	"github.com/callpipe/callpipe/transform"
)

// The worker stages as their sections configure them; the caller adds its
// health hooks and runs them.

// NormalizeStage is the normalize stage of the transform section. closeFn
// releases its Redis client.
func (c *Config) NormalizeStage(reg prometheus.Registerer, log *slog.Logger) (st *transform.Stage, closeFn func(), err error) {
	t := c.Transform
	tok, err := c.Tokenizer()
	if err != nil {
		return nil, nil, err
	}
	prices, err := c.Prices()
	if err != nil {
		return nil, nil, err
	}
	privacy, err := c.CapturePolicy(nil) // normalize counts tokens before its own pass: its policy needs no counter
	if err != nil {
		return nil, nil, err
	}
	var rdb *redis.Client
	closeFn = func() {}
	if c.Redis.Addr != "" {
		if rdb, err = c.RedisClient(time.Duration(t.UserLookupTimeout)); err != nil {
			return nil, nil, err
		}
		closeFn = func() { _ = rdb.Close() }
	}
	return &transform.Stage{
		Normalizer: &transform.Normalizer{Tokenizer: tok, Prices: prices, Privacy: privacy, Limits: c.Limits()},
		Users:      c.UserOptions(rdb, log),
		Worker: transform.WorkerOptions{Consumer: t.Consumer, FilterSubject: t.Subject, Concurrency: t.Concurrency, Batch: t.Batch,
			MaxInFlight: t.MaxInFlight, AckWait: time.Duration(t.AckWait), MaxDeliver: t.MaxDeliver,
			MaxAckPending: t.MaxAckPending, RetryDelay: time.Duration(t.RetryDelay)},
		PricesReplicas: c.NATS.Stream.Replicas, Registerer: reg, Log: log,
	}, closeFn, nil
}

// ClickHouseStage is the clickhouse stage (sink, migrations, retention and
// the rollup sealer) of the clickhouse section.
func (c *Config) ClickHouseStage(reg prometheus.Registerer, log *slog.Logger) (*chsink.Stage, error) {
	ch := c.ClickHouse
	db, err := c.RequireCallsDB("required by the clickhouse stage")
	if err != nil {
		return nil, err
	}
	return &chsink.Stage{
		Output: ch.Output(db),
		Sink: chsink.SinkConfig{Config: sinks.Config{Consumer: ch.Consumer, FilterSubject: ch.Subject, AckWait: time.Duration(ch.AckWait),
			Batch: sinks.BatchPolicy{Count: ch.BatchSize, Bytes: int(ch.BatchBytes), Period: time.Duration(ch.FlushInterval), Idle: time.Duration(ch.IdleFlush)}}},
		Retention: ch.Retention(), RetentionInterval: time.Duration(ch.RetentionInterval), Rollup: ch.RollupConfig(),
		LeaseReplicas: c.NATS.Stream.Replicas, Log: log, Registerer: reg,
	}, nil
}

// ArchiveStage is the archive stage of the archive and s3 sections.
func (c *Config) ArchiveStage(reg prometheus.Registerer, log *slog.Logger) (*archive.Stage, error) {
	a, s := c.Archive, c.S3
	if s.Endpoint == "" || s.Bucket == "" {
		return nil, invalid("s3.endpoint and s3.bucket", errors.New("required by the archive stage"))
	}
	client, err := c.S3Client(0)
	if err != nil {
		return nil, err
	}
	return &archive.Stage{S3: client,
		Sink: archive.SinkConfig{
			Config: sinks.Config{Stream: bus.CallsStream, Consumer: a.Consumer, FilterSubject: a.Subject,
				AckWait: time.Duration(a.AckWait), MaxAckPending: a.MaxAckPending, Log: log},
			Bucket: s.Bucket, Region: s.Region, Prefix: a.Prefix, Compression: a.Compression,
			FlushBytes: int64(a.FlushBytes), FlushInterval: time.Duration(a.FlushInterval),
			PartSize: uint64(a.PartSize), MaxUploads: a.MaxUploads, Metrics: archive.NewMetrics(reg), SSE: s.ServerSide(),
		}}, nil
}

// LangfuseStage is the langfuse stage of the langfuse section: host and
// keys are the settings in effect, saved ones over configured ones.
func (c *Config) LangfuseStage(nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (*langfuse.Supervisor, error) {
	l := c.Langfuse
	retries := l.Retries
	if retries == 0 {
		retries = -1 // no retry inside a batch: redelivery after retry_delay only
	}
	hc, err := c.LangfuseHTTPClient(l.MaxInFlight + 2)
	if err != nil {
		return nil, err
	}
	return langfuse.NewSupervisor(nc, langfuse.SupervisorConfig{
		Output: langfuse.OutputConfig{
			HTTPClient: hc, Transport: l.Transport,
			Map:           langfuse.MapOptions{Environment: l.Environment, Release: l.Release, MaxFieldBytes: int(l.MaxFieldBytes)},
			MaxBatchBytes: int(l.MaxBatchBytes), MaxBatchCount: l.MaxBatchEvents, MaxInFlight: l.MaxInFlight,
			MaxRetries: retries, MinBackoff: time.Duration(l.MinBackoff), MaxBackoff: time.Duration(l.MaxBackoff),
			Timeout: time.Duration(l.RequestTimeout),
		},
		Sink: langfuse.SinkConfig{
			Config: sinks.Config{Consumer: l.Consumer, FilterSubject: l.Subject, AckWait: time.Duration(l.AckWait),
				Batch: sinks.BatchPolicy{Count: l.BatchCalls, Period: time.Duration(l.FlushInterval), MaxInFlight: max(1, l.MaxInFlight/2)}},
			RetryDelay: time.Duration(l.RetryDelay),
		},
		Configured: settings.Langfuse{Host: l.Host, PublicKey: l.PublicKey, SecretKey: l.SecretKey},
		Sealer:     c.Sealer(), Replicas: c.NATS.Stream.Replicas, Log: log, Registerer: reg,
	}), nil
}

// WorkerStageNames are the stages a worker process can run
// (`callpipe worker --stages`), sorted.
func WorkerStageNames() []string {
	return []string{bus.StageArchive, bus.StageClickHouse, bus.StageLangfuse, bus.StageNormalize}
}

// StageRun runs one worker stage until ctx ends, then lets it finish or
// hand back (nak) what it holds. running, when set, is given the stage's
// health (for /readyz) once it starts.
type StageRun func(ctx context.Context, running func(healthy func() error)) error

// WorkerStage is the named stage (WorkerStageNames) built from its
// sections on nc; its run provisions the pipeline's streams first (safe
// from every replica) and releases what the stage opened when it returns.
// An error, or a run's error naming a setting, wraps ErrInvalid.
func (c *Config) WorkerStage(name string, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (StageRun, error) {
	provisioned := func(ctx context.Context, run func() error) error {
		js, err := jetstream.New(nc)
		if err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}
		err = bus.ProvisionWhenReady(ctx, log, func(ctx context.Context) error {
			return bus.EnsureStreams(ctx, js, c.StreamOptions())
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped while provisioning: nothing taken yet
			}
			return err
		}
		return run()
	}
	switch name {
	case bus.StageNormalize:
		st, closeRedis, err := c.NormalizeStage(reg, log)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, running func(func() error)) error {
			defer closeRedis()
			st.Running = running
			return provisioned(ctx, func() error { return st.Run(ctx, nc) })
		}, nil
	case bus.StageClickHouse:
		st, err := c.ClickHouseStage(reg, log)
		if err != nil {
			return nil, err
		}
		st.Sink.DropAcks = chsink.KillAfterInsertFromEnv(log)
		return func(ctx context.Context, running func(func() error)) error {
			st.Running = running
			return provisioned(ctx, func() error { return st.Run(ctx, nc) })
		}, nil
	case bus.StageArchive:
		st, err := c.ArchiveStage(reg, log)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, running func(func() error)) error {
			st.Running = running
			err := provisioned(ctx, func() error { return st.Run(ctx, nc) })
			if errors.Is(err, archive.ErrSinkConfig) {
				return fmt.Errorf("%w: %w", ErrInvalid, err)
			}
			return err
		}, nil
	case bus.StageLangfuse:
		sup, err := c.LangfuseStage(nc, reg, log)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, running func(func() error)) error {
			return provisioned(ctx, func() error {
				if running != nil {
					running(sup.Health)
				}
				return sup.Run(ctx)
			})
		}, nil
	}
	return nil, invalid("--stages", fmt.Errorf("unknown stage %q (allowed: %s)", name, strings.Join(WorkerStageNames(), ", ")))
}
