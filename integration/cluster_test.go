//go:build cluster

package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/store/rawarchive"
	"github.com/callpipe/callpipe/tools/workload"
)

// The cluster suite runs against `deploy/local/services.sh up --cluster`
// (build tag cluster; `go tool task test:cluster` starts and stops the stack):
// a pipeline of separate processes (collector, 2 workers of each stage:
// normalize, the ClickHouse, Langfuse and archive sinks) takes CALLPIPE_CLUSTER_CALLS calls
// (default 200,000, at 1,250 a second) spread over the last four hours, while the NATS server
// leading CALLPIPE_CALLS is SIGKILLed and restarted, the first ClickHouse
// server (the one every process talks to first) is stopped for 60 s and restarted, a
// MinIO drive folder is deleted, and a worker of every stage is SIGKILLed
// and restarted. It logs how long the restarted servers took to catch up and
// what each role cost (CPU, peak memory).
// Then: the usage API (sealed rollups for the past hours, after the rows of
// replaced seals were deleted) equals ground truth per model, every call is once in ClickHouse (FINAL over the
// Distributed table), both replicas of each shard agree, the call list is
// exact, every call is in the archive and in Langfuse once, and no call is a
// dead letter.

const clusterHours = 4

func clusterTokens(n int) (in, out int64) { return 100 + int64(n%7), 50 + int64(n%11) }

func clusterEvent(dst []byte, run string, n int, base time.Time) []byte {
	in, out := clusterTokens(n)
	e := workload.ChatEvent{
		ID: "cl-" + run + "-" + strconv.Itoa(n), Model: faultModels[n%len(faultModels)],
		// calls of the past hours are late: they mark their hours dirty and
		// the clickhouse stage seals them, so the usage read goes through the
		// sealed rollups of the cluster
		Start:   base.Add(-time.Duration(n%clusterHours)*time.Hour + time.Duration(n%3000)*time.Millisecond),
		Latency: 400 * time.Millisecond, User: "user-" + strconv.Itoa(n%50),
		Prompt: "cluster question " + strconv.Itoa(n), Answer: "an answer",
		PromptTokens: in, CompletionTokens: out,
	}
	return e.Append(dst)
}

func TestClusterPipeline(t *testing.T) {
	calls := 200_000
	if v := os.Getenv("CALLPIPE_CLUSTER_CALLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 {
			t.Fatalf("CALLPIPE_CLUSTER_CALLS=%q: want a number >= 1000", v)
		}
		calls = n
	}
	cl := harness.Cluster(t)
	bin := testkit.Binary(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The stack is this suite's own: start from empty pipeline streams so
	// that stream counts are this run's.
	js := clusterJetStream(ctx, t, cl, true)

	run := strconv.FormatInt(time.Now().UnixNano()%1_000_000_000, 36)
	db, bucket := "cluster_"+run, "cluster-"+run
	lf := langfusetest.New(langfusetest.Options{})
	defer lf.Close()
	env := append(os.Environ(),
		"CALLPIPE_CLICKHOUSE_DATABASE="+db, "CALLPIPE_S3_BUCKET="+bucket,
		"CALLPIPE_NATS_STREAM_REPLICAS=3", "CALLPIPE_CLICKHOUSE_CLUSTER="+cl.Cluster,
		"CALLPIPE_CLICKHOUSE_ROLLUP_SEAL_AFTER=2m", "CALLPIPE_CLICKHOUSE_ROLLUP_INTERVAL=3s",
		// superseded seal rows are deleted (ALTER DELETE on the replicated
		// tables) a minute after their hour is sealed again
		"CALLPIPE_CLICKHOUSE_ROLLUP_GRACE=1m",
		"CALLPIPE_ARCHIVE_FLUSH_INTERVAL=5s",
		// what a SIGKILLed sink held unacknowledged comes back this soon
		"CALLPIPE_CLICKHOUSE_ACK_WAIT=20s", "CALLPIPE_LANGFUSE_ACK_WAIT=20s", "CALLPIPE_ARCHIVE_ACK_WAIT=30s",
		"LANGFUSE_HOST="+lf.Host(), "LANGFUSE_PUBLIC_KEY=pk-lf-test", "LANGFUSE_SECRET_KEY=sk-lf-test",
		"CALLPIPE_LANGFUSE_TRANSPORT=ingestion", "CALLPIPE_LANGFUSE_MIN_BACKOFF=100ms", "CALLPIPE_LANGFUSE_MAX_BACKOFF=2s",
		"CALLPIPE_LOG_LEVEL=warn",
	)
	migrateStart := time.Now()
	migrate := exec.Command(bin, "migrate", "--log.level", "info")
	migrate.Env = env
	out, err := migrate.CombinedOutput()
	if err != nil {
		t.Fatalf("migrate --cluster: %v\n%s", err, out)
	}
	t.Logf("migrate --cluster %s took %s", cl.Cluster, time.Since(migrateStart).Round(time.Millisecond))
	if n := strings.Count(string(out), `"msg":"stream replicas"`); n != len(bus.Streams) {
		t.Errorf("migrate reported the replicas of %d streams healthy, want %d:\n%s", n, len(bus.Streams), out)
	}

	conn, err := callsdb.Open(ctx, callsdb.Config{Addr: cl.CHAddr, Topology: callsdb.Topology{Cluster: cl.Cluster}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	defer func() {
		if err := conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db+" ON CLUSTER "+cl.Cluster); err != nil {
			t.Logf("drop %s: %v", db, err)
		}
	}()
	var engine string
	if err := conn.QueryRow(ctx, "SELECT engine FROM system.tables WHERE database = '"+db+"' AND name = 'calls_local'").Scan(&engine); err != nil || engine != "ReplicatedReplacingMergeTree" {
		t.Fatalf("calls_local engine %q (%v), want ReplicatedReplacingMergeTree", engine, err)
	}

	collectAddr := testkit.FreeAddr(t)
	procs := map[string]*proc{}
	// two workers of every stage, coordinated by nothing but JetStream and
	// the sealing lease
	order := []string{"collect", "normalize-0", "normalize-1", "clickhouse-0", "clickhouse-1",
		"langfuse-0", "langfuse-1", "archive-0", "archive-1"}
	for _, name := range order {
		p := &proc{name: name, env: env, out: &testkit.Buffer{}}
		switch {
		case name == "collect":
			p.args = []string{"collect", "--collect.listen", collectAddr}
		case strings.HasPrefix(name, "normalize"):
			p.args = []string{"worker", "--stages", "normalize", "--redis.addr=", "--worker.listen", testkit.FreeAddr(t)}
		default:
			stage, _, _ := strings.Cut(name, "-")
			p.args = []string{"worker", "--stages", stage, "--worker.listen", testkit.FreeAddr(t)}
		}
		procs[name] = p
		if err := p.start(bin); err != nil {
			t.Fatal(err)
		}
	}
	defer reap(t, procs)
	testkit.WaitHealthy(t, "http://"+collectAddr+"/readyz")

	start := time.Now()
	base := start.UTC()
	var sent atomic.Int64
	sendErr := make(chan error, 1)
	go func() {
		client := &http.Client{Timeout: 30 * time.Second}
		const batch, rate = 500, 1250.0
		next := time.Now()
		for lo := 0; lo < calls; lo += batch {
			var body []byte
			for n := lo; n < min(lo+batch, calls); n++ {
				body = clusterEvent(body, run, n, base)
			}
			for attempt := 0; ; attempt++ {
				resp, err := client.Post("http://"+collectAddr+"/v1/events", "application/x-ndjson", bytes.NewReader(body))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusAccepted {
						break
					}
				}
				if attempt > 600 || ctx.Err() != nil {
					sendErr <- fmt.Errorf("batch at %d not accepted after %d attempts (last: %v)", lo, attempt, err)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			sent.Store(int64(min(lo+batch, calls)))
			next = next.Add(time.Duration(float64(batch) / rate * float64(time.Second)))
			time.Sleep(time.Until(next))
		}
		sendErr <- nil
	}()

	// A worker of every stage is SIGKILLed and restarted: the normalize
	// workers in turn every 4 s while calls arrive, a worker of each sink
	// once; and a MinIO drive folder is deleted.
	var kills atomic.Int64
	stopKiller := make(chan struct{})
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		once := map[int]string{2: "clickhouse-0", 4: "langfuse-1", 6: "archive-0"}
		for i := 0; ; i++ {
			select {
			case <-stopKiller:
				return
			case <-time.After(8 * time.Second):
			}
			names := []string{"normalize-" + strconv.Itoa(i%2)}
			if s, ok := once[i]; ok {
				names = append(names, s)
			}
			for _, name := range names {
				p := procs[name]
				p.kill()
				kills.Add(1)
				if err := p.start(bin); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	defer func() {
		select {
		case <-killerDone:
		default:
			close(stopKiller)
			<-killerDone
		}
	}()

	at := func(d time.Duration) { time.Sleep(time.Until(start.Add(d))) }
	at(3 * time.Second)
	t.Logf("fault: MinIO drive 3 deleted at %s", time.Since(start).Round(time.Second))
	cl.RemoveMinIODrive(t, 3)
	at(5 * time.Second)
	leader := streamLeader(t, js, bus.CallsStream)
	node := strings.TrimPrefix(leader, "callpipe-")
	t.Logf("fault: SIGKILL %s (leader of %s) at %s (sent %d)", node, bus.CallsStream, time.Since(start).Round(time.Second), sent.Load())
	cl.Node(t, "kill", node)
	// doctor names the lost server while it is down (once the new leader
	// has noticed it: a few seconds)
	killed := time.Now()
	named := false
	for time.Since(killed) < 25*time.Second && !named {
		dctx, dcancel := context.WithTimeout(ctx, 8*time.Second)
		doctor := exec.CommandContext(dctx, bin, "doctor", "--redis.addr=")
		doctor.Env = env
		out, _ := doctor.CombinedOutput() // exits 1: a replica is not current
		dcancel()
		named = strings.Contains(string(out), "replica "+leader+" not current")
		if named {
			t.Logf("doctor %s after the SIGKILL of %s:\n%s", time.Since(killed).Round(time.Second), node, grepLines(string(out), "stream CALLPIPE_"))
		}
	}
	if !named {
		t.Errorf("doctor did not name %s within 25s of its SIGKILL", leader)
	}
	cl.Node(t, "start", node)
	t.Logf("fault: %s back at %s", node, time.Since(start).Round(time.Second))
	natsBack := time.Now()
	// how long the restarted server takes to be a current replica of every
	// stream again
	go func() {
		for ctx.Err() == nil {
			healthy := true
			for _, s := range bus.Streams {
				hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
				h, err := bus.ReplicaHealthOf(hctx, js, s)
				hcancel()
				healthy = healthy && err == nil && h.Healthy()
			}
			if healthy {
				t.Logf("recovery: %s a current replica of every stream %s after its restart", node, time.Since(natsBack).Round(100*time.Millisecond))
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	time.Sleep(2 * time.Second)
	chNode := cl.CHNodes[0]
	t.Logf("fault: stop %s (%s) at %s (sent %d)", chNode.Name, chNode.Native, time.Since(start).Round(time.Second), sent.Load())
	cl.Node(t, "stop", chNode.Name)
	time.Sleep(60 * time.Second)
	cl.Node(t, "start", chNode.Name)
	t.Logf("fault: %s back at %s (sent %d)", chNode.Name, time.Since(start).Round(time.Second), sent.Load())
	chBack := time.Now()
	// how long the restarted replica takes to fetch the parts it missed
	go func() {
		c := openNode(t, chNode.Native)
		defer c.Close()
		for ctx.Err() == nil {
			var queue, delay uint64
			err := c.QueryRow(ctx, "SELECT toUInt64(sum(queue_size)), toUInt64(max(absolute_delay)) FROM system.replicas WHERE database = '"+db+"'").Scan(&queue, &delay)
			if err == nil && queue == 0 && delay == 0 {
				t.Logf("recovery: %s caught up (replication queue empty) %s after its restart", chNode.Name, time.Since(chBack).Round(100*time.Millisecond))
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()

	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	t.Logf("all %d calls accepted at %s", calls, time.Since(start).Round(time.Second))
	close(stopKiller)
	<-killerDone
	t.Logf("%d workers SIGKILLed and restarted", kills.Load())

	drained := func(stream, consumer string) (bool, string) {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		c, err := js.Consumer(cctx, stream, consumer)
		if err != nil {
			return false, consumer + ": " + err.Error()
		}
		info, err := c.Info(cctx)
		if err != nil {
			return false, consumer + ": " + err.Error()
		}
		return info.NumPending == 0 && info.NumAckPending == 0,
			fmt.Sprintf("%s pending %d ack-pending %d", consumer, info.NumPending, info.NumAckPending)
	}
	consumers := [][2]string{
		{bus.CallsStream, "callpipe-normalize"}, {bus.NormalizedStream, bus.StageOf(bus.StageClickHouse).Consumer},
		{bus.NormalizedStream, "callpipe-langfuse"}, {bus.CallsStream, "callpipe-archive"},
	}
	testkit.WaitFor(t, 10*time.Minute, "every consumer drained", func() (bool, string) {
		var states []string
		all := true
		for _, c := range consumers {
			ok, s := drained(c[0], c[1])
			all = all && ok
			states = append(states, s)
		}
		return all, strings.Join(states, "; ")
	})
	t.Logf("drained at %s: %d calls in %s, %.0f calls/s end to end", time.Since(start).Round(time.Second), calls,
		time.Since(start).Round(time.Second), float64(calls)/time.Since(start).Seconds())
	// The past hours are sealed by the clickhouse stage (seal_after 2m).
	testkit.WaitFor(t, 2*time.Minute, "the past hours sealed", func() (bool, string) {
		st, err := callsdb.Status(ctx, conn, db, 2*time.Minute, time.Now())
		if err != nil {
			return false, err.Error()
		}
		return len(st.Unsealed) == 0 && len(st.Dirty) == 0 && st.SealedHours >= clusterHours-2,
			fmt.Sprintf("sealed %d hours, unsealed %v, dirty %v", st.SealedHours, st.Unsealed, st.Dirty)
	})
	t.Logf("sealed at %s", time.Since(start).Round(time.Second))
	// Late calls made the sealer seal hours again; the rows of the replaced
	// (and of abandoned) seals are deleted once the grace has passed.
	var resealed uint64
	if err := conn.QueryRow(ctx, "SELECT toUInt64(count()) FROM (SELECT grain, period FROM "+db+".usage_rollup GROUP BY grain, period HAVING uniqExact(version) > 1)").Scan(&resealed); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 4*time.Minute, "superseded seal rows deleted", func() (bool, string) {
		var left uint64
		if err := conn.QueryRow(ctx, "SELECT toUInt64(count()) FROM (SELECT grain, period FROM "+db+".usage_rollup GROUP BY grain, period HAVING uniqExact(version) > 1)").Scan(&left); err != nil {
			return false, err.Error()
		}
		return left == 0, fmt.Sprintf("%d periods with rows of more than one seal version", left)
	})
	t.Logf("%d periods had rows of several seal versions; superseded ones deleted at %s", resealed, time.Since(start).Round(time.Second))
	for _, name := range order {
		if err := procs[name].term(60 * time.Second); err != nil {
			t.Errorf("SIGTERM: %v", err)
		}
	}
	// what each role cost, over all its runs (SIGKILLed ones included)
	byRole := map[string][2]int64{}
	var roles []string
	for _, name := range order {
		role, _, _ := strings.Cut(name, "-")
		cpu, rss := procs[name].usage()
		r, seen := byRole[role]
		if !seen {
			roles = append(roles, role)
		}
		byRole[role] = [2]int64{r[0] + int64(cpu), max(r[1], rss)}
	}
	costs := []string{fmt.Sprintf("%-10s %10s %12s %12s", "role", "cpu s", "µs/call", "peak RSS MB")}
	for _, role := range roles {
		r := byRole[role]
		costs = append(costs, fmt.Sprintf("%-10s %10.1f %12.0f %12d", role, time.Duration(r[0]).Seconds(),
			float64(r[0])/1e3/float64(calls), r[1]>>20))
	}
	t.Logf("callpipe processes (all replicas of a role together):\n%s", strings.Join(costs, "\n"))

	report := []string{fmt.Sprintf("%-30s %12s %12s", "check", "want", "got")}
	row := func(what string, want, got any) {
		report = append(report, fmt.Sprintf("%-30s %12v %12v", what, want, got))
		if fmt.Sprint(want) != fmt.Sprint(got) {
			t.Errorf("%s: want %v, got %v", what, want, got)
		}
	}
	ids := make(map[string]bool, calls)
	type agg struct{ calls, in, out int64 }
	wantByModel := map[string]agg{}
	wantUser7 := 0
	for n := range calls {
		ids["cl-"+run+"-"+strconv.Itoa(n)] = true
		in, out := clusterTokens(n)
		a := wantByModel[faultModels[n%len(faultModels)]]
		wantByModel[faultModels[n%len(faultModels)]] = agg{a.calls + 1, a.in + in, a.out + out}
		if n%50 == 7 {
			wantUser7++
		}
	}

	row("raw stream messages", calls, streamState(t, js, bus.CallsStream).Msgs)
	row("dead letters", 0, streamState(t, js, bus.DeadLetterStream).Msgs)
	for _, s := range bus.Streams {
		h, err := bus.ReplicaHealthOf(ctx, js, s)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("stream %s replicas after the run: %s", s, h)
	}

	// Every node has caught up (the restarted replica fetched what it missed).
	for _, n := range cl.CHNodes {
		c := openNode(t, n.Native)
		for _, tbl := range []string{"calls_local", "usage_rollup_local", "usage_seals_local"} {
			if err := c.Exec(ctx, "SYSTEM SYNC REPLICA "+db+"."+tbl); err != nil {
				t.Fatalf("%s: SYSTEM SYNC REPLICA %s: %v", n.Name, tbl, err)
			}
		}
		c.Close()
	}
	var final, distinct uint64
	if err := conn.QueryRow(ctx, "SELECT toUInt64(count()) FROM "+db+".calls FINAL").Scan(&final); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT toUInt64(uniqExact(id)) FROM "+db+".calls").Scan(&distinct); err != nil {
		t.Fatal(err)
	}
	row("clickhouse rows (FINAL)", calls, final)
	row("clickhouse distinct ids", calls, distinct)

	// Replicas agree row for row; each shard holds its part of the calls.
	type shardState struct{ rows, hash uint64 }
	byShard := map[int][]shardState{}
	for _, n := range cl.CHNodes {
		c := openNode(t, n.Native)
		var s shardState
		if err := c.QueryRow(ctx, "SELECT toUInt64(count()), sum(cityHash64(id, version)) FROM "+db+".calls_local FINAL").Scan(&s.rows, &s.hash); err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		c.Close()
		byShard[n.Shard] = append(byShard[n.Shard], s)
	}
	var shardSum uint64
	for shard := 1; shard <= 2; shard++ {
		r := byShard[shard]
		row(fmt.Sprintf("shard %d replicas agree", shard), true, len(r) == 2 && r[0] == r[1])
		row(fmt.Sprintf("shard %d holds calls", shard), true, r[0].rows > uint64(calls)/4)
		shardSum += r[0].rows
	}
	row("shards sum to calls", calls, shardSum)

	usage, err := callsdb.Usage(ctx, conn, db, base.Add(-clusterHours*time.Hour), time.Now().Add(time.Hour), callsdb.GroupBy{Model: true})
	if err != nil {
		t.Fatal(err)
	}
	var uCalls uint64
	for _, r := range usage {
		uCalls += r.Calls
		w := wantByModel[r.Model]
		row("usage "+r.Model, fmt.Sprintf("%d/%d/%d", w.calls, w.in, w.out), fmt.Sprintf("%d/%d/%d", r.Calls, r.InputTokens, r.OutputTokens))
	}
	row("usage models", len(wantByModel), len(usage))
	row("usage calls", calls, uCalls)
	st, err := callsdb.Status(ctx, conn, db, 2*time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	report = append(report, fmt.Sprintf("(usage read over %d sealed hours, sealed through %s)", st.SealedHours, st.SealedThrough.Format(time.RFC3339)))

	list, _, err := callsdb.CallList(ctx, conn, db, callsdb.CallListSpec{
		From: base.Add(-(clusterHours + 1) * time.Hour), To: time.Now().Add(time.Hour), User: "user-7", Limit: 2 * wantUser7})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, c := range list {
		listed[c.ID] = true
	}
	row("call list of user-7", wantUser7, len(listed))

	mc, err := rawarchive.NewClient(rawarchive.S3Config{Endpoint: cl.S3.Endpoint, AccessKey: cl.S3.AccessKey, SecretKey: cl.S3.SecretKey, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := rawarchive.Keys(ctx, mc, bucket, "raw/v1", base.Add(-(clusterHours+1)*time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	archived := map[string]int{}
	lines := 0
	for _, o := range objs {
		if err := rawarchive.ReadObject(ctx, mc, bucket, o.Key, func(line []byte) error {
			lines++
			i := bytes.Index(line, []byte(`"id":"`))
			if i < 0 {
				return fmt.Errorf("archive line without id: %.80s", line)
			}
			rest := line[i+6:]
			archived[string(rest[:bytes.IndexByte(rest, '"')])]++
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	dups, missing := 0, 0
	for id, n := range archived {
		if n > 1 {
			dups++
		}
		if !ids[id] {
			t.Errorf("archive holds unknown id %s", id)
		}
	}
	for id := range ids {
		if archived[id] == 0 {
			missing++
		}
	}
	row("archive lines", calls, lines)
	row("archive ids missing", 0, missing)
	row("archive ids twice", 0, dups)

	lfMissing, lfTwice := 0, 0
	for id := range ids {
		tr, gen := lf.Envelopes("trace", id), lf.Envelopes("observation", id)
		if tr == 0 || gen == 0 {
			lfMissing++
		}
		if tr > 1 || gen > 1 {
			lfTwice++
		}
	}
	_, rejected, dropped := lf.Counts()
	row("langfuse ids missing", 0, lfMissing)
	row("langfuse ids stored twice", 0, lfTwice)
	row("langfuse rejected/dropped", "0/0", fmt.Sprintf("%d/%d", rejected, dropped))
	report = append(report, fmt.Sprintf("(run took %s)", time.Since(start).Round(time.Second)))
	t.Logf("cluster suite ground truth:\n%s", strings.Join(report, "\n"))
}

// clusterJetStream connects to the cluster stack's NATS servers (closed
// when the test ends); fresh deletes the pipeline's streams first.
func clusterJetStream(ctx context.Context, t *testing.T, cl harness.ClusterStack, fresh bool) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(cl.NATSURL, nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range bus.Streams {
		if !fresh {
			break
		}
		if err := js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Fatalf("delete stream %s: %v", s, err)
		}
	}
	return js
}

// ensureR3Streams makes the pipeline's streams as migrate does on the
// cluster stack: three replicas each.
func ensureR3Streams(ctx context.Context, t *testing.T, js jetstream.JetStream) {
	t.Helper()
	o := bus.DefaultStreamOptions()
	o.Replicas = 3
	if err := bus.EnsureStreams(ctx, js, o); err != nil {
		t.Fatal(err)
	}
}

// streamLeader is the server name leading stream.
func streamLeader(t *testing.T, js jetstream.JetStream, stream string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info := s.CachedInfo()
	if info.Cluster == nil || info.Cluster.Leader == "" {
		t.Fatalf("stream %s has no leader", stream)
	}
	return info.Cluster.Leader
}

// openNode connects to one ClickHouse server of the cluster (its local tables).
func openNode(t *testing.T, addr string) clickhouse.Conn {
	t.Helper()
	c, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, ReadTimeout: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// grepLines keeps the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
