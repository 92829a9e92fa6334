package integration

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks"
	"github.com/callpipe/callpipe/sinks/archive"
	"github.com/callpipe/callpipe/store/rawarchive"
	"github.com/callpipe/callpipe/tools/replay"
)

// benchArchiveEvents are ~1 KB chat events over one hour.
func benchArchiveEvents(run string, n int) []archEvent {
	return archEvents(run, n, time.Date(2024, 2, 2, 0, 0, 0, 0, time.UTC), 1, 600, 3)
}

// benchTextEvents are ~1 KB chat events whose prompt and answer are words
// drawn from a small vocabulary: they compress like LLM text (about 5:1 at
// the fastest level), where benchArchiveEvents' random base64 is the worst case.
func benchTextEvents(run string, n int) []archEvent {
	r := mrand.New(mrand.NewPCG(7, 11))
	words := strings.Fields("the a model answer question please summarize tokens user data pipeline archive stream call " +
		"latency cost hour replay export quick brown fox of to and in is it that for on with as was be this are")
	text := func(k int) string {
		b := make([]byte, 0, k*6)
		for i := range k {
			if i > 0 {
				b = append(b, ' ')
			}
			b = append(b, words[r.IntN(len(words))]...)
		}
		return string(b)
	}
	day := time.Date(2024, 2, 2, 0, 0, 0, 0, time.UTC)
	out := make([]archEvent, n)
	for i := range out {
		start := day.Add(time.Duration(r.Int64N(int64(time.Hour)))).Truncate(time.Millisecond)
		id := fmt.Sprintf("%s-%06d", run, i)
		raw := fmt.Sprintf(`{"id":%q,"start_time":%q,"end_time":%q,"endpoint":"/v1/chat/completions","model":"model-%d","user":"user-%d","status":200,`+
			`"request":{"messages":[{"role":"user","content":%q}]},"response":{"choices":[{"message":{"role":"assistant","content":%q}}]},`+
			`"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`,
			id, start.Format(time.RFC3339Nano), start.Add(time.Duration(50+r.IntN(5000))*time.Millisecond).Format(time.RFC3339Nano),
			r.IntN(3), r.IntN(5), text(60), text(70), 60, 70, 130)
		out[i] = archEvent{id: id, start: start, raw: []byte(raw)}
	}
	return out
}

// BenchmarkArchiveStore measures the archive sink's storage path on real
// MinIO at the sink's default compression (fastest): read each raw event's
// start time, compress into a 64 MiB (raw) object, hash, then store its
// manifest and multipart-upload it. One op is one object; MB/s is raw JSON
// per second. "text" events compress like LLM text, "random" ones carry
// incompressible base64 (the worst case).
//
//	go test -run '^$' -bench ArchiveStore -benchtime 5x ./integration
func BenchmarkArchiveStore(b *testing.B) {
	for _, kind := range []string{"text", "random"} {
		b.Run(kind, func(b *testing.B) {
			e := newArchEnv(b)
			evs := benchTextEvents(e.run, 20000)
			if kind == "random" {
				evs = benchArchiveEvents(e.run, 20000)
			}
			var perObject int64
			n := 0
			for perObject < 64<<20 {
				perObject += int64(len(evs[n%len(evs)].raw)) + 1
				n++
			}
			b.SetBytes(perObject)
			ctx := context.Background()
			var uploads sync.WaitGroup
			slots := make(chan struct{}, 2)
			b.ResetTimer()
			cpu0 := archCPUSeconds()
			for i := range b.N {
				bl, err := rawarchive.NewBuilder(e.prefix, "CALLPIPE_CALLS", "fastest", evs[0].start, time.Now())
				if err != nil {
					b.Fatal(err)
				}
				for j := range n {
					raw := evs[j%len(evs)].raw
					start, ok := schema.StartTime(raw)
					if !ok {
						b.Fatal("no start time")
					}
					if err := bl.Add(uint64(i*n+j+1), raw, start); err != nil {
						b.Fatal(err)
					}
				}
				built, err := bl.Finish(rawarchive.FlushSize, time.Now())
				if err != nil {
					b.Fatal(err)
				}
				if i == 0 {
					b.ReportMetric(float64(len(built.Data))/float64(perObject), "compressed/raw")
				}
				// uploads overlap the next object's building, as in the sink
				// (archive.max_uploads, default 2)
				slots <- struct{}{}
				uploads.Go(func() {
					defer func() { <-slots }()
					if err := rawarchive.PutManifest(ctx, e.s3, archBucket, built, nil); err != nil {
						b.Error(err)
					}
					if err := rawarchive.PutData(ctx, e.s3, archBucket, built, 16<<20, nil); err != nil {
						b.Error(err)
					}
				})
			}
			uploads.Wait()
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "calls/s")
			b.ReportMetric(float64(perObject)*float64(b.N)/1e6/(archCPUSeconds()-cpu0), "MB/cpu-s")
		})
	}
}

// BenchmarkArchiveSink measures the whole sink: N ~1 KB or ~8 KB events are
// published to the test's subject, then the sink (in process) consumes,
// archives and acks them; rawMB/s is raw JSON archived per second (the final
// age flush, 1 s, included). js-consume-calls/s is a consumer of the same
// messages that only pulls and acks: the sink's ceiling on this machine.
//
//	go test -run '^$' -bench 'ArchiveSink$' -benchtime 3x ./integration
func BenchmarkArchiveSink(b *testing.B) {
	for _, c := range []struct {
		name    string
		n, size int
	}{{"1KB", 200000, 800}, {"8KB", 40000, 8000}} {
		b.Run(c.name, func(b *testing.B) {
			var total, jsTotal time.Duration
			var cpu float64
			var bytes int64
			for range b.N {
				b.StopTimer()
				e := newArchEnv(b)
				evs := archEvents(e.run, c.n, time.Date(2024, 2, 2, 0, 0, 0, 0, time.UTC), 1, c.size, 3)
				raws := eventRaws(evs)
				var size int64
				for _, r := range raws {
					size += int64(len(r))
				}
				e.publish(b, raws, func(i int) string { return evs[i].id }, nil)
				last := e.lastSeq(b)
				jsTotal += archJetStreamConsume(b, e, c.n)
				s, err := archive.NewSink(e.nc, e.s3, archive.SinkConfig{Config: sinks.Config{Consumer: e.consumer, FilterSubject: e.subject + ".>", AckWait: time.Minute},
					Bucket: archBucket, Prefix: e.prefix, FlushBytes: 16 << 20, FlushInterval: time.Second})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				b.StartTimer()
				start, cpu0 := time.Now(), archCPUSeconds()
				go func() { done <- s.Run(ctx) }()
				e.waitArchived(b, 5*time.Minute, last)
				total += time.Since(start)
				cpu += archCPUSeconds() - cpu0
				bytes += size
				cancel()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(c.n*b.N)/total.Seconds(), "calls/s")
			b.ReportMetric(float64(bytes)/1e6/total.Seconds(), "rawMB/s")
			b.ReportMetric(float64(bytes)/1e6/cpu, "MB/cpu-s")
			b.ReportMetric(float64(c.n*b.N)/jsTotal.Seconds(), "js-consume-calls/s")
		})
	}
}

// archJetStreamConsume times a consumer that only pulls and acks the test's
// n messages: the JetStream side of the sink with no work, its ceiling.
func archJetStreamConsume(b *testing.B, e *archEnv, n int) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cons, err := e.js.CreateOrUpdateConsumer(ctx, bus.CallsStream, jetstream.ConsumerConfig{Durable: e.consumer + "-raw",
		FilterSubject: e.subject + ".>", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 500000})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = e.js.DeleteConsumer(context.Background(), bus.CallsStream, e.consumer+"-raw") }()
	it, err := cons.Messages(jetstream.PullMaxBytes(8 << 20))
	if err != nil {
		b.Fatal(err)
	}
	defer it.Stop()
	start := time.Now()
	for range n {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			b.Fatal(err)
		}
		_ = m.Ack()
	}
	if err := e.nc.FlushWithContext(ctx); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// BenchmarkReplayRate measures `replay` publishing archived ~1 KB calls into
// CALLPIPE_CALLS (acknowledged by JetStream, checkpointed in Redis); one op is
// one call.
//
//	go test -run '^$' -bench ReplayRate -benchtime 100000x ./integration
func BenchmarkReplayRate(b *testing.B) {
	e := newArchEnv(b)
	evs := benchArchiveEvents(e.run, b.N)
	ctx := context.Background()
	bl, err := rawarchive.NewBuilder(e.prefix, "CALLPIPE_CALLS", "default", evs[0].start, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	var size int64
	for i, ev := range evs {
		if err := bl.Add(uint64(i+1), ev.raw, ev.start); err != nil {
			b.Fatal(err)
		}
		size += int64(len(ev.raw))
	}
	built, err := bl.Finish(rawarchive.FlushSize, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	if err := rawarchive.PutManifest(ctx, e.s3, archBucket, built, nil); err != nil {
		b.Fatal(err)
	}
	if err := rawarchive.PutData(ctx, e.s3, archBucket, built, 16<<20, nil); err != nil {
		b.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: harness.Redis(b)})
	defer rdb.Close()
	cp := replay.NewCheckpoints(rdb, "callpipe:it:replay:", time.Hour)
	job := e.run + "-bench"
	b.Cleanup(func() { _ = cp.Delete(context.Background(), job) })
	nc, err := nats.Connect(harness.NATS(b))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	b.SetBytes(size / int64(b.N))
	b.ResetTimer()
	cpu0 := archCPUSeconds()
	res, err := replay.Run(ctx, nc, e.s3, cp, replay.Options{Job: job, From: evs[0].start.Truncate(time.Hour),
		To: evs[0].start.Truncate(time.Hour).Add(time.Hour), Bucket: archBucket, Prefix: e.prefix, Sinks: []string{"clickhouse"}})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if res.Published != int64(b.N) {
		b.Fatalf("published %d, want %d", res.Published, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
	b.ReportMetric(float64(b.N)/(archCPUSeconds()-cpu0), "calls/cpu-s")
	// 1 when every call went in fast batches (allow_batched on the stream), 0 on the call-by-call path
	b.ReportMetric(float64(res.Batched)/float64(b.N), "batched/op")
}

// archCPUSeconds is this process's user+system CPU time (the NATS and MinIO
// servers are separate processes and not included): the machine is shared,
// so work per CPU-second is the comparable number.
func archCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
