package main

import (
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
