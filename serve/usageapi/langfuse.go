package usageapi

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks/langfuse"
)

// LangfuseLinks says how to link a call to its trace in Langfuse's UI:
// <Host>/project/<ProjectID>/traces/<trace id>, or <Host>/trace/<trace id>
// (Langfuse redirects it to the trace's project) without a project id.
// The trace id is the one the langfuse sink writes: the call's trace_id (or
// its id), or for the OTLP transport its 32-hex-digit OTLP trace id.
type LangfuseLinks struct {
	Host      string
	ProjectID string
	OTLP      bool
}

type langfuseLinks struct{ LangfuseLinks }

func (l LangfuseLinks) compile() langfuseLinks {
	l.Host = strings.TrimRight(l.Host, "/")
	return langfuseLinks{l}
}

func (l langfuseLinks) enabled() bool { return l.Host != "" }

func (l langfuseLinks) traceURL(c *schema.Call) string {
	if !l.enabled() {
		return ""
	}
	id := langfuse.TraceID(c)
	if l.OTLP {
		id = hex.EncodeToString(langfuse.OTLPTraceID(c))
	}
	if l.ProjectID != "" {
		return l.Host + "/project/" + url.PathEscape(l.ProjectID) + "/traces/" + url.PathEscape(id)
	}
	return l.Host + "/trace/" + url.PathEscape(id)
}

// LangfuseProject returns the id of the project the key pair belongs to
// (GET /api/public/projects answers with exactly that project).
func LangfuseProject(ctx context.Context, client *http.Client, host, publicKey, secretKey string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(host, "/")+"/api/public/projects", nil)
	if err != nil {
		return "", fmt.Errorf("langfuse projects: %w", err)
	}
	req.SetBasicAuth(publicKey, secretKey)
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("langfuse projects: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", fmt.Errorf("langfuse projects: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("langfuse projects: HTTP %d: %.200s", resp.StatusCode, body)
	}
	var p struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return "", fmt.Errorf("langfuse projects: %w", err)
	}
	if len(p.Data) == 0 || p.Data[0].ID == "" {
		return "", fmt.Errorf("langfuse projects: no project in the answer")
	}
	return p.Data[0].ID, nil
}
