package settings

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Gate serves the settings API once its NATS KV bucket is open, and 503
// naming NATS before that or while NATS is disconnected: settings live in
// NATS, which `callpipe serve` does not need for the usage API, so serve
// starts without it.
type Gate struct {
	NC       *nats.Conn
	NATSURL  string      // as configured; shown without credentials
	Config   Langfuse    // from the configuration file and environment
	Replicas int         // of the bucket when the gate creates it
	Probe    ProbePolicy // where "Test connection" may connect
	Sealer   *Sealer     // seals the saved secret key; nil: no secret can be saved
	Log      *slog.Logger
	// Opened runs once the bucket is open, until ctx ends.
	Opened func(ctx context.Context, store *Store)

	handler atomic.Pointer[http.ServeMux]
	lastErr atomic.Pointer[error]
}

// Open opens the settings bucket, retrying until NATS answers or ctx ends;
// then the gate serves the settings API.
func (g *Gate) Open(ctx context.Context) {
	js, err := jetstream.New(g.NC)
	if err != nil {
		g.lastErr.Store(&err)
		g.Log.Error("settings: jetstream", "err", err)
		return
	}
	store, err := OpenWhenReady(ctx, js, g.Replicas, func(err error, wait time.Duration) {
		g.lastErr.Store(&err)
		g.Log.Warn("settings: NATS KV bucket not available yet; settings routes answer 503", "bucket", Bucket, "err", err, "retry_in", wait)
	}, WithSealer(g.Sealer))
	if err != nil {
		return
	}
	mux := http.NewServeMux()
	(&Handler{Store: store, Config: g.Config, Probe: g.Probe}).Register(mux)
	g.handler.Store(mux)
	g.Log.Info("settings: bucket open", "bucket", Bucket)
	if g.Opened != nil {
		g.Opened(ctx, store)
	}
}

func (g *Gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	mux := g.handler.Load()
	var reason string
	switch {
	case !g.NC.IsConnected():
		reason = fmt.Sprintf("settings are stored in NATS, which is not reachable (%s: %s)", redactURLs(g.NATSURL), g.NC.Status())
	case mux == nil:
		reason = "settings are stored in NATS, whose KV bucket " + Bucket + " is not open yet"
		if e := g.lastErr.Load(); e != nil {
			reason += ": " + (*e).Error()
		}
	}
	if reason != "" {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": reason})
		return
	}
	mux.ServeHTTP(w, r)
}

// redactURLs drops the user information of comma-separated URLs, so that an
// error message never shows a NATS password.
func redactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if u, err := url.Parse(p); err == nil && u.User != nil {
			u.User = nil
			p = u.String()
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
}
