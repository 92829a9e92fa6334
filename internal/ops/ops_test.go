package ops

import (
	"errors"
	"io"
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
