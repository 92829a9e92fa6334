package usagebench

import (
	"fmt"
	"io"
	"strings"
)

const lineFormat = "  %-44s %-16s %-6s %-4s %6s %9s %9s %9s %9s %10s %12s"

func header() string {
	return fmt.Sprintf(lineFormat, "query", "tz", "state", "pct", "rows", "min ms", "median ms", "max ms", "server ms", "peak mem", "read rows")
}

func (q QueryResult) pct() string {
	switch {
	case q.Kind != "usage":
		return ""
	case q.Percentiles:
		return "yes"
	}
	return "no"
}

// line is the query's row of the table.
func (q QueryResult) line() string {
	if q.Skipped != "" {
		return fmt.Sprintf("  %-44s %-16s %-6s %-4s %s", q.Name, q.TZ, q.State, q.pct(), q.Skipped)
	}
	if q.Error != "" && q.Runs == 0 {
		mem := ""
		if q.MemoryBytes > 0 {
			mem = " (peak memory " + gib(q.MemoryBytes) + ", read " + fmt.Sprint(q.ReadRows) + " rows)"
		}
		return fmt.Sprintf("  %-44s %-16s %-6s %-4s FAILED: %s%s", q.Name, q.TZ, q.State, q.pct(), q.Error, mem)
	}
	s := fmt.Sprintf(lineFormat, q.Name, q.TZ, q.State, q.pct(), fmt.Sprint(q.Rows),
		fmt.Sprintf("%.1f", q.MinMS), fmt.Sprintf("%.1f", q.MedianMS), fmt.Sprintf("%.1f", q.MaxMS),
		fmt.Sprintf("%.0f", q.ServerMS), gib(q.MemoryBytes), fmt.Sprint(q.ReadRows))
	if q.Error != "" {
		s += "  (then failed: " + q.Error + ")"
	}
	return s
}

// Print writes the report as a readable table.
func (rep *Report) Print(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("result       %d calls over %d days (%s .. %s), %d models, %d users, %d%% stored twice; ClickHouse %s, %d CPUs",
		rep.Calls, rep.Days, rep.From.Format("2006-01-02T15:04Z"), rep.To.Format("2006-01-02T15:04Z"), rep.Models, rep.Users,
		rep.DupPercent, rep.Server, rep.MachineCPUs)
	p("  load                 %.1f s, %.0f calls/s, %d rows written (copies included)", rep.Load.Seconds, rep.Load.CallsPerS, rep.Load.RowsWritten)
	p("  stored               %d distinct calls in %d rows; calls %s on disk (%d parts), database %s",
		rep.Stored.DistinctCalls, rep.Stored.Rows, gib(rep.Stored.CallsBytes), rep.Stored.CallsParts, gib(rep.Stored.DatabaseBytes))
	p("  rollup rebuild       %d hours in %.1f s (%.2f s/hour): %d calls sealed, %.0f calls/s; %d rollup rows, %s",
		rep.Seal.Hours, rep.Seal.Seconds, rep.Seal.SecondsPerHour, rep.Seal.SealedCalls, rep.Seal.CallsPerS, rep.Seal.RollupRows, gib(rep.Seal.RollupBytes))
	p("  usage total          %d calls over the loaded range (distinct stored: %d)", rep.Seal.UsageTotalCalls, rep.Stored.DistinctCalls)
	if len(rep.LoadAverage) > 0 {
		p("  load average (1 min) before load %.2f, seal %.2f, measure %.2f; at the end %.2f (%d CPUs)",
			rep.LoadAverage["load"], rep.LoadAverage["seal"], rep.LoadAverage["measure"], rep.LoadAverage["end"], rep.MachineCPUs)
	}
	p("  users                heaviest %s (%d calls), rarest %s (%d calls)", rep.HeavyUser, rep.HeavyUserCalls, rep.RareUser, rep.RareUserCalls)
	p("")
	p("%s", header())
	for _, q := range rep.Queries {
		p("%s", q.line())
	}
	p("")
	for _, t := range rep.Targets {
		verdict := "met"
		if !t.Met {
			verdict = "MISSED"
		}
		var worst, limit string
		switch t.Unit {
		case "bytes":
			worst, limit = gib(uint64(max(t.Worst, 0))), gib(uint64(t.Limit))
		case "calls/s":
			worst, limit = fmt.Sprintf("%.0f calls/s", t.Worst), fmt.Sprintf(">= %.0f calls/s", t.Limit)
		default:
			worst, limit = fmt.Sprintf("%.1f %s", t.Worst, t.Unit), fmt.Sprintf("<= %.0f %s", t.Limit, t.Unit)
		}
		if t.Worst < 0 {
			worst = "failed"
		}
		p("  target %-44s %-7s worst %s (%s), target %s", t.Name, verdict, worst, strings.TrimSpace(t.Of), limit)
	}
}
