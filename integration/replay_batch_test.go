package integration

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/rawarchive"
	"github.com/callpipe/callpipe/tools/replay"
)

// replayFixture is an archive of two hourly objects written straight to
// MinIO (no worker). The jobs keep model-1 (about a third of the calls); a
// few lines per object do not decode.
type replayFixture struct {
	e          *archEnv
	cp         *replay.Checkpoints
	from, to   time.Time
	want       map[string][]byte // Nats-Msg-Id suffix (call id) -> raw, the calls the filter keeps
	lines      int64
	undecoding int64
}

const replayModel = "model-1"

func newReplayFixture(t *testing.T, perHour int) *replayFixture {
	t.Helper()
	e := newArchEnv(t)
	day := archDay(t)
	f := &replayFixture{e: e, from: day, to: day.Add(2 * time.Hour), want: map[string][]byte{}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for h := range 2 {
		hour := day.Add(time.Duration(h) * time.Hour)
		evs := archEvents(fmt.Sprintf("%s-h%d", e.run, h), perHour, hour, 1, 200, uint64(11+h))
		bl, err := rawarchive.NewBuilder(e.prefix, bus.CallsStream, "fastest", hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		seq := uint64(0)
		for i, ev := range evs {
			seq++
			if err := bl.Add(seq, ev.raw, ev.start); err != nil {
				t.Fatal(err)
			}
			ev, err := schema.Decode(ev.raw, schema.Limits{})
			if err != nil {
				t.Fatalf("generated event %d does not decode: %v", i, err)
			}
			if ev.Model == replayModel {
				f.want[ev.ID] = evs[i].raw
			}
			if i%997 == 0 { // a line the decoder rejects: counted, never published
				seq++
				if err := bl.Add(seq, []byte(fmt.Sprintf(`{"id":"%s-bad-%d","model":"%s"}`, e.run, i, replayModel)), time.Time{}); err != nil {
					t.Fatal(err)
				}
				f.undecoding++
			}
		}
		f.lines += int64(seq)
		built, err := bl.Finish(rawarchive.FlushSize, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := rawarchive.PutManifest(ctx, e.s3, archBucket, built, nil); err != nil {
			t.Fatal(err)
		}
		if err := rawarchive.PutData(ctx, e.s3, archBucket, built, 16<<20, nil); err != nil {
			t.Fatal(err)
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: harness.Redis(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	f.cp = replay.NewCheckpoints(rdb, "callpipe:it:replay:", time.Hour)
	return f
}

// options replays the fixture's range, model-1 only, checkpointing every
// 1500 lines (several segments per object, the last one partial).
func (f *replayFixture) options(t *testing.T, job string) replay.Options {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = f.cp.Delete(ctx, job)
		if s, err := f.e.js.Stream(ctx, bus.CallsStream); err == nil {
			_ = s.Purge(ctx, jetstream.WithPurgeSubject(replay.Subject(job)))
		}
	})
	return replay.Options{Job: job, From: f.from, To: f.to, Model: replayModel, Sinks: []string{"clickhouse"},
		Bucket: archBucket, Prefix: f.e.prefix, CheckpointEvery: 1500}
}

func (f *replayFixture) run(t *testing.T, ctx context.Context, o replay.Options) (replay.Result, error) {
	t.Helper()
	nc, err := nats.Connect(harness.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	return replay.Run(ctx, nc, f.e.s3, f.cp, o)
}

// stopAfter stops the job from inside: o.UserOf runs for every decoded call
// (the user filter is set to what it returns), and cancels ctx at the n-th.
func stopAfter(o replay.Options, n int64) (replay.Options, context.Context) {
	ctx, cancel := context.WithCancel(context.Background())
	var seen atomic.Int64
	o.User = "everyone"
	o.UserOf = func(context.Context, *schema.Event) string {
		if seen.Add(1) == n {
			cancel()
		}
		return "everyone"
	}
	return o, ctx
}

// checkStream requires the job's subject to hold every wanted call exactly
// once, byte for byte, with the replay headers.
func (f *replayFixture) checkStream(t *testing.T, job string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := f.e.js.OrderedConsumer(ctx, bus.CallsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{replay.Subject(job)}})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	stored := 0
	for {
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			stored++
			ev, err := schema.Decode(m.Data(), schema.Limits{})
			if err != nil {
				t.Fatalf("stored message does not decode: %v", err)
			}
			seen[ev.ID]++
			raw, ok := f.want[ev.ID]
			switch {
			case !ok:
				t.Fatalf("call %s was replayed but does not match the filter", ev.ID)
			case string(raw) != string(m.Data()):
				t.Fatalf("call %s: stored bytes differ from the archive", ev.ID)
			case m.Headers().Get(nats.MsgIdHdr) != bus.ReplayMsgID(job, ev.ID):
				t.Fatalf("call %s: Nats-Msg-Id %q", ev.ID, m.Headers().Get(nats.MsgIdHdr))
			case m.Headers().Get(bus.HeaderReplay) != job || m.Headers().Get(bus.HeaderSinks) != "clickhouse":
				t.Fatalf("call %s: replay headers %v", ev.ID, m.Headers())
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("call %s stored %d times", id, k)
		}
	}
	if stored != len(f.want) || len(seen) != len(f.want) {
		t.Fatalf("stream holds %d messages of %d calls, want each of the %d matching calls once", stored, len(seen), len(f.want))
	}
}

// setBatching turns allow_batched of CALLPIPE_CALLS on or off.
func (f *replayFixture) setBatching(t *testing.T, on bool) {
	t.Helper()
	if err := f.batching(on); err != nil {
		t.Fatal(err)
	}
}

func (f *replayFixture) batching(on bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := f.e.js.Stream(ctx, bus.CallsStream)
	if err != nil {
		return err
	}
	cfg := s.CachedInfo().Config
	cfg.AllowBatchPublish = on
	if _, err := f.e.js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("set allow_batched=%v: %w", on, err)
	}
	return nil
}

func (f *replayFixture) checkResult(t *testing.T, res replay.Result, batched bool) {
	t.Helper()
	if res.Published != int64(len(f.want)) {
		t.Errorf("published %d, want %d", res.Published, len(f.want))
	}
	if batched && (res.Batched == 0 || res.Batched > res.Published) {
		t.Errorf("batched %d of %d published: the fast path was not used", res.Batched, res.Published)
	}
	if !batched && res.Batched != 0 {
		t.Errorf("batched %d on a stream without allow_batched", res.Batched)
	}
}

// TestReplayBatchedExactlyOnce: EnsureStreams turns allow_batched on (the
// stack runs nats-server 2.15), replay sends every matching call in fast
// batches exactly once and skips undecodable lines; running the job again
// from scratch (checkpoint deleted) stores nothing new: Nats-Msg-Id
// deduplication holds inside batches.
func TestReplayBatchedExactlyOnce(t *testing.T) {
	f := newReplayFixture(t, 4000)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := f.e.js.Stream(ctx, bus.CallsStream)
	if err != nil {
		t.Fatal(err)
	}
	if !s.CachedInfo().Config.AllowBatchPublish {
		t.Fatalf("EnsureStreams on nats-server %s left allow_batched off", f.e.nc.ConnectedServerVersion())
	}
	job := f.e.run + "-batch"
	o := f.options(t, job)
	dry := o
	dry.DryRun = true
	res, err := f.run(t, ctx, dry)
	if err != nil {
		t.Fatal(err)
	}
	if res.Matched != int64(len(f.want)) || res.Published != 0 || res.Undecodable != f.undecoding {
		t.Fatalf("dry run: matched %d published %d undecodable %d, want %d 0 %d", res.Matched, res.Published, res.Undecodable, len(f.want), f.undecoding)
	}
	res, err = f.run(t, ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	f.checkResult(t, res, true)
	if res.Batched != res.Published {
		t.Errorf("batched %d, published %d: every segment should have gone in a batch", res.Batched, res.Published)
	}
	if res.Lines != f.lines || res.Undecodable != f.undecoding || res.Matched != int64(len(f.want)) {
		t.Errorf("lines %d undecodable %d matched %d, want %d %d %d", res.Lines, res.Undecodable, res.Matched, f.lines, f.undecoding, len(f.want))
	}
	f.checkStream(t, job)

	if err := f.cp.Delete(ctx, job); err != nil {
		t.Fatal(err)
	}
	res, err = f.run(t, ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	f.checkResult(t, res, true)
	f.checkStream(t, job)
}

// TestReplayBatchedStopResume stops a batched job twice from inside and
// resumes it: the stream ends with every call exactly once, and the
// checkpoint's published count is right.
func TestReplayBatchedStopResume(t *testing.T) {
	f := newReplayFixture(t, 4000)
	job := f.e.run + "-stop"
	base := f.options(t, job)
	total := int64(len(f.want))
	// the second stop counts calls after the resume point
	for _, at := range []int64{total / 5, total / 2} {
		o, ctx := stopAfter(base, at)
		res, err := f.run(t, ctx, o)
		if !errors.Is(err, replay.ErrStopped) {
			t.Fatalf("stop at call %d: %v (result %+v)", at, err, res)
		}
		if res.Published >= total {
			t.Fatalf("stopped at call %d with all %d published", at, res.Published)
		}
		t.Logf("stopped at call %d: %d published, %d batched", at, res.Published, res.Batched)
	}
	o, _ := stopAfter(base, -1)
	res, err := f.run(t, context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	f.checkResult(t, res, true)
	f.checkStream(t, job)
	if res, err := f.run(t, context.Background(), o); err != nil || !res.AlreadyDone || res.Published != total {
		t.Fatalf("finished job again: %+v, %v", res, err)
	}
}

// TestReplayFallbackWithoutBatching: on a stream without allow_batched the
// job publishes call by call, also across a stop and resume, and the same
// job run from scratch again counts every call as a duplicate.
func TestReplayFallbackWithoutBatching(t *testing.T) {
	f := newReplayFixture(t, 2500)
	f.setBatching(t, false)
	t.Cleanup(func() { f.setBatching(t, true) })
	job := f.e.run + "-async"
	base := f.options(t, job)
	total := int64(len(f.want))
	o, ctx := stopAfter(base, total/2)
	res, err := f.run(t, ctx, o)
	if !errors.Is(err, replay.ErrStopped) || res.Published >= total || res.Batched != 0 {
		t.Fatalf("stopped job: %+v, %v", res, err)
	}
	o, _ = stopAfter(base, -1)
	res, err = f.run(t, context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	f.checkResult(t, res, false)
	f.checkStream(t, job)

	if err := f.cp.Delete(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	res, err = f.run(t, context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	f.checkResult(t, res, false)
	if res.Duplicates != total {
		t.Errorf("re-run: %d duplicates, want %d (every call was stored by the first run)", res.Duplicates, total)
	}
	f.checkStream(t, job)
}

// TestReplayBatchFailureResends turns allow_batched off while a batched job
// reads its second object: the first object went in batches, the batches
// after the change fail (the server refuses them), their calls are re-sent
// one by one and the job finishes with every call stored exactly once.
func TestReplayBatchFailureResends(t *testing.T) {
	f := newReplayFixture(t, 4000)
	t.Cleanup(func() { f.setBatching(t, true) })
	job := f.e.run + "-fail"
	o := f.options(t, job)
	total := int64(len(f.want))
	var seen atomic.Int64
	var flipErr atomic.Pointer[error]
	o.User = "everyone"
	o.UserOf = func(context.Context, *schema.Event) string {
		// an object's calls are all checkpointed before the next object is
		// read, and the last segment is published after it was read: the
		// change lands between the two
		if seen.Add(1) == total*3/4 {
			if err := f.batching(false); err != nil {
				flipErr.Store(&err)
			}
		}
		return "everyone"
	}
	res, err := f.run(t, context.Background(), o)
	if p := flipErr.Load(); p != nil {
		t.Fatal(*p)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Published != total || res.Batched == 0 || res.Batched >= total {
		t.Fatalf("published %d (batched %d), want %d with some but not all batched", res.Published, res.Batched, total)
	}
	t.Logf("published %d, batched %d, duplicates among the re-sent %d", res.Published, res.Batched, res.Duplicates)
	f.checkStream(t, job)
}
