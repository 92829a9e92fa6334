package integration

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/callpipe/callpipe/integration/internal/harness"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/store/callsdb"
)

// BenchmarkCallList times the first and the next page (50 calls) of the
// call list over 30 days on the real server, without a filter, for a user
// with 1% of the calls, for a user with ~100 calls spread over the 30 days,
// and for a model + status filter (1 call in 350), reporting ms/op and the
// rows ClickHouse read per page (rows/op).
//
//	go test -run '^$' -bench CallList -benchtime 20x ./integration
//
// CALLPIPE_BENCH_CALLS calls (default 10,000,000) are loaded with INSERT ...
// SELECT FROM numbers (chBulkCalls: 2% stored twice). With
// CALLPIPE_BENCH_CALLLIST_DB=name the database is kept and reused by later
// runs (loaded only when empty); CALLPIPE_BENCH_REFERENCE=1 also times the
// single-statement reference query (CallListQuery).
func BenchmarkCallList(b *testing.B) {
	n := 10_000_000
	if v := os.Getenv("CALLPIPE_BENCH_CALLS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1000 {
			b.Fatalf("CALLPIPE_BENCH_CALLS=%q: want an integer >= 1000", v)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	conn, db := benchCallListDB(b, ctx, n)
	var parts, rows uint64
	if err := conn.QueryRow(ctx, "SELECT toUInt64(count()), toUInt64(sum(rows)) FROM system.parts WHERE database = '"+db+"' AND table = 'calls' AND active").Scan(&parts, &rows); err != nil {
		b.Fatal(err)
	}
	b.Logf("%s.calls: %d rows in %d active parts", db, rows, parts)

	from, to := callListEnd.Add(-30*24*time.Hour), callListEnd
	for _, c := range []struct {
		name string
		spec callsdb.CallListSpec
	}{
		{"all", callsdb.CallListSpec{}},
		{"user", callsdb.CallListSpec{User: "user-42"}},
		{"rare_user", callsdb.CallListSpec{User: "user-rare"}},
		{"model_status", callsdb.CallListSpec{Model: "model-3", Status: "error"}},
	} {
		s := c.spec
		s.From, s.To, s.Limit = from, to, 50
		_, next, err := callsdb.CallList(ctx, conn, db, s)
		if err != nil {
			b.Fatal(err)
		}
		if next == nil {
			b.Fatalf("%s: a single page", c.name)
		}
		second := s
		second.After = next
		for _, p := range []struct {
			name string
			spec callsdb.CallListSpec
		}{{"first", s}, {"next", second}} {
			b.Run(c.name+"/"+p.name, func(b *testing.B) {
				var read uint64
				rctx := clickhouse.Context(ctx, clickhouse.WithProgress(func(pr *clickhouse.Progress) { read += pr.Rows }))
				for range b.N {
					page, _, err := callsdb.CallList(rctx, conn, db, p.spec)
					if err != nil {
						b.Fatal(err)
					}
					if len(page) != 50 {
						b.Fatalf("%d calls", len(page))
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/op")
				b.ReportMetric(float64(read)/float64(b.N), "rows/op")
			})
			if os.Getenv("CALLPIPE_BENCH_REFERENCE") == "" {
				continue
			}
			b.Run("reference/"+c.name+"/"+p.name, func(b *testing.B) {
				for range b.N {
					r, err := conn.Query(ctx, callsdb.WithDB(callsdb.CallListQuery(p.spec), db))
					if err == nil {
						for r.Next() {
						}
						err = r.Err()
						r.Close()
					}
					if err != nil {
						b.Skipf("reference query: %v", err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/op")
			})
		}
	}
}

// benchCallListDB is a database holding n bulk-loaded calls: a fresh one
// (dropped at the end), or CALLPIPE_BENCH_CALLLIST_DB kept between runs.
func benchCallListDB(b *testing.B, ctx context.Context, n int) (driver.Conn, string) {
	want := uint64(n + max(0, (n-11+49)/50)) // every call, and number % 50 = 11 again
	db := os.Getenv("CALLPIPE_BENCH_CALLLIST_DB")
	var out *chsink.Output
	if db == "" {
		out, db = chTestDB(b)
	} else {
		out = chsink.NewOutput(chsink.OutputConfig{Config: callsdb.Config{Addr: harness.ClickHouse(b).Native, Database: db, User: "default"}, MaxTextBytes: 4096, MaxInFlight: 2})
		if err := out.Connect(ctx); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = out.Close() })
		if _, err := (&callsdb.Migrator{Conn: out.Conn(), Database: db}).Up(ctx); err != nil {
			b.Fatal(err)
		}
	}
	var have uint64
	if err := out.Conn().QueryRow(ctx, "SELECT toUInt64(count()) FROM "+db+".calls").Scan(&have); err != nil {
		b.Fatal(err)
	}
	switch have {
	case want:
		b.Logf("reusing %s: %d rows", db, have)
	case 0:
		t0 := time.Now()
		chBulkCalls(b, ctx, out.Conn(), db, n, callListEnd)
		b.Logf("loaded %d calls (%d rows) into %s in %v", n, want, db, time.Since(t0).Round(time.Second))
	default:
		b.Fatalf("%s.calls has %d rows, want 0 or %d (drop it or set CALLPIPE_BENCH_CALLS)", db, have, want)
	}
	return out.Conn(), db
}
