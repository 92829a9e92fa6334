package callsdb

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSQLString(t *testing.T) {
	for in, want := range map[string]string{
		"model-1":        `'model-1'`,
		`o'brien`:        `'o\'brien'`,
		`back\slash`:     `'back\\slash'`,
		"{db}.calls":     `'\x7Bdb}.calls'`,
		"a\nb\tc\rd\x00": `'a\nb\tc\rd\0'`,
	} {
		if got := SQLString(in); got != want {
			t.Errorf("SQLString(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestExportPageQueryFilters(t *testing.T) {
	from := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	f := ExportFilter{From: from, To: from.Add(48 * time.Hour), Model: "m'{db}", User: "u"}
	q := WithDB(ExportPageQuery(f, from, from.Add(time.Hour), &ExportCursor{Hour: from, ID: "c-9"}, 500), "callpipe")
	for _, want := range []string{
		"FROM callpipe.calls FINAL", "model = 'm\\'\\x7Bdb}'", "user_id = 'u'", "(toStartOfHour(start_time) > toDateTime(1795687200, 'UTC') OR (toStartOfHour(start_time) = toDateTime(1795687200, 'UTC') AND id > 'c-9'))",
		"ORDER BY toStartOfHour(start_time), id", "LIMIT 500",
		"start_time >= toDateTime(1795687200, 'UTC') AND start_time < toDateTime(1795690800, 'UTC')",
	} {
		if !strings.Contains(q, want) {
			t.Errorf("page query lacks %q:\n%s", want, q)
		}
	}
}

// An export page scans ExportColumns into ExportRow.dest in order: every
// stored column but inserted_at, one destination each.
func TestExportColumnsMatchTheRow(t *testing.T) {
	var r ExportRow
	if n, m := len(ExportColumns), len(r.dest()); n != m {
		t.Fatalf("%d export columns for %d row fields", n, m)
	}
	if slices.Contains(ExportColumns, "inserted_at") || len(ExportColumns) != len(CallColumns)-1 {
		t.Errorf("export columns %v: want the stored columns but inserted_at", ExportColumns)
	}
}
