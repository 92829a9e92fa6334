package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/tools/bench/usagebench"
)

// benchUsageReport is the part of `callpipe bench usage --json` the test reads.
type benchUsageReport struct {
	Database   string `json:"database"`
	Kept       bool   `json:"kept"`
	Calls      uint64 `json:"calls"`
	Days       int    `json:"days"`
	DupPercent int    `json:"dup_percent"`
	Repeat     int    `json:"repeat"`
	Load       struct {
		RowsWritten uint64  `json:"rows_written"`
		Statements  int     `json:"statements"`
		Seconds     float64 `json:"seconds"`
	} `json:"load"`
	Stored struct {
		DistinctCalls uint64 `json:"distinct_calls"`
		Rows          uint64 `json:"rows"`
		CallsBytes    uint64 `json:"calls_bytes_on_disk"`
	} `json:"stored"`
	Seal struct {
		Hours           int     `json:"hours"`
		Seconds         float64 `json:"seconds"`
		SealedCalls     uint64  `json:"sealed_calls"`
		CallsPerS       float64 `json:"calls_per_s"`
		UsageTotalCalls uint64  `json:"usage_total_calls"`
		RollupRows      uint64  `json:"rollup_rows"`
	} `json:"seal"`
	HeavyUser      string `json:"heavy_user"`
	HeavyUserCalls uint64 `json:"heavy_user_calls"`
	RareUser       string `json:"rare_user"`
	RareUserCalls  uint64 `json:"rare_user_calls"`
	Queries        []struct {
		Name        string    `json:"name"`
		Kind        string    `json:"kind"`
		TZ          string    `json:"tz"`
		State       string    `json:"state"`
		Percentiles bool      `json:"percentiles"`
		Rows        int       `json:"rows"`
		Runs        int       `json:"runs"`
		WallMS      []float64 `json:"wall_ms"`
		MinMS       float64   `json:"min_ms"`
		MedianMS    float64   `json:"median_ms"`
		MaxMS       float64   `json:"max_ms"`
		MemoryBytes uint64    `json:"memory_bytes"`
		ReadRows    uint64    `json:"read_rows"`
		Error       string    `json:"error"`
		Skipped     string    `json:"skipped"`
	} `json:"queries"`
	Targets []struct {
		Name string `json:"name"`
		Unit string `json:"unit"`
	} `json:"targets"`
}

// TestBenchUsageCommand runs `callpipe bench usage` small and checks its
// report: the load, a seal of every hour whose calls equal the distinct calls
// stored (counted again here on the kept database), every query shape in
// both zones and both states with times and server memory, and the call
// list pages. Speed is reported by the command, never asserted.
func TestBenchUsageCommand(t *testing.T) {
	ch := harness.ClickHouse(t)
	bin := testkit.Binary(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	env := append(os.Environ(), "CALLPIPE_CLICKHOUSE_ADDR="+ch.Native)

	const calls, days, repeat = 200000, 3, 2
	jsonOut := filepath.Join(dir, "bench-usage.json")
	cmd := exec.CommandContext(ctx, bin, "bench", "usage", "--calls", fmt.Sprint(calls), "--days", fmt.Sprint(days),
		"--repeat", fmt.Sprint(repeat), "--live-hours", "1", "--chunk", "60000", "--json", jsonOut, "--keep")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	t.Logf("callpipe bench usage:\n%s", out)
	var r benchUsageReport
	if b, rerr := os.ReadFile(jsonOut); rerr == nil {
		if jerr := json.Unmarshal(b, &r); jerr != nil {
			t.Fatalf("report JSON: %v\n%s", jerr, b)
		}
	}
	conn, cerr := callsdb.Open(ctx, callsdb.Config{Addr: ch.Native, User: "default"})
	if cerr != nil {
		t.Fatal(cerr)
	}
	defer conn.Close()
	if r.Database != "" {
		t.Cleanup(func() {
			dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
			defer dcancel()
			if err := usagebench.DropDatabase(dctx, conn, r.Database); err != nil {
				t.Errorf("drop %s: %v", r.Database, err)
			}
		})
	}
	if err != nil {
		t.Fatalf("bench usage: %v", err)
	}

	// The database is kept: count its calls here, independently.
	var distinct, rows uint64
	if err := conn.QueryRow(ctx, "SELECT toUInt64(uniqExact(id)), toUInt64(count()) FROM "+r.Database+".calls").Scan(&distinct, &rows); err != nil {
		t.Fatal(err)
	}
	if !r.Kept || r.Calls != calls || r.Days != days || r.Repeat != repeat {
		t.Errorf("report header: kept %v, calls %d, days %d, repeat %d", r.Kept, r.Calls, r.Days, r.Repeat)
	}
	if distinct != calls || r.Stored.DistinctCalls != distinct {
		t.Errorf("distinct calls: stored %d, reported %d; want %d", distinct, r.Stored.DistinctCalls, calls)
	}
	if r.Seal.SealedCalls != distinct || r.Seal.UsageTotalCalls != distinct {
		t.Errorf("sealed calls %d, usage total %d; want the %d distinct calls loaded", r.Seal.SealedCalls, r.Seal.UsageTotalCalls, distinct)
	}
	// 2 % stored twice: about 4,000 copies (hash-chosen). rows_written is
	// query_log's written_rows: the calls rows on 18.16 (later servers may
	// count the rows of the calls_by_user view too, hence only a lower bound).
	if dup := float64(r.Load.RowsWritten) - calls; dup < 0.015*calls {
		t.Errorf("rows written %d for %d calls: %.0f copies, want about 2%%", r.Load.RowsWritten, calls, dup)
	}
	if r.Stored.Rows < distinct || r.Stored.Rows > calls*1.025 || r.Stored.CallsBytes == 0 {
		t.Errorf("stored %d rows (%d bytes); want between %d and %d", r.Stored.Rows, r.Stored.CallsBytes, distinct, int(calls*1.025))
	}
	if r.Seal.Hours < days*24 || r.Seal.Hours > days*24+1 || r.Seal.Seconds <= 0 || r.Seal.CallsPerS <= 0 || r.Seal.RollupRows == 0 {
		t.Errorf("seal: %+v", r.Seal)
	}
	if r.HeavyUser == "" || r.RareUser == "" || r.RareUserCalls == 0 || r.HeavyUserCalls <= r.RareUserCalls {
		t.Errorf("users: heaviest %s (%d), rarest %s (%d)", r.HeavyUser, r.HeavyUserCalls, r.RareUser, r.RareUserCalls)
	}

	type key struct {
		name, tz, state string
		pct             bool
	}
	seen := map[key]int{}
	for _, q := range r.Queries {
		seen[key{q.Name, q.TZ, q.State, q.Percentiles}]++
		if q.Error != "" {
			t.Errorf("%s %s %s failed: %s", q.Name, q.TZ, q.State, q.Error)
			continue
		}
		if q.Skipped != "" {
			continue
		}
		if q.Runs != repeat || len(q.WallMS) != repeat || q.MinMS <= 0 || q.MinMS > q.MedianMS || q.MedianMS > q.MaxMS {
			t.Errorf("%s %s %s: runs %d, wall %v, min %v median %v max %v", q.Name, q.TZ, q.State, q.Runs, q.WallMS, q.MinMS, q.MedianMS, q.MaxMS)
		}
		if q.Rows == 0 || q.MemoryBytes == 0 || q.ReadRows == 0 {
			t.Errorf("%s %s %s: rows %d, memory %d, read rows %d", q.Name, q.TZ, q.State, q.Rows, q.MemoryBytes, q.ReadRows)
		}
	}
	rng := fmt.Sprintf("%dd", days)
	var want []key
	for _, state := range []string{"sealed", "live"} {
		for _, tz := range []string{"UTC", "America/New_York"} {
			for _, pct := range []bool{false, true} {
				for _, g := range []string{"day,model", "model,user", "hour,model", "day", "model", "user",
					"user limit=100", "model,user limit=100", "day,model user=" + r.HeavyUser, "day,model user=" + r.RareUser} {
					want = append(want, key{rng + " " + g, tz, state, pct})
				}
				want = append(want, key{"today model", tz, state, pct})
			}
		}
	}
	for _, u := range []string{"", " user=" + r.HeavyUser, " user=" + r.RareUser} {
		want = append(want, key{rng + " calls first page" + u, "UTC", "sealed", false}, key{rng + " calls next page" + u, "UTC", "sealed", false})
	}
	for _, k := range want {
		if seen[k] != 1 {
			t.Errorf("shape %q %s %s (percentiles %v) reported %d times, want once", k.name, k.tz, k.state, k.pct, seen[k])
		}
	}
	if len(r.Queries) != len(want) {
		t.Errorf("%d shapes reported, want %d", len(r.Queries), len(want))
	}
	for _, q := range r.Queries {
		switch {
		case strings.HasSuffix(q.Name, " limit=100") && (q.Rows == 0 || q.Rows > 100):
			t.Errorf("%s %s %s: %d rows, want the 100 groups with the most calls", q.Name, q.TZ, q.State, q.Rows)
		case q.Name == rng+" day" && q.TZ == "UTC" && q.Rows != days:
			t.Errorf("%s %s %s: %d day rows, want %d", q.Name, q.TZ, q.State, q.Rows, days)
		case q.Kind == "calls" && q.Skipped == "" && q.Name != rng+" calls first page user="+r.RareUser && q.Rows != 50:
			t.Errorf("%s: %d calls, want a page of 50", q.Name, q.Rows)
		}
	}
	if len(r.Targets) != 6 {
		t.Errorf("targets: %+v", r.Targets)
	}

	// --reuse measures the kept database again without loading: the same
	// calls, users and ranges (the run's clock is its newest call), after a
	// sealer pass. That pass seals again the hour the first run left dirty
	// (--live-hours 1), after its mark (so it is clean then), and no other
	// hour with calls: this build sealed them as it seals. (The days it
	// seals depend on the hour of day: its clock is after the mark.)
	reuseOut := filepath.Join(dir, "bench-usage-reuse.json")
	cmd = exec.CommandContext(ctx, bin, "bench", "usage", "--reuse", r.Database, "--calls", fmt.Sprint(calls), "--days", fmt.Sprint(days),
		"--repeat", "1", "--live-hours", "0", "--json", reuseOut)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bench usage --reuse: %v\n%s", err, out)
	} else {
		var hours, days, daysSoFar, weeks, fourWeeks, dirty int
		_, pass, found := strings.Cut(string(out), "seal pass")
		_, perr := fmt.Sscanf(pass, " %d hours, %d days, %d days so far, %d weeks, %d four weeks sealed (again), %d hours dirty", &hours, &days, &daysSoFar, &weeks, &fourWeeks, &dirty)
		if !found || perr != nil || hours != 1 || weeks != 0 || fourWeeks != 0 || dirty != 0 {
			t.Errorf("bench usage --reuse: want the pass to seal the dirty hour again, and no hour dirty after it (%d days sealed; %v):\n%s", days, perr, out)
		}
	}
	var r3 benchUsageReport
	if b, err := os.ReadFile(reuseOut); err != nil || json.Unmarshal(b, &r3) != nil {
		t.Fatalf("reuse report: %v", err)
	}
	if r3.Database != r.Database || !r3.Kept || r3.Load.Statements != 0 || r3.Seal.Hours != 0 || r3.Stored.DistinctCalls != distinct ||
		r3.HeavyUser != r.HeavyUser || r3.RareUser != r.RareUser || r3.Seal.UsageTotalCalls != distinct || len(r3.Targets) != 5 {
		t.Errorf("reuse report: database %s kept %v, load statements %d, sealed hours %d, %d calls, users %s/%s, usage total %d, %d targets",
			r3.Database, r3.Kept, r3.Load.Statements, r3.Seal.Hours, r3.Stored.DistinctCalls, r3.HeavyUser, r3.RareUser, r3.Seal.UsageTotalCalls, len(r3.Targets))
	}
	dayRows := func(rep benchUsageReport) int {
		for _, q := range rep.Queries {
			if q.Name == rng+" day" && q.TZ == "UTC" && q.State == "sealed" && !q.Percentiles {
				return q.Rows
			}
		}
		return -1
	}
	if dayRows(r3) != dayRows(r) || dayRows(r) < 1 {
		t.Errorf("reuse: %d day rows, the first run %d", dayRows(r3), dayRows(r))
	}

	// Without --keep the scratch database is gone at the end.
	cmd = exec.CommandContext(ctx, bin, "bench", "usage", "--calls", "20000", "--days", "1", "--repeat", "1", "--live-hours", "0",
		"--json", jsonOut)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bench usage without --keep: %v\n%s", err, out)
	}
	var r2 benchUsageReport
	if b, err := os.ReadFile(jsonOut); err != nil || json.Unmarshal(b, &r2) != nil || r2.Database == "" || r2.Kept {
		t.Fatalf("second report: %v %+v", err, r2)
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT toUInt64(count()) FROM system.databases WHERE name = "+callsdb.SQLString(r2.Database)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("scratch database %s still exists without --keep", r2.Database)
	}
}
