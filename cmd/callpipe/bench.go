package main

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/config"
	"github.com/callpipe/callpipe/internal/fleet"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/tools/bench"
	"github.com/callpipe/callpipe/tools/bench/usagebench"
)

// newBenchCommand is `callpipe bench` (package bench does the work).
func newBenchCommand(a *app) *cobra.Command {
	var o bench.Options
	var po bench.ProxyOptions
	var proxyPhase, cluster bool
	var clusterReplicas []int
	var singleEnv string
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure end-to-end throughput, latency, CPU and memory of the pipeline, and the raw limits it runs on",
		Long: "bench runs its own nats-server (fresh JetStream), a scratch ClickHouse database and archive prefix, and a local\n" +
			"Langfuse receiver, so it never touches production data; ClickHouse, MinIO and Redis come from the configuration.\n" +
			"Phase 1 sends --events events of --size bytes through the collector as fast as it accepts them and times each\n" +
			"stage; phase 2 sends at half the measured rate for --latency and measures accept → visible in the usage API;\n" +
			"phase 3 measures JetStream publish+consume and ClickHouse insert of the same data with nothing else running.\n" +
			"--proxy adds a phase (the only one with --events 0): the demo's Xinference stand-in is called at a fixed rate,\n" +
			"in turns straight and through a `callpipe proxy` publishing to the running pipeline, and the latency the proxy\n" +
			"adds (p50/p90/p99) and its CPU per request are reported.\n" +
			"--cluster runs the throughput phase only (no latency, raw or proxy phase), with the configuration pointing at a\n" +
			"multi-node stack (eval \"$(deploy/local/services.sh env --cluster)\": clickhouse.cluster set, migrated with Distributed\n" +
			"tables; erasure-coded MinIO): once against the single-node stack of --cluster-single-env (one nats-server, one\n" +
			"process of each role), then once per --cluster-replicas count N with N processes of each of collect, normalize\n" +
			"and the sinks on a scratch 3-server JetStream cluster with R3 streams, each phase with a fresh scratch database\n" +
			"and streams. It reports, per phase, the exact end-to-end rate, CPU µs per call of each role (summed over its\n" +
			"processes), JetStream ops per call, peak RSS per process, the load average, and the ratios to the single-node phase.",
		Args: cobra.NoArgs,
		RunE: a.runE(nil, func(cmd *cobra.Command, cfg *config.Config, _ *slog.Logger) error {
			if proxyPhase {
				o.Proxy = &po
			}
			if o.Dir == "" {
				o.Dir = filepath.Join(cfg.Paths.StateDir, "bench")
			}
			if cluster && cfg.ClickHouse.Cluster == "" {
				return fmt.Errorf("%w: --cluster needs clickhouse.cluster (load the cluster stack's env: eval \"$(deploy/local/services.sh env --cluster)\")", errUsage)
			}
			if cluster {
				o.Cluster = &bench.ClusterOptions{Replicas: clusterReplicas}
			}
			if cluster && singleEnv != "none" {
				single, err := cfg.BenchSingleNodeEnv(a.configFile, singleEnv, cmd.OutOrStdout())
				if err != nil {
					return err
				}
				o.Cluster.Baseline = &single
			}
			if err := o.Check(); err != nil {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			env, err := cfg.BenchEnv(a.configFile, nil, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			return bench.Run(cmd.Context(), o, env)
		}),
	}
	f := cmd.Flags()
	f.IntVar(&o.Events, "events", 100000, "events in the throughput phase")
	f.IntVar(&o.Size, "size", 1024, "bytes per event (a chat call with reported usage)")
	f.IntVar(&o.Clients, "clients", 4, "parallel collector clients")
	f.IntVar(&o.Batch, "batch", 500, "events per NDJSON request")
	f.StringSliceVar(&o.Sinks, "sinks", []string{"clickhouse", "langfuse", "archive"}, "sinks to run")
	f.DurationVar(&o.Latency, "latency", 15*time.Second, "length of the latency phase (0 skips it)")
	f.StringVar(&o.JSON, "json", "", "also write the results as JSON to this file")
	f.StringVar(&o.Dir, "dir", "", "folder for logs and the scratch JetStream store (default <paths.state_dir>/bench)")
	f.StringVar(&o.NATSServer, "nats-server", "", "nats-server binary (default: from PATH or $GOPATH/bin)")
	f.BoolVar(&o.SkipRaw, "skip-raw", false, "skip the raw-limit measurements")
	f.BoolVar(&o.Keep, "keep", false, "keep the scratch ClickHouse database")
	f.StringVar(&o.MemoryLimit, "memory-limit", "192MiB", "GOMEMLIMIT of every callpipe process, as a deployment sets it from the container's memory limit (empty: none)")
	f.IntVar(&o.ProfileSeconds, "profile-seconds", 0, "save a CPU profile of every role for the first N seconds of the throughput phase to <dir>/<role>.cpu.pprof, then its allocations to <dir>/<role>.allocs.pprof (0: none)")
	f.BoolVar(&proxyPhase, "proxy", false, "also measure the latency the capture proxy adds (--events 0: only that)")
	f.IntVar(&po.Rate, "proxy-rate", 500, "requests/s of the proxy phase, on each path (open loop)")
	f.IntVar(&po.Clients, "proxy-clients", 8, "concurrent clients of the proxy phase")
	f.DurationVar(&po.Duration, "proxy-duration", 20*time.Second, "measured time of the proxy phase on each path")
	f.DurationVar(&po.Slice, "proxy-slice", 2*time.Second, "the two paths take turns in slices this long")
	f.StringVar(&po.Baseline, "proxy-baseline", "", "another callpipe binary (an older build) whose proxy is measured in the same turns, for a before/after")
	f.BoolVar(&cluster, "cluster", false, "measure the throughput phase against the multi-node stack of the configuration with --cluster-replicas processes of each role, and against the single-node stack (see above)")
	f.IntSliceVar(&clusterReplicas, "cluster-replicas", []int{1, 2, 4}, "with --cluster: processes of each role, one phase per count")
	f.StringVar(&singleEnv, "cluster-single-env", "", "with --cluster: the single-node stack's env `file` (as services.sh env prints it) for the phase the others are compared with (default <paths.state_dir>/services/env; none: no such phase, the ratios are to the first cluster phase)")
	f.BoolVar(&po.Pprof, "proxy-pprof", false, "save a CPU profile of the proxy during the phase and its allocations to <dir>/proxy.cpu.pprof, proxy.allocs.pprof")
	f.BoolVar(&po.Realtime, "proxy-realtime", false, "run the bench's clients and stand-in and the proxies at real-time priority (SCHED_FIFO, needs CAP_SYS_NICE) during the turns: the pipeline runs beside them but cannot delay them, so the added latency is the proxy's own")
	cmd.AddCommand(newBenchUsageCommand(a))
	return cmd
}

// newBenchUsageCommand is `callpipe bench usage`: the usage overview and the
// call list at scale (package bench/usagebench does the work).
func newBenchUsageCommand(a *app) *cobra.Command {
	var o usagebench.Options
	var jsonOut string
	var zones []string
	cmd := &cobra.Command{
		Use:   "usage [--calls N]",
		Short: "Measure the usage overview, the call list and rollup sealing over N synthetic calls in a scratch ClickHouse database",
		Long: "bench usage bulk-loads --calls synthetic calls spread over the last --days days (--dup-percent of them stored twice,\n" +
			"as redelivery does) into a scratch database callpipe_bench_usage_<random> of the configured ClickHouse, seals\n" +
			"every hour of them (as `rollup rebuild` does) and reports the sealing rate, then times each usage overview shape\n" +
			"the dashboard sends as the usage API answers it, rows and totals (UTC and America/New_York), and the call list's\n" +
			"first and next page, --repeat times each, with the server's peak memory per query from system.query_log. With --live-hours the overview shapes run again\n" +
			"with the last hours read from the per-call rows, as the hours inside the redelivery horizon are.\n" +
			"The scratch database is dropped at the end unless --keep. Targets are reported, never enforced.",
		Args: cobra.NoArgs,
		RunE: a.runE(nil, func(cmd *cobra.Command, cfg *config.Config, _ *slog.Logger) error {
			if err := o.Check(); err != nil {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			o.Reuse = o.Database != ""
			oc, err := cfg.RequireCallsDB("required")
			if err != nil {
				return err
			}
			if oc.Topology.Clustered() {
				return fmt.Errorf("%w: bench usage loads a single server's scratch database; clickhouse.cluster must be empty", errUsage)
			}
			conn, err := callsdb.Open(cmd.Context(), oc)
			if err != nil {
				return err
			}
			defer conn.Close()
			o.SealAfter, o.Out = cfg.SealAfter(), cmd.OutOrStdout()
			for _, z := range zones {
				loc, err := time.LoadLocation(z)
				if err != nil {
					return fmt.Errorf("%w: --zones %q: %w", errUsage, z, err)
				}
				o.Zones = append(o.Zones, loc)
			}
			rep, err := usagebench.Run(cmd.Context(), conn, o)
			if rep != nil && err == nil {
				rep.Print(cmd.OutOrStdout())
			}
			if rep != nil && jsonOut != "" {
				if werr := fleet.WriteJSON(jsonOut, rep); werr != nil && err == nil {
					err = werr
				}
			}
			return err
		}),
	}
	f := cmd.Flags()
	f.Uint64Var(&o.Calls, "calls", 10_000_000, "distinct synthetic calls to load")
	f.IntVar(&o.Days, "days", 30, "the calls start evenly over this many days up to now; the overview range is as long")
	f.IntVar(&o.Models, "models", 12, "distinct models")
	f.IntVar(&o.Users, "users", 2000, "distinct users (skewed: a few heavy ones, a long tail)")
	f.IntVar(&o.DupPercent, "dup-percent", 2, "percent of the calls stored twice")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the synthetic calls")
	f.IntVar(&o.Repeat, "repeat", 5, "runs of each query shape (min, median and max are reported)")
	f.IntVar(&o.LiveHours, "live-hours", 2, "also time the overview with the last N hours read per call (0: skip)")
	f.Uint64Var(&o.ChunkCalls, "chunk", 5_000_000, "calls per load statement")
	f.DurationVar(&o.QueryTimeout, "query-timeout", 2*time.Minute, "a timed query running longer is killed and reported as failed")
	f.StringSliceVar(&zones, "zones", []string{"America/New_York"}, "zones whose local days are sealed too, as clickhouse.rollup.zones does (empty: UTC days only)")
	f.BoolVar(&o.Keep, "keep", false, "keep the scratch database")
	f.StringVar(&o.Database, "reuse", "", "measure the database an earlier run kept (--keep) instead of loading and sealing a new one (after one sealer pass, which seals again what this build seals differently)")
	f.StringVar(&jsonOut, "json", "", "also write the report as JSON to this file")
	return cmd
}
