package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/rawarchive"
)

const archBucket = "callpipe-it-archive"

// archEnv is one archive test: its own subject under callpipe.calls.,
// consumer names and key prefix, so it sees only its own calls.
type archEnv struct {
	run      string
	natsURL  string
	nc       *nats.Conn
	js       jetstream.JetStream
	s3       *minio.Client
	s3cfg    harness.S3Config
	prefix   string
	subject  string // publish subject
	consumer string
}

func newArchEnv(t testing.TB) *archEnv {
	t.Helper()
	run := "arch" + testkit.RandomHex(t, 4)
	nc, js := testkit.JetStream(t, harness.NATS(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.EnsureCallsStream(ctx, js, bus.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	sc := harness.S3(t)
	s3, err := rawarchive.NewClient(rawarchive.S3Config{Endpoint: sc.Endpoint, AccessKey: sc.AccessKey, SecretKey: sc.SecretKey,
		Region: "us-east-1", UseSSL: sc.UseSSL, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := rawarchive.EnsureBucket(ctx, s3, archBucket, "us-east-1"); err != nil {
		t.Fatal(err)
	}
	e := &archEnv{run: run, natsURL: harness.NATS(t), nc: nc, js: js, s3: s3, s3cfg: sc, prefix: "it/" + run,
		subject: "callpipe.calls." + run, consumer: run + "-archive"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = js.DeleteConsumer(ctx, bus.CallsStream, e.consumer)
		objs := s3.ListObjects(ctx, archBucket, minio.ListObjectsOptions{Prefix: e.prefix + "/", Recursive: true})
		for err := range s3.RemoveObjects(ctx, archBucket, objs, minio.RemoveObjectsOptions{}) {
			t.Logf("cleanup %s: %v", err.ObjectName, err.Err)
		}
	})
	return e
}

// env is the child environment of a callpipe process of this test.
func (e *archEnv) env(extra ...string) []string {
	env := append(os.Environ(),
		"CALLPIPE_NATS_URL="+e.natsURL,
		"CALLPIPE_S3_ENDPOINT="+e.s3cfg.Endpoint, "CALLPIPE_S3_ACCESS_KEY="+e.s3cfg.AccessKey,
		"CALLPIPE_S3_SECRET_KEY="+e.s3cfg.SecretKey, fmt.Sprintf("CALLPIPE_S3_USE_SSL=%t", e.s3cfg.UseSSL),
		"CALLPIPE_S3_BUCKET="+archBucket, "CALLPIPE_ARCHIVE_PREFIX="+e.prefix,
		"CALLPIPE_ARCHIVE_CONSUMER="+e.consumer, "CALLPIPE_ARCHIVE_SUBJECT="+e.subject+".>",
		"CALLPIPE_LOG_LEVEL=warn")
	return append(env, extra...)
}

// archEvent is one generated raw event.
type archEvent struct {
	id    string
	start time.Time
	raw   []byte
}

// archEvents makes n valid events starting within hours hours of day (random
// order), across 3 models and 5 users; payload adds that many random
// (incompressible) characters to each.
func archEvents(run string, n int, day time.Time, hours int, payload int, seed uint64) []archEvent {
	r := mrand.New(mrand.NewPCG(seed, seed^0x5bd1e995))
	out := make([]archEvent, n)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	pad := make([]byte, payload)
	for i := range out {
		start := day.Add(time.Duration(r.Int64N(int64(hours) * int64(time.Hour)))).Truncate(time.Millisecond)
		end := start.Add(time.Duration(50+r.IntN(5000)) * time.Millisecond)
		for j := range pad {
			pad[j] = alphabet[r.IntN(len(alphabet))]
		}
		in, outT := 5+r.IntN(500), 1+r.IntN(300)
		id := fmt.Sprintf("%s-%06d", run, i)
		status := 200
		if r.IntN(50) == 0 {
			status = 500
		}
		raw := fmt.Sprintf(`{"id":%q,"start_time":%q,"end_time":%q,"endpoint":"/v1/chat/completions","model":"model-%d","user":"user-%d","status":%d,`+
			`"request":{"messages":[{"role":"user","content":"question %d %s"}]},"response":{"choices":[{"message":{"role":"assistant","content":"answer %d"}}]},`+
			`"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`,
			id, start.Format(time.RFC3339Nano), end.Format(time.RFC3339Nano), r.IntN(3), r.IntN(5), status, i, pad, i, in, outT, in+outT)
		out[i] = archEvent{id: id, start: start, raw: []byte(raw)}
	}
	return out
}

// publish stores raw messages on the test's subject (Nats-Msg-Id = msgID(i)),
// with extra headers when hdr is set.
func (e *archEnv) publish(t testing.TB, raws [][]byte, msgID func(i int) string, hdr nats.Header) {
	t.Helper()
	js, err := jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		t.Fatal(err)
	}
	for i, raw := range raws {
		m := &nats.Msg{Subject: e.subject + ".x", Data: raw, Header: nats.Header{}}
		for k, v := range hdr {
			m.Header[k] = v
		}
		if _, err := js.PublishMsgAsync(m, jetstream.WithMsgID(msgID(i)), jetstream.WithStallWait(10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		t.Fatal("publish did not complete")
	}
}

func eventRaws(evs []archEvent) [][]byte {
	out := make([][]byte, len(evs))
	for i := range evs {
		out[i] = evs[i].raw
	}
	return out
}

// start runs a callpipe child process with the environment env.
func (e *archEnv) start(t testing.TB, env []string, args ...string) *testkit.Proc {
	t.Helper()
	return testkit.Start(t, env, args...)
}

// lastSeq is the stream sequence of the newest message on the test's subject.
func (e *archEnv) lastSeq(t testing.TB) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := e.js.Stream(ctx, bus.CallsStream)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := m.GetLastMsgForSubject(ctx, e.subject+".x")
	if err != nil {
		t.Fatal(err)
	}
	return raw.Sequence
}

// waitArchived waits until the archive consumer has nothing pending or
// unacked and its ack floor reached stream sequence last.
func (e *archEnv) waitArchived(t testing.TB, timeout time.Duration, last uint64) {
	t.Helper()
	testkit.WaitFor(t, timeout, "archive consumer caught up", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := e.js.Consumer(ctx, bus.CallsStream, e.consumer)
		if err != nil {
			return false, err.Error()
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return ci.NumPending == 0 && ci.NumAckPending == 0 && ci.AckFloor.Stream >= last,
			fmt.Sprintf("pending=%d unacked=%d ack floor=%d of %d", ci.NumPending, ci.NumAckPending, ci.AckFloor.Stream, last)
	})
}

// archObject is one data object read back.
type archObject struct {
	rawarchive.Object
	meta  rawarchive.Meta
	lines [][]byte
}

// readArchive lists and reads every data object of the test in [from, to),
// checking each object's metadata against its content.
func (e *archEnv) readArchive(t testing.TB, from, to time.Time) []archObject {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	objs, err := rawarchive.Keys(ctx, e.s3, archBucket, e.prefix, from, to)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]archObject, 0, len(objs))
	for _, o := range objs {
		a := archObject{Object: o}
		if a.meta, err = rawarchive.Stat(ctx, e.s3, archBucket, e.prefix, o.Key); err != nil {
			t.Fatal(err)
		}
		sum := sha256.New()
		var size int64
		if err := rawarchive.ReadObject(ctx, e.s3, archBucket, o.Key, func(line []byte) error {
			a.lines = append(a.lines, bytes.Clone(line))
			sum.Write(line)
			sum.Write([]byte{'\n'})
			size += int64(len(line)) + 1
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(sum.Sum(nil)); got != a.meta.SHA256 || size != a.meta.Bytes || len(a.lines) != a.meta.Count {
			t.Fatalf("%s: content sha256 %s, %d bytes, %d lines; metadata says %s, %d, %d",
				o.Key, got, size, len(a.lines), a.meta.SHA256, a.meta.Bytes, a.meta.Count)
		}
		if a.meta.FirstSeq != o.FirstSeq || a.meta.LastSeq != o.LastSeq {
			t.Fatalf("%s: metadata sequences %d-%d differ from the key", o.Key, a.meta.FirstSeq, a.meta.LastSeq)
		}
		m, err := rawarchive.ReadManifest(ctx, e.s3, archBucket, e.prefix, o.Key)
		if err != nil {
			t.Fatal(err)
		}
		if m.SHA256 != a.meta.SHA256 || m.Count != a.meta.Count || len(m.Sequences()) != m.Count {
			t.Fatalf("%s: manifest %+v disagrees with metadata %+v", o.Key, m.Meta, a.meta)
		}
		out = append(out, a)
	}
	return out
}

// checkExactlyOnce fails unless the lines of objs are exactly want (each once,
// byte for byte) plus extra (line → true when it must appear).
func checkExactlyOnce(t testing.TB, objs []archObject, want [][]byte) {
	t.Helper()
	wantSet := make(map[string]int, len(want))
	for _, w := range want {
		wantSet[string(w)]++
	}
	got := 0
	for _, o := range objs {
		for _, l := range o.lines {
			got++
			n, ok := wantSet[string(l)]
			switch {
			case !ok:
				t.Fatalf("%s holds a line that was not published (or is archived twice): %.200s", o.Key, l)
			case n == 1:
				delete(wantSet, string(l))
			default:
				wantSet[string(l)] = n - 1
			}
		}
	}
	if len(wantSet) > 0 {
		for l := range wantSet {
			t.Fatalf("%d of %d published lines are not archived, e.g. %.200s (archived lines: %d)", len(wantSet), len(want), l, got)
		}
	}
	if got != len(want) {
		t.Fatalf("archived %d lines, want %d", got, len(want))
	}
}
