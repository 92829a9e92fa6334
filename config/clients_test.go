package config

import (
	"testing"

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
