package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// TestBenchCommand runs `callpipe bench` small (its own nats-server, the
// test's ClickHouse and MinIO, a local Langfuse receiver) and checks what it
// reports: every event through every sink exactly, a rate for each stage, a
// latency phase, CPU and peak RSS for each process, the raw limits and the
// ratio computed from them. Speed is not asserted (benchmarks, not tests).
func TestBenchCommand(t *testing.T) {
	const events, size = 3000, 700
	b := runBench(t, "--events", fmt.Sprint(events), "--size", fmt.Sprint(size),
		"--clients", "2", "--batch", "250", "--latency", "3s")
	var r struct {
		Events     int                `json:"events"`
		EventBytes int                `json:"event_bytes"`
		Sinks      []string           `json:"sinks"`
		AcceptPerS float64            `json:"accept_events_per_s"`
		StagePerS  map[string]float64 `json:"stage_events_per_s"`
		EndToEnd   float64            `json:"end_to_end_events_per_s"`
		AllSinks   float64            `json:"all_sinks_events_per_s"`
		Exact      bool               `json:"exact"`
		Latency    *struct {
			Events int     `json:"events"`
			P50    float64 `json:"p50_ms"`
			P99    float64 `json:"p99_ms"`
		} `json:"latency"`
		Processes map[string]struct {
			CPU float64 `json:"cpu_seconds"`
			RSS float64 `json:"peak_rss_mb"`
		} `json:"processes"`
		RawJS       float64 `json:"raw_jetstream_events_per_s"`
		RawCH       float64 `json:"raw_clickhouse_rows_per_s"`
		RawTopo     float64 `json:"raw_jetstream_topology_events_per_s"`
		RawBatches  uint64  `json:"raw_jetstream_topology_batched_messages"`
		Ratio       float64 `json:"ratio_to_raw_limit"`
		MemoryLimit string  `json:"memory_limit"`
		PerCall     map[string]struct {
			Ops    float64 `json:"jetstream_ops_per_call"`
			CPU    float64 `json:"cpu_us_per_call"`
			Allocs float64 `json:"allocs_per_call"`
		} `json:"per_call"`
		Total *struct {
			Ops float64 `json:"jetstream_ops_per_call"`
			CPU float64 `json:"cpu_us_per_call"`
		} `json:"per_call_total"`
		Machine *struct {
			Processes map[string]float64 `json:"processes_cpu_us_per_call"`
			Busy      float64            `json:"busy_cpu_us_per_call"`
			Idle      float64            `json:"idle_cpu_us_per_call"`
		} `json:"machine"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("bench JSON: %v\n%s", err, b)
	}
	if r.Events != events || r.EventBytes != size || !r.Exact {
		t.Errorf("events %d of %d bytes, exact %v; want %d of %d, exact", r.Events, r.EventBytes, r.Exact, events, size)
	}
	for _, s := range []string{"clickhouse", "langfuse", "archive"} {
		if !slices.Contains(r.Sinks, s) {
			t.Errorf("sinks %v: %s missing", r.Sinks, s)
		}
	}
	for _, s := range append([]string{"normalize"}, r.Sinks...) {
		if r.StagePerS[s] <= 0 {
			t.Errorf("stage %s: rate %v", s, r.StagePerS[s])
		}
	}
	if r.AcceptPerS <= 0 || r.EndToEnd <= 0 || r.EndToEnd > r.AcceptPerS*1.0001 {
		t.Errorf("accepted %v/s, end to end %v/s: end to end cannot beat acceptance", r.AcceptPerS, r.EndToEnd)
	}
	// the usage API shows the calls once the ClickHouse sink has them, before
	// or when the last sink is done
	if r.AllSinks <= 0 || r.AllSinks > r.EndToEnd*1.0001 || r.EndToEnd > r.StagePerS["clickhouse"]*1.0001 {
		t.Errorf("end to end %v/s, every sink done %v/s, clickhouse done %v/s: want every sink <= end to end <= clickhouse", r.EndToEnd, r.AllSinks, r.StagePerS["clickhouse"])
	}
	if r.Latency == nil || r.Latency.Events == 0 || r.Latency.P50 <= 0 || r.Latency.P99 < r.Latency.P50 {
		t.Errorf("latency phase: %+v", r.Latency)
	}
	for _, p := range []string{"collect", "normalize", "clickhouse", "langfuse", "archive", "serve"} {
		if u, ok := r.Processes[p]; !ok || u.CPU <= 0 || u.RSS <= 0 {
			t.Errorf("process %s: %+v (present %v)", p, u, ok)
		}
	}
	if r.RawJS <= 0 || r.RawCH <= 0 || r.RawTopo <= 0 {
		t.Errorf("raw limits: JetStream %v, ClickHouse %v, topology %v", r.RawJS, r.RawCH, r.RawTopo)
	}
	// the topology phase carries the events in batches, as normalize does
	if most := uint64(events); r.RawBatches < (most+bus.MaxBatchCalls-1)/bus.MaxBatchCalls || r.RawBatches >= most {
		t.Errorf("topology phase: %d events in %d batched messages; want batches of up to %d", events, r.RawBatches, bus.MaxBatchCalls)
	}
	if want := r.EndToEnd / min(r.RawJS, r.RawCH); math.Abs(r.Ratio-want) > 1e-9*want {
		t.Errorf("ratio %v; end to end / slower raw limit is %v", r.Ratio, want)
	}
	// Per-call costs: the collector publishes each call once (no duplicates
	// in this run), every stage consumes, each role spends CPU and allocates.
	sumOps, sumCPU := 0.0, 0.0
	for _, p := range []string{"collect", "normalize", "clickhouse", "langfuse", "archive"} {
		c, ok := r.PerCall[p]
		if !ok || c.Ops <= 0 || c.CPU <= 0 || c.Allocs <= 0 {
			t.Errorf("per call %s: %+v (present %v)", p, c, ok)
		}
		sumOps += c.Ops
		sumCPU += c.CPU
	}
	if c := r.PerCall["collect"]; c.Ops != 1 {
		t.Errorf("collector: %v JetStream ops per call, want 1 (one publish each)", c.Ops)
	}
	if c := r.PerCall["normalize"]; c.Ops < 1 {
		t.Errorf("normalize: %v JetStream ops per call, want at least one delivery of each call", c.Ops)
	}
	if r.Total == nil || math.Abs(r.Total.Ops-sumOps) > 1e-9 || math.Abs(r.Total.CPU-sumCPU) > 1e-6 {
		t.Errorf("per-call total %+v, want the sum of the roles: ops %v, CPU %v", r.Total, sumOps, sumCPU)
	}
	// Every process's CPU until the usage API showed the calls: the
	// pipeline's roles, the scratch nats-server and this bench (its load)
	// each spent some, and together no more than the machine was busy.
	if m := r.Machine; m == nil {
		t.Error("no machine-wide CPU accounting")
	} else {
		sum := 0.0
		for name, us := range m.Processes {
			if us <= 0 {
				t.Errorf("machine: process %s spent %v µs per call", name, us)
			}
			sum += us
		}
		for _, name := range []string{"callpipe roles", "nats-server", "bench"} {
			if m.Processes[name] <= 0 {
				t.Errorf("machine: %s spent %v µs per call (processes %v)", name, m.Processes[name], m.Processes)
			}
		}
		// /proc's ticks are 10 ms: each process's sum may round up by two
		if slack := float64(len(m.Processes)) * 2 * 1e4 / float64(events); m.Busy <= 0 || m.Idle < 0 || sum > m.Busy+slack {
			t.Errorf("machine: busy %v, idle %v µs per call, processes %v (sum %v)", m.Busy, m.Idle, m.Processes, sum)
		}
	}
	if r.MemoryLimit != "192MiB" {
		t.Errorf("memory limit %q, want the default 192MiB", r.MemoryLimit)
	}
}

// TestBenchProxyPhase runs `callpipe bench --events 0 --proxy` small, with a
// baseline proxy (the same binary) in the same turns, and checks what it
// reports: every path's requests answered, quantiles in order, the added
// latency computed from the two paths, the proxies' CPU per request, and
// every call the proxies answered visible in the usage API. Latency values
// are not asserted (benchmarks, not tests).
func TestBenchProxyPhase(t *testing.T) {
	bin := testkit.Binary(t)
	args := []string{"--events", "0", "--proxy", "--proxy-rate", "100", "--proxy-clients", "2",
		"--proxy-duration", "2s", "--proxy-slice", "500ms", "--proxy-baseline", bin}
	realtime := os.Geteuid() == 0 // SCHED_FIFO needs CAP_SYS_NICE
	if realtime {
		args = append(args, "--proxy-realtime")
	}
	b := runBench(t, args...)
	type path struct {
		Binary  string             `json:"binary"`
		Latency map[string]float64 `json:"latency"`
		Added   map[string]float64 `json:"added"`
		CPU     float64            `json:"cpu_us_per_request"`
		Allocs  float64            `json:"allocs_per_request"`
		Errors  int                `json:"errors"`
	}
	var r struct {
		Events int `json:"events"`
		Proxy  *struct {
			Rate     float64            `json:"rate_per_s"`
			Clients  int                `json:"clients"`
			Direct   map[string]float64 `json:"direct"`
			Proxy    path               `json:"proxy"`
			Baseline *path              `json:"baseline"`
			Late     float64            `json:"late_share"`
			Realtime bool               `json:"realtime"`
			Sent     int64              `json:"sent"`
			Captured int64              `json:"captured"`
		} `json:"proxy"`
		Processes map[string]struct {
			CPU float64 `json:"cpu_seconds"`
		} `json:"processes"`
		PerCall map[string]any `json:"per_call"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("bench JSON: %v\n%s", err, b)
	}
	p := r.Proxy
	if r.Events != 0 || r.PerCall != nil || p == nil {
		t.Fatalf("events %d, per-call costs %v, proxy %+v: want the proxy phase only", r.Events, r.PerCall, p)
	}
	if p.Rate != 100 || p.Clients != 2 || p.Late < 0 || p.Late > 1 || p.Realtime != realtime {
		t.Errorf("rate %v, clients %d, late share %v, real-time %v (want %v)", p.Rate, p.Clients, p.Late, p.Realtime, realtime)
	}
	ordered := func(name string, q map[string]float64) {
		if q["count"] < 150 || q["p50_ms"] <= 0 || q["p50_ms"] > q["p90_ms"] || q["p90_ms"] > q["p99_ms"] || q["p99_ms"] > q["max_ms"] {
			t.Errorf("%s: %v, want about 200 requests (100/s for 2 s) and p50 ≤ p90 ≤ p99 ≤ max", name, q)
		}
	}
	ordered("direct", p.Direct)
	for _, pp := range []*path{&p.Proxy, p.Baseline} {
		if pp == nil {
			t.Fatal("no baseline in the result")
		}
		ordered("proxy "+pp.Binary, pp.Latency)
		for _, k := range []string{"p50_ms", "p90_ms", "p99_ms", "max_ms"} {
			if want := pp.Latency[k] - p.Direct[k]; math.Abs(pp.Added[k]-want) > 1e-9 {
				t.Errorf("proxy %s: added %s %v, want proxied − direct = %v", pp.Binary, k, pp.Added[k], want)
			}
		}
		if pp.CPU <= 0 || pp.Allocs <= 0 || pp.Errors != 0 {
			t.Errorf("proxy %s: CPU %v µs, %v allocs per request, %d errors", pp.Binary, pp.CPU, pp.Allocs, pp.Errors)
		}
	}
	if p.Baseline.Binary != bin {
		t.Errorf("baseline binary %q, want %q", p.Baseline.Binary, bin)
	}
	// warm-up and measured requests of both proxies, all answered
	if min := int64(p.Proxy.Latency["count"] + p.Baseline.Latency["count"]); p.Sent < min || p.Captured != p.Sent {
		t.Errorf("sent %d (at least %d), captured %d: every call a proxy answered must reach the usage API", p.Sent, min, p.Captured)
	}
	if u, ok := r.Processes["proxy"]; !ok || u.CPU <= 0 {
		t.Errorf("process proxy: %+v (present %v)", u, ok)
	}
}

// runBench runs `callpipe bench args...` against the test's ClickHouse,
// MinIO and Redis (it starts its own nats-server) and returns its --json.
func runBench(t *testing.T, args ...string) []byte {
	t.Helper()
	ch := harness.ClickHouse(t)
	s3 := harness.S3(t)
	redisAddr := harness.Redis(t)
	harness.NATS(t) // the services are up; bench starts its own scratch nats-server
	dir := t.TempDir()
	jsonOut := filepath.Join(dir, "bench.json")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testkit.Binary(t), append(append([]string{"bench"}, args...), "--json", jsonOut, "--dir", dir)...)
	cmd.Env = append(os.Environ(),
		"CALLPIPE_CLICKHOUSE_ADDR="+ch.Native,
		"CALLPIPE_S3_ENDPOINT="+s3.Endpoint,
		"CALLPIPE_S3_ACCESS_KEY="+s3.AccessKey,
		"CALLPIPE_S3_SECRET_KEY="+s3.SecretKey,
		"CALLPIPE_S3_BUCKET=bench-it",
		"CALLPIPE_REDIS_ADDR="+redisAddr,
	)
	out, err := cmd.CombinedOutput()
	t.Logf("callpipe bench %v:\n%s", args, out)
	if err != nil {
		t.Fatalf("bench: %v", err)
	}
	b, err := os.ReadFile(jsonOut)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
