package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/config"
	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/ingest/proxy"
	"github.com/callpipe/callpipe/internal/ops"
)

func newProxyCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the OpenAI-compatible capture proxy in front of Xinference",
		Args:  cobra.NoArgs,
		RunE: a.runE(map[string]string{"listen": "proxy.listen", "upstream": "proxy.upstream"}, func(cmd *cobra.Command, cfg *config.Config, log *slog.Logger) error {
			if cfg.Proxy.Upstream == "" {
				return fmt.Errorf("%w: proxy.upstream: required (--upstream http://xinference:9997)", errConfig)
			}
			log = log.With("component", "proxy")
			proxy.RaiseGCTarget()
			log.Info("proxy runtime", "gomaxprocs", proxy.SetProcs(cfg.Proxy.Procs))
			nc, err := cfg.ConnectNATS("proxy", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			ctx := cmd.Context()
			// The proxy serves even while NATS is away (events spool), so a
			// failed provisioning is logged, not fatal.
			if js, err := jetstream.New(nc); err == nil {
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				if err := bus.EnsureCallsStream(pctx, js, cfg.StreamOptions()); err != nil {
					log.Warn("stream provisioning failed; events spool until NATS is back", "err", err)
				}
				cancel()
			}
			policy, err := cfg.EdgeCapturePolicy(log)
			if err != nil {
				return err
			}
			// The proxy applies the policy itself, before it queues or
			// spools an event: its publisher needs none.
			pub, err := ingest.NewPublisher(nc, ingest.PublisherOptions{})
			if err != nil {
				return err
			}
			reg := ops.NewRegistry()
			p, err := proxy.New(cfg.ProxyOptions(policy, reg, log), pub)
			if err != nil {
				return fmt.Errorf("%w: %w", errConfig, err)
			}
			mux := ops.Mux(reg, func() error { return nil }) // healthy while it can forward; NATS state is in metrics
			return drained(nc, log, p.Serve(ctx, cfg.Proxy.Listen, mux, pub.Close, log))
		}),
	}
	cmd.Flags().String("listen", "", "host:port to listen on (proxy.listen)")
	cmd.Flags().String("upstream", "", "Xinference base URL (proxy.upstream)")
	return cmd
}
