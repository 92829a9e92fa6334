package usageapi

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/callpipe/callpipe/store/settings"
)

// LinksFor is where "View in Langfuse" links of l point: its project when
// known or looked up with its keys (within 5 s), else <host>/trace/<id>,
// which Langfuse redirects. otlp says the sink writes OTLP trace ids.
func LinksFor(ctx context.Context, l settings.Langfuse, otlp bool, log *slog.Logger) LangfuseLinks {
	links := LangfuseLinks{Host: l.Host, ProjectID: l.ProjectID, OTLP: otlp}
	if links.Host != "" && links.ProjectID == "" && l.PublicKey != "" && l.SecretKey != "" {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		pid, err := LangfuseProject(lctx, http.DefaultClient, links.Host, l.PublicKey, l.SecretKey)
		cancel()
		if err != nil {
			log.Warn("langfuse project lookup failed; links use <host>/trace/<id>", "host", links.Host, "err", err)
		} else {
			links.ProjectID = pid
		}
	}
	return links
}
