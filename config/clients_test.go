package config

import (
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/bus"
)

// Lag metrics, doctor and bench watch each stage's consumer under the name
// the configuration gives it (the clickhouse one used to be watched under
// its default name whatever clickhouse.consumer said).
func TestPipelineConsumersAreConfigured(t *testing.T) {
	cfg := Default()
	cfg.Transform.Consumer, cfg.Archive.Consumer = "n2", "a2"
	cfg.ClickHouse.Consumer, cfg.Langfuse.Consumer = "c2", "l2"
	want := map[string]bus.Consumer{
		bus.StageNormalize:  {Stage: bus.StageNormalize, Stream: bus.CallsStream, Name: "n2"},
		bus.StageArchive:    {Stage: bus.StageArchive, Stream: bus.CallsStream, Name: "a2"},
		bus.StageClickHouse: {Stage: bus.StageClickHouse, Stream: bus.NormalizedStream, Name: "c2"},
		bus.StageLangfuse:   {Stage: bus.StageLangfuse, Stream: bus.NormalizedStream, Name: "l2"},
	}
	got := cfg.Consumers()
	for stage, w := range want {
		if got[stage] != w {
			t.Errorf("%s: %+v, want %+v", stage, got[stage], w)
		}
	}
	if len(got) != len(bus.Stages) {
		t.Errorf("%d consumers for %d stages", len(got), len(bus.Stages))
	}
	exp := cfg.doctorNATSExpect([]string{bus.StageNormalize, bus.StageArchive, bus.StageClickHouse, bus.StageLangfuse})
	for _, c := range exp.Consumers {
		if c.Name != want[c.Stage].Name {
			t.Errorf("doctor expects %s under %q, want %q", c.Stage, c.Name, want[c.Stage].Name)
		}
	}
}

// Every stage of the bus's topology is one a worker can run, and a stage
// that cannot be built says which setting or name is wrong before anything
// runs.
func TestWorkerStagesBuild(t *testing.T) {
	names := WorkerStageNames()
	if len(names) != len(bus.Stages) {
		t.Fatalf("worker stages %v, bus stages %d", names, len(bus.Stages))
	}
	for _, st := range bus.Stages {
		if !slices.Contains(names, st.Name) {
			t.Errorf("bus stage %s is not a worker stage", st.Name)
		}
	}
	cfg := Default()
	cfg.ClickHouse.Addr, cfg.S3.Endpoint, cfg.S3.Bucket = "127.0.0.1:9000", "127.0.0.1:9100", "calls"
	for _, name := range names {
		run, err := cfg.WorkerStage(name, nil, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
		if err != nil || run == nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := cfg.WorkerStage("bogus", nil, nil, nil); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `unknown stage "bogus"`) {
		t.Errorf("unknown stage: %v", err)
	}
	cfg.S3.Endpoint = ""
	if _, err := cfg.WorkerStage(bus.StageArchive, nil, nil, nil); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "s3.endpoint") {
		t.Errorf("archive without s3.endpoint: %v", err)
	}
}
