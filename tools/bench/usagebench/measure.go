package usagebench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TopGroups is the limit of the shapes that ask for the groups with the
// most calls (the usage API's limit).
const TopGroups = 100

// TimeZones are the zones the overview shapes run in.
var TimeZones = []string{"UTC", "America/New_York"}

// shape is one timed request.
type shape struct {
	name, kind, rng, tz, group, filter string
	usage                              callsdb.UsageSpec
	percentiles                        bool // usage: latency and TTFT percentiles asked for
	list                               callsdb.CallListSpec
	nextPage                           bool // time the page after the first one (its cursor comes from an untimed first page)
}

// dayRange is the dashboard's range of the last days days including today
// in loc: from the start of the first day to the start of tomorrow.
func dayRange(now time.Time, loc *time.Location, days int) (from, to time.Time) {
	y, m, d := now.In(loc).Date()
	return time.Date(y, m, d-(days-1), 0, 0, 0, 0, loc), time.Date(y, m, d+1, 0, 0, 0, 0, loc)
}

// usageShapes are the usage requests in zone tz: the range grouped as the
// dashboard's overview and filters and the API's other users ask, today by
// model, and the range filtered by the heaviest and the rarest user; each
// without percentiles (percentiles=false, as the dashboard asks) and with
// them (the API's default).
func (r *runner) usageShapes(rep *Report, tz string) ([]shape, error) {
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, err
	}
	spec := func(days int, g callsdb.GroupBy, user string) callsdb.UsageSpec {
		from, to := dayRange(r.start, loc, days)
		s := callsdb.UsageSpec{From: from, To: to, Group: g, Filter: callsdb.UsageFilter{User: user}}
		if tz != "UTC" {
			s.TZ = tz
		}
		return s
	}
	rng := fmt.Sprintf("%dd", r.o.Days)
	var out []shape
	add := func(rng string, days int, g callsdb.GroupBy, user string, limit int) {
		for _, pct := range []bool{false, true} {
			sh := shape{kind: "usage", rng: rng, tz: tz, group: groupName(g), usage: spec(days, g, user), percentiles: pct}
			sh.usage.SkipPercentiles = !pct
			sh.usage.Limit = limit
			sh.name = rng + " " + sh.group
			switch {
			case user != "":
				sh.filter = "user=" + user
			case limit > 0:
				sh.filter = fmt.Sprintf("limit=%d", limit)
			}
			if sh.filter != "" {
				sh.name += " " + sh.filter
			}
			out = append(out, sh)
		}
	}
	for _, g := range []callsdb.GroupBy{
		{Bucket: callsdb.BucketDay, Model: true},
		{Model: true, User: true},
		{Bucket: callsdb.BucketHour, Model: true},
		{Bucket: callsdb.BucketDay},
		{Model: true},
		{User: true},
	} {
		add(rng, r.o.Days, g, "", 0)
	}
	// the busiest users, and models of users, with their latency
	add(rng, r.o.Days, callsdb.GroupBy{User: true}, "", TopGroups)
	add(rng, r.o.Days, callsdb.GroupBy{Model: true, User: true}, "", TopGroups)
	add("today", 1, callsdb.GroupBy{Model: true}, "", 0)
	add(rng, r.o.Days, callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}, rep.HeavyUser, 0)
	add(rng, r.o.Days, callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}, rep.RareUser, 0)
	return out, nil
}

// callListShapes are the call list's first and next page over the range,
// for all users, the heaviest and the rarest.
func (r *runner) callListShapes(rep *Report) []shape {
	from, to := dayRange(r.start, time.UTC, r.o.Days)
	rng := fmt.Sprintf("%dd", r.o.Days)
	var out []shape
	for _, user := range []string{"", rep.HeavyUser, rep.RareUser} {
		for _, next := range []bool{false, true} {
			sh := shape{kind: "calls", rng: rng, tz: "UTC", nextPage: next,
				list: callsdb.CallListSpec{From: from, To: to, User: user, Limit: r.o.PageSize}}
			sh.name = rng + " calls first page"
			if next {
				sh.name = rng + " calls next page"
			}
			if user != "" {
				sh.filter = "user=" + user
				sh.name += " " + sh.filter
			}
			out = append(out, sh)
		}
	}
	return out
}

func groupName(g callsdb.GroupBy) string {
	parts := g.Dimensions()
	if g.Bucket != callsdb.BucketNone {
		parts = append([]string{string(g.Bucket)}, parts...)
	}
	if len(parts) == 0 {
		return "totals"
	}
	return strings.Join(parts, ",")
}

// measure times every shape Repeat times: the overview shapes with every
// loaded hour sealed, the call list, then (LiveHours > 0) the overview
// shapes again with the last hours dirty.
func (r *runner) measure(ctx context.Context, rep *Report) error {
	var shapes []shape
	for _, tz := range TimeZones {
		s, err := r.usageShapes(rep, tz)
		if err != nil {
			return err
		}
		shapes = append(shapes, s...)
	}
	r.say("")
	r.say("measure      %d runs of each shape (state sealed: every loaded hour sealed)", r.o.Repeat)
	if err := r.runShapes(ctx, rep, shapes, "sealed"); err != nil {
		return err
	}
	if err := r.runShapes(ctx, rep, r.callListShapes(rep), "sealed"); err != nil {
		return err
	}
	if r.o.LiveHours <= 0 {
		return nil
	}
	// Mark the last LiveHours hours holding calls dirty after their seals
	// (the marks must be newer than the seal versions, which the sealer's
	// clock made): readers then take them from the per-call rows, as they
	// do for the hours inside the redelivery horizon in production.
	end := r.start.Truncate(time.Hour)
	if !end.Equal(r.start) {
		end = end.Add(time.Hour)
	}
	var hours []int64
	for i := 1; i <= r.o.LiveHours; i++ {
		hours = append(hours, end.Add(-time.Duration(i)*time.Hour).Unix())
	}
	if err := callsdb.MarkDirty(ctx, r.conn, r.db, callsdb.Topology{}, hours, "bench usage: live edge", r.sealClock().Add(time.Hour)); err != nil {
		return fmt.Errorf("bench usage: mark the live hours: %w", err)
	}
	// The sealer's day so far ends where the live hours begin, as in
	// production: rebuilding the hour before them seals it through there.
	edge := end.Add(-time.Duration(r.o.LiveHours) * time.Hour)
	if _, _, err := r.sealer.Rebuild(ctx, edge.Add(-time.Hour), edge, nil); err != nil {
		return fmt.Errorf("bench usage: seal the day so far through %s: %w", edge.Format(time.RFC3339), err)
	}
	if err := r.dropSuperseded(ctx, rep.From, rep.To); err != nil {
		return err
	}
	r.say("measure      state live: the last %d hours read from the per-call rows, the day so far sealed through %s", r.o.LiveHours, edge.Format("15:04"))
	return r.runShapes(ctx, rep, shapes, "live")
}

// run is one timed run of a shape.
type run struct {
	id         string
	statements int
	wall       time.Duration
	rows       int
}

func (r *runner) runShapes(ctx context.Context, rep *Report, shapes []shape, state string) error {
	first := len(rep.Queries)
	runs := make([][]run, len(shapes))
	failedID := make([]string, len(shapes))
	ids := map[string]int{} // run id -> statements issued
	for i, sh := range shapes {
		res := QueryResult{Name: sh.name, Kind: sh.kind, Range: sh.rng, TZ: sh.tz, Group: sh.group, Filter: sh.filter, State: state,
			Percentiles: sh.kind == "usage" && sh.percentiles}
		for range r.o.Repeat {
			x, err := r.runOnce(ctx, sh)
			if x.id != "" {
				ids[x.id] = x.statements
			}
			if errors.Is(err, errNoNextPage) {
				res.Skipped = err.Error()
				break
			}
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				res.Error, failedID[i] = err.Error(), x.id
				break // a failing shape fails every time: do not spend the timeout again
			}
			runs[i] = append(runs[i], x)
			res.Rows = x.rows
		}
		rep.Queries = append(rep.Queries, res)
	}
	logs, err := r.queryLog(ctx, ids)
	if err != nil {
		return err
	}
	for i := range shapes {
		q := &rep.Queries[first+i]
		q.Runs = len(runs[i])
		var server []float64
		var mem []uint64
		for _, x := range runs[i] {
			q.WallMS = append(q.WallMS, float64(x.wall.Microseconds())/1000)
			l := logs[x.id]
			server = append(server, float64(l.durationMS))
			mem = append(mem, l.memory)
			q.MemoryBytes = max(q.MemoryBytes, l.memory)
			q.ReadRows = max(q.ReadRows, l.readRows)
			q.Statements = max(q.Statements, l.statements)
		}
		if id := failedID[i]; id != "" { // what the failed statement used before it failed
			q.MemoryBytes = max(q.MemoryBytes, logs[id].memory)
			q.ReadRows = max(q.ReadRows, logs[id].readRows)
		}
		if len(q.WallMS) > 0 {
			sorted := slices.Sorted(slices.Values(q.WallMS))
			q.MinMS, q.MaxMS, q.MedianMS = sorted[0], sorted[len(sorted)-1], median(sorted)
			q.ServerMS = median(slices.Sorted(slices.Values(server)))
			slices.Sort(mem)
			q.MemoryMedian = mem[(len(mem)-1)/2]
		}
		r.say("%s", q.line())
	}
	return nil
}

// runOnce runs sh once under QueryTimeout; a query still running then is
// killed on the server.
func (r *runner) runOnce(ctx context.Context, sh shape) (run, error) {
	qctx, cancel := context.WithTimeout(ctx, r.o.QueryTimeout)
	defer cancel()
	list := sh.list
	if sh.kind == "calls" && sh.nextPage {
		_, next, err := callsdb.CallList(qctx, r.conn, r.db, list)
		if err != nil {
			return run{}, r.failed(ctx, "", err)
		}
		if next == nil {
			return run{}, errNoNextPage
		}
		list.After = next
	}
	x := run{id: r.nextID("q")}
	conn := &taggedConn{Conn: r.conn, run: x.id}
	t := time.Now()
	var err error
	switch sh.kind {
	case "usage":
		var a callsdb.UsageAnswer
		a, err = callsdb.UsageWithTotals(qctx, conn, r.db, sh.usage) // as the usage API answers: rows and totals
		x.rows = len(a.Rows)
	case "calls":
		var page []callsdb.CallSummary
		page, _, err = callsdb.CallList(qctx, conn, r.db, list)
		x.rows = len(page)
	}
	x.wall, x.statements = time.Since(t), conn.n
	if err != nil {
		return x, r.failed(ctx, conn.last, err)
	}
	return x, nil
}

// taggedConn gives every statement of a timed run its own query id, the
// run's id with "-s<n>" appended, and log_queries=1. (One id for all of a
// run's statements fails now and then: a server may still hold the previous
// statement under that id when the next one arrives.)
type taggedConn struct {
	driver.Conn
	run  string
	mu   sync.Mutex // a run's reads of rows and totals run at once
	n    int
	last string
}

func (c *taggedConn) tag(ctx context.Context) context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	c.last = fmt.Sprintf("%s-s%d", c.run, c.n)
	return ch.Context(ctx, ch.WithQueryID(c.last), ch.WithSettings(ch.Settings{"log_queries": 1}))
}

func (c *taggedConn) Query(ctx context.Context, query string, args ...any) (driver.Rows, error) {
	return c.Conn.Query(c.tag(ctx), query, args...)
}

func (c *taggedConn) QueryRow(ctx context.Context, query string, args ...any) driver.Row {
	return c.Conn.QueryRow(c.tag(ctx), query, args...)
}

func (c *taggedConn) Select(ctx context.Context, dest any, query string, args ...any) error {
	return c.Conn.Select(c.tag(ctx), dest, query, args...)
}

func (c *taggedConn) Exec(ctx context.Context, query string, args ...any) error {
	return c.Conn.Exec(c.tag(ctx), query, args...)
}

// errNoNextPage skips a next-page shape whose first page holds every call
// (a rare user at small --calls).
var errNoNextPage = errors.New("skipped: the first page holds every call, there is no next page")

// failed kills query id if it may still run and describes err.
func (r *runner) failed(ctx context.Context, id string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "deadline exceeded") {
		if id != "" {
			kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = r.conn.Exec(kctx, "KILL QUERY WHERE query_id = "+callsdb.SQLString(id)+" SYNC")
		}
		return fmt.Errorf("not done within %s (killed)", r.o.QueryTimeout)
	}
	msg := err.Error()
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	return errors.New(msg)
}

func median(sorted []float64) float64 {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// targets evaluates the targets on the report (worst shape each).
func targets(rep *Report) []TargetResult {
	worst := func(name string, limit float64, unit string, pick func(QueryResult) (float64, bool)) TargetResult {
		t := TargetResult{Name: name, Limit: limit, Unit: unit, Met: true}
		for _, q := range rep.Queries {
			v, ok := pick(q)
			if !ok || q.Skipped != "" {
				continue
			}
			label := q.Name + " " + q.TZ + " " + q.State
			if q.Percentiles {
				label += " with percentiles"
			}
			if q.Error != "" {
				t.Met = false
				t.Of = label + " (failed: " + q.Error + ")"
				t.Worst = -1
				continue
			}
			if t.Worst >= 0 && v > t.Worst {
				t.Worst, t.Of = v, label
			}
			if v > limit {
				t.Met = false
			}
		}
		return t
	}
	overviewNoPct := func(q QueryResult) (float64, bool) {
		return q.MedianMS, q.Kind == "usage" && q.Range != "today" && !q.Percentiles
	}
	overviewPct := func(q QueryResult) (float64, bool) {
		return q.MedianMS, q.Kind == "usage" && q.Range != "today" && q.Percentiles
	}
	// the overview's latency charts: per model and per day (few groups);
	// percentiles over hours or users merge a histogram per group, and
	// their cost grows with the number of groups
	overviewCharts := func(q QueryResult) (float64, bool) {
		few := !strings.Contains(q.Group, "user") && !strings.Contains(q.Group, "hour")
		return q.MedianMS, q.Kind == "usage" && q.Range != "today" && q.Percentiles && few
	}
	list := func(q QueryResult) (float64, bool) { return q.MedianMS, q.Kind == "calls" }
	memory := func(q QueryResult) (float64, bool) { return float64(q.MemoryBytes), true }
	out := []TargetResult{
		worst(fmt.Sprintf("every %dd usage query without percentiles, median", rep.Days), TargetOverviewMS, "ms", overviewNoPct),
		worst(fmt.Sprintf("%dd per model/day with percentiles, median", rep.Days), TargetOverviewMS, "ms", overviewCharts),
		worst(fmt.Sprintf("every %dd usage query with percentiles, median", rep.Days), TargetOverviewMS, "ms", overviewPct),
		worst("call list first and next page, median", TargetCallListMS, "ms", list),
		worst("server memory per query, peak", TargetMemoryBytes, "bytes", memory),
	}
	if rep.Seal.CallsPerS == 0 { // a reused database was not sealed by this run
		return out
	}
	out = append(out, TargetResult{Name: "sealing rate", Limit: TargetSealCallsPerS, Unit: "calls/s", Worst: rep.Seal.CallsPerS,
		Of: "rollup rebuild", Met: rep.Seal.CallsPerS >= TargetSealCallsPerS})
	return out
}
