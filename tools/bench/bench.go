// Package bench measures the whole pipeline on this machine (`callpipe
// bench`): collector → NATS → normalize → ClickHouse + Langfuse (a local
// receiver) + archive, each role its own process, then the raw limits of
// JetStream and ClickHouse for the same bytes and rows. Package usagebench
// measures the read side (`callpipe bench usage`).
package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/fleet"
	"github.com/callpipe/callpipe/schema"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/tools/workload"
	"github.com/callpipe/callpipe/transform"
)

// Options are the bench's own flags.
type Options struct {
	Events      int
	Size        int
	Clients     int
	Batch       int
	Sinks       []string
	Latency     time.Duration // 0 skips the latency phase
	JSON        string        // also write the results as JSON here
	Dir         string        // logs and the scratch JetStream store
	NATSServer  string        // nats-server binary ("" : PATH or $GOPATH/bin)
	SkipRaw     bool
	Keep        bool   // keep the scratch ClickHouse database
	MemoryLimit string // GOMEMLIMIT of every callpipe process ("" : none)
	// ProfileSeconds > 0 saves a CPU profile of every role for the first
	// ProfileSeconds of the throughput phase to <Dir>/<role>.cpu.pprof.
	ProfileSeconds int
	// Proxy, when set, adds the proxy phase (proxy.go); with Events 0 it
	// is the only phase.
	Proxy *ProxyOptions
	// Cluster, when set, runs the throughput phase against a multi-node
	// stack with several workers of each stage instead (cluster.go).
	Cluster *ClusterOptions
}

// Check says what is wrong with the options, naming the flag.
func (o Options) Check() error {
	if (o.Events < 1000 && (o.Events != 0 || o.Proxy == nil)) || o.Size < 256 || o.Clients < 1 || o.Batch < 1 {
		return errors.New("need --events >= 1000 (or 0 with --proxy: the proxy phase only), --size >= 256, --clients >= 1, --batch >= 1")
	}
	if p := o.Proxy; p != nil && (p.Rate < 1 || p.Clients < 1 || p.Duration < time.Second || p.Slice < 100*time.Millisecond) {
		return errors.New("need --proxy-rate >= 1, --proxy-clients >= 1, --proxy-duration >= 1s, --proxy-slice >= 100ms")
	}
	for _, s := range o.Sinks {
		if !slices.Contains([]string{"clickhouse", "langfuse", "archive"}, s) {
			return fmt.Errorf("--sinks: unknown sink %q (allowed: clickhouse, langfuse, archive)", s)
		}
	}
	if !slices.Contains(o.Sinks, "clickhouse") {
		return errors.New("--sinks must include clickhouse: latency is measured through the usage API")
	}
	if o.MemoryLimit != "" && !goMemLimit.MatchString(o.MemoryLimit) {
		return fmt.Errorf("--memory-limit %q: want a GOMEMLIMIT value such as 192MiB or 1GiB", o.MemoryLimit)
	}
	if o.Cluster != nil {
		return o.Cluster.check(o)
	}
	return nil
}

var goMemLimit = regexp.MustCompile(`^[0-9]+(B|KiB|MiB|GiB|TiB)?$`)

// Consumer is the stream and durable consumer a stage reads, whose progress
// times the stage.
type Consumer struct{ Stream, Name string }

// Env is what the bench takes from callpipe's configuration.
type Env struct {
	ConfigFile      string              // passed to every child process
	ClickHouse      chsink.OutputConfig // of the raw insert and of dropping the scratch databases
	ClickHouseBatch int                 // rows per insert of the raw measurement
	Consumers       map[string]Consumer // stage name → its consumer
	// EnsureBucket creates the archive's bucket when missing (archive sink only).
	EnsureBucket func(context.Context) error
	// ChildEnv is environment for every child process, before the bench's
	// own (which wins): what points them at this stack when the bench's own
	// environment names another (the single-node phase of --cluster).
	ChildEnv []string
	Out      io.Writer
}

// Run runs the bench and prints its report to env.Out. It fails when the
// usage API does not show exactly the events that were sent.
func Run(ctx context.Context, o Options, env Env) error {
	b := &bench{env: env, o: o, out: env.Out}
	return b.run(ctx)
}

type bench struct {
	env   Env
	o     Options
	out   io.Writer
	fleet *fleet.Fleet
	js    jetstream.JetStream
	runID string
	db    string
	addrs map[string]string // process (role, or role-N of several) → ops listen address
	pprof map[string]string // process → pprof listen address (ProfileSeconds)
	// procs are the processes of each role: the role's name when it runs
	// once, role-0, role-1, ... when it runs several times (--cluster).
	procs    map[string][]string
	natsPIDs []int // the scratch nats-servers
}

// Result is what `callpipe bench --json` writes.
type Result struct {
	Events     int                `json:"events"`
	EventBytes int                `json:"event_bytes"`
	Sinks      []string           `json:"sinks"`
	AcceptPerS float64            `json:"accept_events_per_s"`
	StagePerS  map[string]float64 `json:"stage_events_per_s"`
	// EndToEndPS is calls over the time from the first call sent to the
	// usage API showing them all; AllSinksPS over the time until every
	// sink had settled them all (the archive sends an object when it
	// reaches its size or its age: its last one waits archive.flush_interval).
	EndToEndPS float64                `json:"end_to_end_events_per_s"`
	AllSinksPS float64                `json:"all_sinks_events_per_s"`
	Exact      bool                   `json:"exact"`
	Latency    *LatencyResult         `json:"latency,omitempty"`
	Processes  map[string]fleet.Usage `json:"processes"`
	RawJSPerS  float64                `json:"raw_jetstream_events_per_s,omitempty"`
	// RawJSClientMicros is the CPU the raw phase's own process spent per
	// event making and publishing it (with its PubAck) and consuming it
	// (with its ack): about the JetStream client's share of a stage that
	// publishes or consumes each call as one message, before the stage
	// does any work.
	RawJSClientMicros float64 `json:"raw_jetstream_client_cpu_us_per_event,omitempty"`
	RawCHPerS         float64 `json:"raw_clickhouse_rows_per_s,omitempty"`
	// RawTopoPerS is callpipe's JetStream topology with no work in it
	// (rawTopology): the ceiling of the whole pipeline on this machine.
	RawTopoPerS float64 `json:"raw_jetstream_topology_events_per_s,omitempty"`
	// RawTopoBatches is the batched messages the topology phase stored on
	// its second stream.
	RawTopoBatches uint64  `json:"raw_jetstream_topology_batched_messages,omitempty"`
	RatioToRaw     float64 `json:"ratio_to_raw_limit,omitempty"`
	// PerCall is each role's cost per call in the throughput phase
	// (collect, normalize and the sinks), Total their sum.
	PerCall map[string]StageCost `json:"per_call,omitempty"`
	Total   *StageCost           `json:"per_call_total,omitempty"`
	// NATSCPUMicros is the scratch nats-server(s)' CPU per call in the
	// throughput phase (-1: unknown).
	NATSCPUMicros float64 `json:"nats_servers_cpu_us_per_call,omitempty"`
	// Machine is every process's CPU per call from the throughput phase's
	// start until the usage API showed every call (Linux; nil elsewhere).
	Machine     *MachineCPU `json:"machine,omitempty"`
	MachineCPUs int         `json:"machine_cpus"`
	MemoryLimit string      `json:"memory_limit,omitempty"` // GOMEMLIMIT of the processes
	// Proxy is the proxy phase's latency and cost (--proxy).
	Proxy *ProxyResult `json:"proxy,omitempty"`
}

// LatencyResult is accept → visible in the usage API at a fixed rate.
type LatencyResult struct {
	RatePerS float64 `json:"rate_per_s"`
	Events   int     `json:"events"`
	P50MS    float64 `json:"p50_ms"`
	P99MS    float64 `json:"p99_ms"`
	MaxMS    float64 `json:"max_ms"`
}

func (b *bench) say(format string, args ...any) { fmt.Fprintf(b.out, format+"\n", args...) }

func (b *bench) run(ctx context.Context) (err error) {
	b.runID = strconv.FormatInt(time.Now().Unix(), 36)
	if err := os.MkdirAll(b.o.Dir, 0o755); err != nil {
		return fmt.Errorf("bench dir: %w", err)
	}
	if b.o.Cluster != nil {
		return b.runCluster(ctx)
	}
	b.db = "callpipe_bench_" + b.runID
	p, err := b.startPipeline(ctx, 1, 1)
	if err != nil {
		return err
	}
	defer p.close()
	lf := p.lf
	res := &Result{Events: b.o.Events, EventBytes: b.o.Size, Sinks: b.o.Sinks, StagePerS: map[string]float64{}, MachineCPUs: runtime.NumCPU(), MemoryLimit: b.o.MemoryLimit}
	b.say("bench      run %s: %d events of %d bytes, sinks %s, %d CPUs", b.runID, b.o.Events, b.o.Size, strings.Join(b.o.Sinks, ","), res.MachineCPUs)

	if b.o.Events > 0 {
		if err := b.throughput(ctx, res); err != nil {
			return err
		}
		if b.o.Latency > 0 {
			if res.Latency, err = b.latency(ctx, res.EndToEndPS/2); err != nil {
				return err
			}
		}
	}
	var proxyErr error
	if b.o.Proxy != nil {
		// Reported, with the rest, even when some requests failed.
		if res.Proxy, proxyErr = b.proxyPhase(ctx); res.Proxy == nil {
			return proxyErr
		}
	}
	if res.Processes, err = b.fleet.Stop(b.stopOrder()...); err != nil {
		return err
	}
	if lfSink := slices.Contains(b.o.Sinks, "langfuse"); lfSink {
		_, events := lf.Counts()
		b.say("langfuse   receiver got %d events (trace + generation per call)", events)
	}
	if !b.o.SkipRaw && b.o.Events > 0 {
		if res.RawJSPerS, res.RawJSClientMicros, err = b.rawJetStream(ctx); err != nil {
			return err
		}
		if res.RawCHPerS, err = b.rawClickHouse(ctx); err != nil {
			return err
		}
		res.RatioToRaw = res.EndToEndPS / min(res.RawJSPerS, res.RawCHPerS)
		if res.RawTopoPerS, res.RawTopoBatches, err = b.rawTopology(ctx); err != nil {
			return err
		}
	}
	b.report(res)
	if b.o.JSON != "" {
		if err := fleet.WriteJSON(b.o.JSON, res); err != nil {
			return err
		}
	}
	if b.o.Events > 0 && !res.Exact {
		return errors.New("bench: the usage API does not show exactly the events that were sent")
	}
	if proxyErr != nil {
		return proxyErr
	}
	if p := res.Proxy; p != nil && p.Captured != p.Sent {
		return fmt.Errorf("bench: the usage API shows %d of the %d calls the proxy answered", p.Captured, p.Sent)
	}
	return nil
}

// benchEvent appends chat event n of about size bytes with reported usage.
func benchEvent(dst []byte, run string, n int, size int, start time.Time) []byte {
	const frame = 560 // bytes of the event without its two texts
	text := max(size-frame, 20)
	e := workload.ChatEvent{
		ID: "bench-" + run + "-" + strconv.Itoa(n), Model: benchModels[n%len(benchModels)], User: "user-" + strconv.Itoa(n%50),
		Start: start, Latency: 900 * time.Millisecond, TTFT: 120 * time.Millisecond,
		Prompt: workload.Filler(text * 6 / 10), Answer: workload.Filler(text * 4 / 10),
		PromptTokens: 150, CompletionTokens: 90,
	}
	return e.Append(dst)
}

var benchModels = []string{"qwen2.5-instruct", "llama-3.1-instruct", "deepseek-r1-distill-qwen", "glm-4-chat", "mistral-instruct"}

// post sends events [from, to) as one NDJSON request to the collector at
// addr; it retries on 503 (the collector's back-pressure signal).
func (b *bench) post(ctx context.Context, client *http.Client, addr string, from, to int, start time.Time) error {
	var body []byte
	for n := from; n < to; n++ {
		body = benchEvent(body, b.runID, n, b.o.Size, start)
	}
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/events", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/x-ndjson")
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("bench collector: %w", err)
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusOK:
			return nil
		case resp.StatusCode == http.StatusServiceUnavailable && attempt < 50:
			time.Sleep(100 * time.Millisecond)
		default:
			return fmt.Errorf("bench collector answered %s: %s", resp.Status, bytes.TrimSpace(msg))
		}
	}
}

// consumerDone reports whether a durable consumer has processed everything
// in its stream, and how many of its stream's messages it has acknowledged;
// handles keeps the consumers looked up, so that each poll is one request.
func (b *bench) consumerDone(ctx context.Context, handles map[string]jetstream.Consumer, stream, consumer string, want uint64) (bool, uint64) {
	c := handles[stream+"/"+consumer]
	if c == nil {
		var err error
		if c, err = b.js.Consumer(ctx, stream, consumer); err != nil {
			return false, 0
		}
		handles[stream+"/"+consumer] = c
	}
	info, err := c.Info(ctx)
	if err != nil {
		return false, 0
	}
	acked := info.AckFloor.Stream
	return info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Stream >= want, acked
}

// lastSeq is the last sequence of stream.
func (b *bench) lastSeq(ctx context.Context, stream string) (uint64, error) {
	st, err := b.js.Stream(ctx, stream)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", stream, err)
	}
	return info.State.LastSeq, nil
}

func (b *bench) throughput(ctx context.Context, res *Result) error {
	n := b.o.Events
	stageNames := append([]string{"normalize"}, b.o.Sinks...)
	procs := append([]string{"collect"}, stageNames...)
	js0, err := b.jsCounts(ctx, stageNames)
	if err != nil {
		return err
	}
	proc0, nats0 := b.sampleProcs(ctx, procs), b.natsCPUSeconds()
	machine0, machineOK := sampleMachine()
	profiled := b.profileRoles(ctx)
	defer profiled()
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: b.o.Clients}}
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	start := time.Now()
	var wg sync.WaitGroup
	for i := range b.o.Clients {
		// with several collectors, the clients spread over them as a load
		// balancer would
		collector := b.collector(i)
		wg.Go(func() {
			for {
				from := int(next.Add(int64(b.o.Batch))) - b.o.Batch
				if from >= n {
					return
				}
				if err := b.post(ctx, client, collector, from, min(from+b.o.Batch, n), time.Now()); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	finished := map[string]time.Duration{}
	// The usage API is read once the ClickHouse sink has settled every
	// call (it acknowledges after inserting): the end of the end-to-end
	// path, whatever the other sinks still hold. Not before: polling it
	// during the run would take CPU from the pipeline.
	var visible time.Duration
	from, to := start.Add(-time.Minute), start.Add(12*time.Minute)
	waitVisible := func() error {
		for {
			calls, err := b.usageCalls(ctx, from, to)
			if err == nil && calls >= int64(n) {
				visible, res.Exact = time.Since(start), calls == int64(n)
				if machine1, ok := sampleMachine(); ok && machineOK {
					res.Machine = machineCost(machine0, machine1, n, os.Getpid(), b.fleet.Pids())
				}
				return nil
			}
			if time.Since(start) > 11*time.Minute {
				return fmt.Errorf("bench: usage API shows %d of %d calls (%v)", calls, n, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	acceptDone := make(chan struct{})
	go func() { wg.Wait(); close(acceptDone) }()
	// Each stage's end is seen at the next poll: a slow poll while events
	// are sent (it takes a little from the pipeline), a quick one once every
	// event is accepted and the stages finish, so that their times, and the
	// end to end read after the ClickHouse sink's, are late by at most 20 ms.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	handles := map[string]jetstream.Consumer{}
	lastReport := time.Now()
	accepted := time.Duration(0)
	lastSeqs := map[string]uint64{} // a stage's stream's last sequence, read once what feeds it is done
	for len(finished) < len(stageNames) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-acceptDone:
			if firstErr != nil {
				return firstErr
			}
			accepted = time.Since(start)
			res.AcceptPerS = float64(n) / accepted.Seconds()
			acceptDone = nil
			tick.Reset(20 * time.Millisecond)
		case <-tick.C:
		}
		progress := []string{}
		for _, s := range stageNames {
			if _, ok := finished[s]; ok {
				progress = append(progress, s+" done")
				continue
			}
			sc := b.env.Consumers[s]
			want := uint64(n)
			if sc.Stream != bus.CallsStream {
				// CALLPIPE_NORMALIZED holds batches of calls: a sink is done
				// when it has settled every message normalize published
				// once normalize is done
				if _, ok := finished["normalize"]; !ok {
					progress = append(progress, s+" waiting")
					continue
				}
				if _, ok := lastSeqs[sc.Stream]; !ok {
					last, err := b.lastSeq(ctx, sc.Stream)
					if err != nil {
						return err
					}
					lastSeqs[sc.Stream] = last
				}
				want = lastSeqs[sc.Stream]
			}
			done, acked := b.consumerDone(ctx, handles, sc.Stream, sc.Name, want)
			if done && acceptDone == nil {
				finished[s] = time.Since(start)
				res.StagePerS[s] = float64(n) / finished[s].Seconds()
				if s == "clickhouse" {
					if err := waitVisible(); err != nil {
						return err
					}
				}
			}
			progress = append(progress, fmt.Sprintf("%s %d", s, acked))
		}
		if time.Since(lastReport) >= time.Second {
			lastReport = time.Now()
			b.say("progress   %.1fs  accepted %d  %s", time.Since(start).Seconds(), min(int(next.Load()), n), strings.Join(progress, "  "))
		}
		if err := b.fleet.Exited(); err != nil {
			return fmt.Errorf("bench: a process stopped during the throughput phase (%s): %w", strings.Join(progress, ", "), err)
		}
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("bench: stages not done after 10 minutes: %s", strings.Join(progress, ", "))
		}
	}
	allDone := time.Since(start)
	if visible == 0 { // no ClickHouse sink among the stages waited for
		if err := waitVisible(); err != nil {
			return err
		}
	} else if calls, err := b.usageCalls(ctx, from, to); err != nil || calls != int64(n) {
		// a copy counted twice after the sinks settled is not exact either
		res.Exact = false
	}
	res.EndToEndPS = float64(n) / visible.Seconds()
	res.AllSinksPS = float64(n) / allDone.Seconds()
	proc1, nats1 := b.sampleProcs(ctx, procs), b.natsCPUSeconds()
	res.NATSCPUMicros = -1
	if nats0 >= 0 && nats1 >= 0 {
		res.NATSCPUMicros = (nats1 - nats0) * 1e6 / float64(n)
	}
	js1, err := b.jsCounts(ctx, stageNames)
	if err != nil {
		return err
	}
	res.PerCall = costs(n, stageNames, proc0, proc1, js0, js1)
	total := totalCost(res.PerCall)
	res.Total = &total
	return nil
}

func (b *bench) usageCalls(ctx context.Context, from, to time.Time) (int64, error) {
	ans, err := fleet.GetUsage(ctx, b.addrs["serve"], from, to, "")
	if err != nil {
		return 0, err
	}
	return ans.Totals.Calls, nil
}

// latency sends batches at rate events/s and, polling the usage API, times
// each batch from its acceptance to the moment the API's count covers it.
func (b *bench) latency(ctx context.Context, rate float64) (*LatencyResult, error) {
	if rate < 1 {
		return nil, fmt.Errorf("bench: latency rate %.1f/s too low", rate)
	}
	batch := max(1, min(b.o.Batch, int(rate/20))) // at least 20 requests a second
	interval := time.Duration(float64(batch) / rate * float64(time.Second))
	phaseStart := time.Now()
	from := phaseStart.Add(-time.Second)
	_ = from
	type sent struct {
		cum      int64
		accepted time.Time
	}
	var mu sync.Mutex
	var sents []sent
	client := &http.Client{Timeout: time.Minute}
	offset := b.o.Events
	total := 0
	sendDone := make(chan error, 1)
	go func() {
		next := time.Now()
		for time.Since(phaseStart) < b.o.Latency {
			lo := offset + total
			if err := b.post(ctx, client, b.collector(0), lo, lo+batch, time.Now()); err != nil {
				sendDone <- err
				return
			}
			total += batch
			mu.Lock()
			sents = append(sents, sent{cum: int64(total), accepted: time.Now()})
			mu.Unlock()
			next = next.Add(interval)
			time.Sleep(time.Until(next))
		}
		sendDone <- nil
	}()
	var lat []float64
	seen := 0
	sending := true
	for {
		if sending {
			select {
			case err := <-sendDone:
				if err != nil {
					return nil, err
				}
				sending = false
			default:
			}
		}
		visible, err := b.usageCalls(ctx, phaseStart.Add(-time.Second), phaseStart.Add(time.Hour))
		now := time.Now()
		if err == nil {
			mu.Lock()
			for seen < len(sents) && sents[seen].cum <= visible {
				lat = append(lat, float64(now.Sub(sents[seen].accepted).Milliseconds()))
				seen++
			}
			n := len(sents)
			mu.Unlock()
			if !sending && seen == n {
				break
			}
		}
		if time.Since(phaseStart) > b.o.Latency+2*time.Minute {
			return nil, fmt.Errorf("bench: latency phase: %d of %d batches visible after %s", seen, len(sents), time.Since(phaseStart))
		}
		time.Sleep(50 * time.Millisecond)
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	b.say("latency    %d events at %.0f/s: p50 %.0f ms, p99 %.0f ms", total, rate, q(0.5), q(0.99))
	return &LatencyResult{RatePerS: rate, Events: total, P50MS: q(0.5), P99MS: q(0.99), MaxMS: lat[len(lat)-1]}, nil
}

// rawJetStream publishes and consumes the same events with nothing else
// running: one publisher (async, Nats-Msg-Id) and one pull consumer acking
// each message, concurrently, into a file-backed stream.
func (b *bench) rawJetStream(ctx context.Context) (rate, clientMicros float64, err error) {
	n := b.o.Events
	name := "BENCH_RAW_" + strings.ToUpper(b.runID)
	st, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{"bench.raw." + b.runID}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute})
	if err != nil {
		return 0, 0, fmt.Errorf("raw stream: %w", err)
	}
	defer func() { _ = b.js.DeleteStream(context.WithoutCancel(ctx), name) }()
	cons, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 20000})
	if err != nil {
		return 0, 0, err
	}
	start, cpu0 := time.Now(), ownCPU()
	var consumed atomic.Int64
	done := make(chan struct{})
	cc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		if consumed.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		return 0, 0, err
	}
	defer cc.Stop()
	js, err := b.publishEvents("bench.raw."+b.runID, "raw-")
	if err != nil {
		return 0, 0, fmt.Errorf("raw publish: %w", err)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		return 0, 0, errors.New("raw publish: not acknowledged within 5 minutes")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		return 0, 0, fmt.Errorf("raw consume: %d of %d within 5 minutes", consumed.Load(), n)
	}
	rate = float64(n) / time.Since(start).Seconds()
	clientMicros = (ownCPU() - cpu0).Seconds() * 1e6 / float64(n)
	b.say("raw        JetStream publish+consume: %.0f events/s, client CPU %.1f µs per event", rate, clientMicros)
	return rate, clientMicros, nil
}

// rawClickHouse inserts the same events, normalized in process, into a
// scratch database with the sink's output and nothing else running.
// publishEvents publishes --events bench events of --size bytes to subject
// asynchronously (Nats-Msg-Id idPrefix+index) and returns the JetStream
// context whose PublishAsyncComplete says when they are all acknowledged.
func (b *bench) publishEvents(subject, idPrefix string) (jetstream.JetStream, error) {
	js, err := jetstream.New(b.js.Conn(), jetstream.WithPublishAsyncMaxPending(4000))
	if err != nil {
		return nil, err
	}
	var buf []byte
	now := time.Now()
	for i := range b.o.Events {
		buf = benchEvent(buf[:0], b.runID, i, b.o.Size, now)
		msg := &nats.Msg{Subject: subject, Data: slices.Clone(buf), Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, idPrefix+strconv.Itoa(i))
		// a loaded machine acknowledges slower than this loop publishes:
		// wait for room rather than fail the measurement
		if _, err := js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Minute)); err != nil {
			return nil, err
		}
	}
	return js, nil
}

func (b *bench) rawClickHouse(ctx context.Context) (float64, error) {
	oc := b.env.ClickHouse
	oc.Database = b.db + "_raw"
	conn, err := callsdb.Open(ctx, oc.Config)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if _, err := (&callsdb.Migrator{Conn: conn, Database: oc.Database}).Up(ctx); err != nil {
		return 0, err
	}
	if !b.o.Keep {
		defer b.dropDatabase(context.WithoutCancel(ctx), oc.Database)
	}
	norm := &transform.Normalizer{}
	calls := make([]schema.Call, b.o.Events)
	now := time.Now()
	for i := range calls {
		// a buffer per event: the call points into it
		c, err := norm.Normalize(ctx, benchEvent(nil, b.runID+"raw", i, b.o.Size, now))
		if err != nil {
			return 0, fmt.Errorf("raw clickhouse: normalize: %w", err)
		}
		calls[i] = *c
	}
	out := chsink.NewOutput(oc)
	if err := out.Connect(ctx); err != nil {
		return 0, err
	}
	defer out.Close()
	batch := b.env.ClickHouseBatch
	start := time.Now()
	var wg sync.WaitGroup
	var firstErr error
	var mu sync.Mutex
	for lo := 0; lo < len(calls); lo += batch {
		part := calls[lo:min(lo+batch, len(calls))]
		wg.Go(func() {
			if err := out.WriteBatch(ctx, part, ""); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	rate := float64(len(calls)) / time.Since(start).Seconds()
	b.say("raw        ClickHouse insert (calls + rollups): %.0f rows/s", rate)
	return rate, nil
}

func (b *bench) dropDatabase(ctx context.Context, db string) {
	conn, err := callsdb.Open(ctx, b.env.ClickHouse.Config)
	if err != nil {
		return
	}
	defer conn.Close()
	stmt := "DROP DATABASE IF EXISTS " + db
	if t := b.env.ClickHouse.Topology; t.Clustered() {
		stmt += " ON CLUSTER " + t.Cluster
	}
	if err := conn.Exec(ctx, stmt); err != nil {
		b.say("bench      could not drop the scratch database %s: %v", db, err)
	}
}

func (b *bench) report(r *Result) {
	b.say("")
	b.say("result     %d events of %d bytes on %d CPUs, sinks %s", r.Events, r.EventBytes, r.MachineCPUs, strings.Join(r.Sinks, ","))
	if r.Events == 0 {
		b.reportProxy(r.Proxy)
		b.reportProcesses(r.Processes)
		return
	}
	b.say("  accepted by the collector      %8.0f events/s", r.AcceptPerS)
	for _, s := range append([]string{"normalize"}, r.Sinks...) {
		b.say("  %-30s %8.0f events/s", s+" done", r.StagePerS[s])
	}
	b.say("  end to end (usage API)         %8.0f events/s   exact: %v", r.EndToEndPS, r.Exact)
	b.say("  every sink done                %8.0f events/s", r.AllSinksPS)
	if r.MemoryLimit != "" {
		b.say("  processes ran with GOMEMLIMIT=%s", r.MemoryLimit)
	}
	if r.Latency != nil {
		b.say("  latency at %.0f/s              p50 %.0f ms  p99 %.0f ms  max %.0f ms", r.Latency.RatePerS, r.Latency.P50MS, r.Latency.P99MS, r.Latency.MaxMS)
	}
	if r.RawJSPerS > 0 {
		b.say("  raw JetStream                  %8.0f events/s   (client CPU %.1f µs per event: make + publish + PubAck, consume + ack)", r.RawJSPerS, r.RawJSClientMicros)
		b.say("  raw ClickHouse insert          %8.0f rows/s", r.RawCHPerS)
		b.say("  ratio to the slower raw limit  %8.2f", r.RatioToRaw)
		if r.RawTopoPerS > 0 {
			b.say("  JetStream topology, no work    %8.0f events/s   (end to end is %.2f of it)", r.RawTopoPerS, r.EndToEndPS/r.RawTopoPerS)
		}
	}
	if r.PerCall != nil {
		b.say("  per call, throughput phase     JetStream ops   CPU µs   allocs   alloc bytes")
		unknown := func(v float64, f string) string {
			if v < 0 {
				return "?"
			}
			return fmt.Sprintf(f, v)
		}
		row := func(name string, c StageCost) {
			b.say("    %-28s %8.2f %11s %8s %13s", name, c.JSOpsPerCall, unknown(c.CPUMicros, "%.1f"), unknown(c.Allocs, "%.0f"), unknown(c.AllocBytes, "%.0f"))
		}
		for _, n := range costOrder(r.PerCall) {
			row(n, r.PerCall[n])
		}
		row("all", *r.Total)
		if r.NATSCPUMicros >= 0 {
			b.say("    %-28s %20.1f", "nats-server (not callpipe)", r.NATSCPUMicros)
		}
	}
	if m := r.Machine; m != nil {
		b.say("  machine, start to end to end  CPU µs per call (every process, %d CPUs)", r.MachineCPUs)
		for _, row := range machineRows(m) {
			b.say("    %-28s %9.1f", row.name, row.micros)
		}
		b.say("    %-28s %9.1f   (idle %.1f: %.0f%% of the CPUs' time busy)", "busy", m.BusyMicros, m.IdleMicros, 100*m.BusyMicros/(m.BusyMicros+m.IdleMicros))
		if m.BusyMicros > 0 && r.RawJSPerS > 0 {
			// the end-to-end rate had no CPU been idle: the most the
			// machine can give at these costs (from /proc/stat's own count
			// of CPUs, whatever this process's affinity)
			ceiling := r.EndToEndPS * (m.BusyMicros + m.IdleMicros) / m.BusyMicros
			b.say("    %-28s %9.0f calls/s (ratio %.2f), every CPU busy at these costs", "ceiling", ceiling, ceiling/r.RawJSPerS)
		}
	}
	b.reportProxy(r.Proxy)
	b.reportProcesses(r.Processes)
}

func (b *bench) reportProcesses(procs map[string]fleet.Usage) {
	names := make([]string, 0, len(procs))
	for n := range procs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		p := procs[n]
		b.say("  process %-12s  CPU %6.1f s  peak RSS %6.1f MB", n, p.CPUSeconds, p.PeakRSSMB)
	}
}

func (b *bench) reportProxy(p *ProxyResult) {
	if p == nil {
		return
	}
	b.say("  proxy at %.0f requests/s, %d clients (embeddings, open loop; %.1f%% of requests started > 1 ms late)", p.RatePerS, p.Clients, 100*p.LateShare)
	if p.Realtime {
		b.say("    clients, stand-in and proxies at real-time priority (--proxy-realtime): the pipeline could not delay them")
	}
	b.say("    %-34s %7s %7s %7s %7s   %s", "ms", "p50", "p90", "p99", "max", "proxy per request")
	row := func(name string, q Quantiles, tail string) {
		b.say("    %-34s %7.2f %7.2f %7.2f %7.2f   %s", name, q.P50MS, q.P90MS, q.P99MS, q.MaxMS, tail)
	}
	row(fmt.Sprintf("direct (%d)", p.Direct.Count), p.Direct, "")
	paths := []struct {
		name string
		pp   *ProxyPath
	}{{"proxy", &p.Proxy}}
	if p.Baseline != nil {
		paths = append(paths, struct {
			name string
			pp   *ProxyPath
		}{"baseline", p.Baseline})
		b.say("    (baseline: the proxy of %s, in the same turns)", p.Baseline.Binary)
	}
	for _, x := range paths {
		row(fmt.Sprintf("%s (%d)", x.name, x.pp.Latency.Count), x.pp.Latency,
			fmt.Sprintf("CPU %.1f µs, %.0f allocs, %.0f B", x.pp.CPUMicros, x.pp.Allocs, x.pp.AllocBytes))
		row("  added by "+x.name, x.pp.Added, "")
	}
	b.say("    errors %d direct, %d proxy; calls captured (usage API) %d of %d", p.DirectErrors, p.Proxy.Errors, p.Captured, p.Sent)
	if len(p.Pipeline) > 0 {
		var parts []string
		for _, role := range slices.Sorted(maps.Keys(p.Pipeline)) {
			if c := p.Pipeline[role]; c.CPUMicros >= 0 {
				parts = append(parts, fmt.Sprintf("%s %.0f", role, c.CPUMicros))
			}
		}
		b.say("    pipeline CPU µs per call at this rate: %s", strings.Join(parts, ", "))
	}
}

// ownCPU is the CPU time this process has used (user + system).
func ownCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
