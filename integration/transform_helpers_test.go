package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
)

func trRand(t testing.TB) string { return "t" + testkit.RandomHex(t, 5) }

// trEnv is one test run's isolated slice of the shared services: its own
// subject under callpipe.calls, its own durable consumer and Redis key prefix.
type trEnv struct {
	t         *testing.T
	natsURL   string
	redisAddr string
	run       string
	subject   string
	consumer  string
	keyPrefix string
	nc        *nats.Conn
	js        jetstream.JetStream
	rdb       *redis.Client
	normStart uint64 // first CALLPIPE_NORMALIZED sequence of this run
	dlqStart  uint64
}

func newTrEnv(t *testing.T) *trEnv {
	t.Helper()
	e := &trEnv{t: t, natsURL: harness.NATS(t), redisAddr: harness.Redis(t), run: trRand(t)}
	e.subject = bus.CallsSubjectPrefix + "." + e.run
	e.consumer = "callpipe-normalize-" + e.run
	e.keyPrefix = "callpipe-test:" + e.run + ":apikey:"
	nc, err := nats.Connect(e.natsURL, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e.nc = nc
	e.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, e.js, bus.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	e.normStart = e.lastSeq(bus.NormalizedStream) + 1
	e.dlqStart = e.lastSeq(bus.DeadLetterStream) + 1
	e.rdb = redis.NewClient(&redis.Options{Addr: e.redisAddr, MaxRetries: -1})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.js.DeleteConsumer(ctx, bus.CallsStream, e.consumer)
		if keys, err := e.rdb.Keys(ctx, e.keyPrefix+"*").Result(); err == nil && len(keys) > 0 {
			e.rdb.Del(ctx, keys...)
		}
		e.rdb.Close()
	})
	return e
}

func (e *trEnv) lastSeq(stream string) uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, stream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.LastSeq
}

// acked is how many raw events the run's consumer has acknowledged (its ack
// floor), a cheap progress measure.
func (e *trEnv) acked() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.js.Consumer(ctx, bus.CallsStream, e.consumer)
	if err != nil {
		return 0
	}
	info, err := c.Info(ctx)
	if err != nil {
		return 0
	}
	return info.AckFloor.Consumer
}

// trWorker is one `callpipe worker --stages normalize` process.
type trWorker struct {
	*testkit.Proc
	listen string
}

func (e *trEnv) startWorker(extraEnv ...string) *trWorker {
	e.t.Helper()
	w := &trWorker{listen: testkit.FreeAddr(e.t)}
	w.Proc = testkit.Start(e.t, append(append(os.Environ(),
		"CALLPIPE_NATS_URL="+e.natsURL,
		"CALLPIPE_REDIS_ADDR="+e.redisAddr,
		"CALLPIPE_WORKER_LISTEN="+w.listen,
		"CALLPIPE_TRANSFORM_CONSUMER="+e.consumer,
		"CALLPIPE_TRANSFORM_SUBJECT="+e.subject,
		"CALLPIPE_TRANSFORM_USER_KEY_PREFIX="+e.keyPrefix,
		"CALLPIPE_TRANSFORM_ACK_WAIT=4s",
		"CALLPIPE_TRANSFORM_PRICES=chat-model=1/2",
		"CALLPIPE_LOG_LEVEL=warn",
	), extraEnv...), "worker", "--stages", "normalize")
	w.WaitReady(e.t, w.listen, 30*time.Second)
	return w
}

// metric returns the value of an unlabelled metric from the worker's /metrics.
func (w *trWorker) metric(t testing.TB, name string) float64 {
	resp, err := http.Get("http://" + w.listen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, name+" ") {
			var v float64
			fmt.Sscanf(strings.TrimPrefix(line, name+" "), "%g", &v)
			return v
		}
	}
	return 0
}

// stop sends SIGTERM and requires a clean exit.
func (w *trWorker) stop(t testing.TB) {
	t.Helper()
	if err := w.Terminate(60 * time.Second); err != nil {
		t.Error(err)
	}
}

// trChatEvent is a ~1 KB chat call event.
func trChatEvent(id, keyHash, user string) []byte {
	ev := map[string]any{
		"id": id, "start_time": "2026-05-01T12:00:00Z", "end_time": "2026-05-01T12:00:01.2Z",
		"first_token_time": "2026-05-01T12:00:00.3Z",
		"endpoint":         "/v1/chat/completions", "model": "chat-model", "instance": "node-1:9997",
		"request": json.RawMessage(`{"model":"chat-model","messages":[{"role":"system","content":"You are a helpful assistant that answers briefly."},` +
			`{"role":"user","content":"Summarise the plot of a short story about a lighthouse keeper who finds a message in a bottle, in two sentences."}],"temperature":0.7,"max_tokens":256}`),
		"response": json.RawMessage(`{"id":"chatcmpl-1","object":"chat.completion","model":"chat-model","choices":[{"index":0,"message":{"role":"assistant",` +
			`"content":"A lonely lighthouse keeper discovers a bottle holding a decades-old plea for help. He traces its writer across the coast and finds a friend."},"finish_reason":"stop"}],` +
			`"usage":{"prompt_tokens":52,"completion_tokens":31,"total_tokens":83}}`),
		"usage":  map[string]int{"prompt_tokens": 52, "completion_tokens": 31, "total_tokens": 83},
		"status": 200,
	}
	if keyHash != "" {
		ev["api_key_hash"] = keyHash
		ev["api_key_prefix"] = "xf-abcd"
	}
	if user != "" {
		ev["user"] = user
	}
	b, _ := json.Marshal(ev)
	return b
}

// publish sends raw messages to the run's subject with Nats-Msg-Id = id,
// waiting for every JetStream ack.
func (e *trEnv) publish(ids []string, data [][]byte) {
	e.t.Helper()
	futs := make([]jetstream.PubAckFuture, 0, len(ids))
	for i := range ids {
		m := &nats.Msg{Subject: e.subject, Data: data[i], Header: nats.Header{}}
		m.Header.Set(jetstream.MsgIDHeader, ids[i])
		f, err := e.js.PublishMsgAsync(m)
		for err != nil {
			time.Sleep(10 * time.Millisecond)
			f, err = e.js.PublishMsgAsync(m)
		}
		futs = append(futs, f)
	}
	for _, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			e.t.Fatalf("publish %s: %v", f.Msg().Header.Get(jetstream.MsgIDHeader), err)
		case <-time.After(30 * time.Second):
			e.t.Fatal("publish ack timeout")
		}
	}
}

// normalized reads this run's records from CALLPIPE_NORMALIZED (filtered by id
// prefix, since the stream is shared), keyed by id, counting repeats.
type trRecords struct {
	calls map[string]schema.Call
	dups  []string
	seq   uint64
	msgs  int // messages they came in (fewer than calls when batched)
}

func (e *trEnv) readNormalized(r *trRecords) {
	e.t.Helper()
	if r.calls == nil {
		r.calls = map[string]schema.Call{}
		r.seq = e.normStart
	}
	last := e.lastSeq(bus.NormalizedStream)
	if last < r.seq {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cons, err := e.js.OrderedConsumer(ctx, bus.NormalizedStream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: r.seq})
	if err != nil {
		e.t.Fatal(err)
	}
	prefix := e.run + "-"
	for r.seq <= last {
		batch, err := cons.Fetch(2000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			e.t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, _ := m.Metadata()
			r.seq = md.Sequence.Stream + 1
			if !bytes.Contains(m.Data(), []byte(`"id":"`+prefix)) {
				continue
			}
			items, err := bus.Items(m.Headers(), m.Data())
			if err != nil {
				e.t.Fatalf("normalized message %d: %v", md.Sequence.Stream, err)
			}
			var ids []string
			for _, it := range items {
				var c schema.Call
				if err := json.Unmarshal(it, &c); err != nil {
					e.t.Fatalf("normalized record %d: %v", md.Sequence.Stream, err)
				}
				ids = append(ids, c.ID)
				if !strings.HasPrefix(c.ID, prefix) {
					continue
				}
				if _, dup := r.calls[c.ID]; dup {
					r.dups = append(r.dups, c.ID)
				}
				r.calls[c.ID] = c
			}
			// one call: its id; a batch: the id of its calls (bus/batch.go)
			want := ids[0]
			if len(ids) > 1 {
				want = bus.BatchMsgID(ids)
			}
			if got := m.Headers().Get(jetstream.MsgIDHeader); got != want && !bus.IsReplay(m.Headers()) {
				e.t.Fatalf("record of %v has Nats-Msg-Id %q, want %q", ids, got, want)
			}
			r.msgs++
		}
		if n == 0 {
			break
		}
	}
}

type trDeadLetter struct {
	data       string
	errText    string
	stage      string
	sourceSubj string
}

// readDLQ returns this run's dead letters (by source subject).
func (e *trEnv) readDLQ() []trDeadLetter {
	e.t.Helper()
	dls, err := bus.ListDeadLetters(context.Background(), e.js, e.dlqStart, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []trDeadLetter
	for _, d := range dls {
		if d.SourceSubject != e.subject {
			continue
		}
		out = append(out, trDeadLetter{data: string(d.Data), errText: d.Error, stage: d.Stage, sourceSubj: d.SourceSubject})
	}
	return out
}
