package usageapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/callsdb"
)

// fakeStore records the specs it was asked for; the SQL side is tested
// against real ClickHouse in integration/serve_api_test.go.
type fakeStore struct {
	usage      []callsdb.UsageSpec
	totals     *callsdb.UsageRow // what Usage answers as the totals
	list       []callsdb.CallListSpec
	batchSpecs []callsdb.BatchSpec
	batches    []callsdb.BatchSummary
	pingErr    error
}

func (f *fakeStore) Usage(_ context.Context, s callsdb.UsageSpec) (callsdb.UsageAnswer, error) {
	f.usage = append(f.usage, s)
	return callsdb.UsageAnswer{Totals: f.totals}, nil
}

func (f *fakeStore) Calls(_ context.Context, s callsdb.CallListSpec) ([]callsdb.CallSummary, *callsdb.CallCursor, error) {
	f.list = append(f.list, s)
	return []callsdb.CallSummary{}, nil, nil
}

func (f *fakeStore) Call(_ context.Context, id string) (*callsdb.StoredCall, error) {
	return nil, callsdb.ErrNotFound
}

func (f *fakeStore) Trace(_ context.Context, id string, limit int) ([]callsdb.StoredCall, error) {
	return nil, nil
}

func (f *fakeStore) Batches(_ context.Context, s callsdb.BatchSpec) ([]callsdb.BatchSummary, error) {
	f.batchSpecs = append(f.batchSpecs, s)
	return f.batches, nil
}

func (f *fakeStore) Ping(context.Context) error { return f.pingErr }

var testNow = time.Date(2026, 3, 10, 15, 4, 5, 0, time.UTC)

func newTestServer(t *testing.T, st Store, opts Options) *Server {
	t.Helper()
	opts.Now = func() time.Time { return testNow }
	s, err := New(st, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func get(t *testing.T, h http.Handler, target string, header ...string) (int, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, target, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var body map[string]any
	if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: %v: %s", target, err, rec.Body)
		}
	}
	return rec.Code, body
}

func TestBadParameters(t *testing.T) {
	s := newTestServer(t, &fakeStore{}, Options{})
	for _, tc := range []struct{ target, param, reason string }{
		{"/api/v1/usage?from=yesterday", "from", "not a time"},
		{"/api/v1/usage?to=2026-13-01", "to", "not a time"},
		{"/api/v1/usage?from=2026-03-05&to=2026-03-01", "to", "after from"},
		{"/api/v1/usage?group_by=day,hour", "group_by", "exclude"},
		{"/api/v1/usage?group_by=model,model", "group_by", "twice"},
		{"/api/v1/usage?group_by=week", "group_by", "unknown key"},
		{"/api/v1/usage?tz=Mars/Olympus", "tz", "unknown time zone"},
		{"/api/v1/usage?tz=../etc", "tz", "IANA"},
		{"/api/v1/usage?source=nightly", "source", "online or batch"},
		{"/api/v1/usage?percentiles=maybe", "percentiles", "true or false"},
		{"/api/v1/usage?grup_by=day", "grup_by", "unknown parameter"},
		{"/api/v1/usage?model=a&model=b", "model", "given 2 times"},
		{"/api/v1/usage?group_by=hour&from=2020-01-01&to=2026-01-01", "from", "buckets"},
		{"/api/v1/usage?user=" + strings.Repeat("u", 300), "user", "longer than"},
		{"/api/v1/usage?group_by=user&limit=0", "limit", "1..1000"},
		{"/api/v1/usage?group_by=model&limit=1001", "limit", "1..1000"},
		{"/api/v1/usage?group_by=day&limit=5", "limit", "group_by has none"},
		{"/api/v1/calls?limit=0", "limit", "1..500"},
		{"/api/v1/calls?limit=abc", "limit", "1..500"},
		{"/api/v1/calls?status=fine", "status", "not ok, error"},
		{"/api/v1/calls?cursor=!!!", "cursor", "malformed"},
		{"/api/v1/calls?from=1969-12-31T00:00:00Z", "from", "outside"},
	} {
		code, body := get(t, s, tc.target)
		if code != http.StatusBadRequest || body["param"] != tc.param || !strings.Contains(body["error"].(string), tc.reason) {
			t.Errorf("%s: %d %v; want 400 naming %s (%s)", tc.target, code, body, tc.param, tc.reason)
		}
	}
}

func TestUsageDefaultsAndDates(t *testing.T) {
	st := &fakeStore{}
	s := newTestServer(t, st, Options{})
	code, body := get(t, s, "/api/v1/usage?group_by=day")
	if code != 200 {
		t.Fatalf("%d %v", code, body)
	}
	// Default: the last 7 days including today, up to now (whole seconds, end exclusive).
	if got := st.usage[0]; !got.From.Equal(time.Date(2026, 3, 4, 0, 0, 0, 0, time.UTC)) || !got.To.Equal(testNow.Add(time.Second)) {
		t.Errorf("default range [%s, %s)", got.From, got.To)
	}
	if rows := body["rows"].([]any); len(rows) != 7 {
		t.Errorf("%d zero-filled days, want 7", len(rows))
	}
	st.usage = nil
	st.totals = &callsdb.UsageRow{Calls: 42, InputTokens: 7, Histogram: true}
	code, body = get(t, s, "/api/v1/usage?from=2026-03-07&to=2026-03-08&tz=America/New_York&group_by=day&user=o'brien&model=m&source=batch&batch_id=b1")
	if code != 200 {
		t.Fatalf("%d %v", code, body)
	}
	if tot := body["totals"].(map[string]any); tot["calls"] != 42.0 || tot["input_tokens"] != 7.0 || body["percentiles"] != "histogram" {
		t.Errorf("totals %v, percentiles %v: want the store's totals (42 calls, 7 input tokens) from histograms", tot, body["percentiles"])
	}
	ny, _ := time.LoadLocation("America/New_York")
	got := st.usage[0]
	// Dates are whole days in tz; to is inclusive (the end of that day).
	if !got.From.Equal(time.Date(2026, 3, 7, 0, 0, 0, 0, ny)) || !got.To.Equal(time.Date(2026, 3, 9, 0, 0, 0, 0, ny)) || got.TZ != "America/New_York" {
		t.Errorf("range [%s, %s) tz %q", got.From, got.To, got.TZ)
	}
	if got.Filter != (callsdb.UsageFilter{Model: "m", User: "o'brien", Source: "batch", BatchID: "b1"}) {
		t.Errorf("filter %+v", got.Filter)
	}
	if len(st.usage) != 1 {
		t.Errorf("store asked %d times, want once (rows and totals): %+v", len(st.usage), st.usage)
	}
	if _, ok := body["groups_omitted"]; ok || got.Limit != 0 {
		t.Errorf("without limit: spec limit %d, groups_omitted %v", got.Limit, body["groups_omitted"])
	}
	st.usage = nil
	if code, lim := get(t, s, "/api/v1/usage?group_by=day,user&limit=20"); code != 200 || st.usage[0].Limit != 20 || lim["groups_omitted"] != 0.0 {
		t.Errorf("limit=20: %d, spec limit %d, groups_omitted %v", code, st.usage[0].Limit, lim["groups_omitted"])
	}
	days := []string{}
	for _, r := range body["rows"].([]any) {
		days = append(days, r.(map[string]any)["day"].(string))
	}
	if strings.Join(days, ",") != "2026-03-07,2026-03-08" {
		t.Errorf("days %v", days)
	}
}

func TestFillBuckets(t *testing.T) {
	kolkata, _ := time.LoadLocation("Asia/Kolkata")
	ny, _ := time.LoadLocation("America/New_York")
	for _, tc := range []struct {
		name     string
		b        callsdb.Bucket
		from, to time.Time
		loc      *time.Location
		want     int
	}{
		{"utc hours", callsdb.BucketHour, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), time.UTC, 24},
		{"half-hour zone: partial first and last hour", callsdb.BucketHour, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), kolkata, 25},
		{"DST start day has 23 hours", callsdb.BucketHour, time.Date(2026, 3, 8, 0, 0, 0, 0, ny), time.Date(2026, 3, 9, 0, 0, 0, 0, ny), ny, 23},
		{"DST end day has 25 hours", callsdb.BucketHour, time.Date(2026, 11, 1, 0, 0, 0, 0, ny), time.Date(2026, 11, 2, 0, 0, 0, 0, ny), ny, 25},
		{"days across DST", callsdb.BucketDay, time.Date(2026, 3, 6, 0, 0, 0, 0, ny), time.Date(2026, 3, 11, 0, 0, 0, 0, ny), ny, 5},
		{"partial days", callsdb.BucketDay, time.Date(2026, 3, 6, 12, 0, 0, 0, time.UTC), time.Date(2026, 3, 7, 0, 0, 1, 0, time.UTC), time.UTC, 2},
	} {
		rows := fillBuckets(nil, callsdb.GroupBy{Bucket: tc.b}, tc.from, tc.to, tc.loc)
		if len(rows) != tc.want {
			t.Errorf("%s: %d buckets, want %d", tc.name, len(rows), tc.want)
		}
		for i := 1; i < len(rows); i++ {
			if !rows[i].Bucket.After(rows[i-1].Bucket) {
				t.Errorf("%s: buckets not increasing at %d", tc.name, i)
			}
		}
	}
	// Grouped by model too: each model seen gets every day; models never seen get none.
	from, to := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 4, 0, 0, 0, 0, time.UTC)
	in := []callsdb.UsageRow{
		{Bucket: from.AddDate(0, 0, 1), Model: "b", Calls: 2},
		{Bucket: from, Model: "a", Calls: 1},
	}
	rows := fillBuckets(in, callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}, from, to, time.UTC)
	var got []string
	for _, r := range rows {
		got = append(got, r.Bucket.Format("02")+r.Model+string(rune('0'+r.Calls)))
	}
	if strings.Join(got, " ") != "01a1 01b0 02a0 02b2 03a0 03b0" {
		t.Errorf("filled %v", got)
	}
	if rows := fillBuckets(nil, callsdb.GroupBy{Bucket: callsdb.BucketDay, Model: true}, from, to, time.UTC); len(rows) != 0 {
		t.Errorf("no calls, grouped by model: %d rows", len(rows))
	}
}

func TestAuthAndOps(t *testing.T) {
	reg := prometheus.NewRegistry()
	st := &fakeStore{}
	s := newTestServer(t, st, Options{Tokens: []string{"s3cret", "other"}, Registerer: reg, Gatherer: reg})
	for _, h := range []string{"", "Bearer wrong", "Basic s3cret", "Bearer s3cret2", "Bearer"} {
		code, body := get(t, s, "/api/v1/calls", "Authorization", h)
		if code != http.StatusUnauthorized || !strings.Contains(body["error"].(string), "bearer token") {
			t.Errorf("Authorization %q: %d %v", h, code, body)
		}
	}
	if code, _ := get(t, s, "/api/v1/calls", "Authorization", "Bearer s3cret"); code != 200 {
		t.Errorf("good token: %d", code)
	}
	if code, _ := get(t, s, "/api/v1/calls", "Authorization", "bearer other"); code != 200 {
		t.Errorf("second token, lower-case scheme: %d", code)
	}
	if code, body := get(t, s, "/api/v1/calls/nope", "Authorization", "Bearer s3cret"); code != 404 || !strings.Contains(body["error"].(string), "not found") {
		t.Errorf("unknown call: %d %v", code, body)
	}
	if code, _ := get(t, s, "/healthz"); code != 200 {
		t.Errorf("healthz %d", code)
	}
	if code, _ := get(t, s, "/readyz"); code != 200 {
		t.Errorf("readyz %d", code)
	}
	st.pingErr = errors.New("connection refused")
	if code, _ := get(t, s, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("readyz with ClickHouse down: %d", code)
	}
	if code, _ := get(t, s, "/"); code != 200 {
		t.Errorf("dashboard: %d", code)
	}
	if n := counterValue(t, s.reqs.WithLabelValues("GET /api/v1/calls", "401")); n != 5 {
		t.Errorf("401s counted %v, want 5", n)
	}
	if n := counterValue(t, s.reqs.WithLabelValues("GET /api/v1/calls", "200")); n != 2 {
		t.Errorf("200s counted %v, want 2", n)
	}
}

func TestBuildTrace(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	call := func(id, trace, session string, startMS, latMS int64, status int) callsdb.StoredCall {
		st := t0.Add(time.Duration(startMS) * time.Millisecond)
		return callsdb.StoredCall{Call: schema.Call{ID: id, TraceID: trace, SessionID: session, Kind: "chat", Model: "m",
			StartTime: st, EndTime: st.Add(time.Duration(latMS) * time.Millisecond), LatencyMS: latMS, Status: status,
			InputTokens: 10, OutputTokens: 5, TotalTokens: 15}}
	}
	links := LangfuseLinks{Host: "http://lf:3000/", ProjectID: "p1"}.compile()
	tr := buildTrace("t1", []callsdb.StoredCall{call("a", "t1", "", 0, 100, 200), call("b", "t1", "", 50, 300, 500)}, false, links)
	if tr.MatchedBy != "trace_id" || tr.Root.Type != "trace" || len(tr.Root.Children) != 2 || tr.Root.DurationMS != 350 ||
		tr.Root.Errors != 1 || tr.Root.TotalTokens != 30 || tr.Timeline[1].OffsetMS != 50 {
		t.Errorf("trace: %+v", tr)
	}
	if tr.Root.LangfuseURL != "http://lf:3000/project/p1/traces/t1" {
		t.Errorf("langfuse url %q", tr.Root.LangfuseURL)
	}
	sess := buildTrace("s1", []callsdb.StoredCall{call("a", "t1", "s1", 0, 100, 200), call("b", "t2", "s1", 1000, 100, 200), call("c", "t1", "s1", 2000, 100, 200)}, false, links)
	if sess.MatchedBy != "session_id" || sess.Root.Type != "session" || len(sess.Root.Children) != 2 ||
		len(sess.Root.Children[0].Children) != 2 || sess.Root.Children[1].OffsetMS != 1000 || sess.Root.Calls != 3 {
		t.Errorf("session: %+v", sess.Root)
	}
	if u := (LangfuseLinks{Host: "http://lf"}).compile().traceURL(&schema.Call{ID: "x y"}); u != "http://lf/trace/x%20y" {
		t.Errorf("no project: %q", u)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestMountBehindAuth(t *testing.T) {
	s := newTestServer(t, &fakeStore{}, Options{Tokens: []string{"tok"}})
	s.Mount("/api/v1/settings/", func(m *http.ServeMux) {
		m.HandleFunc("PUT /api/v1/settings/langfuse", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	})
	do := func(method, auth string) int {
		req := httptest.NewRequest(method, "/api/v1/settings/langfuse", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		return rec.Code
	}
	if c := do(http.MethodPut, ""); c != http.StatusUnauthorized {
		t.Errorf("no token: %d", c)
	}
	if c := do(http.MethodPut, "Bearer tok"); c != http.StatusNoContent {
		t.Errorf("token: %d", c)
	}
	if c := do(http.MethodDelete, "Bearer tok"); c != http.StatusMethodNotAllowed {
		t.Errorf("unregistered method: %d", c)
	}
}

// TestWriteRoles: with no tokens serve is read-only (writes 403 naming
// serve.tokens) unless OpenWrites; a read token reads and gets 403 on
// writes; an admin token writes; a cross-origin browser write is refused
// even with open writes.
func TestWriteRoles(t *testing.T) {
	mount := func(opts Options) *Server {
		s := newTestServer(t, &fakeStore{}, opts)
		for _, prefix := range []string{"/api/v1/settings/", "/api/v1/exports"} {
			s.Mount(prefix, func(m *http.ServeMux) {
				m.HandleFunc(prefix, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
			})
		}
		return s
	}
	do := func(s *Server, method, path, auth string, hdr ...string) (int, string) {
		req := httptest.NewRequest(method, path, strings.NewReader(`{}`))
		req.Header.Set("Content-Type", "application/json")
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	writes := [][2]string{{http.MethodPut, "/api/v1/settings/langfuse"}, {http.MethodPost, "/api/v1/settings/langfuse/test"},
		{http.MethodDelete, "/api/v1/settings/langfuse"}, {http.MethodPost, "/api/v1/exports"}}
	reads := []string{"/api/v1/calls", "/api/v1/meta", "/api/v1/settings/langfuse", "/api/v1/exports"}

	open := mount(Options{})
	for _, w := range writes {
		if code, body := do(open, w[0], w[1], ""); code != http.StatusForbidden || !strings.Contains(body, "serve.tokens") || !strings.Contains(body, `"error"`) {
			t.Errorf("no tokens, %s %s: %d %s", w[0], w[1], code, body)
		}
	}
	for _, r := range reads {
		if code, _ := do(open, http.MethodGet, r, ""); code != http.StatusOK {
			t.Errorf("no tokens, GET %s: %d", r, code)
		}
	}
	if !strings.Contains(open.AuthMode(), "read-only") {
		t.Errorf("mode %q", open.AuthMode())
	}

	openWrites := mount(Options{OpenWrites: true})
	for _, w := range writes {
		if code, body := do(openWrites, w[0], w[1], ""); code != http.StatusOK {
			t.Errorf("open writes, %s %s: %d %s", w[0], w[1], code, body)
		}
		code, _ := do(openWrites, w[0], w[1], "", "Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example")
		if code != http.StatusForbidden {
			t.Errorf("open writes, cross-site %s %s: %d", w[0], w[1], code)
		}
	}
	if _, err := New(&fakeStore{}, Options{OpenWrites: true, Tokens: []string{"a"}}); err == nil {
		t.Error("OpenWrites with tokens accepted")
	}

	roles := mount(Options{Tokens: []string{"admin-1"}, ReadTokens: []string{"read-1", "read-2"}})
	for _, w := range writes {
		if code, body := do(roles, w[0], w[1], "read-2"); code != http.StatusForbidden || !strings.Contains(body, "serve.tokens") || !strings.Contains(body, "read token") {
			t.Errorf("read token, %s %s: %d %s", w[0], w[1], code, body)
		}
		if code, _ := do(roles, w[0], w[1], ""); code != http.StatusUnauthorized {
			t.Errorf("no token, %s %s: %d", w[0], w[1], code)
		}
		if code, _ := do(roles, w[0], w[1], "admin-1"); code != http.StatusOK {
			t.Errorf("admin token, %s %s: %d", w[0], w[1], code)
		}
		if code, _ := do(roles, w[0], w[1], "admin-1", "Sec-Fetch-Site", "cross-site"); code != http.StatusForbidden {
			t.Errorf("admin token, cross-site %s %s: %d", w[0], w[1], code)
		}
	}
	for _, r := range reads {
		for _, tok := range []string{"read-1", "admin-1"} {
			if code, _ := do(roles, http.MethodGet, r, tok); code != http.StatusOK {
				t.Errorf("%s GET %s: %d", tok, r, code)
			}
		}
		if code, _ := do(roles, http.MethodGet, r, "read-3"); code != http.StatusUnauthorized {
			t.Errorf("unknown token GET %s: %d", r, code)
		}
	}
	if m := roles.AuthMode(); m != "bearer tokens (1 admin, 2 read)" {
		t.Errorf("mode %q", m)
	}
}
