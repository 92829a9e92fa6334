package archive

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/nats-io/nats.go"

	"github.com/callpipe/callpipe/internal/retry"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// ErrSinkConfig marks the errors of Stage.Run that come from a SinkConfig
// the sink refuses.
var ErrSinkConfig = errors.New("archive")

// Stage is the archive worker stage: it waits for the bucket (rawarchive.EnsureBucket,
// retried for ever; Waiting is told why), then archives through a Sink of
// Sink until ctx ends, storing and acking what it holds. The caller
// provisions the streams first.
type Stage struct {
	S3     *minio.Client
	Region string // of the bucket when the stage creates it
	Sink   SinkConfig
	// Waiting is told why the stage is not running yet; Running is given the
	// sink's health once it runs. Either may be nil.
	Waiting func(err error)
	Running func(healthy func() error)
}

// Run runs the stage until ctx ends. It returns nil when ctx ends before the
// bucket is ready, and an ErrSinkConfig error for an invalid Sink.
func (st *Stage) Run(ctx context.Context, nc *nats.Conn) error {
	log := st.Sink.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := retry.Until(ctx, retry.Backoff{First: 250 * time.Millisecond, Max: 30 * time.Second, Attempt: 30 * time.Second},
		func(ctx context.Context) error { return rawarchive.EnsureBucket(ctx, st.S3, st.Sink.Bucket, st.Region) },
		retry.Reporting("s3", st.Waiting, log)); err != nil {
		return nil
	}
	s, err := NewSink(nc, st.S3, st.Sink)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSinkConfig, err)
	}
	if st.Running != nil {
		st.Running(s.Healthy)
	}
	err = s.Run(ctx)
	log.Info("archive sink stopped")
	return err
}
