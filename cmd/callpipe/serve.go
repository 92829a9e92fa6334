package main

import (
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/config"
	"github.com/callpipe/callpipe/internal/ops"
)

func newServeCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the usage API (/api/v1/...), the tracing settings and the dashboard (/) over ClickHouse",
		Args:  cobra.NoArgs,
		RunE: a.runE(map[string]string{"listen": "serve.listen"}, func(cmd *cobra.Command, cfg *config.Config, log *slog.Logger) error {
			log = log.With("component", "serve")
			ctx := cmd.Context()
			// The connection pool reconnects by itself; /readyz reports
			// ClickHouse outages, so serve starts only once it is reachable.
			conn, _, err := cfg.OpenClickHouse(ctx, "required by serve")
			if err != nil {
				return err
			}
			defer conn.Close()
			// NATS holds the tracing settings and the pipeline's lag; the
			// usage API does not need it, so serve starts without it and
			// only the settings routes answer 503 while it is away.
			nc, err := cfg.ConnectNATS("serve", log)
			if err != nil {
				return err
			}
			defer nc.Close()

			srv, stop, err := cfg.UsageServer(ctx, conn, nc, log)
			if err != nil {
				return err
			}
			defer stop()
			// SIGTERM ends ctx: in-flight requests finish before the pool closes.
			return ops.Serve(ctx, cfg.Serve.Listen, srv, log, 30*time.Second)
		}),
	}
	cmd.Flags().String("listen", "", "host:port of the API and dashboard (serve.listen)")
	return cmd
}
