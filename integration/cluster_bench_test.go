//go:build cluster

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// TestClusterBench runs `callpipe bench --cluster` small against the cluster
// stack: 1 and 2 processes of each role (a scratch 3-server JetStream with R3
// streams, the stack's ClickHouse cluster and MinIO), after a single-node
// phase when the single-node stack of this checkout is up too (as in
// `go tool task test`). It checks the report: every phase exact, the
// processes each phase ran, a cost for every role, and ratios to the first
// phase. Speed is not asserted.
func TestClusterBench(t *testing.T) {
	const events = 2000
	cl := harness.Cluster(t)
	single := singleNodeEnv(t)
	dir := t.TempDir()
	jsonOut := filepath.Join(dir, "bench.json")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testkit.Binary(t), "bench", "--cluster", "--cluster-replicas", "1,2",
		"--cluster-single-env", single, "--events", fmt.Sprint(events), "--size", "600", "--clients", "2", "--batch", "250",
		"--json", jsonOut, "--dir", dir)
	cmd.Env = append(os.Environ(), "CALLPIPE_S3_BUCKET=cluster-bench-it")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("callpipe bench --cluster (%s):\n%s", time.Since(start).Round(time.Second), out)
	if err != nil {
		t.Fatalf("bench --cluster: %v", err)
	}
	b, err := os.ReadFile(jsonOut)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Events   int    `json:"events"`
		Cluster  string `json:"clickhouse_cluster"`
		Nodes    int    `json:"nats_nodes"`
		Baseline string `json:"baseline"`
		Phases   []struct {
			Name      string  `json:"name"`
			Replicas  int     `json:"replicas"`
			NATSNodes int     `json:"nats_nodes"`
			CHCluster string  `json:"clickhouse_cluster"`
			EndToEnd  float64 `json:"end_to_end_events_per_s"`
			Exact     bool    `json:"exact"`
			Langfuse  int64   `json:"langfuse_events"`
			PerCall   map[string]struct {
				Ops float64 `json:"jetstream_ops_per_call"`
				CPU float64 `json:"cpu_us_per_call"`
			} `json:"per_call"`
			Total struct {
				CPU float64 `json:"cpu_us_per_call"`
			} `json:"per_call_total"`
			Roles map[string]struct {
				Processes int     `json:"processes"`
				CPU       float64 `json:"cpu_seconds"`
				RSS       float64 `json:"peak_rss_mb_per_process"`
			} `json:"roles"`
			NATSCPU  float64    `json:"nats_servers_cpu_us_per_call"`
			Ratio    float64    `json:"ratio_to_baseline"`
			CPURatio float64    `json:"cpu_ratio_to_baseline"`
			Load     [2]float64 `json:"load_avg_1m"`
		} `json:"phases"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("bench JSON: %v\n%s", err, b)
	}
	if r.Events != events || r.Cluster != cl.Cluster || r.Nodes != 3 {
		t.Errorf("events %d, cluster %q, NATS servers %d; want %d, %q, 3", r.Events, r.Cluster, r.Nodes, events, cl.Cluster)
	}
	want := []string{"cluster x1", "cluster x2"}
	if single != "none" {
		want = append([]string{"single-node"}, want...)
	}
	if len(r.Phases) != len(want) || r.Baseline != want[0] {
		t.Fatalf("phases %+v with baseline %q; want %v", r.Phases, r.Baseline, want)
	}
	for i, p := range r.Phases {
		if p.Name != want[i] || !p.Exact || p.EndToEnd <= 0 {
			t.Errorf("phase %d: %s, exact %v, %v/s; want %s, exact", i, p.Name, p.Exact, p.EndToEnd, want[i])
		}
		clustered := p.Name != "single-node"
		if clustered != (p.NATSNodes == 3 && p.CHCluster == cl.Cluster) {
			t.Errorf("%s: %d NATS servers, ClickHouse cluster %q", p.Name, p.NATSNodes, p.CHCluster)
		}
		if p.Langfuse < 2*events {
			t.Errorf("%s: the Langfuse receiver got %d events, want >= %d (trace + generation per call)", p.Name, p.Langfuse, 2*events)
		}
		for _, role := range []string{"collect", "normalize", "clickhouse", "langfuse", "archive"} {
			c, ok := p.PerCall[role]
			if !ok || c.CPU <= 0 || c.Ops <= 0 {
				t.Errorf("%s: %s costs %+v (present %v), want CPU and JetStream ops per call > 0", p.Name, role, c, ok)
			}
			if u := p.Roles[role]; u.Processes != p.Replicas || u.CPU <= 0 || u.RSS <= 0 {
				t.Errorf("%s: %s ran %d processes (CPU %v s, peak RSS %v MB), want %d", p.Name, role, u.Processes, u.CPU, u.RSS, p.Replicas)
			}
		}
		if p.Roles["serve"].Processes != 1 {
			t.Errorf("%s: %d serve processes, want 1", p.Name, p.Roles["serve"].Processes)
		}
		if p.Ratio <= 0 || p.CPURatio <= 0 || (i == 0 && (p.Ratio != 1 || p.CPURatio != 1)) {
			t.Errorf("%s: ratio %v, CPU ratio %v (the baseline's are 1)", p.Name, p.Ratio, p.CPURatio)
		}
		if p.NATSCPU <= 0 {
			t.Errorf("%s: nats-servers' CPU per call %v, want > 0", p.Name, p.NATSCPU)
		}
		if p.Load[0] < 0 || p.Load[1] < 0 {
			t.Errorf("%s: load average %v", p.Name, p.Load)
		}
	}
}

// singleNodeEnv is the env file of this checkout's single-node stack when
// its ClickHouse and MinIO answer (`go tool task test` starts it before the
// cluster suite), else "none": the bench then compares with its first
// cluster phase.
func singleNodeEnv(t *testing.T) string {
	path := filepath.Join(harness.RepoRoot(t), ".state", "services", "env")
	f, err := os.Open(path)
	if err != nil {
		t.Logf("no single-node stack (%v): the bench runs the cluster phases only", err)
		return "none"
	}
	defer f.Close()
	up := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if k != "CALLPIPE_CLICKHOUSE_ADDR" && k != "CALLPIPE_S3_ENDPOINT" {
			continue
		}
		c, err := net.DialTimeout("tcp", v, time.Second)
		if err != nil {
			t.Logf("the single-node stack of %s is not up (%s: %v): the bench runs the cluster phases only", path, k, err)
			return "none"
		}
		c.Close()
		up++
	}
	if up != 2 {
		return "none"
	}
	return path
}
