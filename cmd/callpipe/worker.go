package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
)

// workerEnv is what every stage gets: configuration, the shared NATS
// connection, the process's metrics registry and a logger.
type workerEnv struct {
	cfg *config.Config
	nc  *nats.Conn
	reg prometheus.Registerer

	mu     sync.Mutex
	health []func() error
}

// addHealth adds a readiness check to /readyz.
func (e *workerEnv) addHealth(check func() error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.health = append(e.health, check)
}

func (e *workerEnv) healthy() error {
	e.mu.Lock()
	checks := append([]func() error(nil), e.health...)
	e.mu.Unlock()
	for _, check := range checks {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// stageReadiness is a stage's part of /readyz: why it is not running yet,
// then its running sink's own health.
type stageReadiness struct {
	notReady atomic.Pointer[error]
	healthy  atomic.Pointer[func() error]
}

// readiness adds a stage to /readyz, not ready with reason starting until
// running is called.
func (e *workerEnv) readiness(starting string) *stageReadiness {
	r := &stageReadiness{}
	r.waiting(errors.New(starting))
	e.addHealth(r.check)
	return r
}

func (r *stageReadiness) waiting(err error)            { r.notReady.Store(&err) }
func (r *stageReadiness) running(healthy func() error) { r.healthy.Store(&healthy) }

func (r *stageReadiness) check() error {
	if h := r.healthy.Load(); h != nil {
		return (*h)()
	}
	return *r.notReady.Load()
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
			reg := newRegistry()
			env := &workerEnv{cfg: cfg, nc: nc, reg: reg}
			env.addHealth(natsHealth(nc))
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
				return serveHTTP(gctx, cfg.Worker.Listen, opsMux(reg, env.healthy), log, 5*time.Second)
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
