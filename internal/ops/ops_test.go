package ops

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Liveness must not follow dependencies (an orchestrator would restart every
// replica during a NATS outage); readiness must, and say why.
func TestMuxLivenessAndReadiness(t *testing.T) {
	var notReady error = errors.New("nats: disconnected")
	srv := httptest.NewServer(Mux(NewRegistry(), func() error { return notReady }))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz = %d while a dependency is down, want 200", code)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "nats: disconnected") {
		t.Fatalf("/readyz = %d %q, want 503 naming the reason", code, body)
	}
	notReady = nil
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("/readyz = %d once ready, want 200", code)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("/metrics = %d", code)
	}
}

// Profiles are served on their own listener only: the public mux of a role
// (the proxy's, the collector's) must not expose them.
func TestPprofOnlyOnItsOwnMux(t *testing.T) {
	prof := httptest.NewServer(PprofMux())
	defer prof.Close()
	resp, err := http.Get(prof.URL + "/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "heap profile") {
		t.Fatalf("pprof heap = %d %.80q, want 200 with a heap profile", resp.StatusCode, body)
	}
	pub := httptest.NewServer(Mux(NewRegistry(), func() error { return nil }))
	defer pub.Close()
	resp, err = http.Get(pub.URL + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("public mux /debug/pprof/ = %d, want 404", resp.StatusCode)
	}
}

func TestStartPprofFailsOnTakenAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := StartPprof(ctx, ln.Addr().String(), slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("StartPprof on a taken address: nil error")
	}
}
