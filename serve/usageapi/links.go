package usageapi

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/callpipe/callpipe/sinks/langfuse"
	"github.com/callpipe/callpipe/store/settings"
)

// LinksFor is where "View in Langfuse" links of l point: its project when
// known or looked up with its keys (within 5 s), else <host>/trace/<id>,
// which Langfuse redirects. transport is langfuse.transport: with "otlp"
// the sink writes OTLP trace ids; with "auto" it does when the server is
// version 4 or later, so the server's version is read as the sink reads it.
func LinksFor(ctx context.Context, l settings.Langfuse, transport string, log *slog.Logger) LangfuseLinks {
	links := LangfuseLinks{Host: l.Host, ProjectID: l.ProjectID, OTLP: transport == langfuse.TransportOTLP}
	if links.Host != "" && transport == langfuse.TransportAuto {
		vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		v, err := langfuse.ServerVersion(vctx, http.DefaultClient, links.Host)
		cancel()
		if err != nil {
			log.Warn("langfuse version unknown; links assume the ingestion transport (Langfuse v3 trace ids)", "host", links.Host, "err", err)
		} else {
			links.OTLP = langfuse.TransportForVersion(v) == langfuse.TransportOTLP
		}
	}
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
