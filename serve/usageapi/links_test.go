package usageapi

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks/langfuse"
	"github.com/callpipe/callpipe/store/settings"
)

// Links point at the trace id the sink writes: with transport auto, the
// OTLP id on a Langfuse 4 server and the call's trace id on a 3; an
// explicit transport is taken as given.
func TestLinksFollowTheTransport(t *testing.T) {
	version := "3.225.4"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/public/health":
			fmt.Fprintf(w, `{"status":"OK","version":%q}`, version)
		case "/api/public/projects":
			io.WriteString(w, `{"data":[{"id":"proj-1","name":"p"}]}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	l := settings.Langfuse{Host: srv.URL, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"}
	c := &schema.Call{ID: "c-1", TraceID: "agent-7"}
	otlpID := hex.EncodeToString(langfuse.OTLPTraceID(c))
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		version, transport, wantID string
	}{
		{"3.225.4", "auto", "agent-7"},
		{"4.16.0", "auto", otlpID},
		{"v4.0.1", "auto", otlpID},
		{"4.16.0", "ingestion", "agent-7"},
		{"3.225.4", "otlp", otlpID},
	} {
		version = tc.version
		links := LinksFor(context.Background(), l, tc.transport, log).compile()
		if got, want := links.traceURL(c), srv.URL+"/project/proj-1/traces/"+tc.wantID; got != want {
			t.Errorf("Langfuse %s, transport %s: link %s, want %s", tc.version, tc.transport, got, want)
		}
	}
}
