package integration

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/serve/usageapi"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/store/callsdb"
)

// serveBase is the first day of the API tests' data set: the week around
// the 2026 US daylight-saving start (Sunday 8 March, 02:00 → 03:00 in New York).
var serveBase = time.Date(2026, 3, 3, 0, 0, 0, 0, time.UTC)

// serveAPI starts the API in process over a fresh seeded database.
func serveAPI(t *testing.T, n int) (base string, calls []schema.Call, out *chsink.Output, db string) {
	t.Helper()
	out, db = chTestDB(t)
	calls = seedServe(t, out, serveCalls(8, "api", n, serveBase, 8*24*time.Hour))
	srv, err := usageapi.New(usageapi.ClickHouseStore{Conn: out.Conn(), DB: db}, usageapi.Options{
		Langfuse: usageapi.LangfuseLinks{Host: "http://langfuse.test:3000", ProjectID: "proj-1"},
		Now:      func() time.Time { return serveBase.Add(9 * 24 * time.Hour) },
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return hs.URL, calls, out, db
}

// TestServeUsageAPI checks GET /api/v1/usage against the data set computed
// in Go: every group_by combination in three time zones (one with a
// half-hour offset, one with a DST change in range), date and RFC 3339
// ranges, every filter, empty ranges and zero-filled buckets.
func TestServeUsageAPI(t *testing.T) {
	base, calls, _, _ := serveAPI(t, 1500)
	t0 := time.Now()
	check := func(name string, params url.Values, from, to time.Time, g callsdb.GroupBy, f callsdb.UsageFilter, loc *time.Location) usageapi.UsageResponse {
		t.Helper()
		var got usageapi.UsageResponse
		apiGet(t, base, "/api/v1/usage", params, "", http.StatusOK, &got)
		if !got.From.Equal(from) || !got.To.Equal(to) || got.TZ != loc.String() {
			t.Fatalf("%s: answered range [%s, %s) %s, want [%s, %s) %s", name, got.From, got.To, got.TZ, from, to, loc)
		}
		want, totals := serveTruth(calls, from, to, g, f, loc)
		if err := diffUsageRows(got.Rows, want); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := diffMetrics(got.Totals, totals); err != nil {
			t.Fatalf("%s totals: %v", name, err)
		}
		// without percentiles the totals are the rows' sums (no read of
		// their own): the same numbers, quantiles zero
		bareParams := url.Values{"percentiles": {"false"}}
		for k, v := range params {
			bareParams[k] = v
		}
		var bare usageapi.UsageResponse
		apiGet(t, base, "/api/v1/usage", bareParams, "", http.StatusOK, &bare)
		noQuantiles := func(m *usageapi.Metrics) { m.LatencyP50, m.LatencyP95, m.LatencyP99 = 0, 0, 0 }
		for i := range want {
			noQuantiles(&want[i].Metrics)
		}
		noQuantiles(&totals)
		if err := diffUsageRows(bare.Rows, want); err != nil || bare.Percentiles != "none" {
			t.Fatalf("%s without percentiles (%s): %v", name, bare.Percentiles, err)
		}
		if err := diffMetrics(bare.Totals, totals); err != nil {
			t.Fatalf("%s totals without percentiles: %v", name, err)
		}
		return got
	}
	utc := time.UTC
	ny, _ := time.LoadLocation("America/New_York")
	kolkata, _ := time.LoadLocation("Asia/Kolkata")
	groupings := append(callsdb.AllGroupings(), callsdb.AllSourceGroupings()...)
	from, to := serveBase.Add(13*time.Hour+5*time.Minute), serveBase.Add(8*24*time.Hour+time.Second)
	// Every combination in New York (the range spans its DST start); the
	// time-bucketed ones also in UTC and in a zone with a half-hour offset.
	var bucketed []callsdb.GroupBy
	for _, g := range groupings {
		if g.Bucket != callsdb.BucketNone && (g.Model == g.User) {
			bucketed = append(bucketed, g)
		}
	}
	for _, loc := range []*time.Location{ny, utc, kolkata} {
		gs := groupings
		if loc != ny {
			gs = bucketed
		}
		for _, g := range gs {
			p := url.Values{"from": {from.In(loc).Format(time.RFC3339)}, "to": {to.Format(time.RFC3339)}, "group_by": {groupByParam(g)}}
			if loc != utc {
				p.Set("tz", loc.String())
			}
			got := check(g.String()+" "+loc.String(), p, from, to, g, callsdb.UsageFilter{}, loc)
			if g == (callsdb.GroupBy{Bucket: callsdb.BucketHour}) && loc == ny {
				// The DST start: 01:00 EST is followed by 03:00 EDT.
				var hours []string
				for _, r := range got.Rows {
					hours = append(hours, *r.Hour)
				}
				if !strings.Contains(strings.Join(hours, " "), "2026-03-08T01:00:00-05:00 2026-03-08T03:00:00-04:00") {
					t.Errorf("hours in New York around the DST start: %v", hours)
				}
			}
		}
	}
	if got := len(calls); got != 1500 {
		t.Fatalf("%d calls", got)
	}

	// limit: the groups with the most calls, all their days, every group's totals
	for _, g := range []callsdb.GroupBy{{User: true}, {Bucket: callsdb.BucketDay, Model: true, User: true}} {
		p := url.Values{"from": {from.Format(time.RFC3339)}, "to": {to.Format(time.RFC3339)}, "group_by": {groupByParam(g)}, "tz": {ny.String()}, "limit": {"3"}}
		var got usageapi.UsageResponse
		apiGet(t, base, "/api/v1/usage", p, "", http.StatusOK, &got)
		want, totals := serveTruth(calls, from, to, g, callsdb.UsageFilter{}, ny)
		kept, omitted := topAPIGroups(want, 3)
		want = slices.DeleteFunc(want, func(r usageapi.UsageRow) bool { return !kept[apiGroup(r)] })
		if err := diffUsageRows(got.Rows, want); err != nil {
			t.Fatalf("%s limit=3: %v", g, err)
		}
		if err := diffMetrics(got.Totals, totals); err != nil {
			t.Fatalf("%s limit=3 totals: %v", g, err)
		}
		if got.GroupsOmitted == nil || *got.GroupsOmitted != omitted || omitted == 0 {
			t.Fatalf("%s limit=3: groups_omitted %v, want %d", g, got.GroupsOmitted, omitted)
		}
	}

	// Dates are whole days in tz, to inclusive; 8 March has 23 hours in New York.
	dayFrom, dayTo := time.Date(2026, 3, 7, 0, 0, 0, 0, ny), time.Date(2026, 3, 9, 0, 0, 0, 0, ny)
	got := check("dates NY", url.Values{"from": {"2026-03-07"}, "to": {"2026-03-08"}, "tz": {"America/New_York"}, "group_by": {"hour"}},
		dayFrom, dayTo, callsdb.GroupBy{Bucket: callsdb.BucketHour}, callsdb.UsageFilter{}, ny)
	if len(got.Rows) != 24+23 {
		t.Errorf("7-8 March in New York: %d hours, want 47", len(got.Rows))
	}
	check("dates UTC by day", url.Values{"from": {"2026-03-04"}, "to": {"2026-03-06"}, "group_by": {"day,model"}},
		time.Date(2026, 3, 4, 0, 0, 0, 0, utc), time.Date(2026, 3, 7, 0, 0, 0, 0, utc), callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}, callsdb.UsageFilter{}, utc)

	// Filters (a quote in a value, batch jobs), alone and combined.
	for _, f := range []callsdb.UsageFilter{
		{Model: "qwen2.5-7b"}, {User: "o'brien"}, {Source: "batch"}, {Source: "online"}, {BatchID: "job-2"},
		{Model: "llama-3.1-8b", User: "alice", Source: "online"}, {Source: "batch", BatchID: "job-1", User: "bob"},
		{Model: "no-such-model"}, {User: `x' OR '1'='1`}, {Model: `qwen2.5-7b\`}, // no SQL injection through a value
	} {
		for _, g := range []callsdb.GroupBy{{Bucket: callsdb.BucketDay, Model: true}, {User: true, Source: true}, {Bucket: callsdb.BucketHour}} {
			p := url.Values{"from": {from.Format(time.RFC3339)}, "to": {to.Format(time.RFC3339)}, "group_by": {groupByParam(g)}, "tz": {"Asia/Kolkata"}}
			for k, v := range map[string]string{"model": f.Model, "user": f.User, "source": f.Source, "batch_id": f.BatchID} {
				if v != "" {
					p.Set(k, v)
				}
			}
			check(g.String()+" filtered", p, from, to, g, f, kolkata)
		}
	}

	// An empty range: every day a zero row; grouped by model, no rows.
	emptyFrom, emptyTo := time.Date(2025, 1, 1, 0, 0, 0, 0, utc), time.Date(2025, 1, 4, 0, 0, 0, 0, utc)
	got = check("empty by day", url.Values{"from": {"2025-01-01"}, "to": {"2025-01-03"}, "group_by": {"day"}}, emptyFrom, emptyTo,
		callsdb.GroupBy{Bucket: callsdb.BucketDay}, callsdb.UsageFilter{}, utc)
	if len(got.Rows) != 3 || got.Rows[2].Calls != 0 || got.Totals.Calls != 0 {
		t.Errorf("empty range by day: %+v", got)
	}
	got = check("empty by model", url.Values{"from": {"2025-01-01"}, "to": {"2025-01-03"}, "group_by": {"day,model"}}, emptyFrom, emptyTo,
		callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}, callsdb.UsageFilter{}, utc)
	if len(got.Rows) != 0 {
		t.Errorf("empty range by model: %d rows", len(got.Rows))
	}
	body := apiGet(t, base, "/api/v1/usage", url.Values{"from": {"2025-01-01"}, "to": {"2025-01-02"}, "group_by": {"model"}}, "", http.StatusOK, nil)
	if !strings.Contains(string(body), `"rows":[]`) {
		t.Errorf("empty rows must be [] not null: %s", body)
	}

	// Bad parameters name the parameter.
	for q, param := range map[string]string{
		"group_by=day,week": "group_by", "tz=Nowhere/City": "tz", "from=03/05/2026": "from",
		"from=2026-03-05&to=2026-03-04": "to", "source=cron": "source", "limit=5": "limit",
	} {
		var e struct{ Param, Error string }
		p, _ := url.ParseQuery(q)
		apiGet(t, base, "/api/v1/usage", p, "", http.StatusBadRequest, &e)
		if e.Param != param || e.Error == "" {
			t.Errorf("%s: %+v, want param %s", q, e, param)
		}
	}
	t.Logf("usage API checks: %s", time.Since(t0).Round(time.Millisecond))
}

// TestServeCallsAPI pages through the call list with every filter, checks
// that pages stay stable while calls are inserted, and reads a call and a
// trace back.
func TestServeCallsAPI(t *testing.T) {
	base, calls, out, _ := serveAPI(t, 600)
	from, to := serveBase, serveBase.Add(8*24*time.Hour)
	newest := func(cs []schema.Call, keep func(*schema.Call) bool) []string {
		var sel []schema.Call
		for i := range cs {
			if keep(&cs[i]) {
				sel = append(sel, cs[i])
			}
		}
		sort.Slice(sel, func(i, j int) bool {
			a, b := sel[i].StartTime.UnixMilli(), sel[j].StartTime.UnixMilli()
			if a != b {
				return a > b
			}
			return sel[i].ID > sel[j].ID
		})
		ids := make([]string, len(sel))
		for i := range sel {
			ids[i] = sel[i].ID
		}
		return ids
	}
	pageAll := func(p url.Values, between func(page int)) []usageapi.CallsResponse {
		var pages []usageapi.CallsResponse
		for {
			var r usageapi.CallsResponse
			apiGet(t, base, "/api/v1/calls", p, "", http.StatusOK, &r)
			pages = append(pages, r)
			if between != nil {
				between(len(pages))
			}
			if r.NextCursor == "" {
				return pages
			}
			if len(pages) > 200 {
				t.Fatal("paging does not end")
			}
			p.Set("cursor", r.NextCursor)
		}
	}
	ids := func(pages []usageapi.CallsResponse) []string {
		var out []string
		for _, p := range pages {
			for _, c := range p.Calls {
				out = append(out, c.ID)
			}
		}
		return out
	}
	inRange := func(c *schema.Call) bool { return !c.StartTime.Before(from) && c.StartTime.Before(to) }
	for _, tc := range []struct {
		params url.Values
		keep   func(*schema.Call) bool
	}{
		{url.Values{}, func(*schema.Call) bool { return true }},
		{url.Values{"user": {"o'brien"}}, func(c *schema.Call) bool { return c.UserID == "o'brien" }},
		{url.Values{"model": {"bge-m3"}, "status": {"ok"}}, func(c *schema.Call) bool { return c.Model == "bge-m3" && c.Status < 400 && c.Error == "" }},
		{url.Values{"status": {"error"}}, func(c *schema.Call) bool { return c.Status >= 400 || c.Error != "" }},
		{url.Values{"status": {"429"}, "user": {"alice"}}, func(c *schema.Call) bool { return c.Status == 429 && c.UserID == "alice" }},
	} {
		p := url.Values{"from": {from.Format(time.RFC3339)}, "to": {to.Format(time.RFC3339)}, "limit": {"37"}}
		for k, v := range tc.params {
			p[k] = v
		}
		want := newest(calls, func(c *schema.Call) bool { return inRange(c) && tc.keep(c) })
		pages := pageAll(p, nil)
		if got := ids(pages); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("calls %v: %d ids, want %d (first %v vs %v)", tc.params, len(got), len(want), head(got), head(want))
		}
		for i, pg := range pages[:len(pages)-1] {
			if len(pg.Calls) != 37 {
				t.Errorf("calls %v: page %d has %d calls", tc.params, i, len(pg.Calls))
			}
		}
	}

	// A call read back from the list is its newest version (re-attributed).
	var list usageapi.CallsResponse
	apiGet(t, base, "/api/v1/calls", url.Values{"from": {from.Format(time.RFC3339)}, "to": {to.Format(time.RFC3339)}, "limit": {"500"}}, "", http.StatusOK, &list)
	byID := map[string]callsdb.CallSummary{}
	for _, c := range list.Calls {
		byID[c.ID] = c
	}
	for _, c := range calls[:30] {
		s, ok := byID[c.ID]
		if !ok {
			continue
		}
		if s.Model != c.Model || s.UserID != c.UserID || s.InputTokens != c.InputTokens || !s.StartTime.Equal(c.StartTime) ||
			s.LatencyMS != c.LatencyMS || s.IsError != (c.Status >= 400 || c.Error != "") || s.Source != c.Source || s.BatchID != c.BatchID {
			t.Errorf("summary %s: %+v, want %+v", c.ID, s, c)
		}
	}

	// Paging is stable under inserts: calls newer than the first page and
	// calls inside pages already read do not shift what comes next; a call
	// inserted into the part not yet read shows up once.
	p := url.Values{"from": {from.Format(time.RFC3339)}, "to": {to.Format(time.RFC3339)}, "limit": {"50"}}
	want := newest(calls, inRange)
	var late schema.Call
	pages := pageAll(p, func(page int) {
		if page != 2 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		newer := serveCalls(99, "late-new", 5, to.Add(-time.Minute), 50*time.Second)          // newest of all: before the cursor
		read := serveCalls(97, "late-read", 1, to.Add(-2*time.Second), time.Millisecond)      // inside the first page's span
		older := serveCalls(98, "late-old", 1, serveBase.Add(12*time.Hour), time.Millisecond) // in the unread tail
		late = older[0]
		batch := append(append(newer, read...), older...)
		if err := out.WriteBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
	})
	got := ids(pages)
	want = newest(append(append([]schema.Call(nil), calls...), late), inRange)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("paging under inserts: %d ids, want %d", len(got), len(want))
	}

	// Bad parameters.
	for q, param := range map[string]string{"limit=501": "limit", "status=bad": "status", "cursor=e30": "cursor", "order=asc": "order"} {
		var e struct{ Param string }
		pq, _ := url.ParseQuery(q)
		apiGet(t, base, "/api/v1/calls", pq, "", http.StatusBadRequest, &e)
		if e.Param != param {
			t.Errorf("%s: param %q", q, e.Param)
		}
	}

	// The full call, newest version, with its Langfuse link.
	c := calls[10] // re-attributed by seedServe
	var detail usageapi.CallResponse
	apiGet(t, base, "/api/v1/calls/"+url.PathEscape(c.ID), nil, "", http.StatusOK, &detail)
	if detail.Model != c.Model || detail.UserID != c.UserID || detail.InputTokens != c.InputTokens || detail.Instance != c.Instance ||
		!detail.StartTime.Equal(c.StartTime) || !detail.EndTime.Equal(c.EndTime) || detail.LatencyMS != c.LatencyMS ||
		string(detail.Input) != string(c.Input) || string(detail.Output) != string(c.Output) ||
		string(detail.Metadata["team"]) != `"search"` || detail.TraceID != c.TraceID {
		t.Errorf("call %s:\n got  %+v\n want %+v", c.ID, detail.Call, c)
	}
	if detail.LangfuseURL != "http://langfuse.test:3000/project/proj-1/traces/"+c.TraceID {
		t.Errorf("langfuse url %q", detail.LangfuseURL)
	}
	var e404 map[string]string
	apiGet(t, base, "/api/v1/calls/no-such-call", nil, "", http.StatusNotFound, &e404)

	// A trace (trace_id) and a session (session_id spanning traces).
	var tr usageapi.TraceResponse
	apiGet(t, base, "/api/v1/traces/"+url.PathEscape(c.TraceID), nil, "", http.StatusOK, &tr)
	wantIDs := newest(calls, func(x *schema.Call) bool { return x.TraceID == c.TraceID })
	if tr.MatchedBy != "trace_id" || tr.Root.Type != "trace" || tr.Root.Calls != len(wantIDs) || len(tr.Timeline) != len(wantIDs) {
		t.Errorf("trace %s: %+v (want %d calls)", c.TraceID, tr.Root, len(wantIDs))
	}
	for i := 1; i < len(tr.Timeline); i++ {
		if tr.Timeline[i].OffsetMS < tr.Timeline[i-1].OffsetMS {
			t.Errorf("timeline not in start order")
		}
	}
	sess := calls[0].SessionID
	apiGet(t, base, "/api/v1/traces/"+url.PathEscape(sess), nil, "", http.StatusOK, &tr)
	wantIDs = newest(calls, func(x *schema.Call) bool { return x.SessionID == sess })
	if tr.MatchedBy != "session_id" || tr.Root.Type != "session" || tr.Root.Calls != len(wantIDs) || len(tr.Root.Children) != 2 {
		b, _ := json.Marshal(tr.Root)
		t.Errorf("session %s: %s (want %d calls in 2 traces)", sess, b, len(wantIDs))
	}
	apiGet(t, base, "/api/v1/traces/no-such-trace", nil, "", http.StatusNotFound, nil)
}

func head(s []string) []string {
	if len(s) > 3 {
		return s[:3]
	}
	return s
}

// apiGroup is a usage answer row's group as limit counts it: keys but time.
func apiGroup(r usageapi.UsageRow) [3]string {
	return [3]string{str(r.Model), str(r.User), str(r.Source)}
}

// topAPIGroups is the n groups of rows with the most calls (ties by model,
// user, source) and how many others there are.
func topAPIGroups(rows []usageapi.UsageRow, n int) (map[[3]string]bool, int) {
	calls := map[[3]string]uint64{}
	for _, r := range rows {
		calls[apiGroup(r)] += r.Calls
	}
	keys := rankGroups(calls)
	kept := map[[3]string]bool{}
	for _, k := range keys[:min(n, len(keys))] {
		kept[k] = true
	}
	return kept, len(keys) - len(kept)
}
