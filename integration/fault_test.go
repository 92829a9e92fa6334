package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/store/rawarchive"
	"github.com/callpipe/callpipe/tools/workload"
)

// The fault suite (issue "Benchmark and fault suite"): one pipeline of
// separate processes — collector, 3 normalize workers, the ClickHouse,
// Langfuse and archive sinks — takes CALLPIPE_FAULT_CALLS calls (default
// 200,000) while it is hit by every fault at once: a normalize worker
// SIGKILLed every 3 s, NATS restarted, ClickHouse and MinIO stopped for 60 s,
// Redis stopped for 15 s, and a Langfuse that fails 30% of requests. Then
// every call must be in ClickHouse calls and rollups exactly once, in the
// archive exactly once, and stored once per id by Langfuse (or dead-lettered
// with a reason).

const faultTokensIn, faultTokensOut = 120, 80

var faultModels = []string{"qwen2.5-instruct", "llama-3.1-instruct", "glm-4-chat", "bge-m3", "mistral-instruct"}

func faultEvent(dst []byte, run string, n int, start time.Time) []byte {
	e := workload.ChatEvent{
		ID: "fault-" + run + "-" + strconv.Itoa(n), Model: faultModels[n%len(faultModels)],
		Start: start, Latency: 700 * time.Millisecond,
		Prompt: "question number " + strconv.Itoa(n) + " about the pipeline", Answer: "an answer",
		PromptTokens: faultTokensIn, CompletionTokens: faultTokensOut,
	}
	if n%10 == 0 {
		e.APIKey = "xf-faultkey" + strconv.Itoa(n%5) // resolved through Redis (stopped for a while during the run)
	} else {
		e.User = "user-" + strconv.Itoa(n%50)
	}
	return e.Append(dst)
}

// proc is one callpipe process of the suite, restartable.
type proc struct {
	name string
	args []string
	env  []string
	out  *testkit.Buffer
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	// CPU time and peak resident memory of every run of the process that
	// ended (SIGKILLed ones too)
	usageMu sync.Mutex
	cpu     time.Duration
	maxRSS  int64 // bytes
}

// usage is the CPU time of the process's ended runs and the largest peak
// resident memory of one of them.
func (p *proc) usage() (time.Duration, int64) {
	p.usageMu.Lock()
	defer p.usageMu.Unlock()
	return p.cpu, p.maxRSS
}

func (p *proc) start(bin string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := exec.Command(bin, p.args...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		if st := cmd.ProcessState; st != nil {
			p.usageMu.Lock()
			p.cpu += st.UserTime() + st.SystemTime()
			if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
				p.maxRSS = max(p.maxRSS, ru.Maxrss<<10) // Linux reports kilobytes
			}
			p.usageMu.Unlock()
		}
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

func (p *proc) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = p.cmd.Process.Kill()
	<-p.done
}

// term stops the process with SIGTERM and returns its exit error.
func (p *proc) term(timeout time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if !p.cmd.ProcessState.Success() {
			return fmt.Errorf("%s exited with %s", p.name, p.cmd.ProcessState)
		}
		return nil
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within %s of SIGTERM", p.name, timeout)
	}
}

// reap kills the processes still running at the end of a test and, when
// it failed, logs the end of each one's output.
func reap(t *testing.T, procs map[string]*proc) {
	for _, p := range procs {
		p.mu.Lock()
		if p.cmd != nil && p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
		}
		p.mu.Unlock()
		if t.Failed() {
			t.Logf("%s output (end):\n%s", p.name, testkit.Last(p.out.String(), 2500))
		}
	}
}

func TestFaultSuite(t *testing.T) {
	// What failed is repeated at the very end of the output (this cleanup
	// runs after every other one), where a truncated CI log still shows it.
	var failMu sync.Mutex
	var failures []string
	t.Cleanup(func() {
		failMu.Lock()
		defer failMu.Unlock()
		if len(failures) > 0 {
			t.Logf("fault suite failed:\n%s", strings.Join(failures, "\n"))
		}
	})
	errorf := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		failMu.Lock()
		failures = append(failures, msg)
		failMu.Unlock()
		t.Error(msg)
	}
	calls := 200_000
	if v := os.Getenv("CALLPIPE_FAULT_CALLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 {
			t.Fatalf("CALLPIPE_FAULT_CALLS=%q: want a number >= 1000", v)
		}
		calls = n
	}
	natsSrv := harness.StartNATSServer(t)
	ch := harness.ClickHouse(t)
	s3 := harness.S3(t)
	redisAddr := harness.Redis(t)
	bin := testkit.Binary(t)

	run := strconv.FormatInt(time.Now().UnixNano()%1_000_000_000, 36)
	db := "fault_" + run
	chDropAtCleanup(t, db)
	bucket := "fault-" + run
	lf := langfusetest.New(langfusetest.Options{})
	defer lf.Close()
	lf.SetFailureRate(0.3, langfusetest.Fault{Status: 429, RetryAfter: time.Second}, langfusetest.Fault{Status: 500})

	env := append(os.Environ(),
		"CALLPIPE_NATS_URL="+natsSrv.URL,
		"CALLPIPE_CLICKHOUSE_ADDR="+ch.Native, "CALLPIPE_CLICKHOUSE_DATABASE="+db,
		"CALLPIPE_S3_ENDPOINT="+s3.Endpoint, "CALLPIPE_S3_ACCESS_KEY="+s3.AccessKey, "CALLPIPE_S3_SECRET_KEY="+s3.SecretKey,
		"CALLPIPE_S3_BUCKET="+bucket, "CALLPIPE_S3_USE_SSL=false",
		"CALLPIPE_REDIS_ADDR="+redisAddr, "CALLPIPE_TRANSFORM_USER_KEY_PREFIX=fault:"+run+":",
		"CALLPIPE_ARCHIVE_FLUSH_INTERVAL=5s",
		"LANGFUSE_HOST="+lf.Host(), "LANGFUSE_PUBLIC_KEY=pk-lf-test", "LANGFUSE_SECRET_KEY=sk-lf-test",
		"CALLPIPE_LANGFUSE_TRANSPORT=ingestion", "CALLPIPE_LANGFUSE_MIN_BACKOFF=100ms", "CALLPIPE_LANGFUSE_MAX_BACKOFF=2s",
		"CALLPIPE_LOG_LEVEL=warn",
	)
	migrate := exec.Command(bin, "migrate")
	migrate.Env = env
	if out, err := migrate.CombinedOutput(); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	for k := range 5 {
		add := exec.Command(bin, "users", "add", "--key-file", "-", "--user", "keyuser-"+strconv.Itoa(k))
		add.Env = env
		add.Stdin = strings.NewReader("xf-faultkey" + strconv.Itoa(k))
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("users add: %v\n%s", err, out)
		}
	}

	collectAddr := testkit.FreeAddr(t)
	procs := map[string]*proc{}
	order := []string{"collect", "normalize-0", "normalize-1", "normalize-2", "clickhouse", "langfuse", "archive"}
	for _, name := range order {
		p := &proc{name: name, env: env, out: &testkit.Buffer{}}
		switch {
		case name == "collect":
			p.args = []string{"collect", "--collect.listen", collectAddr}
		case strings.HasPrefix(name, "normalize"):
			p.args = []string{"worker", "--stages", "normalize", "--worker.listen", testkit.FreeAddr(t)}
		default:
			p.args = []string{"worker", "--stages", name, "--worker.listen", testkit.FreeAddr(t)}
		}
		procs[name] = p
		if err := p.start(bin); err != nil {
			t.Fatal(err)
		}
	}
	defer reap(t, procs)
	testkit.WaitHealthy(t, "http://"+collectAddr+"/readyz")

	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The sender: a client that retries what was not accepted (same ids).
	var sent atomic.Int64
	sendErr := make(chan error, 1)
	go func() {
		client := &http.Client{Timeout: 30 * time.Second}
		const batch, rate = 500, 5000.0
		next := time.Now()
		for lo := 0; lo < calls; lo += batch {
			var body []byte
			for n := lo; n < min(lo+batch, calls); n++ {
				body = faultEvent(body, run, n, start)
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

	// The killer: SIGKILL one normalize worker every 3 s, restart it.
	stopKiller := make(chan struct{})
	var kills atomic.Int64
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		for i := 0; ; i++ {
			select {
			case <-stopKiller:
				return
			case <-time.After(3 * time.Second):
			}
			p := procs["normalize-"+strconv.Itoa(i%3)]
			p.kill()
			kills.Add(1)
			if err := p.start(bin); err != nil {
				errorf("restart after SIGKILL: %v", err)
				return
			}
		}
	}()

	at := func(d time.Duration) { time.Sleep(time.Until(start.Add(d))) }
	at(6 * time.Second)
	t.Logf("fault: NATS restart at %s (sent %d)", time.Since(start).Round(time.Second), sent.Load())
	natsSrv.Stop(t)
	time.Sleep(2 * time.Second)
	natsSrv.Start(t)
	at(12 * time.Second)
	t.Logf("fault: ClickHouse and MinIO stopped for 60s at %s (sent %d)", time.Since(start).Round(time.Second), sent.Load())
	harness.StopService(t, harness.ServiceClickHouse)
	harness.StopService(t, harness.ServiceMinIO)
	stopAt := time.Now()
	at(20 * time.Second)
	t.Logf("fault: Redis stopped for 15s at %s", time.Since(start).Round(time.Second))
	harness.StopService(t, harness.ServiceRedis)
	at(35 * time.Second)
	harness.StartService(t, harness.ServiceRedis)
	time.Sleep(time.Until(stopAt.Add(60 * time.Second)))
	harness.StartService(t, harness.ServiceClickHouse)
	harness.StartService(t, harness.ServiceMinIO)
	t.Logf("fault: ClickHouse and MinIO back at %s", time.Since(start).Round(time.Second))

	if err := <-sendErr; err != nil {
		errorf("sender: %v", err)
		t.FailNow()
	}
	t.Logf("all %d calls accepted at %s", calls, time.Since(start).Round(time.Second))
	time.Sleep(5 * time.Second)
	close(stopKiller)
	<-killerDone

	// Drain: every consumer has processed everything.
	_, js := testkit.JetStream(t, natsSrv.URL)
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
	testkit.WaitFor(t, 5*time.Minute, "every consumer drained", func() (bool, string) {
		var states []string
		all := true
		for _, c := range consumers {
			ok, s := drained(c[0], c[1])
			all = all && ok
			states = append(states, s)
		}
		return all, strings.Join(states, "; ")
	})
	for _, name := range order {
		if err := procs[name].term(60 * time.Second); err != nil {
			errorf("SIGTERM: %v", err)
		}
	}

	// Ground truth.
	ids := make(map[string]bool, calls)
	for n := range calls {
		ids["fault-"+run+"-"+strconv.Itoa(n)] = true
	}
	report := []string{fmt.Sprintf("%-28s %12s %12s", "check", "want", "got")}
	row := func(what string, want, got any) {
		report = append(report, fmt.Sprintf("%-28s %12v %12v", what, want, got))
		if fmt.Sprint(want) != fmt.Sprint(got) {
			errorf("%s: want %v, got %v", what, want, got)
		}
	}

	rawMsgs, dlq := streamState(t, js, bus.CallsStream).Msgs, streamState(t, js, bus.DeadLetterStream).Msgs
	row("raw stream messages", calls, rawMsgs)
	row("dead letters", 0, dlq)

	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ch.Native}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var distinct, final uint64
	if err := conn.QueryRow(ctx, "SELECT toUInt64(uniqExact(id)) FROM "+db+".calls").Scan(&distinct); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT toUInt64(count()) FROM "+db+".calls FINAL").Scan(&final); err != nil {
		t.Fatal(err)
	}
	row("clickhouse distinct ids", calls, distinct)
	row("clickhouse rows (FINAL)", calls, final)
	usage, err := callsdb.Usage(ctx, conn, db, start.Add(-time.Hour), time.Now().Add(time.Hour), callsdb.GroupBy{Model: true})
	if err != nil {
		t.Fatal(err)
	}
	var uCalls uint64
	var uIn, uOut int64
	for _, r := range usage {
		uCalls += r.Calls
		uIn += r.InputTokens
		uOut += r.OutputTokens
		want := calls / len(faultModels)
		if int(r.Calls) != want {
			errorf("rollup model %s: %d calls, want %d", r.Model, r.Calls, want)
		}
	}
	row("rollup calls", calls, uCalls)
	row("rollup input tokens", int64(calls)*faultTokensIn, uIn)
	row("rollup output tokens", int64(calls)*faultTokensOut, uOut)

	mc, err := rawarchive.NewClient(rawarchive.S3Config{Endpoint: s3.Endpoint, AccessKey: s3.AccessKey, SecretKey: s3.SecretKey, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := rawarchive.Keys(ctx, mc, bucket, "raw/v1", start.Add(-2*time.Hour), time.Now().Add(time.Hour))
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
			errorf("archive holds unknown id %s", id)
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
	accepted, rejected, dropped := lf.Counts()
	row("langfuse ids missing", 0, lfMissing)
	row("langfuse ids stored twice", 0, lfTwice)
	row("langfuse rejected/dropped", "0/0", fmt.Sprintf("%d/%d", rejected, dropped))
	report = append(report, fmt.Sprintf("(langfuse accepted %d events incl. resends; %d normalize workers SIGKILLed; run took %s)",
		accepted, kills.Load(), time.Since(start).Round(time.Second)))
	t.Logf("fault suite ground truth:\n%s", strings.Join(report, "\n"))
	failMu.Lock()
	if len(failures) > 0 {
		failures = append(failures, strings.Join(report, "\n"))
	}
	failMu.Unlock()
}

// streamState is the state (message count, sequences) of stream name.
func streamState(t *testing.T, js jetstream.JetStream, name string) jetstream.StreamState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}
