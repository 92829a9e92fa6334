package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/callpipe/callpipe/internal/fleet"
	"github.com/callpipe/callpipe/tools/workload"
)

// ProxyOptions are the flags of the proxy phase (`callpipe bench --proxy`).
type ProxyOptions struct {
	Rate     int           // requests per second on each path
	Clients  int           // concurrent clients (connections and workers) on each path
	Duration time.Duration // measured time on each path
	Slice    time.Duration // the paths take turns in slices this long
	// Baseline is another callpipe binary (an older build) whose proxy is
	// measured beside this one's, in the same turns: a before/after under
	// the same load. Empty: none.
	Baseline string
	// Pprof runs the proxy with --pprof and saves a CPU profile of the
	// phase and its allocations to <dir>/proxy.cpu.pprof and proxy.allocs.pprof.
	Pprof bool
	// Realtime runs this process (the clients and the stand-in upstream)
	// and each proxy at real-time priority (SCHED_FIFO) during the measured
	// turns: the pipeline still runs beside them but cannot hold a CPU they
	// wait for, so what the proxy adds is its own work and its hops, not
	// its waits for the machine. Needs CAP_SYS_NICE.
	Realtime bool
}

// ProxyResult is the proxy phase's answer: the same request at the same
// fixed rate, straight to the upstream and through `callpipe proxy`.
type ProxyResult struct {
	RatePerS float64   `json:"rate_per_s"`
	Clients  int       `json:"clients"`
	Direct   Quantiles `json:"direct"`
	Proxy    ProxyPath `json:"proxy"`
	// Baseline is the --proxy-baseline binary's proxy, measured in the same turns.
	Baseline *ProxyPath `json:"baseline,omitempty"`
	// Realtime: the clients, the stand-in and the proxies ran at
	// real-time priority (ProxyOptions.Realtime).
	Realtime bool `json:"realtime,omitempty"`
	// LateShare is the share of requests a client started more than 1 ms
	// after their scheduled time (all clients busy, or the machine slow to
	// run the generator): near 0, the load was the open loop it should be.
	LateShare    float64 `json:"late_share"`
	DirectErrors int     `json:"direct_errors"`
	// Sent is the calls the proxies answered, Captured how many of them the
	// usage API shows after the phase (the pipeline ran throughout).
	Sent     int64 `json:"sent"`
	Captured int64 `json:"captured"`
	// Pipeline is each pipeline role's CPU and allocations per call the
	// proxies answered in the measured turns: what a stream of calls at
	// this rate costs the stages, as against the throughput phase's full
	// batches.
	Pipeline map[string]StageCost `json:"pipeline_per_call,omitempty"`
}

// ProxyPath is one proxy's latency and cost.
type ProxyPath struct {
	Binary  string    `json:"binary,omitempty"`
	Latency Quantiles `json:"latency"`
	// Added is Latency minus the direct path's, quantile by quantile.
	Added Quantiles `json:"added"`
	// CPUMicros, Allocs, AllocBytes: the proxy process's CPU and heap
	// allocations per request it served in the measured turns (forwarding,
	// capture and publishing), from its /metrics; -1 when unknown.
	CPUMicros  float64 `json:"cpu_us_per_request"`
	Allocs     float64 `json:"allocs_per_request"`
	AllocBytes float64 `json:"alloc_bytes_per_request"`
	Errors     int     `json:"errors"`
}

// Quantiles of a latency distribution, in milliseconds.
type Quantiles struct {
	Count int     `json:"count"`
	P50MS float64 `json:"p50_ms"`
	P90MS float64 `json:"p90_ms"`
	P99MS float64 `json:"p99_ms"`
	MaxMS float64 `json:"max_ms"`
}

// quantiles of lat (sorted in place): for each p the nearest-rank value,
// the smallest sample with at least p of the samples at or below it.
func quantiles(lat []time.Duration) Quantiles {
	if len(lat) == 0 {
		return Quantiles{}
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }
	rank := func(p float64) time.Duration {
		// ceil(p·n) as an integer: p·n in float64 may land a hair above a
		// whole number (0.9·10 = 9.000000000000002)
		k := (int(p*1000)*len(lat) + 999) / 1000
		return lat[min(max(k-1, 0), len(lat)-1)]
	}
	return Quantiles{Count: len(lat), P50MS: ms(rank(0.50)), P90MS: ms(rank(0.90)), P99MS: ms(rank(0.99)), MaxMS: ms(lat[len(lat)-1])}
}

// added is b − a for every quantile (Count is b's).
func added(a, b Quantiles) Quantiles {
	return Quantiles{Count: b.Count, P50MS: b.P50MS - a.P50MS, P90MS: b.P90MS - a.P90MS, P99MS: b.P99MS - a.P99MS, MaxMS: b.MaxMS - a.MaxMS}
}

// sliceStats is what a path's attacks gave.
type sliceStats struct {
	latencies []time.Duration // of the requests answered 2xx
	late      int             // started more than lateAfter after schedule
	errors    int
	sent      int
}

// lateAfter is how far behind its schedule a request may start before it
// counts as late: a closed loop shows as many late starts.
const lateAfter = time.Millisecond

// add counts one result of an attack that began at began at rate per second.
func (st *sliceStats) add(r *vegeta.Result, began time.Time, rate int) {
	st.sent++
	// vegeta's constant pacer sends hit n (from 0) at (n+1)·interval
	due := began.Add(time.Duration(r.Seq+1) * (time.Second / time.Duration(rate)))
	if r.Timestamp.Sub(due) > lateAfter {
		st.late++
	}
	if r.Error != "" || r.Code < 200 || r.Code > 299 {
		st.errors++
		return
	}
	st.latencies = append(st.latencies, r.Latency)
}

func (st *sliceStats) merge(o sliceStats) {
	st.latencies = append(st.latencies, o.latencies...)
	st.late += o.late
	st.errors += o.errors
	st.sent += o.sent
}

// loadPath is one path of the phase: its clients, with at most Clients
// connections kept across turns (a vegeta attacker ends for good after one
// attack, its client does not), and what its turns gave.
type loadPath struct {
	name    string // "direct", or the proxy's fleet role
	target  vegeta.Target
	http    *http.Client
	clients int
	stats   sliceStats
}

func newLoadPath(name, base string, clients int) *loadPath {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost, t.MaxConnsPerHost = clients, clients
	return &loadPath{name: name, target: proxyTarget(base), clients: clients,
		http: &http.Client{Transport: t, Timeout: 30 * time.Second}}
}

// attack sends the path's request at rate per second for d with an open
// loop (vegeta's constant pacer: a request is due every 1/rate whatever the
// earlier ones are doing), from the path's concurrent clients.
func (lp *loadPath) attack(rate int, d time.Duration) sliceStats {
	n := uint64(lp.clients)
	a := vegeta.NewAttacker(vegeta.Workers(n), vegeta.MaxWorkers(n), vegeta.MaxBody(1<<20), vegeta.Client(lp.http))
	pacer := vegeta.ConstantPacer{Freq: rate, Per: time.Second}
	began := time.Now()
	var st sliceStats
	for r := range a.Attack(vegeta.NewStaticTargeter(lp.target), pacer, d, lp.name) {
		st.add(r, began, rate)
	}
	return st
}

// proxyTarget is the measured call: an embedding of a short text, as the
// issue's measurement used (the stand-in answers it without delay, so the
// difference between the paths is the proxy's).
func proxyTarget(base string) vegeta.Target {
	body := `{"model":"bge-m3","input":"` + strings.TrimSpace(strings.Repeat("the pipeline stores every call once ", 12)) + `"}`
	return vegeta.Target{Method: http.MethodPost, URL: base + "/v1/embeddings", Body: []byte(body),
		Header: http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer sk-bench"}}}
}

// turns runs each path for slice at a time, in rotating order, until each
// has run for total: the machine's other load falls on every path alike,
// and no path always follows the same other one.
func turns(paths []*loadPath, total, slice time.Duration, run func(p *loadPath, d time.Duration)) {
	for i := 0; time.Duration(i)*slice < total; i++ {
		d := min(slice, total-time.Duration(i)*slice)
		for j := range paths {
			run(paths[(i+j)%len(paths)], d)
		}
	}
}

// startedProxy is a proxy process of the phase.
type startedProxy struct {
	role, addr, pprof string
	fleet             *fleet.Fleet
	path              *loadPath
}

// proxyPhase measures what `callpipe proxy` adds to a call's latency: it
// starts the demo's built-in Xinference stand-in in this process and a proxy
// process in front of it that publishes to the running pipeline (and one of
// the baseline binary, if any), then sends the same request at the same
// fixed rate straight to the stand-in and through each proxy, in turns.
func (b *bench) proxyPhase(ctx context.Context) (*ProxyResult, error) {
	o := b.o.Proxy
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench proxy: upstream: %w", err)
	}
	// No FirstToken delay: a sleep's jitter would only add noise to both
	// paths, and with 8 clients a 15 ms answer would cap an open loop at
	// ~530/s.
	srv := &http.Server{Handler: &workload.Upstream{Models: workload.DefaultModels()}, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	upstream := "http://" + ln.Addr().String()

	proxies := []*startedProxy{{role: "proxy", fleet: b.fleet}}
	if o.Baseline != "" {
		f := &fleet.Fleet{Dir: b.fleet.Dir, ConfigFile: b.fleet.ConfigFile, Env: b.fleet.Env, Out: io.Discard, Binary: o.Baseline}
		proxies = append(proxies, &startedProxy{role: "proxy-baseline", fleet: f})
	}
	paths := []*loadPath{newLoadPath("direct", upstream, o.Clients)}
	for _, px := range proxies {
		if px.addr, err = fleet.FreeListen(); err != nil {
			return nil, err
		}
		b.addrs[px.role] = px.addr
		b.procs[px.role] = []string{px.role}
		spool := filepath.Join(b.o.Dir, px.role+"-spool-"+b.runID)
		defer os.RemoveAll(spool)
		args := []string{"proxy", "--proxy.listen", px.addr, "--proxy.upstream", upstream, "--proxy.spool_dir", spool}
		if o.Pprof {
			if px.pprof, err = fleet.FreeListen(); err != nil {
				return nil, err
			}
			args = append(args, "--pprof", px.pprof)
		}
		if err := px.fleet.Start(px.role, args...); err != nil {
			return nil, err
		}
		if px.fleet != b.fleet {
			defer func() { _, _ = px.fleet.Stop() }()
		}
		if err := px.fleet.WaitReady(ctx, px.role, px.addr); err != nil {
			return nil, err
		}
		px.path = newLoadPath(px.role, "http://"+px.addr, o.Clients)
		paths = append(paths, px.path)
	}
	wide0, wide1 := time.Now().Add(-24*time.Hour), time.Now().Add(24*time.Hour)
	calls0, err := b.usageCalls(ctx, wide0, wide1)
	if err != nil {
		return nil, fmt.Errorf("bench proxy: usage API: %w", err)
	}
	b.say("proxy      %d requests/s, %d clients, %s per path in turns of %s; stand-in Xinference %s", o.Rate, o.Clients, o.Duration, o.Slice, upstream)

	// Warm-up: connections, the proxies' upstream pools, their heaps.
	var sent int64
	for _, lp := range paths {
		st := lp.attack(o.Rate, min(time.Second, o.Duration/4))
		if st.errors > 0 {
			return nil, fmt.Errorf("bench proxy: warm-up: %d of %d requests to %s failed", st.errors, st.sent, lp.name)
		}
		if lp.name != "direct" {
			sent += int64(st.sent)
		}
	}

	roles := make([]string, len(proxies))
	for i, px := range proxies {
		roles[i] = px.role
	}
	stages := b.pipelineRoles()
	p0 := b.sampleProcs(ctx, append(slices.Clone(roles), stages...))
	profDone := make(chan error, 1)
	if o.Pprof {
		secs := int((time.Duration(len(paths))*o.Duration + time.Second - 1) / time.Second)
		go func() {
			profDone <- saveProfile(ctx, proxies[0].pprof, "profile?seconds="+fmt.Sprint(secs), filepath.Join(b.o.Dir, "proxy.cpu.pprof"))
		}()
	}
	release := func() {}
	if o.Realtime {
		pids := []int{os.Getpid()}
		for _, px := range proxies {
			pids = append(pids, px.fleet.Pid(px.role))
		}
		if release, err = holdRealtime(ctx, pids); err != nil {
			return nil, err
		}
	}
	turns(paths, o.Duration, o.Slice, func(lp *loadPath, d time.Duration) {
		if ctx.Err() == nil {
			lp.stats.merge(lp.attack(o.Rate, d))
		}
	})
	release()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	p1 := b.sampleProcs(ctx, append(slices.Clone(roles), stages...))
	if o.Pprof {
		err := <-profDone
		if err == nil {
			err = saveProfile(ctx, proxies[0].pprof, "allocs", filepath.Join(b.o.Dir, "proxy.allocs.pprof"))
		}
		if err != nil {
			b.say("proxy      profiles not saved: %v", err)
		} else {
			b.say("proxy      CPU profile of the phase and allocations: %s, %s", filepath.Join(b.o.Dir, "proxy.cpu.pprof"), filepath.Join(b.o.Dir, "proxy.allocs.pprof"))
		}
	}

	direct := paths[0].stats
	r := &ProxyResult{RatePerS: float64(o.Rate), Clients: o.Clients, Direct: quantiles(direct.latencies), DirectErrors: direct.errors, Realtime: o.Realtime}
	late, all := direct.late, direct.sent
	var failed, answered int // answered: by the proxies in the measured turns
	for i, px := range proxies {
		st := px.path.stats
		late, all, failed = late+st.late, all+st.sent, failed+st.errors
		sent += int64(st.sent - st.errors)
		answered += st.sent - st.errors
		pp := ProxyPath{Latency: quantiles(st.latencies), Errors: st.errors, CPUMicros: -1, Allocs: -1, AllocBytes: -1}
		pp.Added = added(r.Direct, pp.Latency)
		if a, ok := p0[px.role]; ok {
			if z, ok := p1[px.role]; ok && st.sent > 0 {
				c := procCost(a, z, float64(st.sent))
				pp.CPUMicros, pp.Allocs, pp.AllocBytes = c.CPUMicros, c.Allocs, c.AllocBytes
			}
		}
		if i == 0 {
			r.Proxy = pp
		} else {
			pp.Binary = o.Baseline
			r.Baseline = &pp
		}
	}
	if answered > 0 {
		r.Pipeline = map[string]StageCost{}
		for _, role := range stages {
			if a, ok := p0[role]; ok {
				if z, ok := p1[role]; ok {
					r.Pipeline[role] = procCost(a, z, float64(answered))
				}
			}
		}
	}
	r.Sent = sent
	if all > 0 {
		r.LateShare = float64(late) / float64(all)
	}
	// Every call a proxy answered reaches the usage API through the
	// running pipeline.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		calls, err := b.usageCalls(ctx, wide0, wide1)
		if err == nil {
			r.Captured = calls - calls0
		}
		if r.Captured >= sent || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	b.say("proxy      added p50 %.2f ms p99 %.2f ms; captured %d of %d", r.Proxy.Added.P50MS, r.Proxy.Added.P99MS, r.Captured, r.Sent)
	if failed+direct.errors > 0 {
		return r, fmt.Errorf("bench proxy: %d requests failed", failed+direct.errors)
	}
	return r, nil
}

// profileRoles saves a CPU profile of each role started with --pprof, over
// the next ProfileSeconds, to <dir>/<role>.cpu.pprof, and then the role's
// allocations since it started to <dir>/<role>.allocs.pprof; the returned
// func waits for them and says where they are.
func (b *bench) profileRoles(ctx context.Context) func() {
	if b.o.ProfileSeconds <= 0 {
		return func() {}
	}
	type saved struct {
		path string
		err  error
	}
	done := make(chan saved, len(b.pprof))
	for role, addr := range b.pprof {
		path := filepath.Join(b.o.Dir, role+".cpu.pprof")
		go func() {
			err := saveProfile(ctx, addr, fmt.Sprintf("profile?seconds=%d", b.o.ProfileSeconds), path)
			if err == nil {
				err = saveProfile(ctx, addr, "allocs", filepath.Join(b.o.Dir, role+".allocs.pprof"))
			}
			done <- saved{path, err}
		}()
	}
	return func() {
		for range b.pprof {
			if s := <-done; s.err != nil {
				b.say("profile    %s: %v", s.path, s.err)
			} else {
				b.say("profile    %s", s.path)
			}
		}
	}
}

// saveProfile saves the /debug/pprof/<what> of the pprof server at addr.
func saveProfile(ctx context.Context, addr, what, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/"+what, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return fmt.Errorf("proxy profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("proxy profile %s: %s", what, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.ReadFrom(resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("proxy profile %s: %w", what, err)
	}
	return f.Close()
}
