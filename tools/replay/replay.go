package replay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// Options describe one replay job.
type Options struct {
	// Job names the job (letters, digits, - and _); empty derives it from the
	// arguments (JobID), so that running the same command again resumes.
	Job      string
	From, To time.Time // calls whose start time is in [From, To)
	Model    string    // only this model (exact), when set
	User     string    // only this user, when set (see UserOf)
	// UserOf returns the user id a call is attributed to, as normalize does
	// (explicit user, else the API key's owner). Nil: the explicit user field.
	UserOf func(ctx context.Context, ev *schema.Event) string
	Sinks  []string // only these sinks process the replayed calls; empty: all
	// Rate is calls per second; 0: as fast as JetStream acknowledges (and in
	// fast batches when the stream allows them).
	Rate   float64
	DryRun bool // count what would be replayed, publish nothing

	Bucket, Prefix string
	MaxInFlight    int // published calls awaiting an ack (default 4096)
	// CheckpointEvery is how many lines pass between checkpoints inside an object (default 10000).
	CheckpointEvery int
	Limits          schema.Limits
	Progress        io.Writer     // progress lines (stderr); nil: none
	ProgressEvery   time.Duration // default 1s
	Log             *slog.Logger
}

// Result is what a job did (this run, plus the totals of earlier runs).
type Result struct {
	Job         string
	AlreadyDone bool // the checkpoint says the job finished before; nothing was sent
	Objects     int  // objects in the range
	Resumed     int  // objects skipped because an earlier run finished them
	Lines       int64
	Matched     int64 // calls passing the filter that this run published and checkpointed (dry run: all of them)
	Published   int64 // acknowledged by JetStream (all runs)
	// Batched is how many of this run's published calls went in fast batches.
	// JetStream acknowledges a batch as a whole, so duplicates among them are
	// not known and not in Duplicates.
	Batched     int64
	Duplicates  int64 // acknowledged as duplicates (already replayed within the duplicate window), outside fast batches
	Undecodable int64 // lines the schema decoder rejects (not replayed: normalize would dead-letter them again)
	Elapsed     time.Duration
}

// ErrStopped is returned when ctx ended the job: what was sent is
// acknowledged and checkpointed, and running the job again resumes there.
var ErrStopped = errors.New("replay stopped")

var validJob = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// JobID derives a job id from the arguments that define what is replayed.
func JobID(o Options) string {
	return "r-" + fingerprint(o)[:16]
}

func fingerprint(o Options) string {
	h := sha256.Sum256([]byte(strings.Join([]string{
		o.From.UTC().Format(time.RFC3339Nano), o.To.UTC().Format(time.RFC3339Nano), o.Model, o.User,
		strings.Join(o.Sinks, ","), o.Bucket, o.Prefix,
	}, "\x00")))
	return hex.EncodeToString(h[:])
}

// Subject is the subject job publishes on.
func Subject(job string) string { return bus.ReplaySubjectPrefix + "." + job }

// Run replays the job. cp may be nil only for a dry run. Progress goes to
// o.Progress; the checkpoint is saved as calls are acknowledged, so a job
// stopped by ctx (or killed) resumes where it was.
func Run(ctx context.Context, nc *nats.Conn, s3 *minio.Client, cp *Checkpoints, o Options) (Result, error) {
	if !o.To.After(o.From) {
		return Result{}, fmt.Errorf("replay: --to %s must be after --from %s", o.To.Format(time.RFC3339), o.From.Format(time.RFC3339))
	}
	if o.Job == "" {
		o.Job = JobID(o)
	}
	if !validJob.MatchString(o.Job) {
		return Result{}, fmt.Errorf("replay: job %q: must be 1-64 letters, digits, - and _", o.Job)
	}
	o.MaxInFlight = defaults.IfNotPositive(o.MaxInFlight, 4096)
	o.CheckpointEvery = defaults.IfNotPositive(o.CheckpointEvery, 10000)
	o.ProgressEvery = defaults.IfNotPositive(o.ProgressEvery, time.Second)
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if cp == nil && !o.DryRun {
		return Result{}, errors.New("replay: a checkpoint store is required unless --dry-run")
	}
	r := &runner{o: o, cp: cp, s3: s3, res: Result{Job: o.Job}, start: time.Now(), subject: Subject(o.Job)}
	r.hdr = nats.Header{bus.HeaderReplay: {o.Job}}
	if len(o.Sinks) > 0 {
		r.hdr[bus.HeaderSinks] = []string{strings.Join(o.Sinks, ",")}
	}
	r.asyncOpts = []jetstream.PublishOpt{jetstream.WithStallWait(5 * time.Second)}
	if o.Rate > 0 {
		r.limit = rate.NewLimiter(rate.Limit(o.Rate), max(1, int(o.Rate/10)))
	}
	if !o.DryRun {
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(o.MaxInFlight))
		if err != nil {
			return r.res, fmt.Errorf("replay: jetstream: %w", err)
		}
		r.js = js
		// a rate-limited job gains nothing from batches, and a slow one could
		// outlast the server's idle timeout for an open batch
		if o.Rate == 0 {
			ok, err := batchAllowed(ctx, js, r.subject)
			switch {
			case err != nil:
				o.Log.Warn("replay: cannot tell whether the stream allows fast batches; publishing call by call", "err", err)
			case ok:
				r.batch = newBatcher(js, r.subject, r.hdr)
			default:
				o.Log.Info("replay: stream does not allow fast batches (allow_batched; nats-server 2.14+); publishing call by call")
			}
		}
	}
	objs, err := rawarchive.Keys(ctx, s3, o.Bucket, o.Prefix, o.From, o.To)
	if err != nil {
		return r.res, fmt.Errorf("replay: %w", err)
	}
	r.res.Objects = len(objs)
	for _, ob := range objs {
		r.totalBytes += ob.Size
	}
	done := map[string]bool{}
	if !o.DryRun {
		st, err := cp.Load(ctx, o.Job)
		if err != nil {
			return r.res, err
		}
		fp := fingerprint(o)
		switch {
		case st.Args != "" && st.Args != fp:
			return r.res, fmt.Errorf("replay: job %s was started with different arguments; pick another --job", o.Job)
		case st.Finished:
			r.res.AlreadyDone, r.res.Published, r.res.Matched = true, st.Published, st.Matched
			return r.res, nil
		}
		st.Args = fp
		r.st = st
		r.res.Published, r.baseMatched = st.Published, st.Matched
		if done, err = cp.Done(ctx, o.Job); err != nil {
			return r.res, err
		}
	}
	stopProgress := r.progress()
	defer stopProgress()
	for i, ob := range objs {
		if done[ob.Key] {
			r.res.Resumed++
			r.doneBytes.Add(ob.Size)
			r.doneObjects.Store(int64(i + 1))
			continue
		}
		if err := r.object(ctx, ob); err != nil {
			return r.finish(), err
		}
		if ctx.Err() != nil {
			return r.finish(), ErrStopped
		}
		r.doneBytes.Add(ob.Size)
		r.doneObjects.Store(int64(i + 1))
	}
	if !o.DryRun {
		r.st.Finished, r.st.Object, r.st.Line = true, "", 0
		if err := cp.Save(context.WithoutCancel(ctx), o.Job, r.st, ""); err != nil {
			return r.finish(), err
		}
	}
	return r.finish(), nil
}

type runner struct {
	o     Options
	cp    *Checkpoints
	s3    *minio.Client
	js    jetstream.JetStream
	limit *rate.Limiter
	st    State
	// baseMatched is what earlier runs of the job matched
	baseMatched int64
	res         Result
	start       time.Time

	totalBytes  int64
	doneBytes   atomic.Int64
	doneObjects atomic.Int64
	matched     atomic.Int64 // read and matched (progress; the reader runs ahead of publishing)
	// committed is how many matched calls of this run lie before the last
	// checkpoint: what a resumed run must not count again
	committed int64

	subject   string
	hdr       nats.Header // replay headers shared by every message (read-only)
	asyncOpts []jetstream.PublishOpt
	window    []jetstream.PubAckFuture
	// seg is the segment being published: its calls are kept until the
	// checkpoint after them is saved.
	seg      *segment
	segments []*segment // reused by every object
	// batch sends each segment as one fast batch; nil: every call on the
	// async path. segAsync: the current segment's batch failed and the
	// segment continues on the async path.
	batch    *batcher
	segAsync bool
	segSent  int // calls of seg handed to JetStream
}

func (r *runner) finish() Result {
	r.res.Elapsed = time.Since(r.start)
	r.res.Matched = r.committed
	if r.o.DryRun {
		r.res.Matched = r.matched.Load()
	}
	return r.res
}

func (r *runner) match(ctx context.Context, ev *schema.Event) bool {
	if ev.StartTime.Before(r.o.From) || !ev.StartTime.Before(r.o.To) {
		return false
	}
	if r.o.Model != "" && ev.Model != r.o.Model {
		return false
	}
	if r.o.User != "" {
		user := ev.User
		if r.o.UserOf != nil {
			user = r.o.UserOf(ctx, ev)
		}
		if user != r.o.User {
			return false
		}
	}
	return true
}

// wait settles every publish in flight: failures are re-sent synchronously
// (same Nats-Msg-Id, so a publish that did land is not stored twice).
func (r *runner) wait(ctx context.Context) error {
	select {
	case <-r.js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	}
	// from here on the window is consumed: a stop must not cut it short, or
	// the checkpoint after the stop would count a call twice or not at all
	ctx = context.WithoutCancel(ctx)
	for _, f := range r.window {
		var ack *jetstream.PubAck
		var err error
		select {
		case ack = <-f.Ok():
		case err = <-f.Err():
		}
		for attempt := 1; err != nil && attempt <= 5; attempt++ {
			r.o.Log.Warn("replay: publish failed; re-sending", "attempt", attempt, "err", err)
			time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			ack, err = r.js.PublishMsg(pctx, f.Msg())
			cancel()
		}
		if err != nil {
			return fmt.Errorf("replay: publish %s: %w", f.Msg().Header.Get(bus.HeaderMsgID), err)
		}
		r.res.Published++
		if ack.Duplicate {
			r.res.Duplicates++
		}
	}
	r.window = r.window[:0]
	return nil
}

// progress prints objects, calls, rate and ETA every ProgressEvery until stopped.
func (r *runner) progress() func() {
	if r.o.Progress == nil {
		return func() {}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	print := func() {
		el := time.Since(r.start)
		n := r.matched.Load()
		rateNow := float64(n) / max(el.Seconds(), 1e-9)
		eta := "?"
		if db := r.doneBytes.Load(); db > 0 && r.totalBytes > 0 {
			eta = (time.Duration(float64(el) * float64(r.totalBytes-db) / float64(db))).Round(time.Second).String()
		}
		verb := "replayed"
		if r.o.DryRun {
			verb = "matched (dry run)"
		}
		fmt.Fprintf(r.o.Progress, "replay %s: objects %d/%d, calls %d %s, %.0f calls/s, elapsed %s, ETA %s\n",
			r.o.Job, r.doneObjects.Load(), r.res.Objects, n, verb, rateNow, el.Round(time.Second), eta)
	}
	go func() {
		defer wg.Done()
		t := time.NewTicker(r.o.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				print()
				return
			case <-t.C:
				print()
			}
		}
	}()
	return func() { close(stop); wg.Wait() }
}
