package collector

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/callpipe/callpipe/internal/ops"
)

// Serve serves the collector at /v1/events of mux (which keeps its own
// routes, such as the ops endpoints) on listen until ctx ends. Requests in
// flight finish (their publishes are acknowledged; up to 30 s) before
// closePublisher runs (within 30 s more).
func (c *Collector) Serve(ctx context.Context, listen string, mux *http.ServeMux, closePublisher func(context.Context) error, log *slog.Logger) error {
	mux.Handle("/v1/events", c)
	serveErr := ops.Serve(ctx, listen, mux, log, 30*time.Second)
	fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := closePublisher(fctx); err != nil {
		log.Error("publisher close", "err", err)
	}
	return serveErr
}
