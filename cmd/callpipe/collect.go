package main

import (
	"context"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/config"
	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/ingest/collector"
	"github.com/callpipe/callpipe/internal/ops"
)

func newCollectCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "collect",
		Short: "Run the HTTP collector: POST /v1/events → CALLPIPE_CALLS",
		Args:  cobra.NoArgs,
		RunE: a.runE(map[string]string{"listen": "collect.listen"}, func(cmd *cobra.Command, cfg *config.Config, log *slog.Logger) error {
			log = log.With("component", "collect")
			nc, js, err := cfg.ConnectJetStream("collect", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			ctx := cmd.Context()
			err = bus.ProvisionWhenReady(ctx, log, func(ctx context.Context) error {
				return bus.EnsureCallsStream(ctx, js, cfg.StreamOptions())
			})
			if err != nil {
				if ctx.Err() != nil {
					return nil // stopped while waiting for JetStream: nothing accepted yet
				}
				return err
			}
			policy, err := cfg.EdgeCapturePolicy(log)
			if err != nil {
				return err
			}
			pub, err := ingest.NewPublisher(nc, ingest.PublisherOptions{Capture: policy})
			if err != nil {
				return err
			}
			reg := ops.NewRegistry()
			col := collector.New(pub, cfg.CollectorOptions(policy, reg, log))
			return drained(nc, log, col.Serve(ctx, cfg.Collect.Listen, ops.Mux(reg, ops.NATSHealth(nc)), pub.Close, log))
		}),
	}
	cmd.Flags().String("listen", "", "host:port of the HTTP side (collect.listen)")
	return cmd
}
