package main

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/config"
	"github.com/callpipe/callpipe/internal/ops"
	"github.com/callpipe/callpipe/serve/export"
	"github.com/callpipe/callpipe/serve/usageapi"
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

			links := usageapi.LinksFor(ctx, cfg.ConfiguredLangfuse(), cfg.Langfuse.Transport, log)
			reg := ops.NewRegistry()
			if err := registerLag(reg, nc, cfg, log); err != nil {
				return err
			}
			srv, err := usageapi.New(usageapi.ClickHouseStore{Conn: conn, DB: cfg.ClickHouse.Database}, cfg.UsageAPIOptions(links, reg, log))
			if err != nil {
				return err
			}
			gate, err := cfg.SettingsGate(nc, log)
			if err != nil {
				return err
			}
			srv.MountSettings(gate, cfg.ConfiguredLangfuse(), links, cfg.Langfuse.Transport, log)
			sctx, stopSettings := context.WithCancel(ctx)
			defer stopSettings()
			go gate.Open(sctx)

			// Export jobs need S3 and Redis; without them serve still serves
			// usage and answers the jobs API with 503 naming what is missing.
			runner, closeRunner, err := cfg.ExportRunner(ctx, log, true)
			exports, stopExports := export.JobsAPI(runner, closeRunner, err, log)
			defer stopExports()
			for _, prefix := range []string{"/api/v1/exports", "/api/v1/exports/"} {
				srv.Mount(prefix, func(mux *http.ServeMux) { mux.Handle(prefix, exports) })
			}

			log.Info("serving usage API and dashboard", "database", cfg.ClickHouse.Database,
				"auth", srv.AuthMode(), "langfuse_links", links.Host != "", "exports", err == nil)
			// SIGTERM ends ctx: in-flight requests finish before the pool closes.
			return ops.Serve(ctx, cfg.Serve.Listen, srv, log, 30*time.Second)
		}),
	}
	cmd.Flags().String("listen", "", "host:port of the API and dashboard (serve.listen)")
	return cmd
}
