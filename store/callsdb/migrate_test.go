package callsdb

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestSplitStatements(t *testing.T) {
	src := "-- comment\nCREATE TABLE a\n(\n  x String -- trailing\n);\n\n-- two\nCREATE VIEW b AS SELECT 1;\nSELECT 2"
	got := SplitStatements(src)
	want := []string{"CREATE TABLE a\n(\n  x String -- trailing\n)", "CREATE VIEW b AS SELECT 1", "SELECT 2"}
	if len(got) != len(want) {
		t.Fatalf("got %q", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("statement %d: got %q want %q", i, got[i], want[i])
		}
	}
}

func TestMigrationsAreOrderedAndIdempotent(t *testing.T) {
	migs, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(migs) == 0 {
		t.Fatal("no migrations embedded")
	}
	for i, m := range migs {
		if m.Version != i+1 {
			t.Errorf("%s: version %d, want %d (versions are consecutive from 1)", m.Name, m.Version, i+1)
		}
		if len(m.Statements) == 0 {
			t.Errorf("%s: no statements", m.Name)
		}
		for _, st := range m.Statements {
			// a backfill INSERT ... SELECT run twice stores copies, which
			// ReplacingMergeTree and every read collapse by id
			backfill := strings.HasPrefix(st, "INSERT INTO {db}.") && strings.Contains(st, "SELECT")
			// 18.16 has no ADD COLUMN IF NOT EXISTS; the migrator counts
			// "column already exists" as success (execTolerant)
			addColumn := strings.HasPrefix(st, "ALTER TABLE {db}.") && strings.Contains(st, " ADD COLUMN ") && !strings.Contains(st, ",")
			if !strings.Contains(st, "IF NOT EXISTS") && !strings.HasPrefix(st, "DROP TABLE IF EXISTS ") && !backfill && !addColumn {
				t.Errorf("%s: statement is not idempotent (CREATE ... IF NOT EXISTS, DROP TABLE IF EXISTS): %.80s", m.Name, st)
			}
			if !strings.Contains(st, "{db}.") {
				t.Errorf("%s: statement does not name {db}: %.80s", m.Name, st)
			}
		}
	}
}

// Constructs ClickHouse 18.16 rejects (../shared/notes/SERVICES.md); the
// real check is running the SQL on 18.16 and on chDB in integration tests,
// this only fails faster.
var not1816 = regexp.MustCompile(`(?i)\b(DateTime64|TTL|Map\(|JSON\b|Bool\b|CODEC|LowCardinality|WITH FILL|ILIKE|toStartOfInterval|JSONExtract|ADD COLUMN IF NOT EXISTS|DROP COLUMN IF EXISTS|insert_deduplication_token|async_insert|SETTINGS)`)

// tableGranularity and queryThreads are the SETTINGS clauses callpipe
// gives 18.16: a MergeTree table's index_granularity at the end of its
// CREATE TABLE, and a SELECT's max_threads at its end (18.16 applies it:
// measured in singleThreaded's comment; the oracle tests run it there).
var (
	tableGranularity = regexp.MustCompile(`(?s)\sENGINE = \w*MergeTree.*\sSETTINGS index_granularity = \d+$`)
	queryThreads     = regexp.MustCompile(`(?s)^SELECT\s.*\sSETTINGS max_threads = \d+$`)
)

func TestSQLAvoidsWhat1816Lacks(t *testing.T) {
	migs, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for _, m := range migs {
		all = append(all, m.Statements...)
	}
	all = append(all, BootstrapStatements...)
	all = append(all, AllQueries(time.Unix(0, 0), time.Unix(86400, 0))...)
	all = append(all, InsertCalls, InsertMigration)
	for _, st := range all {
		if tableGranularity.MatchString(st) || queryThreads.MatchString(st) {
			st = st[:strings.LastIndex(st, "SETTINGS")]
		}
		if m := not1816.FindString(st); m != "" {
			t.Errorf("%q is not on ClickHouse 18.16 in: %.120s", m, st)
		}
	}
}

func TestWithDB(t *testing.T) {
	if got := WithDB("SELECT 1 FROM {db}.calls, {db}.x", "cp"); got != "SELECT 1 FROM cp.calls, cp.x" {
		t.Fatal(got)
	}
}
