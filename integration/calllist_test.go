package integration

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/callsdb"
)

// callListEnd is the end of the test ranges: the call list reads 30 days
// before it.
var callListEnd = time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)

// TestCallListCopiesAndReattribution pages through the call list on 18.16
// with every filter and several page sizes, over 30 days holding copies of
// calls (each stored 1-3 times, some copies in other batches), calls
// re-attributed by a later copy (another user, model, status or source), a
// rare user whose calls are spread over the 30 days, a dense last hour,
// calls sharing a start millisecond and calls just outside the range. The
// pages, concatenated, must be the ground truth computed from the newest
// copy of each call, and each full page exactly Limit long.
func TestCallListCopiesAndReattribution(t *testing.T) {
	out, db := chTestDB(t)
	from, to := callListEnd.Add(-30*24*time.Hour), callListEnd
	r := mrand.New(mrand.NewPCG(7, 11))
	users := []string{"alice", "alice", "alice", "bob", "carol", "o'brien"}
	models := []string{"m1", "m2", "m3"}
	var calls []schema.Call
	add := func(start time.Time, user string) *schema.Call {
		i := len(calls)
		c := schema.Call{
			ID: fmt.Sprintf("cl-%05d-%x", i, r.Uint32()), TraceID: fmt.Sprintf("tr-%d", i/3),
			StartTime: start.Truncate(time.Millisecond), LatencyMS: 10 + r.Int64N(5000),
			Endpoint: "/v1/chat/completions", Kind: schema.KindChat, Model: models[r.IntN(len(models))],
			UserID: user, UserSource: schema.UserExplicit, Status: 200,
			InputTokens: 1 + r.Int64N(100), OutputTokens: r.Int64N(100), UsageSource: schema.UsageReported,
			InputText: fmt.Sprintf("question %d", i), Source: schema.SourceOnline,
		}
		c.EndTime = c.StartTime.Add(time.Duration(c.LatencyMS) * time.Millisecond)
		c.TotalTokens = c.InputTokens + c.OutputTokens
		switch r.IntN(10) {
		case 0:
			c.Status = 429
		case 1:
			c.Status = 500
		case 2:
			c.Error = "upstream reset"
		}
		if r.IntN(4) == 0 {
			c.Source, c.BatchID = schema.SourceBatch, "job-1"
		}
		calls = append(calls, c)
		return &calls[len(calls)-1]
	}
	span := int64(to.Sub(from) / time.Millisecond)
	for range 2500 { // spread over the 30 days
		add(from.Add(time.Duration(r.Int64N(span))*time.Millisecond), users[r.IntN(len(users))])
	}
	for range 1200 { // a dense last two hours
		add(to.Add(-time.Duration(1+r.Int64N(int64(2*time.Hour/time.Millisecond)))*time.Millisecond), users[r.IntN(len(users))])
	}
	for i := range 40 { // the rare user: one call every 18 hours
		add(from.Add(time.Duration(i)*18*time.Hour+time.Duration(r.Int64N(3600_000))*time.Millisecond), "rare")
	}
	tie := to.Add(-90 * time.Minute).Truncate(time.Second).Add(123 * time.Millisecond)
	for range 30 { // same start millisecond: ordered by id
		add(tie, users[r.IntN(len(users))])
	}
	add(from, "alice")                          // first instant of the range: in
	add(to, "alice")                            // end of the range: out
	add(from.Add(-time.Millisecond), "alice")   // out
	add(to.Add(-time.Millisecond), "rare")      // last instant: in
	add(to.Add(-10*24*time.Hour), "o'brien{x}") // quoting

	// Store: every call once, 30% again, 8% a third time, in batches that
	// mix calls of every hour; then 150 re-attributions, each a later copy
	// that changes user, model, status and source.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	write := func(cs []schema.Call) {
		t.Helper()
		for lo := 0; lo < len(cs); lo += 1000 {
			if err := out.WriteBatch(ctx, cs[lo:min(lo+1000, len(cs))]); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(calls)
	var again, third []schema.Call
	for i := range calls {
		if r.IntN(10) < 3 {
			again = append(again, calls[i])
		}
		if r.IntN(100) < 8 {
			third = append(third, calls[i])
		}
	}
	write(again)
	write(third)
	var moved []schema.Call
	for _, i := range r.Perm(len(calls))[:150] {
		c := &calls[i]
		switch i % 3 {
		case 0:
			c.UserID = "rare" // into the rare user
		case 1:
			c.UserID = "bob"
		default:
			c.UserID = "mallory"
		}
		c.Model, c.Status, c.Error = "m-new", 503, ""
		c.Source, c.BatchID = schema.SourceBatch, "job-2"
		moved = append(moved, *c)
	}
	write(moved) // a later version: it is the call now

	truth := func(s callsdb.CallListSpec) []string {
		var sel []*schema.Call
		for i := range calls {
			c := &calls[i]
			isErr := c.Status >= 400 || c.Error != ""
			ok := !c.StartTime.Before(s.From) && c.StartTime.Before(s.To) &&
				(s.User == "" || c.UserID == s.User) && (s.Model == "" || c.Model == s.Model) &&
				(s.Source == "" || c.Source == s.Source)
			switch s.Status {
			case "":
			case "ok":
				ok = ok && !isErr
			case "error":
				ok = ok && isErr
			default:
				ok = ok && fmt.Sprint(c.Status) == string(s.Status)
			}
			if ok {
				sel = append(sel, c)
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
		for i, c := range sel {
			ids[i] = c.ID
		}
		return ids
	}
	byID := map[string]*schema.Call{}
	for i := range calls {
		byID[calls[i].ID] = &calls[i]
	}
	cases := []callsdb.CallListSpec{
		{},
		{User: "alice"},
		{User: "bob"},
		{User: "rare"},
		{User: "mallory"},
		{User: "o'brien{x}"},
		{User: "nobody"},
		{Model: "m2"},
		{Model: "m-new"},
		{Status: "error"},
		{Status: "ok", Source: "batch"},
		{Status: "429", User: "alice"},
		{User: "rare", Model: "m1"},
		{User: "bob", Model: "m-new", Status: "503", Source: "batch"},
	}
	for _, base := range cases {
		for _, limit := range []int{1, 7, 50, 500} {
			s := base
			s.From, s.To, s.Limit = from, to, limit
			want := truth(s)
			if len(want) > 25*limit {
				continue // small pages only on the short lists (time)
			}
			var got []string
			pages := 0
			for {
				page, next, err := callsdb.CallList(ctx, out.Conn(), db, s)
				if err != nil {
					t.Fatalf("%+v: %v", s, err)
				}
				pages++
				for _, c := range page {
					got = append(got, c.ID)
					w := byID[c.ID]
					if w == nil || c.UserID != w.UserID || c.Model != w.Model || c.Status != w.Status || !c.StartTime.Equal(w.StartTime) {
						t.Fatalf("%+v: %s is not its newest copy: %+v", s, c.ID, c)
					}
				}
				if next == nil {
					break
				}
				if len(page) != limit {
					t.Fatalf("%+v: page %d has %d calls and a next cursor", s, pages, len(page))
				}
				if pages > len(want)+2 {
					t.Fatalf("%+v: paging does not end", s)
				}
				s.After = next
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("%+v limit %d: %d ids in %d pages, want %d\n got  %v\n want %v", base, limit, len(got), pages, len(want), head(got), head(want))
			}
			if len(want) > 0 && pages != (len(want)+limit-1)/limit {
				t.Errorf("%+v limit %d: %d pages for %d calls", base, limit, pages, len(want))
			}
		}
	}
	// The reference statement agrees (first page of each case).
	for _, base := range cases {
		s := base
		s.From, s.To, s.Limit = from, to, 50
		page, _, err := callsdb.CallList(ctx, out.Conn(), db, s)
		if err != nil {
			t.Fatal(err)
		}
		ref := referenceCallList(t, ctx, out.Conn(), db, s)
		if got := callIDs(page); strings.Join(got, ",") != strings.Join(ref, ",") {
			t.Fatalf("%+v: CallList %v, reference %v", base, head(got), head(ref))
		}
	}
}

// TestCallListReadsFew loads calls in bulk over 30 days (2% stored twice)
// and checks, with and without a user, over three pages: each page is the
// reference query's page, reads a fraction of what the reference reads
// (which groups the whole range), and reads about as much over 30 days as
// over 3 (the cost follows the page, not the range). A rare user's calls,
// spread over the 30 days, page exactly. (At this size a granule of 8192
// rows spans hours, so the fetch of a rare user's calls reads a large share
// of the table: that case is only checked for its answer.)
func TestCallListReadsFew(t *testing.T) {
	out, db := chTestDB(t)
	const n = 1_000_000
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	chBulkCalls(t, ctx, out.Conn(), db, n, callListEnd)
	from, to := callListEnd.Add(-30*24*time.Hour), callListEnd
	withRead := func(read *uint64) context.Context {
		*read = 0
		return clickhouse.Context(ctx, clickhouse.WithProgress(func(p *clickhouse.Progress) { *read += p.Rows }))
	}
	for _, tc := range []struct {
		spec    callsdb.CallListSpec
		bounded bool
	}{
		{callsdb.CallListSpec{}, true},
		{callsdb.CallListSpec{User: "user-42"}, true},
		{callsdb.CallListSpec{Model: "model-3", Status: "ok"}, true},
		{callsdb.CallListSpec{User: "user-7", Model: "model-3", Status: "error"}, true}, // 1 in 7 keys of user-7 matches
		{callsdb.CallListSpec{User: "user-rare"}, false},
	} {
		s := tc.spec
		s.From, s.To, s.Limit = from, to, 50
		var first30 uint64
		for page := 1; page <= 3; page++ {
			var read, refRead uint64
			got, next, err := callsdb.CallList(withRead(&read), out.Conn(), db, s)
			if err != nil {
				t.Fatal(err)
			}
			ref := referenceCallList(t, withRead(&refRead), out.Conn(), db, s)
			if strings.Join(callIDs(got), ",") != strings.Join(ref, ",") {
				t.Fatalf("%+v page %d: CallList %v, reference %v", tc.spec, page, head(callIDs(got)), head(ref))
			}
			t.Logf("user=%q model=%q status=%q page %d: %d calls, read %d rows (reference %d)",
				tc.spec.User, tc.spec.Model, tc.spec.Status, page, len(got), read, refRead)
			if tc.bounded && read*4 > refRead {
				t.Errorf("%+v page %d read %d rows, the whole-range reference %d", tc.spec, page, read, refRead)
			}
			if page == 1 {
				first30 = read
			}
			if next == nil {
				break
			}
			s.After = next
		}
		if !tc.bounded {
			continue
		}
		s3 := tc.spec
		s3.From, s3.To, s3.Limit = to.Add(-3*24*time.Hour), to, 50
		var read3 uint64
		if _, _, err := callsdb.CallList(withRead(&read3), out.Conn(), db, s3); err != nil {
			t.Fatal(err)
		}
		if float64(first30) > 1.5*float64(read3)+3*8192 {
			t.Errorf("%+v: the first page read %d rows over 30 days, %d over 3", tc.spec, first30, read3)
		}
	}
	// Every page of the rare user, against the reference.
	s := callsdb.CallListSpec{From: from, To: to, User: "user-rare", Limit: 7}
	var got []string
	for {
		page, next, err := callsdb.CallList(ctx, out.Conn(), db, s)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, callIDs(page)...)
		if next == nil {
			break
		}
		s.After = next
	}
	s.After, s.Limit = nil, 100_000
	want := referenceCallList(t, ctx, out.Conn(), db, s)
	if len(want) < 50 || strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("rare user: %d calls paged, reference %d", len(got), len(want))
	}
}

// referenceCallList is the page of CallListQuery (one statement over the
// whole range): the ground truth on a small database.
func referenceCallList(t testing.TB, ctx context.Context, conn driver.Conn, db string, s callsdb.CallListSpec) []string {
	t.Helper()
	rows, err := conn.Query(ctx, callsdb.WithDB("SELECT id, c_ts FROM ("+callsdb.CallListQuery(s)+") ORDER BY c_ts DESC, id DESC", db))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		var ts int64
		if err := rows.Scan(&id, &ts); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(ids) > s.Limit {
		ids = ids[:s.Limit]
	}
	return ids
}

func callIDs(cs []callsdb.CallSummary) []string {
	ids := make([]string, len(cs))
	for i := range cs {
		ids[i] = cs[i].ID
	}
	return ids
}

// chBulkCalls stores n calls spread evenly over the 30 days before end with
// one INSERT ... SELECT from numbers(n), and 2% of them a second time (a
// later version, same content). Users: user-0 .. user-99 (1% each), and
// user-rare for about 100 calls spread over the 30 days; models model-0 ..
// model-6; 2% status 500; 10% source batch.
func chBulkCalls(t testing.TB, ctx context.Context, conn driver.Conn, db string, n int, end time.Time) {
	t.Helper()
	for _, pass := range []struct {
		where   string
		version int
	}{{"", 1}, {"WHERE number % 50 = 11", 2}} {
		if err := conn.Exec(ctx, chBulkCallsSQL(db, n, end, pass.where, pass.version)); err != nil {
			t.Fatalf("bulk insert: %v", err)
		}
	}
}

func chBulkCallsSQL(db string, n int, end time.Time, where string, version int) string {
	const span = 30 * 24 * 3600
	rare := max(n/100, 1)
	return fmt.Sprintf(`INSERT INTO %[1]s.calls (id, trace_id, session_id, start_time, start_ms, end_time, end_ms,
    first_token_time, first_token_ms, latency_ms, ttft_ms, endpoint, kind, model, instance, user_id, user_source,
    api_key_hash, api_key_prefix, stream, status, error, finish_reason, input_text, output_text, input, output,
    model_parameters, input_tokens, output_tokens, total_tokens, usage_source, cost_usd, metadata, tags, source,
    batch_id, truncated, inserted_at, version)
SELECT id, concat('t-', toString(intDiv(number, 3))), '', st, ms, st + 1, ms,
    CAST(NULL AS Nullable(DateTime('UTC'))), CAST(NULL AS Nullable(UInt16)), 1000 + number %% 977,
    CAST(NULL AS Nullable(Int64)), '/v1/chat/completions', 'chat', concat('model-', toString(number %% 7)), 'i-1',
    if(number %% %[5]d = 17 %% %[5]d, 'user-rare', concat('user-', toString(number %% 100))), 'header',
    'h', 'sk-1', 0, if(number %% 50 = 7, 500, 200), '', 'stop',
    concat('Summarize the following document (number ', toString(number), ') in three sentences, keeping names.'),
    'ok', '', '', '', 100 + number %% 1000, 20 + number %% 300, 120 + number %% 1000 + number %% 300, 'reported',
    CAST(0.001 AS Nullable(Float64)), '', CAST([] AS Array(String)), if(number %% 10 = 3, 'batch', 'online'), '', 0,
    now(), %[6]d
FROM
(
    SELECT number, concat('c-', lower(hex(MD5(toString(number))))) AS id,
        toDateTime(%[3]d + intDiv(number * %[4]d, %[2]d), 'UTC') AS st, toUInt16(number %% 1000) AS ms
    FROM numbers(%[2]d)
) %[7]s`, db, n, end.Unix()-span, span, rare, version, where)
}
