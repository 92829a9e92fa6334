package archive

import (
	"context"
	"errors"
	"fmt"

	"github.com/minio/minio-go/v7"
	"github.com/nats-io/nats.go"
)

// ErrSinkConfig marks the errors of Stage.Run that come from a SinkConfig
// the sink refuses.
var ErrSinkConfig = errors.New("archive")

// Stage is the archive worker stage: it archives through a Sink of Sink
// until ctx ends, storing and acking what it holds. The sink waits for the
// bucket first (Sink.Connect, retried for ever by its runner, unhealthy
// meanwhile). The caller provisions the streams first.
type Stage struct {
	S3   *minio.Client
	Sink SinkConfig
	// Running is given the sink's health (unhealthy until the bucket is
	// there) when the stage starts; nil: nobody.
	Running func(healthy func() error)
}

// Run runs the stage until ctx ends. It returns nil when ctx ends before the
// bucket is ready, and an ErrSinkConfig error for an invalid Sink.
func (st *Stage) Run(ctx context.Context, nc *nats.Conn) error {
	s, err := NewSink(nc, st.S3, st.Sink)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSinkConfig, err)
	}
	if st.Running != nil {
		st.Running(s.Healthy)
	}
	c := s.cfg
	go func() {
		select {
		case <-ctx.Done():
		case <-s.Ready():
			c.Log.Info("archive sink running", "bucket", c.Bucket, "prefix", c.Prefix, "consumer", c.Consumer,
				"flush_bytes", c.FlushBytes, "flush_interval", c.FlushInterval.String())
		}
	}()
	err = s.Run(ctx)
	c.Log.Info("archive sink stopped")
	return err
}
