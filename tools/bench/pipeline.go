package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/internal/fleet"
	"github.com/callpipe/callpipe/tools/bench/receiver"
)

// pipeline is a running pipeline of the bench: its scratch JetStream, its
// Langfuse receiver and its processes (b.fleet), with what stops them.
type pipeline struct {
	lf      *receiver.Langfuse
	closers []func()
}

// close stops what startPipeline started, last started first.
func (p *pipeline) close() {
	for i := len(p.closers) - 1; i >= 0; i-- {
		p.closers[i]()
	}
	p.closers = nil
}

// pipelineRoles are the roles that run `replicas` times, in start order
// (serve, which the bench only reads, runs once).
func (b *bench) pipelineRoles() []string {
	return append([]string{"collect", "normalize"}, b.o.Sinks...)
}

// procName is the process name of instance i of role when it runs replicas
// times: the role itself when once.
func procName(role string, i, replicas int) string {
	if replicas == 1 {
		return role
	}
	return role + "-" + strconv.Itoa(i)
}

// roleOf is the role of a process name (procName's inverse).
func roleOf(proc string) string {
	role, n, ok := strings.Cut(proc, "-")
	if !ok {
		return proc
	}
	if _, err := strconv.Atoi(n); err != nil {
		return proc
	}
	return role
}

// startPipeline starts a scratch JetStream of natsNodes servers (R natsNodes
// streams), a Langfuse receiver, migrates the scratch database b.db of
// b.env's ClickHouse, and runs every pipeline role `replicas` times (and
// serve once) against them, waiting until each is ready.
func (b *bench) startPipeline(ctx context.Context, natsNodes, replicas int) (_ *pipeline, err error) {
	p := &pipeline{}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	natsURL, stopNATS, err := b.startNATS(ctx, natsNodes)
	if err != nil {
		return nil, err
	}
	p.closers = append(p.closers, stopNATS)
	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("bench nats %s: %w", natsURL, err)
	}
	p.closers = append(p.closers, nc.Close)
	if b.js, err = jetstream.New(nc); err != nil {
		return nil, err
	}

	p.lf = receiver.NewLangfuse("3.225.4")
	p.closers = append(p.closers, p.lf.Close)

	env := append(slices.Clone(b.env.ChildEnv),
		"CALLPIPE_NATS_URL="+natsURL,
		"CALLPIPE_NATS_STREAM_REPLICAS="+strconv.Itoa(natsNodes),
		"CALLPIPE_CLICKHOUSE_DATABASE="+b.db,
		"CALLPIPE_ARCHIVE_PREFIX=bench/"+strings.TrimPrefix(b.db, "callpipe_bench_"),
		// The archive holds an hour's calls until 64 MiB or 60 s: at benchmark
		// sizes that age, not throughput, would end the run. 5 s keeps objects
		// large and the measurement about throughput.
		"CALLPIPE_ARCHIVE_FLUSH_INTERVAL=5s",
		"CALLPIPE_LANGFUSE_HOST="+p.lf.URL,
		"CALLPIPE_LANGFUSE_PUBLIC_KEY=pk-lf-bench", "CALLPIPE_LANGFUSE_SECRET_KEY=sk-lf-bench",
		"CALLPIPE_LANGFUSE_TRANSPORT=ingestion",
		"CALLPIPE_LOG_LEVEL=warn",
	)
	if b.o.MemoryLimit != "" {
		env = append(env, "GOMEMLIMIT="+b.o.MemoryLimit)
	}
	b.fleet = &fleet.Fleet{Dir: b.o.Dir, ConfigFile: b.env.ConfigFile, Env: env, Out: b.out}
	b.addrs, b.pprof, b.procs = map[string]string{}, map[string]string{}, map[string][]string{}
	p.closers = append(p.closers, func() {
		if b.fleet.Running() {
			_, _ = b.fleet.Stop(b.stopOrder()...)
		}
		if !b.o.Keep {
			b.dropDatabase(context.WithoutCancel(ctx), b.db)
		}
	})
	if err := b.fleet.RunOnce(ctx, "migrate", "migrate"); err != nil {
		return nil, err
	}
	if slices.Contains(b.o.Sinks, "archive") {
		if err := b.env.EnsureBucket(ctx); err != nil {
			return nil, err
		}
	}
	var roles []string
	for _, r := range b.pipelineRoles() {
		roles = append(roles, r)
		if r == "normalize" {
			roles = append(roles, "serve")
		}
	}
	for _, r := range roles {
		n := replicas
		if r == "serve" {
			n = 1
		}
		for i := range n {
			proc := procName(r, i, n)
			b.procs[r] = append(b.procs[r], proc)
			if err := b.startProc(r, proc); err != nil {
				return nil, err
			}
		}
	}
	for _, r := range roles {
		for _, proc := range b.procs[r] {
			err := b.fleet.WaitReady(ctx, proc, b.addrs[proc])
			// a free port can be taken by another process on the machine
			// before the role binds it: start the role again on another
			for attempt := 0; err != nil && strings.Contains(err.Error(), "address already in use") && attempt < 3; attempt++ {
				b.say("bench      %s: its port was taken meanwhile, starting it again on another", proc)
				if err = b.startProc(r, proc); err == nil {
					err = b.fleet.WaitReady(ctx, proc, b.addrs[proc])
				}
			}
			if err != nil {
				return nil, err
			}
		}
	}
	return p, nil
}

// startProc starts process proc of role on free ports.
func (b *bench) startProc(role, proc string) error {
	addr, err := fleet.FreeListen()
	if err != nil {
		return err
	}
	b.addrs[proc] = addr
	var args []string
	switch role {
	case "collect", "serve":
		args = []string{role, "--" + role + ".listen", addr}
	default:
		args = []string{"worker", "--stages", role, "--worker.listen", addr}
	}
	if b.o.ProfileSeconds > 0 && role != "serve" {
		if b.pprof[proc], err = fleet.FreeListen(); err != nil {
			return err
		}
		args = append(args, "--pprof", b.pprof[proc])
	}
	return b.fleet.Start(proc, args...)
}

// stopOrder is the order processes stop in: pipeline order, so that each
// stage drains what the one before it published.
func (b *bench) stopOrder() []string {
	var order []string
	for _, r := range []string{"proxy", "collect", "normalize", "clickhouse", "langfuse", "archive", "serve"} {
		if procs, ok := b.procs[r]; ok {
			order = append(order, procs...)
		} else {
			order = append(order, r)
		}
	}
	return order
}

// collector is the collector client i posts to: the clients spread over the
// collectors.
func (b *bench) collector(i int) string {
	procs := b.procs["collect"]
	return b.addrs[procs[i%len(procs)]]
}

// natsServerBinary is --nats-server, else nats-server from PATH or $GOPATH/bin.
func (b *bench) natsServerBinary() (string, error) {
	bin := b.o.NATSServer
	if bin == "" {
		if p, err := exec.LookPath("nats-server"); err == nil {
			bin = p
		} else if gopath, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			bin = filepath.Join(strings.TrimSpace(string(gopath)), "bin", "nats-server")
		}
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("bench needs a nats-server binary for its scratch JetStream (go tool task services:up installs one, or pass --nats-server): %w", err)
	}
	return bin, nil
}

// startNATS runs a scratch JetStream with an empty store: one nats-server,
// or nodes servers routed into one cluster (its own name, loopback ports).
// It returns the client URLs, comma-separated (a seed list), once
// JetStream answers. b.natsPIDs are the servers' process ids.
func (b *bench) startNATS(ctx context.Context, nodes int) (string, func(), error) {
	bin, err := b.natsServerBinary()
	if err != nil {
		return "", nil, err
	}
	clients := make([]string, nodes)
	routes := make([]string, nodes)
	for i := range nodes {
		if clients[i], err = fleet.FreeListen(); err != nil {
			return "", nil, err
		}
		if nodes > 1 {
			if routes[i], err = fleet.FreeListen(); err != nil {
				return "", nil, err
			}
		}
	}
	b.natsPIDs = nil
	var stops []func()
	stop := func() {
		for _, s := range stops {
			s()
		}
	}
	routeURLs := make([]string, nodes)
	for i, r := range routes {
		routeURLs[i] = "nats://" + r
	}
	store := filepath.Join(b.o.Dir, "jetstream-"+b.db)
	for i, addr := range clients {
		host, port, _ := net.SplitHostPort(addr)
		args := []string{"-js", "-a", host, "-p", port}
		name, logName := "", "nats-server.log"
		if nodes == 1 {
			args = append(args, "-sd", store)
		} else {
			name = "bench-" + strconv.Itoa(i+1)
			logName = "nats-server-" + strconv.Itoa(i+1) + ".log"
			args = append(args, "-sd", filepath.Join(store, name), "-n", name,
				"--cluster_name", "bench-"+b.db, "--cluster", routeURLs[i], "--routes", strings.Join(routeURLs, ","))
		}
		cmd := exec.Command(bin, args...)
		logFile, err := os.Create(filepath.Join(b.o.Dir, logName))
		if err != nil {
			stop()
			return "", nil, fmt.Errorf("nats-server log: %w", err)
		}
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			logFile.Close()
			stop()
			return "", nil, fmt.Errorf("start %s: %w", bin, err)
		}
		stops = append(stops, func() {
			_ = cmd.Process.Signal(os.Interrupt)
			_ = cmd.Wait()
			logFile.Close()
		})
		b.natsPIDs = append(b.natsPIDs, cmd.Process.Pid)
		clients[i] = "nats://" + addr
	}
	stops = append(stops, func() { _ = os.RemoveAll(store) })
	seeds := strings.Join(clients, ",")
	if err := waitJetStream(ctx, seeds, 30*time.Second); err != nil {
		stop()
		return "", nil, fmt.Errorf("scratch JetStream of %d server(s) (logs in %s): %w", nodes, b.o.Dir, err)
	}
	return seeds, stop, nil
}

// waitJetStream waits until JetStream answers on seeds: in a cluster, once
// its servers have routed to each other and elected a meta leader.
func waitJetStream(ctx context.Context, seeds string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		nc, err := nats.Connect(seeds, nats.Timeout(time.Second))
		if err == nil {
			js, jerr := jetstream.New(nc)
			if jerr == nil {
				actx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, jerr = js.AccountInfo(actx)
				cancel()
			}
			nc.Close()
			if jerr == nil {
				return nil
			}
			err = jerr
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("not up after %s: %w", timeout, last)
}

// natsCPUSeconds is the CPU time the scratch nats-servers have used so far
// (-1 when a server's /proc/<pid>/stat cannot be read).
func (b *bench) natsCPUSeconds() float64 {
	sum := 0.0
	for _, pid := range b.natsPIDs {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return -1
		}
		s, err := statCPUSeconds(string(stat))
		if err != nil {
			return -1
		}
		sum += s
	}
	return sum
}

// statCPUSeconds is utime + stime of a /proc/<pid>/stat line, in seconds.
func statCPUSeconds(stat string) (float64, error) {
	p, err := statProc(stat)
	return p.seconds, err
}
