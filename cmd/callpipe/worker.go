package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/config"
	"github.com/callpipe/callpipe/internal/ops"
	"github.com/callpipe/callpipe/sinks/archive"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
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
	return bus.EnsureStreams(pctx, js, e.cfg.StreamOptions())
}

// stage runs until ctx ends, then finishes or hands back (naks) what it
// holds. ready is its share of /readyz, registered before any stage starts
// so that the process never answers ready before a stage has said it is.
type stage func(ctx context.Context, env *workerEnv, ready *ops.Stage, log *slog.Logger) error

// stages are the worker's stages by name.
var stages = map[string]stage{
	bus.StageNormalize:  runNormalizeStage,
	bus.StageClickHouse: runClickHouseStage,
	bus.StageArchive:    runArchiveStage,
	bus.StageLangfuse:   runLangfuseStage,
}

func stageNames() []string { return slices.Sorted(maps.Keys(stages)) }

func newWorkerCommand(a *app) *cobra.Command {
	var stageList string
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run pipeline stages (" + strings.Join(stageNames(), ", ") + ") as durable JetStream consumers",
		Args:  cobra.NoArgs,
		RunE: a.runE(map[string]string{"listen": "worker.listen"}, func(cmd *cobra.Command, cfg *config.Config, log *slog.Logger) error {
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
			nc, err := cfg.ConnectNATS("worker", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			reg := ops.NewRegistry()
			env := &workerEnv{cfg: cfg, nc: nc, reg: reg}
			env.health.Add(ops.NATSHealth(nc))
			if err := cfg.RegisterLag(reg, nc, log, run...); err != nil {
				return err
			}
			g, gctx := errgroup.WithContext(cmd.Context())
			for _, name := range run {
				st, stageLog := stages[name], log.With("stage", name)
				ready := env.health.Stage(name + ": starting")
				g.Go(func() error {
					if err := st(gctx, env, ready, stageLog); err != nil {
						return fmt.Errorf("stage %s: %w", name, err)
					}
					return nil
				})
			}
			g.Go(func() error {
				return ops.Serve(gctx, cfg.Worker.Listen, ops.Mux(reg, env.health.Check), log, 5*time.Second)
			})
			return drained(nc, log, g.Wait())
		}),
	}
	cmd.Flags().StringVar(&stageList, "stages", "", "comma-separated stages to run in this process")
	cmd.Flags().String("listen", "", "host:port for /healthz, /readyz and /metrics (worker.listen)")
	return cmd
}

// The worker's stages: each builds its stage from the configuration (a
// configuration error before anything else), provisions the streams and
// runs until ctx ends, handing its health to /readyz.

// runNormalizeStage: CALLPIPE_CALLS to CALLPIPE_NORMALIZED.
func runNormalizeStage(ctx context.Context, env *workerEnv, ready *ops.Stage, log *slog.Logger) error {
	st, closeRedis, err := env.cfg.NormalizeStage(env.reg, log)
	if err != nil {
		return err
	}
	st.Running = ready.Running
	defer closeRedis()
	if err := env.provisionStreams(ctx); err != nil {
		return err
	}
	return st.Run(ctx, env.nc)
}

// runClickHouseStage: the durable consumer callpipe-clickhouse, migrations,
// retention and the rollup sealer.
func runClickHouseStage(ctx context.Context, env *workerEnv, ready *ops.Stage, log *slog.Logger) error {
	st, err := env.cfg.ClickHouseStage(env.reg, log)
	if err != nil {
		return err
	}
	st.Sink.DropAcks = chsink.KillAfterInsertFromEnv(log)
	ready.Waiting(errors.New("clickhouse: connecting"))
	st.Running = ready.Running
	if err := env.provisionStreams(ctx); err != nil {
		return err
	}
	return st.Run(ctx, env.nc)
}

// runArchiveStage: CALLPIPE_CALLS to S3 (durable consumer
// archive.consumer), waiting for the bucket at start.
func runArchiveStage(ctx context.Context, env *workerEnv, ready *ops.Stage, log *slog.Logger) error {
	st, err := env.cfg.ArchiveStage(env.reg, log)
	if err != nil {
		return err
	}
	ready.Waiting(errors.New("archive: connecting to S3"))
	st.Running = ready.Running
	if err := env.provisionStreams(ctx); err != nil {
		return err
	}
	err = st.Run(ctx, env.nc)
	if errors.Is(err, archive.ErrSinkConfig) {
		return fmt.Errorf("%w: %w", errConfig, err)
	}
	return err
}

// runLangfuseStage sends every call to Langfuse as a trace and a generation
// until ctx ends; then it finishes the batches in flight (acknowledging what
// Langfuse accepted) and returns.
func runLangfuseStage(ctx context.Context, env *workerEnv, ready *ops.Stage, log *slog.Logger) error {
	sup, err := env.cfg.LangfuseStage(env.nc, env.reg, log)
	if err != nil {
		return err
	}
	if err := env.provisionStreams(ctx); err != nil {
		return err
	}
	ready.Running(sup.Health)
	return sup.Run(ctx)
}
