package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/retry"
	"github.com/callpipe/callpipe/sinks/archive"
)

func init() { stages[bus.StageArchive] = runArchiveStage }

// runArchiveStage archives CALLPIPE_CALLS to S3 (durable consumer
// archive.consumer) until ctx ends, then stores what it holds and acks it.
// It waits for the bucket at start, reporting unhealthy meanwhile.
func runArchiveStage(ctx context.Context, env *workerEnv, log *slog.Logger) error {
	cfg := env.cfg
	a := cfg.Archive
	if cfg.S3.Endpoint == "" || cfg.S3.Bucket == "" {
		return fmt.Errorf("%w: s3.endpoint and s3.bucket: required by the archive stage", errConfig)
	}
	s3, err := newS3(cfg, 0)
	if err != nil {
		return err
	}
	ready := env.health.Stage("archive: connecting to S3")

	if err := env.provisionStreams(ctx); err != nil {
		return err
	}
	if err := retry.Until(ctx, retry.Backoff{First: 250 * time.Millisecond, Max: 30 * time.Second, Attempt: 30 * time.Second},
		func(ctx context.Context) error { return archive.EnsureBucket(ctx, s3, cfg.S3.Bucket, cfg.S3.Region) },
		func(err error, wait time.Duration) {
			ready.Waiting(err)
			log.Warn("s3 not ready; retrying", "err", err, "retry_in", wait)
		}); err != nil {
		return nil
	}
	s, err := archive.NewSink(env.nc, s3, archive.SinkConfig{
		Stream: bus.CallsStream, Consumer: a.Consumer, FilterSubject: a.Subject,
		Bucket: cfg.S3.Bucket, Prefix: a.Prefix, Compression: a.Compression,
		FlushBytes: int64(a.FlushBytes), FlushInterval: time.Duration(a.FlushInterval), AckWait: time.Duration(a.AckWait),
		MaxAckPending: a.MaxAckPending, PartSize: uint64(a.PartSize), MaxUploads: a.MaxUploads,
		Log: log, Metrics: archive.NewMetrics(env.reg),
	})
	if err != nil {
		return fmt.Errorf("%w: archive: %w", errConfig, err)
	}
	ready.Running(s.Healthy)
	log.Info("archive sink running", "bucket", cfg.S3.Bucket, "prefix", a.Prefix, "consumer", a.Consumer,
		"flush_bytes", a.FlushBytes.String(), "flush_interval", a.FlushInterval.String())
	err = s.Run(ctx)
	log.Info("archive sink stopped")
	return err
}
