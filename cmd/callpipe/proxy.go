package main

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/ingest/proxy"
	"github.com/callpipe/callpipe/internal/ops"
)

func newProxyCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the OpenAI-compatible capture proxy in front of Xinference",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := a.load(cmd, map[string]string{"listen": "proxy.listen", "upstream": "proxy.upstream"})
			if err != nil {
				return err
			}
			if cfg.Proxy.Upstream == "" {
				return fmt.Errorf("%w: proxy.upstream: required (--upstream http://xinference:9997)", errConfig)
			}
			upstream, _ := url.Parse(cfg.Proxy.Upstream) // validated by config
			log = log.With("component", "proxy")
			nc, err := connectNATS(cfg, "proxy", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			ctx := cmd.Context()
			// The proxy serves even while NATS is away (events spool), so a
			// failed provisioning is logged, not fatal.
			if js, err := jetstream.New(nc); err == nil {
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				if err := bus.EnsureCallsStream(pctx, js, streamOptions(cfg)); err != nil {
					log.Warn("stream provisioning failed; events spool until NATS is back", "err", err)
				}
				cancel()
			}
			policy, err := edgeCapturePolicy(cfg, log)
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
			opts := proxy.DefaultOptions(upstream)
			opts.CaptureLimit = int(cfg.Proxy.CaptureLimit)
			opts.AskUsage = cfg.Proxy.AskUsage
			opts.SpoolDir = cfg.SpoolDir()
			opts.SpoolMaxBytes = int64(cfg.Proxy.SpoolMaxBytes)
			opts.Instance = cfg.Proxy.Instance
			opts.Logger = log
			opts.Registerer = reg
			opts.Capture = policy
			p, err := proxy.New(opts, pub)
			if err != nil {
				return fmt.Errorf("%w: %w", errConfig, err)
			}
			mux := ops.Mux(reg, func() error { return nil }) // healthy while it can forward; NATS state is in metrics
			serveErr := p.Serve(ctx, cfg.Proxy.Listen, mux, pub.Close, log)
			if err := nc.Drain(); err != nil {
				log.Error("nats drain", "err", err)
			}
			return serveErr
		},
	}
	cmd.Flags().String("listen", "", "host:port to listen on (proxy.listen)")
	cmd.Flags().String("upstream", "", "Xinference base URL (proxy.upstream)")
	return cmd
}
