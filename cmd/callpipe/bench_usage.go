package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/internal/fleet"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/tools/bench/usagebench"
)

// newBenchUsageCommand is `callpipe bench usage`: the usage overview and the
// call list at scale (package bench/usagebench does the work).
func newBenchUsageCommand(a *app) *cobra.Command {
	var o usagebench.Options
	var jsonOut string
	cmd := &cobra.Command{
		Use:   "usage [--calls N]",
		Short: "Measure the usage overview, the call list and rollup sealing over N synthetic calls in a scratch ClickHouse database",
		Long: "bench usage bulk-loads --calls synthetic calls spread over the last --days days (--dup-percent of them stored twice,\n" +
			"as redelivery does) into a scratch database callpipe_bench_usage_<random> of the configured ClickHouse, seals\n" +
			"every hour of them (as `rollup rebuild` does) and reports the sealing rate, then times each usage overview shape\n" +
			"the dashboard sends (UTC and America/New_York) and the call list's first and next page, --repeat times each,\n" +
			"with the server's peak memory per query from system.query_log. With --live-hours the overview shapes run again\n" +
			"with the last hours read from the per-call rows, as the hours inside the redelivery horizon are.\n" +
			"The scratch database is dropped at the end unless --keep. Targets are reported, never enforced.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := a.load(cmd, nil)
			if err != nil {
				return err
			}
			if o.Calls < 1 || o.Days < 1 || o.Models < 1 || o.Users < 1 || o.DupPercent < 0 || o.DupPercent > 100 || o.Repeat < 1 || o.LiveHours < 0 {
				return fmt.Errorf("%w: need --calls, --days, --models, --users, --repeat >= 1, --live-hours >= 0 and 0 <= --dup-percent <= 100", errUsage)
			}
			o.Reuse = o.Database != ""
			if cfg.ClickHouse.Addr == "" {
				return fmt.Errorf("%w: clickhouse.addr: required", errConfig)
			}
			oc, err := clickhouseStoreConfig(cfg)
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
		},
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
	f.BoolVar(&o.Keep, "keep", false, "keep the scratch database")
	f.StringVar(&o.Database, "reuse", "", "measure the database an earlier run kept (--keep) instead of loading and sealing a new one")
	f.StringVar(&jsonOut, "json", "", "also write the report as JSON to this file")
	return cmd
}
