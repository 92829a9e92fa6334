package main

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	"github.com/callpipe/callpipe/internal/ops"
)

// workerEnv is what every stage gets: configuration, the shared NATS
// connection, the process's metrics registry and its readiness (/readyz).
type workerEnv struct {
	cfg    *config.Config
	nc     *nats.Conn
	reg    prometheus.Registerer
	health ops.Health
}

// provisionStreams creates or updates the pipeline's streams before a stage
// consumes (safe from every replica).
func (e *workerEnv) provisionStreams(ctx context.Context) error {
	js, err := jetstream.New(e.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return provisionStreams(pctx, js, e.cfg)
}

// stage runs until ctx ends, then finishes or hands back (naks) what it holds.
type stage func(ctx context.Context, env *workerEnv, log *slog.Logger) error

// stages is filled by the stage_<name>.go files of this package.
var stages = map[string]stage{}

func stageNames() []string {
	names := make([]string, 0, len(stages))
	for n := range stages {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func newWorkerCommand(a *app) *cobra.Command {
	var stageList string
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run pipeline stages (" + strings.Join(stageNames(), ", ") + ") as durable JetStream consumers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := a.load(cmd, map[string]string{"listen": "worker.listen"})
			if err != nil {
				return err
			}
			var run []string
			for _, s := range strings.Split(stageList, ",") {
				if s = strings.TrimSpace(s); s == "" {
					continue
				}
				if _, ok := stages[s]; !ok {
					return fmt.Errorf("%w: --stages: unknown stage %q (allowed: %s)", errConfig, s, strings.Join(stageNames(), ", "))
				}
				run = append(run, s)
			}
			if len(run) == 0 {
				return fmt.Errorf("%w: --stages: at least one of %s", errConfig, strings.Join(stageNames(), ", "))
			}
			nc, err := connectNATS(cfg, "worker", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			reg := ops.NewRegistry()
			env := &workerEnv{cfg: cfg, nc: nc, reg: reg}
			env.health.Add(ops.NATSHealth(nc))
			if err := registerLag(reg, nc, cfg, log, run...); err != nil {
				return err
			}
			g, gctx := errgroup.WithContext(cmd.Context())
			for _, name := range run {
				st, stageLog := stages[name], log.With("stage", name)
				g.Go(func() error {
					if err := st(gctx, env, stageLog); err != nil {
						return fmt.Errorf("stage %s: %w", name, err)
					}
					return nil
				})
			}
			g.Go(func() error {
				return ops.Serve(gctx, cfg.Worker.Listen, ops.Mux(reg, env.health.Check), log, 5*time.Second)
			})
			err = g.Wait()
			if dErr := nc.Drain(); dErr != nil {
				log.Error("nats drain", "err", dErr)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&stageList, "stages", "", "comma-separated stages to run in this process")
	cmd.Flags().String("listen", "", "host:port for /healthz, /readyz and /metrics (worker.listen)")
	return cmd
}
