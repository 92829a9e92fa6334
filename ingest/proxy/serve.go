package proxy

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/callpipe/callpipe/internal/ops"
)

// Serve serves the proxy under mux (which keeps its own routes, such as the
// ops endpoints) on listen until ctx ends, then shuts down in this order: no
// new calls (in-flight ones get up to 60 s), then every captured event is
// published or spooled (Close), then closePublisher runs; the last two share
// 30 s. Run is started here and outlives ctx: it keeps publishing while
// in-flight calls finish.
func (p *Proxy) Serve(ctx context.Context, listen string, mux *http.ServeMux, closePublisher func(context.Context) error, log *slog.Logger) error {
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		if err := p.Run(context.WithoutCancel(ctx)); err != nil {
			log.Error("proxy emitter", "err", err)
		}
	}()
	mux.Handle("/", p)
	serveErr := ops.Serve(ctx, listen, mux, log, 60*time.Second)
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Close(cctx); err != nil {
		log.Error("proxy close", "err", err)
	}
	<-runDone
	if err := closePublisher(cctx); err != nil {
		log.Error("publisher close", "err", err)
	}
	return serveErr
}

// GCPercent is the proxy's GOGC unless the environment sets one. The
// proxy sits in front of every model call and keeps a small heap (a
// bounded queue; the spool is on disk), so at the default 100 it collects
// several times a second under load, and a call that arrives during a cycle
// pays for the collector's assists on the client's path. A higher target
// means fewer cycles; GOMEMLIMIT, where set, still bounds the heap.
const GCPercent = 400

// RaiseGCTarget sets the process's GOGC to GCPercent unless the environment
// sets GOGC (which wins). The proxy role calls it at start.
func RaiseGCTarget() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(GCPercent)
	}
}

// SetProcs runs the process's Go code on at most n CPUs at once
// (proxy.procs; 0 leaves Go's default, one per CPU) unless the environment
// sets GOMAXPROCS (which wins), and returns the number in force. A proxied
// call passes between several goroutines (the handler, the transport's
// writer and reader, the emitter, the NATS client's flusher): with more
// than one P each hand-off wakes an idle thread, which on a machine the
// proxy shares with the pipeline costs more CPU than the call's own work
// and waits for a CPU each time; on one P the hand-offs are queue
// operations. One P serves thousands of calls a second.
func SetProcs(n int) int {
	if n > 0 && os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(n)
	}
	return runtime.GOMAXPROCS(0)
}
