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

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// TestBenchCommand runs `callpipe bench` small (its own nats-server, the
// test's ClickHouse and MinIO, a local Langfuse receiver) and checks what it
// reports: every event through every sink exactly, a rate for each stage, a
// latency phase, CPU and peak RSS for each process, the raw limits and the
// ratio computed from them. Speed is not asserted (benchmarks, not tests).
func TestBenchCommand(t *testing.T) {
	ch := harness.ClickHouse(t)
	s3 := harness.S3(t)
	redisAddr := harness.Redis(t)
	harness.NATS(t) // the services are up; bench starts its own scratch nats-server
	bin := testkit.Binary(t)
	dir := t.TempDir()
	jsonOut := filepath.Join(dir, "bench.json")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const events, size = 3000, 700
	cmd := exec.CommandContext(ctx, bin, "bench", "--events", fmt.Sprint(events), "--size", fmt.Sprint(size),
		"--clients", "2", "--batch", "250", "--latency", "3s", "--json", jsonOut, "--dir", dir)
	cmd.Env = append(os.Environ(),
		"CALLPIPE_CLICKHOUSE_ADDR="+ch.Native,
		"CALLPIPE_S3_ENDPOINT="+s3.Endpoint,
		"CALLPIPE_S3_ACCESS_KEY="+s3.AccessKey,
		"CALLPIPE_S3_SECRET_KEY="+s3.SecretKey,
		"CALLPIPE_S3_BUCKET=bench-it",
		"CALLPIPE_REDIS_ADDR="+redisAddr,
	)
	out, err := cmd.CombinedOutput()
	t.Logf("callpipe bench:\n%s", out)
	if err != nil {
		t.Fatalf("bench: %v", err)
	}
	var r struct {
		Events     int                `json:"events"`
		EventBytes int                `json:"event_bytes"`
		Sinks      []string           `json:"sinks"`
		AcceptPerS float64            `json:"accept_events_per_s"`
		StagePerS  map[string]float64 `json:"stage_events_per_s"`
		EndToEnd   float64            `json:"end_to_end_events_per_s"`
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
	}
	b, err := os.ReadFile(jsonOut)
	if err != nil {
		t.Fatal(err)
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
	if r.MemoryLimit != "192MiB" {
		t.Errorf("memory limit %q, want the default 192MiB", r.MemoryLimit)
	}
}
