package config

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/internal/ops"
	"github.com/callpipe/callpipe/serve/export"
	"github.com/callpipe/callpipe/serve/usageapi"
)

// RegisterLag reports in reg the lag of the named stages' consumers (all
// when none are named) and the size of the dead-letter stream.
func (c *Config) RegisterLag(reg prometheus.Registerer, nc *nats.Conn, log *slog.Logger, stageNames ...string) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	return reg.Register(bus.NewStageLagCollector(js, c.Consumers(), log, stageNames...))
}

// UsageServer is the serve role's handler over the calls database on conn:
// the usage API and dashboard, the pipeline's lag in its /metrics, the
// tracing settings (kept in NATS: while NATS is away only their routes
// answer 503) and the export jobs API (without S3 or Redis it answers 503
// naming what is missing). stop ends the settings
// watch and the export jobs; the caller calls it after serving.
func (c *Config) UsageServer(ctx context.Context, conn driver.Conn, nc *nats.Conn, log *slog.Logger) (srv *usageapi.Server, stop func(), err error) {
	links := usageapi.LinksFor(ctx, c.ConfiguredLangfuse(), c.Langfuse.Transport, log)
	reg := ops.NewRegistry()
	if err := c.RegisterLag(reg, nc, log); err != nil {
		return nil, nil, err
	}
	if srv, err = usageapi.New(usageapi.ClickHouseStore{Conn: conn, DB: c.ClickHouse.Database}, c.UsageAPIOptions(links, reg, log)); err != nil {
		return nil, nil, err
	}
	gate, err := c.SettingsGate(nc, log)
	if err != nil {
		return nil, nil, err
	}
	srv.MountSettings(gate, c.ConfiguredLangfuse(), links, c.Langfuse.Transport, log)
	sctx, stopSettings := context.WithCancel(ctx)
	go gate.Open(sctx)

	runner, closeRunner, exportsErr := c.ExportRunner(ctx, log, true)
	exports, stopExports := export.JobsAPI(runner, closeRunner, exportsErr, log)
	for _, prefix := range []string{"/api/v1/exports", "/api/v1/exports/"} {
		srv.Mount(prefix, func(mux *http.ServeMux) { mux.Handle(prefix, exports) })
	}
	log.Info("serving usage API and dashboard", "database", c.ClickHouse.Database,
		"auth", srv.AuthMode(), "langfuse_links", links.Host != "", "exports", exportsErr == nil)
	return srv, func() { stopExports(); stopSettings() }, nil
}
