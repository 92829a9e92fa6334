package archive

import (
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
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// stage is the archive's row of the bus topology.
var stage = bus.StageOf(bus.StageArchive)

// SinkConfig configures the archive sink.
type SinkConfig struct {
	// Stream, Consumer and FilterSubject default to the archive stage's row
	// of the bus topology (tests use their own).
	Stream, Consumer, FilterSubject string
	Bucket                          string
	Prefix                          string // default rawarchive.DefaultPrefix
	Compression                     string // fastest (default), default or better
	// An object is closed when its uncompressed NDJSON reaches FlushBytes
	// (default 64 MiB) or its oldest call has waited FlushInterval (default 60s).
	FlushBytes    int64
	FlushInterval time.Duration
	// AckWait must exceed FlushInterval (default 2×FlushInterval+1m); held
	// messages are kept alive with in-progress acks every AckWait/3.
	AckWait       time.Duration
	MaxAckPending int    // default 500000
	PartSize      uint64 // multipart part size (default 16 MiB)
	MaxUploads    int    // objects uploading at once (default 2)
	// ShutdownTimeout bounds the uploads after SIGTERM (default 60s).
	ShutdownTimeout time.Duration
	// BackoffMin/BackoffMax bound the wait between failed uploads (250ms, 30s).
	BackoffMin, BackoffMax time.Duration
	Log                    *slog.Logger
	Metrics                *Metrics // nil: unregistered metrics
	// SSE is the server-side encryption of every object (nil: the bucket's
	// default applies).
	SSE encrypt.ServerSide
}

func (c *SinkConfig) defaults() error {
	stage.Defaults(&c.Stream, &c.Consumer, &c.FilterSubject)
	if c.Bucket == "" {
		return errors.New("archive sink: bucket is required")
	}
	if c.Prefix == "" {
		c.Prefix = rawarchive.DefaultPrefix
	}
	if c.Compression == "" {
		c.Compression = "fastest"
	}
	if !rawarchive.ValidLevel(c.Compression) {
		return fmt.Errorf("archive sink: compression %q: want fastest, default or better", c.Compression)
	}
	if c.FlushBytes <= 0 {
		c.FlushBytes = 64 << 20
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = time.Minute
	}
	if c.AckWait <= 0 {
		c.AckWait = 2*c.FlushInterval + time.Minute
	}
	if c.AckWait <= c.FlushInterval {
		return fmt.Errorf("archive sink: ack wait %s must exceed the flush interval %s", c.AckWait, c.FlushInterval)
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 500000
	}
	if c.PartSize == 0 {
		c.PartSize = 16 << 20
	}
	if c.MaxUploads <= 0 {
		c.MaxUploads = 2
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = time.Minute
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = 250 * time.Millisecond
	}
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = max(30*time.Second, c.BackoffMin)
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
	return nil
}

// Sink archives CALLPIPE_CALLS to S3 (see the package comment for the
// exactly-once protocol).
type Sink struct {
	cfg  SinkConfig
	nc   *nats.Conn
	js   jetstream.JetStream
	s3   *minio.Client
	log  *slog.Logger
	m    *Metrics
	dead bus.DeadLetters

	mu         sync.Mutex
	held       map[uint64]struct{}  // sequences in a buffer, an upload or a recovery
	recovering map[string]*recovery // manifest key → recovery in flight
	lastErr    error

	manifests map[string]*rawarchive.Manifest // immutable once written: cached by key
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
	return &Sink{cfg: cfg, nc: nc, js: js, s3: s3, log: cfg.Log, m: cfg.Metrics, dead: bus.DeadLetters{JS: js, Stage: stage.Name},
		held: map[uint64]struct{}{}, recovering: map[string]*recovery{}, manifests: map[string]*rawarchive.Manifest{}}, nil
}

// Healthy is nil unless the last upload failed.
func (s *Sink) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr != nil {
		return fmt.Errorf("archive sink: %w", s.lastErr)
	}
	return nil
}

func (s *Sink) setErr(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

// item is one delivered message, decoded just enough to place it.
type item struct {
	msg       jetstream.Msg
	seq       uint64
	ref       bus.AckRef
	delivered uint64
	hour      time.Time
	start     time.Time // zero: undecodable
	line      []byte
	replay    bool  // not routed to the archive (bus.Routed): a replay
	bad       error // not storable as a line (dead letter)
}

// buffer is the open object of one hour.
type buffer struct {
	b            *rawarchive.Builder
	held         []bus.AckRef
	lastProgress time.Time
}

// Run consumes until ctx ends, then closes every open object, uploads it,
// acks its messages and returns.
func (s *Sink) Run(ctx context.Context) error {
	cons, err := s.js.CreateOrUpdateConsumer(ctx, s.cfg.Stream, jetstream.ConsumerConfig{
		Durable:       s.cfg.Consumer,
		Description:   "callpipe archive sink",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.cfg.AckWait,
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: s.cfg.FilterSubject,
		MaxAckPending: s.cfg.MaxAckPending,
	})
	if err != nil {
		return fmt.Errorf("archive sink: consumer %s on %s: %w", s.cfg.Consumer, s.cfg.Stream, err)
	}
	// read-ahead bounded in bytes, so that large calls do not multiply it
	it, err := cons.Messages(jetstream.PullMaxBytes(8 << 20))
	if err != nil {
		return fmt.Errorf("archive sink: pull: %w", err)
	}
	items := bus.Pull(it, 4096, s.log, "archive sink", s.classify)

	var uploads sync.WaitGroup
	slots := make(chan struct{}, s.cfg.MaxUploads)
	upctx, cancelUploads := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelUploads()
	bufs := map[time.Time]*buffer{}
	var suspects []item

	flush := func(h time.Time, reason string) {
		buf := bufs[h]
		delete(bufs, h)
		built, err := buf.b.Finish(reason, time.Now())
		if err != nil { // only an encoder failure: the calls come back after AckWait
			s.log.Error("archive sink: closing object failed; its calls will be redelivered", "err", err)
			s.m.Errors.WithLabelValues("compress").Inc()
			s.release(buf.held)
			return
		}
		s.m.Buffered.Sub(float64(len(buf.held)))
		slots <- struct{}{}
		uploads.Add(1)
		go func() {
			defer uploads.Done()
			defer func() { <-slots }()
			s.upload(upctx, built, buf.held, true)
		}()
	}
	add := func(it item) {
		if s.isHeld(it.seq) {
			return
		}
		buf := bufs[it.hour]
		if buf == nil {
			b, err := rawarchive.NewBuilder(s.cfg.Prefix, s.cfg.Stream, s.cfg.Compression, it.hour, time.Now())
			if err != nil {
				s.log.Error("archive sink: new object", "err", err)
				return
			}
			buf = &buffer{b: b, lastProgress: time.Now()}
			bufs[it.hour] = buf
		}
		if err := buf.b.Add(it.seq, it.line, it.start); err != nil {
			s.log.Error("archive sink: add", "seq", it.seq, "err", err)
			return
		}
		s.mu.Lock()
		s.held[it.seq] = struct{}{}
		s.mu.Unlock()
		buf.held = append(buf.held, it.ref)
		s.m.Buffered.Inc()
		if buf.b.Bytes() >= s.cfg.FlushBytes {
			flush(it.hour, rawarchive.FlushSize)
		}
	}
	checkSuspects := func() {
		if len(suspects) == 0 {
			return
		}
		fresh := s.resolveSuspects(upctx, suspects, slots, &uploads)
		suspects = nil
		for _, it := range fresh {
			add(it)
		}
	}

	tick := time.NewTicker(min(s.cfg.FlushInterval/4, time.Second))
	defer tick.Stop()
	stopping := false
	for {
		var done <-chan struct{}
		if !stopping {
			done = ctx.Done()
		}
		select {
		case <-done:
			stopping = true
			it.Drain() // deliver what is buffered, then close items
		case it, ok := <-items:
			if !ok {
				return s.shutdown(bufs, flush, &uploads, cancelUploads)
			}
			switch {
			case it.replay:
				s.m.Skipped.WithLabelValues("replay").Inc()
				s.ack(it.msg)
			case it.bad != nil:
				s.deadLetter(ctx, it.msg, it.bad)
			case s.isHeld(it.seq):
				// a second delivery of a message this process still holds:
				// the held one is acked when its object is stored
			case it.delivered > 1:
				suspects = append(suspects, it)
				if len(suspects) >= 10000 {
					checkSuspects()
				}
			default:
				add(it)
			}
		case <-tick.C:
			if stopping {
				continue
			}
			checkSuspects()
			now := time.Now()
			for h, buf := range bufs {
				if now.Sub(buf.b.Opened()) >= s.cfg.FlushInterval {
					flush(h, rawarchive.FlushAge)
					continue
				}
				if now.Sub(buf.lastProgress) >= s.cfg.AckWait/3 {
					s.inProgress(buf.held)
					buf.lastProgress = now
				}
			}
		}
	}
}

func (s *Sink) shutdown(bufs map[time.Time]*buffer, flush func(time.Time, string), uploads *sync.WaitGroup, cancel context.CancelFunc) error {
	for h := range bufs {
		flush(h, rawarchive.FlushShutdown)
	}
	done := make(chan struct{})
	go func() { uploads.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.cfg.ShutdownTimeout):
		s.log.Error("archive sink: uploads did not finish within the shutdown timeout; their calls will be redelivered",
			"timeout", s.cfg.ShutdownTimeout)
		cancel()
		<-done
	}
	if err := s.nc.FlushTimeout(5 * time.Second); err != nil {
		s.log.Warn("archive sink: flushing acks", "err", err)
	}
	return nil
}

// classify decodes what is needed to place m: its sequence, hour and line.
func (s *Sink) classify(m jetstream.Msg) item {
	it := item{msg: m, line: m.Data()}
	md, err := m.Metadata()
	if err != nil {
		it.bad = fmt.Errorf("no JetStream metadata: %w", err)
		return it
	}
	it.seq, it.delivered = md.Sequence.Stream, md.NumDelivered
	it.ref = bus.NewAckRef(m, md)
	if !bus.Routed(m.Headers(), stage.Name) {
		it.replay = true
		return it
	}
	it.line, it.bad = rawarchive.StorableLine(m.Data())
	if it.bad != nil {
		return it
	}
	it.hour, it.start = s.placement(it.line, md.Timestamp)
	return it
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

func (s *Sink) isHeld(seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.held[seq]
	return ok
}

func (s *Sink) release(held []bus.AckRef) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range held {
		delete(s.held, h.Seq)
	}
}

func (s *Sink) ack(m jetstream.Msg) {
	if err := m.Ack(); err != nil {
		s.log.Warn("archive sink: ack (the call will be redelivered and recognized as archived)", "err", err)
	}
}

// upload stores built (manifest first when claim is set, then the data
// object), retrying with backoff until ctx ends, then acks held.
func (s *Sink) upload(ctx context.Context, built *rawarchive.Built, held []bus.AckRef, claim bool) bool {
	defer s.release(held)
	stopProgress := s.keepAlive(held)
	defer stopProgress()
	start := time.Now()
	wait := s.cfg.BackoffMin
	for attempt := 0; ; attempt++ {
		err := error(nil)
		if claim {
			if err = rawarchive.PutManifest(ctx, s.s3, s.cfg.Bucket, built, s.cfg.SSE); err == nil {
				claim = false
			} else {
				s.m.Errors.WithLabelValues("manifest").Inc()
			}
		}
		if err == nil {
			if err = rawarchive.PutData(ctx, s.s3, s.cfg.Bucket, built, s.cfg.PartSize, s.cfg.SSE); err != nil {
				s.m.Errors.WithLabelValues("upload").Inc()
			}
		}
		if err == nil {
			break
		}
		s.setErr(err)
		if ctx.Err() != nil {
			s.log.Error("archive sink: upload abandoned at shutdown; its calls will be redelivered and the object rebuilt",
				"key", built.Manifest.Key, "err", err)
			return false
		}
		s.log.Warn("archive sink: upload failed; retrying", "key", built.Manifest.Key, "attempt", attempt+1, "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, s.cfg.BackoffMax)
	}
	s.setErr(nil)
	for _, h := range held {
		s.ackHeld(h)
	}
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

// keepAlive sends in-progress acks for held every AckWait/3 until stopped.
func (s *Sink) keepAlive(held []bus.AckRef) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(s.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				s.inProgress(held)
			}
		}
	}()
	return func() { close(stop); <-done }
}

// deadLetter stores m in CALLPIPE_DLQ with the reason and terminates it
// (bus.DeadLetters); if the DLQ is unreachable m is nak'ed and comes back later.
func (s *Sink) deadLetter(ctx context.Context, m jetstream.Msg, reason error) {
	if err := s.dead.Write(ctx, m, reason.Error()); err != nil {
		s.m.Errors.WithLabelValues("dead_letter").Inc()
		s.log.Error("archive sink: dead letter publish failed; message nak'ed", "err", err, "reason", reason)
		_ = m.NakWithDelay(s.cfg.BackoffMax)
		return
	}
	s.m.DeadLetters.Inc()
	s.log.Warn("archive sink: message dead-lettered", "reason", reason, "subject", m.Subject())
}
