package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/sinks/archive"
)

func init() { stages[bus.StageArchive] = runArchiveStage }

// runArchiveStage runs archive.Stage: CALLPIPE_CALLS to S3 (durable
// consumer archive.consumer), waiting for the bucket at start.
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
	st := &archive.Stage{S3: s3, Region: cfg.S3.Region, Waiting: ready.Waiting,
		Sink: archive.SinkConfig{
			Stream: bus.CallsStream, Consumer: a.Consumer, FilterSubject: a.Subject,
			Bucket: cfg.S3.Bucket, Prefix: a.Prefix, Compression: a.Compression,
			FlushBytes: int64(a.FlushBytes), FlushInterval: time.Duration(a.FlushInterval), AckWait: time.Duration(a.AckWait),
			MaxAckPending: a.MaxAckPending, PartSize: uint64(a.PartSize), MaxUploads: a.MaxUploads,
			Log: log, Metrics: archive.NewMetrics(env.reg), SSE: cfg.S3.ServerSide(),
		},
		Running: func(healthy func() error) {
			ready.Running(healthy)
			log.Info("archive sink running", "bucket", cfg.S3.Bucket, "prefix", a.Prefix, "consumer", a.Consumer,
				"flush_bytes", a.FlushBytes.String(), "flush_interval", a.FlushInterval.String())
		},
	}
	err = st.Run(ctx, env.nc)
	if errors.Is(err, archive.ErrSinkConfig) {
		return fmt.Errorf("%w: %w", errConfig, err)
	}
	return err
}
