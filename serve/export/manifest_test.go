package export

import (
	"encoding/json"
	"maps"
	"slices"
	"testing"
	"time"
)

// TestManifestSpecInline checks that the manifest holds the job's spec as
// flat keys beside its own, and that a manifest written with the spec's keys
// first (before Manifest embedded Spec) reads back the same.
func TestManifestSpecInline(t *testing.T) {
	spec := Spec{From: time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC), To: time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC),
		Model: "m", User: "u", Format: FormatParquet, Dest: "s3://b/p", Source: SourceCalls, Compression: "zstd", JobID: "exp-1"}
	b, err := json.Marshal(Manifest{Version: ManifestVersion, Spec: spec, Query: "q", Rows: 3})
	if err != nil {
		t.Fatal(err)
	}
	var flat map[string]json.RawMessage
	if err := json.Unmarshal(b, &flat); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"manifest_version", "job_id", "source", "format", "compression", "from", "to", "model", "user", "dest", "query", "rows"} {
		if _, ok := flat[k]; !ok {
			t.Errorf("no key %q in %s", k, b)
		}
	}
	if _, ok := flat["Spec"]; ok {
		t.Errorf("spec nested: %s", b)
	}

	old := `{"manifest_version": 1, "job_id": "exp-1", "source": "calls", "format": "parquet", "compression": "zstd",
  "from": "2026-11-26T00:00:00Z", "to": "2026-11-27T00:00:00Z", "model": "m", "user": "u", "dest": "s3://b/p",
  "query": "q", "args": {"format": "parquet"}, "columns": ["id"], "rows": 3, "bytes": 10, "parts": [], "attempts": 1, "fence": 2}`
	var m Manifest
	if err := json.Unmarshal([]byte(old), &m); err != nil {
		t.Fatal(err)
	}
	if m.Spec != spec || m.Version != 1 || m.Query != "q" || m.Rows != 3 || m.Fence != 2 {
		t.Errorf("read back %+v", m)
	}
	if got := slices.Sorted(maps.Keys(m.Args)); !slices.Equal(got, []string{"format"}) {
		t.Errorf("args %v", m.Args)
	}
}
