package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/store/callsdb"
)

// TestClickHouseChDB runs every migration (twice) and every statement the
// project sends to ClickHouse on the modern engine in chDB (26.x), inserting
// each call twice, and checks that every Usage grouping equals the ground
// truth there too. libchdb.so comes from deploy/local/chdb.sh
// (CHDB_LIB_PATH); without it the test is skipped, or fails under CI.
//
// chDB is driven by integration/internal/chdbcheck in a child process:
// chdb-go's purego binding panics at init when the library is missing, which
// must not take this whole test binary down.
func TestClickHouseChDB(t *testing.T) {
	lib := os.Getenv("CHDB_LIB_PATH")
	if lib == "" {
		msg := "CHDB_LIB_PATH not set; install chDB with `eval \"$(bash deploy/local/chdb.sh)\"`"
		if os.Getenv(harness.EnvCI) != "" {
			t.Fatal(msg + " (CI: failing instead of skipping)")
		}
		t.Skip(msg)
	}
	if _, err := os.Stat(lib); err != nil {
		t.Fatalf("CHDB_LIB_PATH: %v", err)
	}
	dir := t.TempDir()
	calls := genCalls(5, "chdb", 5000, 7, 5, 50, chBase)
	b, err := json.Marshal(calls)
	if err != nil {
		t.Fatal(err)
	}
	callsFile, outFile := filepath.Join(dir, "calls.json"), filepath.Join(dir, "usage.json")
	if err := os.WriteFile(callsFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	from, to := chBase.Add(13*time.Hour+5*time.Minute), chBase.Add(6*24*time.Hour+time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	cmd := exec.CommandContext(ctx, goBin, "run", "./integration/internal/chdbcheck",
		"-calls", callsFile, "-out", outFile, "-from", fmt.Sprint(from.Unix()), "-to", fmt.Sprint(to.Unix()))
	cmd.Dir = harness.RepoRoot(t)
	cmd.Env = append(os.Environ(), "CHDB_LIB_PATH="+lib)
	out, err := cmd.CombinedOutput()
	t.Logf("chdbcheck:\n%s", out)
	if err != nil {
		t.Fatalf("chdbcheck: %v", err)
	}
	rb, err := os.ReadFile(outFile)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string][]callsdb.UsageRow
	if err := json.Unmarshal(rb, &got); err != nil {
		t.Fatal(err)
	}
	for _, g := range callsdb.AllGroupings() {
		rows, ok := got[g.String()]
		if !ok {
			t.Fatalf("chdbcheck did not report usage %s", g)
		}
		for i := range rows {
			rows[i].Bucket = rows[i].Bucket.UTC()
		}
		if err := diffUsage(rows, groundTruth(calls, from, to, g)); err != nil {
			t.Errorf("chDB usage %s: %v", g, err)
		}
	}
}
