package usageapi

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/callpipe/callpipe/store/settings"
)

// MountSettings serves gate's settings API under /api/v1/settings/ and,
// once gate opens the settings bucket, keeps the "View in Langfuse" links
// following the Langfuse settings saved from the dashboard: configured
// (with links, its links) while none are saved, LinksFor the saved ones
// otherwise. It sets gate.Opened; the caller runs gate.Open.
func (s *Server) MountSettings(gate *settings.Gate, configured settings.Langfuse, links LangfuseLinks, otlp bool, log *slog.Logger) {
	gate.Opened = func(ctx context.Context, store *settings.Store) {
		err := store.WatchLangfuse(ctx, configured, func(eff settings.Effective) {
			if eff.Source == settings.SourceConfig {
				s.SetLangfuse(links)
				return
			}
			s.SetLangfuse(LinksFor(ctx, eff.Langfuse, otlp, log))
		})
		if err != nil && ctx.Err() == nil {
			log.Warn("settings: watching the Langfuse settings stopped; links keep the last ones", "err", err)
		}
	}
	s.Mount("/api/v1/settings/", func(mux *http.ServeMux) {
		for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete} {
			mux.Handle(m+" /api/v1/settings/", gate) // the settings routes refine the pattern once open
		}
	})
}
