package main

import (
	"context"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	"github.com/callpipe/callpipe/internal/ops"
	"github.com/callpipe/callpipe/serve/export"
	"github.com/callpipe/callpipe/serve/usageapi"
	"github.com/callpipe/callpipe/store/settings"
)

func init() { registerCommand(newServeCommand) }

func newServeCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the usage API (/api/v1/...), the tracing settings and the dashboard (/) over ClickHouse",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := a.load(cmd, map[string]string{"listen": "serve.listen"})
			if err != nil {
				return err
			}
			log = log.With("component", "serve")
			ctx := cmd.Context()
			// The connection pool reconnects by itself; /readyz reports
			// ClickHouse outages, so serve starts only once it is reachable.
			conn, _, err := openClickHouse(ctx, cfg, "required by serve")
			if err != nil {
				return err
			}
			defer conn.Close()
			// NATS holds the tracing settings and the pipeline's lag; the
			// usage API does not need it, so serve starts without it and
			// only the settings routes answer 503 while it is away.
			nc, err := connectNATS(cfg, "serve", log)
			if err != nil {
				return err
			}
			defer nc.Close()

			otlp := cfg.Langfuse.Transport == "otlp"
			links := usageapi.LinksFor(ctx, configuredLangfuse(cfg), otlp, log)
			reg := ops.NewRegistry()
			if err := registerLag(reg, nc, cfg, log); err != nil {
				return err
			}
			srv, err := usageapi.New(usageapi.ClickHouseStore{Conn: conn, DB: cfg.ClickHouse.Database}, usageapi.Options{
				Tokens:          cfg.Serve.Tokens,
				ReadTokens:      cfg.Serve.ReadTokens,
				OpenWrites:      cfg.Serve.AllowUnauthenticatedWrites,
				RefreshInterval: time.Duration(cfg.Serve.RefreshInterval),
				QueryTimeout:    time.Duration(cfg.Serve.QueryTimeout),
				Langfuse:        links,
				Log:             log,
				Registerer:      reg,
				Gatherer:        reg,
			})
			if err != nil {
				return err
			}
			probe := cfg.Serve.TestConnection.Policy()
			if probe.TLS, err = langfuseTLS(cfg); err != nil {
				return err
			}
			gate := &settings.Gate{NC: nc, NATSURL: cfg.NATS.URL, Config: configuredLangfuse(cfg), Replicas: cfg.NATS.Stream.Replicas, Log: log,
				Probe: probe, Sealer: cfg.Sealer()}
			srv.MountSettings(gate, configuredLangfuse(cfg), links, otlp, log)
			sctx, stopSettings := context.WithCancel(ctx)
			defer stopSettings()
			go gate.Open(sctx)

			// Export jobs need S3 and Redis; without them serve still serves
			// usage and answers the jobs API with 503 naming what is missing.
			runner, closeRunner, err := newExportRunner(ctx, cfg, log, true)
			exports, stopExports := export.JobsAPI(runner, closeRunner, err, log)
			defer stopExports()
			for _, prefix := range []string{"/api/v1/exports", "/api/v1/exports/"} {
				srv.Mount(prefix, func(mux *http.ServeMux) { mux.Handle(prefix, exports) })
			}

			log.Info("serving usage API and dashboard", "database", cfg.ClickHouse.Database,
				"auth", srv.AuthMode(), "langfuse_links", links.Host != "", "exports", err == nil)
			// SIGTERM ends ctx: in-flight requests finish before the pool closes.
			return ops.Serve(ctx, cfg.Serve.Listen, srv, log, 30*time.Second)
		},
	}
	cmd.Flags().String("listen", "", "host:port of the API and dashboard (serve.listen)")
	return cmd
}

// configuredLangfuse is the Langfuse of the configuration file and
// environment: what applies while nothing is saved in the settings bucket.
func configuredLangfuse(cfg *config.Config) settings.Langfuse {
	return settings.Langfuse{Host: cfg.Langfuse.Host, PublicKey: cfg.Langfuse.PublicKey, SecretKey: cfg.Langfuse.SecretKey,
		ProjectID: cfg.Serve.LangfuseProjectID}
}
