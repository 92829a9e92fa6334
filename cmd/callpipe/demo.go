package main

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/config"
	"github.com/callpipe/callpipe/tools/demo"
)

// newDemoCommand is `callpipe demo` (package demo does the work).
func newDemoCommand(a *app) *cobra.Command {
	var o demo.Options
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run collector, proxy, workers and serve, drive a synthetic Xinference workload through them and print the usage summary",
		Long: "demo needs the services of `go tool task services:up` (NATS, ClickHouse, MinIO, Redis; their addresses from the\n" +
			"environment or config). It starts `migrate`, `collect`, `proxy`, `worker` and `serve` from this binary, answers\n" +
			"the proxy with a built-in Xinference (or --upstream), sends --calls calls and waits until the usage API shows\n" +
			"them all. It then keeps running until Ctrl-C (or exits with --exit): 0 when every call arrived, 1 otherwise.",
		Args: cobra.NoArgs,
		RunE: a.runE(nil, func(cmd *cobra.Command, cfg *config.Config, _ *slog.Logger) error {
			if o.Calls <= 0 {
				return fmt.Errorf("%w: --calls must be positive", errUsage)
			}
			if o.Dir == "" {
				o.Dir = filepath.Join(cfg.Paths.StateDir, "demo")
			}
			archiveStage := slices.Contains(config.WorkerStageNames(), bus.StageArchive)
			env, closeEnv, err := cfg.DemoEnv(a.configFile, archiveStage, o.Upstream, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			defer closeEnv()
			return demo.Run(cmd.Context(), o, env)
		}),
	}
	f := cmd.Flags()
	f.IntVar(&o.Calls, "calls", 2000, "calls to send through the proxy")
	f.IntVar(&o.Concurrency, "concurrency", 8, "parallel clients")
	f.Float64Var(&o.Rate, "rate", 0, "calls per second (0: as fast as the clients go)")
	f.Float64Var(&o.StreamShare, "stream-share", 0.5, "share of chat calls that stream")
	f.Float64Var(&o.ErrorShare, "error-share", 0.02, "share of chat calls the built-in upstream fails")
	f.StringVar(&o.Upstream, "upstream", "", "a real Xinference base URL instead of the built-in one")
	f.StringVar(&o.Dir, "dir", "", "folder for the children's logs and the proxy spool (default <paths.state_dir>/demo)")
	f.BoolVar(&o.Exit, "exit", false, "exit after the summary instead of running until Ctrl-C")
	f.DurationVar(&o.WaitTimeout, "wait", 2*time.Minute, "how long to wait for every call to reach the usage API")
	f.Uint64Var(&o.Seed, "seed", uint64(time.Now().UnixNano()), "workload seed")
	return cmd
}
