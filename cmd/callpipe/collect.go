package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/ingest/collector"
	"github.com/callpipe/callpipe/internal/ops"
	"github.com/callpipe/callpipe/schema"
)

func newCollectCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "collect",
		Short: "Run the HTTP collector: POST /v1/events → CALLPIPE_CALLS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := a.load(cmd, map[string]string{"listen": "collect.listen"})
			if err != nil {
				return err
			}
			log = log.With("component", "collect")
			nc, js, err := connectJS(cfg, "collect", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			ctx := cmd.Context()
			if err := bus.EnsureCallsStream(ctx, js, streamOptions(cfg)); err != nil {
				return err
			}
			policy, err := edgeCapturePolicy(cfg, log)
			if err != nil {
				return err
			}
			pub, err := ingest.NewPublisher(nc, ingest.PublisherOptions{Capture: policy})
			if err != nil {
				return err
			}
			reg := ops.NewRegistry()
			col := collector.New(pub, collector.Options{
				MaxBodyBytes: int64(cfg.Collect.MaxBodyBytes),
				ReadTimeout:  time.Duration(cfg.Collect.ReadTimeout),
				Tokens:       cfg.Collect.Tokens,
				Limits:       schema.Limits{MaxEventBytes: int(cfg.Event.MaxBytes)},
				Capture:      policy,
				Logger:       log,
				Registerer:   reg,
			})
			serveErr := col.Serve(ctx, cfg.Collect.Listen, ops.Mux(reg, ops.NATSHealth(nc)), pub.Close, log)
			if err := nc.Drain(); err != nil {
				log.Error("nats drain", "err", err)
			}
			return serveErr
		},
	}
	cmd.Flags().String("listen", "", "host:port of the HTTP side (collect.listen)")
	return cmd
}
