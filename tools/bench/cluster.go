package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/callpipe/callpipe/internal/fleet"
)

// ClusterOptions are the flags of `callpipe bench --cluster`: the throughput
// phase with several workers of each role against the multi-node stack of
// the bench's Env (a ClickHouse cluster, erasure-coded S3) and a scratch
// JetStream cluster of ClusterNATSNodes servers with R3 streams, once per
// entry of Replicas, after a single-node phase against Baseline.
type ClusterOptions struct {
	Replicas []int // processes of each role (collect, normalize, the sinks), one phase each
	// Baseline is the single-node stack of the phase every cluster phase is
	// compared with (one nats-server, one worker of each role); nil: no such
	// phase, the ratios are to the first cluster phase.
	Baseline *Env
}

// ClusterNATSNodes is the size of the scratch JetStream cluster of the
// cluster phases (streams get as many replicas).
const ClusterNATSNodes = 3

// maxClusterReplicas bounds --cluster-replicas: 8 processes of each of 5
// roles are 40 processes of up to --memory-limit each.
const maxClusterReplicas = 8

func (c *ClusterOptions) check(o Options) error {
	if o.Proxy != nil || o.Events == 0 {
		return errors.New("--cluster measures the throughput phase: it takes --events >= 1000 and no --proxy")
	}
	if o.ProfileSeconds > 0 {
		return errors.New("--cluster does not take --profile-seconds (profile a single-node run)")
	}
	if err := checkReplicas(c.Replicas); err != nil {
		return err
	}
	if c.Baseline != nil && c.Baseline.ClickHouse.Topology.Clustered() {
		return fmt.Errorf("--cluster: the single-node phase's configuration names ClickHouse cluster %q (its env file must point at a single-node stack, or pass --cluster-single-env none)", c.Baseline.ClickHouse.Topology.Cluster)
	}
	return nil
}

// checkReplicas says what is wrong with --cluster-replicas.
func checkReplicas(rs []int) error {
	if len(rs) == 0 {
		return errors.New("--cluster-replicas: need at least one count")
	}
	seen := map[int]bool{}
	for _, r := range rs {
		if r < 1 || r > maxClusterReplicas {
			return fmt.Errorf("--cluster-replicas: %d is not within 1..%d", r, maxClusterReplicas)
		}
		if seen[r] {
			return fmt.Errorf("--cluster-replicas: %d is listed twice", r)
		}
		seen[r] = true
	}
	return nil
}

// ClusterResult is what `callpipe bench --cluster --json` writes.
type ClusterResult struct {
	Events      int      `json:"events"`
	EventBytes  int      `json:"event_bytes"`
	Sinks       []string `json:"sinks"`
	MachineCPUs int      `json:"machine_cpus"`
	MemoryLimit string   `json:"memory_limit,omitempty"`
	// ClickHouseCluster is the cluster of the Distributed tables the
	// cluster phases wrote (clickhouse.cluster).
	ClickHouseCluster string `json:"clickhouse_cluster"`
	NATSNodes         int    `json:"nats_nodes"`
	// Baseline names the phase the ratios are to: "single-node", or the
	// first cluster phase when there was no single-node phase.
	Baseline string         `json:"baseline"`
	Phases   []ClusterPhase `json:"phases"`
}

// ClusterPhase is one throughput phase of --cluster.
type ClusterPhase struct {
	Name      string `json:"name"`     // "single-node" or "cluster x<replicas>"
	Replicas  int    `json:"replicas"` // processes of each role
	NATSNodes int    `json:"nats_nodes"`
	// ClickHouseCluster is empty for the single-node phase.
	ClickHouseCluster string             `json:"clickhouse_cluster,omitempty"`
	AcceptPerS        float64            `json:"accept_events_per_s"`
	StagePerS         map[string]float64 `json:"stage_events_per_s"`
	EndToEndPS        float64            `json:"end_to_end_events_per_s"`
	// Exact: the usage API (over the Distributed tables in a cluster
	// phase) counts exactly the calls sent.
	Exact bool `json:"exact"`
	// LangfuseEvents is what the Langfuse receiver got (a trace and a
	// generation per call, more if a batch was redelivered).
	LangfuseEvents int64 `json:"langfuse_events"`
	// PerCall is each role's cost per call, CPU and allocations summed over
	// the role's processes; Total their sum.
	PerCall map[string]StageCost `json:"per_call"`
	Total   StageCost            `json:"per_call_total"`
	// Roles is each role's CPU (summed) and peak RSS (the largest of its
	// processes) from the processes' rusage when they exited.
	Roles     map[string]RoleUsage   `json:"roles"`
	Processes map[string]fleet.Usage `json:"processes"`
	// NATSCPUMicros is the CPU of the phase's scratch nats-servers per
	// call in the throughput phase (-1: unknown).
	NATSCPUMicros float64 `json:"nats_servers_cpu_us_per_call"`
	// RatioToBaseline is EndToEndPS over the baseline's; CPURatio is
	// Total.CPUMicros over the baseline's.
	RatioToBaseline float64 `json:"ratio_to_baseline"`
	CPURatio        float64 `json:"cpu_ratio_to_baseline"`
	// LoadAvg is the machine's 1-minute load average at the phase's start
	// and end (other work runs here too).
	LoadAvg [2]float64 `json:"load_avg_1m"`
}

// RoleUsage is a role's processes' rusage: CPU summed, peak RSS the
// largest of one process (what each worker must be sized for).
type RoleUsage struct {
	Processes     int     `json:"processes"`
	CPUSeconds    float64 `json:"cpu_seconds"`
	PeakRSSMBEach float64 `json:"peak_rss_mb_per_process"`
}

// roleUsage groups processes' rusage by role (procName's role-N → role).
func roleUsage(procs map[string]fleet.Usage) map[string]RoleUsage {
	out := map[string]RoleUsage{}
	for name, u := range procs {
		r := roleOf(name)
		ru := out[r]
		ru.Processes++
		ru.CPUSeconds += u.CPUSeconds
		ru.PeakRSSMBEach = max(ru.PeakRSSMBEach, u.PeakRSSMB)
		out[r] = ru
	}
	return out
}

// setRatios fills each phase's ratios to phases[0] (the baseline).
func setRatios(phases []ClusterPhase) {
	if len(phases) == 0 {
		return
	}
	base := phases[0]
	for i := range phases {
		if base.EndToEndPS > 0 {
			phases[i].RatioToBaseline = phases[i].EndToEndPS / base.EndToEndPS
		}
		if base.Total.CPUMicros > 0 {
			phases[i].CPURatio = phases[i].Total.CPUMicros / base.Total.CPUMicros
		}
	}
}

func (b *bench) runCluster(ctx context.Context) error {
	c := b.o.Cluster
	clusterEnv := b.env
	res := &ClusterResult{Events: b.o.Events, EventBytes: b.o.Size, Sinks: b.o.Sinks, MachineCPUs: runtime.NumCPU(),
		MemoryLimit: b.o.MemoryLimit, ClickHouseCluster: clusterEnv.ClickHouse.Topology.Cluster, NATSNodes: ClusterNATSNodes}
	type spec struct {
		name            string
		env             Env
		nodes, replicas int
	}
	var specs []spec
	if c.Baseline != nil {
		specs = append(specs, spec{"single-node", *c.Baseline, 1, 1})
	}
	for _, r := range c.Replicas {
		specs = append(specs, spec{"cluster x" + strconv.Itoa(r), clusterEnv, ClusterNATSNodes, r})
	}
	res.Baseline = specs[0].name
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.name
	}
	b.say("bench      run %s: %d events of %d bytes, sinks %s, %d CPUs; phases: %s", b.runID, b.o.Events, b.o.Size,
		strings.Join(b.o.Sinks, ","), res.MachineCPUs, strings.Join(names, ", "))
	dir := b.o.Dir
	defer func() { b.env, b.o.Dir = clusterEnv, dir }()
	for i, s := range specs {
		b.env = s.env
		b.db = "callpipe_bench_" + b.runID + "_" + strconv.Itoa(i)
		// each phase's logs in their own folder
		b.o.Dir = filepath.Join(dir, b.runID+"-"+strings.ReplaceAll(s.name, " ", "-"))
		if err := os.MkdirAll(b.o.Dir, 0o755); err != nil {
			return fmt.Errorf("bench dir: %w", err)
		}
		ph, err := b.clusterPhase(ctx, s.name, s.nodes, s.replicas)
		if err != nil {
			return fmt.Errorf("bench --cluster: phase %s: %w", s.name, err)
		}
		res.Phases = append(res.Phases, *ph)
	}
	setRatios(res.Phases)
	b.reportCluster(res)
	if b.o.JSON != "" {
		if err := fleet.WriteJSON(b.o.JSON, res); err != nil {
			return err
		}
	}
	for _, ph := range res.Phases {
		if !ph.Exact {
			return fmt.Errorf("bench --cluster: phase %s: the usage API does not show exactly the events that were sent", ph.Name)
		}
	}
	return nil
}

// clusterPhase runs one throughput phase with replicas processes of each
// role on a scratch JetStream of nodes servers and b.env's stack.
func (b *bench) clusterPhase(ctx context.Context, name string, nodes, replicas int) (*ClusterPhase, error) {
	ph := &ClusterPhase{Name: name, Replicas: replicas, NATSNodes: nodes, ClickHouseCluster: b.env.ClickHouse.Topology.Cluster}
	ph.LoadAvg[0] = loadAvg1()
	b.say("phase      %s: %d process(es) of each of %s, %d NATS server(s), ClickHouse %s, database %s, logs in %s", name, replicas,
		strings.Join(b.pipelineRoles(), ", "), nodes, orSingle(ph.ClickHouseCluster), b.db, b.o.Dir)
	p, err := b.startPipeline(ctx, nodes, replicas)
	if err != nil {
		return nil, err
	}
	defer p.close()
	res := &Result{Events: b.o.Events, StagePerS: map[string]float64{}}
	if err := b.throughput(ctx, res); err != nil {
		return nil, err
	}
	if ph.Processes, err = b.fleet.Stop(b.stopOrder()...); err != nil {
		return nil, err
	}
	ph.NATSCPUMicros = res.NATSCPUMicros
	ph.LoadAvg[1] = loadAvg1()
	_, ph.LangfuseEvents = p.lf.Counts()
	ph.AcceptPerS, ph.StagePerS, ph.EndToEndPS, ph.Exact = res.AcceptPerS, res.StagePerS, res.EndToEndPS, res.Exact
	ph.PerCall, ph.Total = res.PerCall, *res.Total
	ph.Roles = roleUsage(ph.Processes)
	b.say("phase      %s: %.0f events/s end to end, exact: %v, %.1f CPU µs per call", name, ph.EndToEndPS, ph.Exact, ph.Total.CPUMicros)
	return ph, nil
}

func orSingle(cluster string) string {
	if cluster == "" {
		return "single server"
	}
	return "cluster " + cluster + " (Distributed tables)"
}

func (b *bench) reportCluster(r *ClusterResult) {
	b.say("")
	b.say("result     %d events of %d bytes on %d CPUs, sinks %s; cluster phases: %d NATS servers (R%d streams), ClickHouse cluster %s",
		r.Events, r.EventBytes, r.MachineCPUs, strings.Join(r.Sinks, ","), r.NATSNodes, r.NATSNodes, r.ClickHouseCluster)
	if r.MemoryLimit != "" {
		b.say("  processes ran with GOMEMLIMIT=%s; ratios are to the %s phase", r.MemoryLimit, r.Baseline)
	} else {
		b.say("  ratios are to the %s phase", r.Baseline)
	}
	b.say("  %-14s %8s %11s %13s %6s %6s %12s %9s %11s %12s %11s", "phase", "workers", "accepted/s", "end-to-end/s", "ratio", "exact", "CPU µs/call", "CPU ratio", "JS ops/call", "NATS µs/call", "load 1m")
	for _, p := range r.Phases {
		b.say("  %-14s %8s %11.0f %13.0f %6.2f %6v %12.1f %9.2f %11.2f %12.1f %5.2f→%.2f", p.Name, fmt.Sprintf("%d each", p.Replicas),
			p.AcceptPerS, p.EndToEndPS, p.RatioToBaseline, p.Exact, p.Total.CPUMicros, p.CPURatio, p.Total.JSOpsPerCall, p.NATSCPUMicros, p.LoadAvg[0], p.LoadAvg[1])
	}
	b.say("  (CPU µs/call: callpipe's processes; NATS µs/call: the scratch nats-servers, all of them)")
	roles := costOrder(r.Phases[0].PerCall)
	header := func(title string) {
		line := fmt.Sprintf("  %-14s", title)
		for _, role := range roles {
			line += fmt.Sprintf(" %10s", role)
		}
		b.say("%s", line)
	}
	header("CPU µs/call")
	for _, p := range r.Phases {
		line := fmt.Sprintf("  %-14s", p.Name)
		for _, role := range roles {
			if c, ok := p.PerCall[role]; ok && c.CPUMicros >= 0 {
				line += fmt.Sprintf(" %10.1f", c.CPUMicros)
			} else {
				line += fmt.Sprintf(" %10s", "?")
			}
		}
		b.say("%s   (summed over each role's processes)", line)
	}
	header("peak RSS MB")
	for _, p := range r.Phases {
		line := fmt.Sprintf("  %-14s", p.Name)
		for _, role := range roles {
			line += fmt.Sprintf(" %10.1f", p.Roles[role].PeakRSSMBEach)
		}
		b.say("%s   (the largest process of each role)", line)
	}
	for _, p := range r.Phases {
		b.say("  %-14s langfuse receiver got %d events (%.2f per call)", p.Name, p.LangfuseEvents, float64(p.LangfuseEvents)/float64(r.Events))
	}
}

// loadAvg1 is the 1-minute load average (-1 when /proc/loadavg is not there).
func loadAvg1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	v, err := parseLoadAvg1(string(b))
	if err != nil {
		return -1
	}
	return v
}

// parseLoadAvg1 reads the first field of /proc/loadavg.
func parseLoadAvg1(s string) (float64, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0, errors.New("/proc/loadavg is empty")
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/loadavg: %w", err)
	}
	return v, nil
}

// ReadEnvFile reads an env file as `services.sh env` writes it: lines
// `export KEY=VALUE` (or KEY=VALUE), values possibly quoted as bash's
// printf %q, '...' or "..." quotes them; # comments and blank lines are
// skipped.
func ReadEnvFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("env file: %w", err)
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		k, v, ok, err := parseEnvLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("env file %s line %d: %w", path, n, err)
		}
		if ok {
			vars[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("env file %s: %w", path, err)
	}
	return vars, nil
}

func parseEnvLine(line string) (key, value string, ok bool, err error) {
	line = strings.TrimSpace(line)
	if line == "" || strings.HasPrefix(line, "#") {
		return "", "", false, nil
	}
	line = strings.TrimPrefix(line, "export ")
	key, raw, found := strings.Cut(line, "=")
	if !found || key == "" || strings.ContainsAny(key, " \t\"'") {
		return "", "", false, fmt.Errorf("want KEY=VALUE, got %q", line)
	}
	value, err = shellWord(raw)
	if err != nil {
		return "", "", false, fmt.Errorf("%s: %w", key, err)
	}
	return key, value, true, nil
}

// shellWord unquotes one shell word: '...', "..." (with \ escapes) and
// backslash escapes outside quotes, as printf %q writes them.
func shellWord(s string) (string, error) {
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return "", errors.New("unterminated ' quote")
			}
			out.WriteString(s[i+1 : i+1+j])
			i += j + 1
		case '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				out.WriteByte(s[i])
			}
			if i >= len(s) {
				return "", errors.New("unterminated \" quote")
			}
		case '\\':
			if i+1 < len(s) {
				i++
				out.WriteByte(s[i])
			}
		case ' ', '\t':
			return "", fmt.Errorf("more than one word in %q", s)
		default:
			out.WriteByte(c)
		}
	}
	return out.String(), nil
}

// StackEnv is what makes a child process and a configuration use the
// stack of an env file when the bench's own environment names another:
// the child environment (every CALLPIPE_ variable of environ the file does
// not set is set empty, which configuration reads as unset; then the
// file's) and the lookup a configuration is loaded with (the file's
// variables; no other CALLPIPE_ variable).
func StackEnv(environ []string, file map[string]string) (child []string, getenv func(string) string) {
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := file[k]; !ok && strings.HasPrefix(k, "CALLPIPE_") {
			child = append(child, k+"=")
		}
	}
	keys := make([]string, 0, len(file))
	for k := range file {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		child = append(child, k+"="+file[k])
	}
	getenv = func(k string) string {
		if v, ok := file[k]; ok {
			return v
		}
		if strings.HasPrefix(k, "CALLPIPE_") {
			return ""
		}
		return os.Getenv(k)
	}
	return child, getenv
}
