package archive

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/encrypt"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/internal/retry"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// stage is the archive's row of the bus topology.
var stage = bus.StageOf(bus.StageArchive)

// SinkConfig configures the archive sink.
type SinkConfig struct {
	// Config is the runner's: Stream, Consumer and FilterSubject default to
	// the archive stage's row of the bus topology (tests use their own);
	// AckWait must exceed FlushInterval (default 2×FlushInterval+1m);
	// MaxAckPending defaults to 500,000; DrainTimeout (default 60s) bounds
	// the uploads after SIGTERM; BackoffMin/Max (250ms, 30s) also bound the
	// wait between failed uploads.
	sinks.Config
	Bucket      string
	Region      string // of the bucket when Connect creates it
	Prefix      string // default rawarchive.DefaultPrefix
	Compression string // fastest (default), default or better
	// An object is closed when its uncompressed NDJSON reaches FlushBytes
	// (default 64 MiB) or its oldest call has waited FlushInterval (default 60s).
	FlushBytes    int64
	FlushInterval time.Duration
	PartSize      uint64   // multipart part size (default 16 MiB)
	MaxUploads    int      // objects uploading at once (default 2)
	Metrics       *Metrics // nil: unregistered metrics
	// SSE is the server-side encryption of every object (nil: the bucket's
	// default applies).
	SSE encrypt.ServerSide
}

func (c *SinkConfig) defaults() error {
	c.Stage, c.Description = stage.Name, "callpipe archive sink"
	stage.Defaults(&c.Stream, &c.Consumer, &c.FilterSubject)
	if c.Bucket == "" {
		return errors.New("archive sink: bucket is required")
	}
	c.Prefix, c.Compression = cmp.Or(c.Prefix, rawarchive.DefaultPrefix), cmp.Or(c.Compression, "fastest")
	if !rawarchive.ValidLevel(c.Compression) {
		return fmt.Errorf("archive sink: compression %q: want fastest, default or better", c.Compression)
	}
	c.FlushBytes = defaults.IfNotPositive(c.FlushBytes, 64<<20)
	c.FlushInterval = defaults.IfNotPositive(c.FlushInterval, time.Minute)
	c.AckWait = defaults.IfNotPositive(c.AckWait, 2*c.FlushInterval+time.Minute)
	if c.AckWait <= c.FlushInterval {
		return fmt.Errorf("archive sink: ack wait %s must exceed the flush interval %s", c.AckWait, c.FlushInterval)
	}
	c.MaxAckPending = defaults.IfNotPositive(c.MaxAckPending, 500000)
	c.PartSize = defaults.IfNotPositive(c.PartSize, 16<<20)
	c.MaxUploads = defaults.IfNotPositive(c.MaxUploads, 2)
	c.DrainTimeout = defaults.IfNotPositive(c.DrainTimeout, time.Minute)
	c.BackoffMin = defaults.IfNotPositive(c.BackoffMin, 250*time.Millisecond)
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = max(30*time.Second, c.BackoffMin)
	}
	c.Log = cmp.Or(c.Log, slog.New(slog.DiscardHandler))
	// the bucket is waited for (S3 may start after the worker), each
	// attempt bounded
	c.Destination = "s3"
	if c.Connect == (retry.Backoff{}) {
		c.Connect = retry.Backoff{First: c.BackoffMin, Max: c.BackoffMax, Attempt: 30 * time.Second}
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
	return nil
}

// Sink archives CALLPIPE_CALLS to S3 (the package comment has the
// exactly-once protocol), a sinks.Output and sinks.Holder on a
// sinks.Runner: it waits for its bucket (Connect), holds each call in the
// buffer of its hour, closes a buffer by size (WriteBatch) or age (Flush),
// writes its manifest, uploads it and releases its holds; Close waits for
// the uploads.
type Sink struct {
	cfg   SinkConfig
	js    jetstream.JetStream
	s3    *minio.Client
	log   *slog.Logger
	m     *Metrics
	run   *sinks.Runner[item]
	slots chan struct{} // uploads (and rebuilds) running

	// bmu guards the buffers and the manifest cache: WriteBatch runs on the
	// runner's flusher, Flush on its main goroutine.
	bmu       sync.Mutex
	bufs      map[time.Time]*buffer
	manifests map[string]*rawarchive.Manifest // immutable once written: cached by key

	// mu guards the recoveries in flight and the last error (uploads and
	// rebuilds run on their own goroutines). Lock order: bmu before mu.
	mu         sync.Mutex
	recovering map[string][]sinks.Hold // manifest key → the holds waiting for its rebuild
	lastErr    error
}

// NewSink returns a sink reading with nc and writing with s3.
func NewSink(nc *nats.Conn, s3 *minio.Client, cfg SinkConfig) (*Sink, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("archive sink: jetstream: %w", err)
	}
	s := &Sink{cfg: cfg, js: js, s3: s3, log: cfg.Log, m: cfg.Metrics, slots: make(chan struct{}, cfg.MaxUploads),
		bufs: map[time.Time]*buffer{}, recovering: map[string][]sinks.Hold{}, manifests: map[string]*rawarchive.Manifest{}}
	rc := cfg.Config
	// a batch is what the sink places at once: redelivered calls of it are
	// looked up in the archive together; the period is also how often the
	// objects' age is checked (Flush)
	rc.Batch = sinks.BatchPolicy{Count: 10000, Bytes: 8 << 20, Period: min(cfg.FlushInterval/4, time.Second), MaxInFlight: 1}
	// read-ahead bounded in bytes, so that large calls do not multiply it
	rc.PullBytes, rc.PullBuffer = 8<<20, 4096
	rc.Counters = sinks.Counters{Skipped: cfg.Metrics.Skipped.WithLabelValues("replay"), DeadLetters: cfg.Metrics.DeadLetters,
		DeadLetterErrors: cfg.Metrics.Errors.WithLabelValues("dead_letter")}
	s.run, err = sinks.New(nc, sinks.Output[item](s), rc)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Healthy is nil unless the last upload (or look-up in the archive) failed.
func (s *Sink) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr != nil {
		return fmt.Errorf("archive sink: %w", s.lastErr)
	}
	return s.run.Healthy()
}

func (s *Sink) setErr(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

// item is one delivered message, decoded just enough to place it.
type item struct {
	seq       uint64
	delivered uint64
	hour      time.Time
	start     time.Time // zero: undecodable
	line      []byte
}

// buffer is the open object of one hour.
type buffer struct {
	b     *rawarchive.Builder
	holds []sinks.Hold
}

// Run waits for the bucket, consumes until ctx ends, then closes every open
// object, uploads it, acks its messages and returns (sinks.Runner).
func (s *Sink) Run(ctx context.Context) error { return s.run.Run(ctx) }

// Ready is closed once the bucket is there.
func (s *Sink) Ready() <-chan struct{} { return s.run.Ready() }

// Connect makes sure the bucket exists (rawarchive.EnsureBucket), creating
// it in Region.
func (s *Sink) Connect(ctx context.Context) error {
	return rawarchive.EnsureBucket(ctx, s.s3, s.cfg.Bucket, s.cfg.Region)
}

// Close waits until no upload or rebuild runs (at the drain they end with
// their holds released; one given up at DrainTimeout ends with its ctx).
func (s *Sink) Close(ctx context.Context) error {
	for range cap(s.slots) {
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("archive sink: uploads still running: %w", ctx.Err())
		}
	}
	return nil
}

// Decode places a message: its sequence, hour and line. A message that
// cannot be one NDJSON line is poison.
func (s *Sink) Decode(_ jetstream.Msg, md *jetstream.MsgMetadata, data []byte) (item, error) {
	line, err := rawarchive.StorableLine(data)
	if err != nil {
		return item{}, err
	}
	it := item{seq: md.Sequence.Stream, delivered: md.NumDelivered, line: line}
	it.hour, it.start = s.placement(line, md.Timestamp)
	return it, nil
}

// WriteBatch buffers the batch's first deliveries (held until their object
// is stored) and sorts its redeliveries against the archive (recovery.go).
func (s *Sink) WriteBatch(ctx context.Context, b *sinks.Batch[item]) error {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	var suspects []int
	for i := range b.Items {
		if b.Items[i].Value.delivered > 1 {
			suspects = append(suspects, i)
			continue
		}
		s.add(ctx, b, i)
	}
	return s.resolveSuspects(ctx, b, suspects)
}

// Flush closes the objects whose oldest call has waited FlushInterval, or
// every object when final (the drain).
func (s *Sink) Flush(ctx context.Context, final bool) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	now := time.Now()
	for h, buf := range s.bufs {
		switch {
		case final:
			s.flush(ctx, h, rawarchive.FlushShutdown)
		case now.Sub(buf.b.Opened()) >= s.cfg.FlushInterval:
			s.flush(ctx, h, rawarchive.FlushAge)
		}
	}
}

// add puts value i of b into the buffer of its hour (s.bmu held).
func (s *Sink) add(ctx context.Context, b *sinks.Batch[item], i int) {
	it := &b.Items[i].Value
	buf := s.bufs[it.hour]
	if buf == nil {
		bl, err := rawarchive.NewBuilder(s.cfg.Prefix, s.cfg.Stream, s.cfg.Compression, it.hour, time.Now())
		if err != nil {
			s.log.Error("archive sink: new object", "err", err)
			b.Retry(i)
			return
		}
		buf = &buffer{b: bl}
		s.bufs[it.hour] = buf
	}
	if err := buf.b.Add(it.seq, it.line, it.start); err != nil {
		s.log.Error("archive sink: add", "seq", it.seq, "err", err)
		b.Retry(i)
		return
	}
	buf.holds = append(buf.holds, b.Hold(i))
	s.m.Buffered.Inc()
	if buf.b.Bytes() >= s.cfg.FlushBytes {
		s.flush(ctx, it.hour, rawarchive.FlushSize)
	}
}

// flush closes the object of hour h and starts its upload (s.bmu held).
func (s *Sink) flush(ctx context.Context, h time.Time, reason string) {
	buf := s.bufs[h]
	delete(s.bufs, h)
	s.m.Buffered.Sub(float64(len(buf.holds)))
	built, err := buf.b.Finish(reason, time.Now())
	if err != nil { // only an encoder failure
		s.log.Error("archive sink: closing object failed; its calls will be redelivered", "err", err)
		s.m.Errors.WithLabelValues("compress").Inc()
		sinks.Release(buf.holds, false)
		return
	}
	s.slots <- struct{}{}
	go func() {
		defer func() { <-s.slots }()
		s.upload(ctx, built, buf.holds, true)
	}()
}

// placement is the hour a line is archived under: the UTC hour of its start
// time, or of the stream timestamp when it has none (not an object, or no
// valid top-level start_time). Both are stable across redeliveries, so
// recovery finds the same hour. Only start_time is read: the archive keeps
// events as received, valid or not, and normalize judges them.
func (s *Sink) placement(line []byte, stored time.Time) (hour, start time.Time) {
	st, ok := schema.StartTime(line)
	if !ok || st.IsZero() {
		s.m.Undecodable.Inc()
		return stored.UTC().Truncate(time.Hour), time.Time{}
	}
	return st.UTC().Truncate(time.Hour), st
}

// upload stores built (manifest first when claim is set, then the data
// object), retrying with backoff until ctx ends, then releases holds:
// stored (acked), or not when ctx ended first (nak'ed: redelivered, and the
// object rebuilt from its manifest).
func (s *Sink) upload(ctx context.Context, built *rawarchive.Built, holds []sinks.Hold, claim bool) bool {
	start := time.Now()
	attempt := 0
	err := retry.Until(ctx, retry.Backoff{First: s.cfg.BackoffMin, Max: s.cfg.BackoffMax}, func(ctx context.Context) error {
		attempt++
		if claim {
			if err := rawarchive.PutManifest(ctx, s.s3, s.cfg.Bucket, built, s.cfg.SSE); err != nil {
				s.m.Errors.WithLabelValues("manifest").Inc()
				return err
			}
			claim = false
		}
		if err := rawarchive.PutData(ctx, s.s3, s.cfg.Bucket, built, s.cfg.PartSize, s.cfg.SSE); err != nil {
			s.m.Errors.WithLabelValues("upload").Inc()
			return err
		}
		return nil
	}, func(err error, wait time.Duration) {
		s.setErr(err)
		s.log.Warn("archive sink: upload failed; retrying", "key", built.Manifest.Key, "attempt", attempt, "retry_in", wait, "err", err)
	})
	if err != nil {
		s.log.Error("archive sink: upload abandoned at shutdown; its calls will be redelivered and the object rebuilt",
			"key", built.Manifest.Key, "err", err)
		sinks.Release(holds, false)
		return false
	}
	s.setErr(nil)
	sinks.Release(holds, true)
	meta := built.Manifest.Meta
	s.m.UploadSeconds.Observe(time.Since(start).Seconds())
	s.m.Objects.WithLabelValues(meta.Flush).Inc()
	s.m.Calls.Add(float64(meta.Count))
	s.m.Bytes.WithLabelValues("raw").Add(float64(meta.Bytes))
	s.m.Bytes.WithLabelValues("compressed").Add(float64(len(built.Data)))
	s.log.Debug("archive object stored", "key", built.Manifest.Key, "calls", meta.Count, "bytes", meta.Bytes,
		"compressed", len(built.Data), "flush", meta.Flush)
	return true
}
