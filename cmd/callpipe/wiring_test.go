package main

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
)

// Lag metrics, doctor and bench watch each stage's consumer under the name
// the configuration gives it (the clickhouse one used to be watched under
// its default name whatever clickhouse.consumer said).
func TestPipelineConsumersAreConfigured(t *testing.T) {
	cfg := config.Default()
	cfg.Transform.Consumer, cfg.Archive.Consumer = "n2", "a2"
	cfg.ClickHouse.Consumer, cfg.Langfuse.Consumer = "c2", "l2"
	want := map[string]bus.Consumer{
		bus.StageNormalize:  {Stage: bus.StageNormalize, Stream: bus.CallsStream, Name: "n2"},
		bus.StageArchive:    {Stage: bus.StageArchive, Stream: bus.CallsStream, Name: "a2"},
		bus.StageClickHouse: {Stage: bus.StageClickHouse, Stream: bus.NormalizedStream, Name: "c2"},
		bus.StageLangfuse:   {Stage: bus.StageLangfuse, Stream: bus.NormalizedStream, Name: "l2"},
	}
	got := pipelineConsumers(&cfg)
	for stage, w := range want {
		if got[stage] != w {
			t.Errorf("%s: %+v, want %+v", stage, got[stage], w)
		}
	}
	if len(got) != len(bus.Stages) {
		t.Errorf("%d consumers for %d stages", len(got), len(bus.Stages))
	}
	exp := doctorNATSExpect(&cfg)
	for _, c := range exp.Consumers {
		if c.Name != want[c.Stage].Name {
			t.Errorf("doctor expects %s under %q, want %q", c.Stage, c.Name, want[c.Stage].Name)
		}
	}
}

// Liveness must not follow dependencies (an orchestrator would restart every
// replica during a NATS outage); readiness must, and say why.
func TestOpsMuxLivenessAndReadiness(t *testing.T) {
	var notReady error = errors.New("nats: disconnected")
	srv := httptest.NewServer(opsMux(newRegistry(), func() error { return notReady }))
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
