package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/transform"
)

// 3 worker processes share the consumer; one is SIGKILLed mid-run, another
// SIGTERMed (and replaced). Every
// valid call must end up in CALLPIPE_NORMALIZED exactly once and every
// invalid raw message in CALLPIPE_DLQ with its reason.
func TestTransformNormalizeThreeWorkersKill(t *testing.T) {
	const total = 100_000
	e := newTrEnv(t)
	ctx := context.Background()

	// 10 registered keys, 10 unknown ones, and some explicit users.
	keys := make([]string, 20)
	for i := range keys {
		keys[i] = fmt.Sprintf("xf-%s-key-%02d", e.run, i)
		if i < 10 {
			if _, err := transform.AddUser(ctx, e.rdb, e.keyPrefix, keys[i], fmt.Sprintf("user-%02d", i), ""); err != nil {
				t.Fatal(err)
			}
		}
	}

	workers := []*trWorker{e.startWorker(), e.startWorker(), e.startWorker()}

	ids := make([]string, total)
	data := make([][]byte, total)
	for i := range total {
		ids[i] = fmt.Sprintf("%s-%06d", e.run, i)
		user := ""
		if i%7 == 0 {
			user = "explicit-user"
		}
		data[i] = trChatEvent(ids[i], schema.HashAPIKey(keys[i%20]), user)
	}
	bad := map[string]string{ // Nats-Msg-Id → raw bytes
		e.run + "-bad-0": `{"id":`,
		e.run + "-bad-1": `not json at all`,
		e.run + "-bad-2": `{"id":"` + e.run + `-bad-2","start_time":"2026-05-01T12:00:00Z","endpoint":"/v1/chat/completions"}`,
		e.run + "-bad-3": `{"id":"` + e.run + `-bad-3","start_time":"2026-05-01T12:00:00Z","endpoint":"/v1/x","model":"m","usage":{"prompt_tokens":-1}}`,
		e.run + "-bad-4": `{"id":"` + e.run + `-bad-4","start_time":"2026-05-01T12:00:00Z","endpoint":"/v1/x","model":"m","surprise":1}`,
		e.run + "-bad-5": "\xff\xfe",
	}

	start := time.Now()
	publishDone := make(chan struct{})
	go func() {
		defer close(publishDone)
		half := total / 2
		e.publish(ids[:half], data[:half])
		var bids []string
		var bdata [][]byte
		for id, d := range bad {
			bids, bdata = append(bids, id), append(bdata, []byte(d))
		}
		e.publish(bids, bdata)
		e.publish(ids[half:], data[half:])
	}()

	// Kill one worker once a quarter of the calls are normalized.
	var recs trRecords
	testkit.WaitFor(t, 3*time.Minute, "a fifth acknowledged", func() (bool, string) {
		n := e.acked()
		return n >= total/5, fmt.Sprintf("%d acknowledged", n)
	})
	if err := workers[0].Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-workers[0].Done()
	t.Logf("SIGKILLed worker 0 after %d acknowledged", e.acked())
	// SIGTERM another worker mid-run: it stops fetching, finishes and acks
	// what it holds, and exits 0; a fresh replica takes its place.
	testkit.WaitFor(t, 3*time.Minute, "two fifths acknowledged", func() (bool, string) {
		n := e.acked()
		return n >= 2*total/5, fmt.Sprintf("%d acknowledged", n)
	})
	workers[1].stop(t)
	t.Logf("SIGTERMed worker 1 after %d acknowledged", e.acked())
	workers = append(workers, e.startWorker())
	<-publishDone

	testkit.WaitFor(t, 5*time.Minute, "every call normalized", func() (bool, string) {
		e.readNormalized(&recs)
		return len(recs.calls) >= total, fmt.Sprintf("%d/%d records", len(recs.calls), total)
	})
	elapsed := time.Since(start)
	// Let redeliveries of the killed worker's unacked messages (ack_wait 4s) land.
	time.Sleep(6 * time.Second)
	e.readNormalized(&recs)
	t.Logf("%d calls normalized by 3 workers (one killed) in %s", len(recs.calls), elapsed.Round(time.Millisecond))

	// Records are batched (bus/batch.go): the raw events a killed worker
	// held unacknowledged come back to other workers in other groupings, so
	// their calls can be stored twice on CALLPIPE_NORMALIZED (the sinks
	// deduplicate by call id). Nothing else may be: at most what one worker
	// holds at once (the consumer's max_ack_pending, 20,000 by default).
	if len(recs.dups) > 20000 {
		t.Fatalf("%d duplicate records, e.g. %v", len(recs.dups), recs.dups[:min(5, len(recs.dups))])
	}
	t.Logf("%d calls in %d messages; %d stored twice after the kill", len(recs.calls), recs.msgs, len(recs.dups))
	if recs.msgs*4 > len(recs.calls) {
		t.Errorf("%d messages for %d calls: records are not batched under load", recs.msgs, len(recs.calls))
	}
	var missing []string
	for _, id := range ids {
		if _, ok := recs.calls[id]; !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 || len(recs.calls) != total {
		t.Fatalf("normalized %d records for %d calls; %d missing, e.g. %v", len(recs.calls), total, len(missing), missing[:min(5, len(missing))])
	}
	for i, id := range ids {
		c := recs.calls[id]
		wantUser, wantSrc := "anonymous", schema.UserAnonymous
		switch {
		case i%7 == 0:
			wantUser, wantSrc = "explicit-user", schema.UserExplicit
		case i%20 < 10:
			wantUser, wantSrc = fmt.Sprintf("user-%02d", i%20), schema.UserAPIKey
		}
		if c.UserID != wantUser || c.UserSource != wantSrc {
			for i, w := range workers {
				t.Logf("worker %d log:\n%s", i, w.Out)
			}
			t.Fatalf("%s: user %s/%s, want %s/%s", id, c.UserID, c.UserSource, wantUser, wantSrc)
		}
		if c.Kind != schema.KindChat || c.InputTokens != 52 || c.OutputTokens != 31 || c.UsageSource != schema.UsageReported ||
			c.LatencyMS != 1200 || c.TTFTMS == nil || *c.TTFTMS != 300 || c.CostUSD == nil || c.FinishReason != "stop" {
			t.Fatalf("%s: unexpected record %+v", id, c)
		}
	}

	// Dead letters: exactly the invalid messages, each with a reason.
	var dls []trDeadLetter
	testkit.WaitFor(t, time.Minute, "dead letters", func() (bool, string) {
		dls = e.readDLQ()
		return len(dls) >= len(bad), fmt.Sprintf("%d/%d", len(dls), len(bad))
	})
	want := map[string]bool{}
	for _, d := range bad {
		want[d] = true
	}
	got := map[string]bool{}
	for _, d := range dls {
		if got[d.data] {
			t.Errorf("dead letter repeated: %q", d.data)
		}
		got[d.data] = true
		if !want[d.data] {
			t.Errorf("unexpected dead letter %q (%s)", d.data, d.errText)
		}
		if d.errText == "" || d.stage != bus.StageNormalize {
			t.Errorf("dead letter %q: error %q stage %q", d.data, d.errText, d.stage)
		}
		t.Logf("dead letter %.40q: %s", d.data, d.errText)
	}
	if len(got) != len(bad) {
		t.Errorf("DLQ holds %d of the %d invalid messages", len(got), len(bad))
	}

	for _, w := range workers[2:] {
		w.stop(t)
	}
	// Drained: nothing left unacknowledged or undelivered.
	cons, err := e.js.Consumer(ctx, "CALLPIPE_CALLS", e.consumer)
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending != 0 || info.NumPending != 0 {
		t.Errorf("after SIGTERM: %d unacknowledged, %d undelivered", info.NumAckPending, info.NumPending)
	}
}

// Redis stops mid-run: no call is lost, calls whose key is not cached are
// marked unresolved (and counted), cached keys keep resolving, and resolution
// resumes once Redis is back.
func TestTransformRedisOutage(t *testing.T) {
	e := newTrEnv(t)
	ctx := context.Background()
	const phase = 3000
	// retry Redis quickly after a failure so resumption is prompt
	w := e.startWorker("CALLPIPE_TRANSFORM_USER_RETRY_AFTER=200ms", "CALLPIPE_TRANSFORM_USER_LOOKUP_TIMEOUT=100ms")
	w2 := e.startWorker("CALLPIPE_TRANSFORM_USER_RETRY_AFTER=200ms", "CALLPIPE_TRANSFORM_USER_LOOKUP_TIMEOUT=100ms")

	warmKey, coldKey := "xf-"+e.run+"-warm", "xf-"+e.run+"-cold"
	for key, user := range map[string]string{warmKey: "warm-user", coldKey: "cold-user"} {
		if _, err := transform.AddUser(ctx, e.rdb, e.keyPrefix, key, user, "n"); err != nil {
			t.Fatal(err)
		}
	}
	var recs trRecords
	batch := func(name, key string, n int) []string {
		ids, data := make([]string, n), make([][]byte, n)
		for i := range n {
			ids[i] = fmt.Sprintf("%s-%s-%05d", e.run, name, i)
			data[i] = trChatEvent(ids[i], schema.HashAPIKey(key), "")
		}
		e.publish(ids, data)
		testkit.WaitFor(t, 2*time.Minute, name+" normalized", func() (bool, string) {
			e.readNormalized(&recs)
			c := 0
			for _, id := range ids {
				if _, ok := recs.calls[id]; ok {
					c++
				}
			}
			return c == n, fmt.Sprintf("%d/%d", c, n)
		})
		return ids
	}

	// Phase 1: Redis up; the warm key gets cached by both workers. One worker
	// may pull a whole batch before the other asks, so warm up until each has
	// normalized at least one call (and so cached the key).
	p1 := batch("p1", warmKey, phase)
	for i := 0; w.metric(t, `callpipe_transform_events_total{result="normalized"}`) == 0 ||
		w2.metric(t, `callpipe_transform_events_total{result="normalized"}`) == 0; i++ {
		if i == 20 {
			t.Fatal("one worker normalized nothing after 20 warm-up batches")
		}
		batch(fmt.Sprintf("p1x%d", i), warmKey, 50)
	}

	// Phase 2: Redis down; warm key served from cache, cold key unresolved.
	harness.StopService(t, harness.ServiceRedis)
	p2warm := batch("p2w", warmKey, phase)
	p2cold := batch("p2c", coldKey, phase)
	failures := w.metric(t, "callpipe_transform_user_lookup_failures_total") + w2.metric(t, "callpipe_transform_user_lookup_failures_total")

	// Phase 3: Redis back; the cold key resolves again.
	harness.StartService(t, harness.ServiceRedis)
	if n, err := e.rdb.Exists(ctx, e.keyPrefix+schema.HashAPIKey(coldKey)).Result(); err != nil || n == 0 {
		t.Logf("key registrations lost over the restart (exists=%d err=%v): registering again", n, err)
		for key, user := range map[string]string{warmKey: "warm-user", coldKey: "cold-user"} {
			if _, err := transform.AddUser(ctx, e.rdb, e.keyPrefix, key, user, "n"); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(500 * time.Millisecond) // > user_retry_after
	p3 := batch("p3", coldKey, phase)

	e.readNormalized(&recs)
	if len(recs.dups) > 0 {
		t.Fatalf("duplicates: %v", recs.dups[:min(5, len(recs.dups))])
	}
	count := func(ids []string) map[string]int {
		m := map[string]int{}
		for _, id := range ids {
			c, ok := recs.calls[id]
			if !ok {
				t.Fatalf("%s lost", id)
			}
			m[c.UserSource+"/"+c.UserID]++
		}
		return m
	}
	show := func(m map[string]int) string {
		var s []string
		for k, v := range m {
			s = append(s, fmt.Sprintf("%s=%d", k, v))
		}
		sort.Strings(s)
		return strings.Join(s, " ")
	}
	if m := count(p1); m["api_key/warm-user"] != phase {
		t.Errorf("phase 1 (Redis up): %s", show(m))
	}
	if m := count(p2warm); m["api_key/warm-user"] != phase {
		t.Errorf("phase 2, cached key (Redis down): %s", show(m))
	}
	if m := count(p2cold); m["unresolved/"+transform.UnresolvedUser] != phase {
		t.Errorf("phase 2, uncached key (Redis down): want all unresolved, got %s", show(m))
	}
	if failures < phase {
		t.Errorf("callpipe_transform_user_lookup_failures_total = %v across workers, want ≥ %d", failures, phase)
	}
	if m := count(p3); m["api_key/cold-user"] != phase {
		t.Errorf("phase 3 (Redis back): %s", show(m))
	}
	t.Logf("unresolved during outage: %d, lookup failures counted: %v", phase, failures)
	w.stop(t)
	w2.stop(t)
}

// callpipe users add/ls/rm against Redis, and callpipe dlq ls/show/retry
// against JetStream, through the binary.
func TestTransformUsersAndDLQCommands(t *testing.T) {
	e := newTrEnv(t)
	ctx := context.Background()
	env := []string{"CALLPIPE_NATS_URL=" + e.natsURL, "CALLPIPE_REDIS_ADDR=" + e.redisAddr,
		"CALLPIPE_TRANSFORM_USER_KEY_PREFIX=" + e.keyPrefix, "CALLPIPE_LOG_LEVEL=warn"}
	runIn := func(stdin string, args ...string) string {
		t.Helper()
		cmd := exec.Command(testkit.Binary(t), args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("callpipe %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run := func(args ...string) string { t.Helper(); return runIn("", args...) }
	key := "xf-" + e.run + "-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL"
	// the key comes on stdin, never on the command line
	if out := runIn(key+"\n", "users", "add", "--key-file", "-", "--user", "carol", "--name", "ci key"); strings.Contains(out, "warning") {
		t.Errorf("users add --key-file - warns:\n%s", out)
	}
	stored, err := e.rdb.HGetAll(ctx, e.keyPrefix+schema.HashAPIKey(key)).Result()
	if err != nil || stored["user"] != "carol" || stored["name"] != "ci key" {
		t.Fatalf("redis after users add: %v %v", stored, err)
	}
	keys, _ := e.rdb.Keys(ctx, e.keyPrefix+"*").Result()
	for _, k := range keys {
		if strings.Contains(k, key) {
			t.Fatalf("clear key stored in Redis: %s", k)
		}
	}
	if out := run("users", "ls"); !strings.Contains(out, "carol") || !strings.Contains(out, schema.HashAPIKey(key)) || strings.Contains(out, key) {
		t.Fatalf("users ls:\n%s", out)
	}

	// A worker resolves the key.
	w := e.startWorker()
	id := e.run + "-call"
	e.publish([]string{id, e.run + "-bad"}, [][]byte{trChatEvent(id, schema.HashAPIKey(key), ""), []byte(`{"id":"x"}`)})
	var recs trRecords
	testkit.WaitFor(t, time.Minute, "the call", func() (bool, string) {
		e.readNormalized(&recs)
		return len(recs.calls) == 1, fmt.Sprint(len(recs.calls))
	})
	if c := recs.calls[id]; c.UserID != "carol" || c.UserSource != schema.UserAPIKey {
		t.Fatalf("user: %s/%s", c.UserID, c.UserSource)
	}
	if out := run("users", "rm", "--key", key); !strings.Contains(out, "warning: --key puts the API key in the process list") {
		t.Errorf("users rm --key gives no warning:\n%s", out)
	}
	if n, _ := e.rdb.Exists(ctx, e.keyPrefix+schema.HashAPIKey(key)).Result(); n != 0 {
		t.Fatal("users rm left the key")
	}

	// dlq ls / show / retry
	var dls []trDeadLetter
	testkit.WaitFor(t, time.Minute, "the dead letter", func() (bool, string) {
		dls = e.readDLQ()
		return len(dls) == 1, fmt.Sprint(len(dls))
	})
	list, err := bus.ListDeadLetters(ctx, e.js, e.dlqStart, 0)
	if err != nil {
		t.Fatal(err)
	}
	var seq uint64
	for _, d := range list {
		if d.SourceSubject == e.subject {
			seq = d.Seq
		}
	}
	out := run("dlq", "ls", "--from", fmt.Sprint(e.dlqStart), "--limit", "0")
	if !strings.Contains(out, e.subject) || !strings.Contains(out, "start_time: required") {
		t.Fatalf("dlq ls:\n%s", out)
	}
	out = run("dlq", "show", fmt.Sprint(seq))
	if !strings.Contains(out, `{"id":"x"}`) || !strings.Contains(out, "stage: normalize") {
		t.Fatalf("dlq show:\n%s", out)
	}
	run("dlq", "retry", fmt.Sprint(seq))
	// The retried (still invalid) event is consumed again and dead-lettered again.
	testkit.WaitFor(t, time.Minute, "the retried dead letter", func() (bool, string) {
		list, err := bus.ListDeadLetters(ctx, e.js, seq+1, 0)
		if err != nil {
			return false, err.Error()
		}
		for _, d := range list {
			if d.SourceSubject == e.subject && string(d.Data) == `{"id":"x"}` {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d newer dead letters", len(list))
	})
	if _, err := bus.GetDeadLetter(ctx, e.js, seq); err == nil {
		t.Fatal("retried dead letter still in the DLQ")
	}
	w.stop(t)
}

// MaxDeliver as the last guard: with max_deliver=1, the calls a SIGKILLed
// worker held come back to the next worker over the limit, which routes them
// to the DLQ without normalizing them. The worker is frozen (SIGSTOP) before
// the second half is published, so the calls JetStream hands it are held and
// never processed: exactly those are dead-lettered, every other call is
// normalized once.
func TestTransformMaxDeliveriesToDLQ(t *testing.T) {
	const total, half = 20_000, 10_000
	e := newTrEnv(t)
	env := []string{"CALLPIPE_TRANSFORM_MAX_DELIVER=1", "CALLPIPE_TRANSFORM_ACK_WAIT=2s"}
	ids, data := make([]string, total), make([][]byte, total)
	for i := range total {
		ids[i] = fmt.Sprintf("%s-%06d", e.run, i)
		data[i] = trChatEvent(ids[i], "", "")
	}
	w0 := e.startWorker(env...)
	e.publish(ids[:half], data[:half])
	testkit.WaitFor(t, 2*time.Minute, "the first half acknowledged", func() (bool, string) {
		n := e.acked()
		return n >= half, fmt.Sprint(n)
	})
	if err := w0.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	e.publish(ids[half:], data[half:])
	// The frozen worker's outstanding pull is filled: its calls are
	// delivered and pending acknowledgement, and stay so.
	var held, last int
	testkit.WaitFor(t, time.Minute, "calls delivered to the frozen worker, and no more coming", func() (bool, string) {
		last, held = held, e.consumerInfo(e.consumer).NumAckPending
		return held > 0 && held == last, fmt.Sprint(held)
	})
	_ = w0.Cmd.Process.Kill()
	<-w0.Done()
	w1 := e.startWorker(env...)

	var recs trRecords
	var dls []trDeadLetter
	dead := map[string]bool{}
	testkit.WaitFor(t, 3*time.Minute, "every call normalized or dead-lettered", func() (bool, string) {
		e.readNormalized(&recs)
		dls = e.readDLQ()
		for _, d := range dls {
			var ev struct {
				ID string `json:"id"`
			}
			_ = json.Unmarshal([]byte(d.data), &ev)
			dead[ev.ID] = true
		}
		return len(recs.calls)+len(dead) >= total, fmt.Sprintf("%d normalized, %d dead letters", len(recs.calls), len(dead))
	})
	if len(recs.dups) > 0 {
		t.Fatalf("duplicates: %v", recs.dups[:min(5, len(recs.dups))])
	}
	for _, d := range dls {
		if !strings.Contains(d.errText, "max deliveries") {
			t.Errorf("dead letter with reason %q", d.errText)
		}
	}
	for i, id := range ids {
		_, normalized := recs.calls[id]
		if normalized == dead[id] {
			t.Fatalf("call %d (%s): normalized %v, dead-lettered %v; want exactly one", i, id, normalized, dead[id])
		}
		if dead[id] && i < half {
			t.Fatalf("call %d (%s) of the first half, acknowledged before the kill, was dead-lettered", i, id)
		}
	}
	t.Logf("%d normalized, %d dead-lettered after max deliveries (%d held by the killed worker)", len(recs.calls), len(dead), held)
	if len(dead) != held || len(dls) != held {
		t.Errorf("%d calls (%d dead letters) in the DLQ; the killed worker held %d", len(dead), len(dls), held)
	}
	w1.stop(t)
}
