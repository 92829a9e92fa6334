package main

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/callpipe/callpipe/config"
	"github.com/callpipe/callpipe/internal/ops"
)

func newWorkerCommand(a *app) *cobra.Command {
	var stageList string
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run pipeline stages (" + strings.Join(config.WorkerStageNames(), ", ") + ") as durable JetStream consumers",
		Args:  cobra.NoArgs,
		RunE: a.runE(map[string]string{"listen": "worker.listen"}, func(cmd *cobra.Command, cfg *config.Config, log *slog.Logger) error {
			var names []string
			for _, s := range strings.Split(stageList, ",") {
				if s = strings.TrimSpace(s); s == "" {
					continue
				}
				if !slices.Contains(config.WorkerStageNames(), s) {
					return fmt.Errorf("%w: --stages: unknown stage %q (allowed: %s)", errConfig, s, strings.Join(config.WorkerStageNames(), ", "))
				}
				names = append(names, s)
			}
			if len(names) == 0 {
				return fmt.Errorf("%w: --stages: at least one of %s", errConfig, strings.Join(config.WorkerStageNames(), ", "))
			}
			nc, err := cfg.ConnectNATS("worker", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			reg := ops.NewRegistry()
			var health ops.Health
			health.Add(ops.NATSHealth(nc))
			if err := cfg.RegisterLag(reg, nc, log, names...); err != nil {
				return err
			}
			// every stage is built (a configuration error before anything
			// runs) and has its share of /readyz before any starts, so that
			// the process never answers ready before each stage has said it is
			runs := make([]config.StageRun, len(names))
			readies := make([]*ops.Stage, len(names))
			for i, name := range names {
				if runs[i], err = cfg.WorkerStage(name, nc, reg, log.With("stage", name)); err != nil {
					return fmt.Errorf("stage %s: %w", name, err)
				}
				readies[i] = health.Stage(name + ": starting")
			}
			g, gctx := errgroup.WithContext(cmd.Context())
			for i, name := range names {
				g.Go(func() error {
					if err := runs[i](gctx, readies[i].Running); err != nil {
						return fmt.Errorf("stage %s: %w", name, err)
					}
					return nil
				})
			}
			g.Go(func() error {
				return ops.Serve(gctx, cfg.Worker.Listen, ops.Mux(reg, health.Check), log, 5*time.Second)
			})
			return drained(nc, log, g.Wait())
		}),
	}
	cmd.Flags().StringVar(&stageList, "stages", "", "comma-separated stages to run in this process")
	cmd.Flags().String("listen", "", "host:port for /healthz, /readyz and /metrics (worker.listen)")
	return cmd
}
