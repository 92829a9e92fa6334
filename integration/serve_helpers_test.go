package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/serve/usageapi"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/store/callsdb"
)

// The seeded data set of the serve tests: deterministic calls over `days`
// days from base, three models, four users (one with a quote in its name),
// online and batch calls (two batch jobs), errors by status and by message,
// calls with and without TTFT and cost, traces of four calls and sessions
// of sixteen.
var (
	serveModels = []string{"qwen2.5-7b", "llama-3.1-8b", "bge-m3"}
	serveUsers  = []string{"alice", "bob", "carol", "o'brien"}
)

func serveCalls(seed uint64, prefix string, n int, base time.Time, span time.Duration) []schema.Call {
	r := mrand.New(mrand.NewPCG(seed, seed^0x5bd1e995))
	out := make([]schema.Call, n)
	end := base.Add(span)
	for i := range out {
		start := base.Add(time.Duration(r.Int64N(int64(span/time.Millisecond))) * time.Millisecond)
		switch {
		case i%4 != 0: // the next step of a trace: shortly after the previous call
			prev := out[i-1]
			start = prev.EndTime.Add(time.Duration(50+r.Int64N(900)) * time.Millisecond)
		case i%16 != 0 && i%16 < 8: // the next trace of a session: minutes later
			start = out[i-1].EndTime.Add(time.Duration(1+r.Int64N(600)) * time.Second)
		}
		if start.After(end) {
			start = end
		}
		start = start.Truncate(time.Millisecond)
		lat := 20 + r.Int64N(9000)
		in, o := 1+r.Int64N(3000), r.Int64N(1500)
		model := serveModels[r.IntN(len(serveModels))]
		kind := schema.KindChat
		if model == "bge-m3" {
			kind, o = schema.KindEmbedding, 0
		}
		c := schema.Call{
			ID: fmt.Sprintf("%s-%05d", prefix, i), TraceID: fmt.Sprintf("%s-tr-%d", prefix, i/4),
			StartTime: start, EndTime: start.Add(time.Duration(lat) * time.Millisecond), LatencyMS: lat,
			Endpoint: "/v1/chat/completions", Kind: kind, Model: model, Instance: fmt.Sprintf("xinf-%d:9997", r.IntN(2)),
			UserID: serveUsers[r.IntN(len(serveUsers))], UserSource: schema.UserExplicit,
			Status: 200, InputTokens: in, OutputTokens: o, TotalTokens: in + o, UsageSource: schema.UsageReported,
			InputText: fmt.Sprintf("question %d", i), OutputText: fmt.Sprintf("answer %d", i),
			Input:    json.RawMessage(fmt.Sprintf(`[{"role":"system","content":"Be brief."},{"role":"user","content":"question %d"}]`, i)),
			Output:   json.RawMessage(fmt.Sprintf(`{"role":"assistant","content":"answer %d"}`, i)),
			Metadata: map[string]json.RawMessage{"team": json.RawMessage(`"search"`), "attempt": json.RawMessage(fmt.Sprint(1 + i%3))},
			Source:   schema.SourceOnline,
		}
		if i%16 < 8 {
			c.SessionID = fmt.Sprintf("%s-sess-%d", prefix, i/16)
		}
		if r.IntN(5) == 0 {
			c.Source, c.BatchID = schema.SourceBatch, fmt.Sprintf("job-%d", 1+r.IntN(2))
		}
		switch r.IntN(12) {
		case 0:
			c.Status, c.Error = 500, "upstream error"
		case 1:
			c.Status = 429
		case 2:
			c.Error = "stream cut" // an error message with status 200 is an error too
		}
		if r.IntN(3) > 0 {
			ttft := r.Int64N(lat + 1)
			ft := start.Add(time.Duration(ttft) * time.Millisecond)
			c.TTFTMS, c.FirstTokenTime, c.Stream = &ttft, &ft, true
		}
		if r.IntN(4) > 0 {
			cost := float64(in)*0.0000005 + float64(o)*0.0000015
			c.CostUSD = &cost
		}
		out[i] = c
	}
	return out
}

// seedServe writes calls twice (a redelivered batch) and then re-attributed
// copies of every tenth call (other model and user, more tokens: a replay
// with a changed record), and returns the calls as they must read back.
func seedServe(t testing.TB, out *chsink.Output, calls []schema.Call) []schema.Call {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for range 2 {
		if err := out.WriteBatch(ctx, calls); err != nil {
			t.Fatal(err)
		}
	}
	final := append([]schema.Call(nil), calls...)
	var changed []schema.Call
	for i := 0; i < len(final); i += 10 {
		c := final[i]
		c.Model = serveModels[(indexOf(serveModels, c.Model)+1)%len(serveModels)]
		c.UserID = serveUsers[(indexOf(serveUsers, c.UserID)+1)%len(serveUsers)]
		c.InputTokens += 1000
		c.TotalTokens += 1000
		final[i] = c
		changed = append(changed, c)
	}
	if err := out.WriteBatch(ctx, changed); err != nil {
		t.Fatal(err)
	}
	return final
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// serveTruth computes, in Go, what GET /api/v1/usage must answer: rows for
// calls in [from, to) matching f, grouped by g with buckets in loc, and the
// zero rows of the hours/days without calls.
func serveTruth(calls []schema.Call, from, to time.Time, g callsdb.GroupBy, f callsdb.UsageFilter, loc *time.Location) (rows []usageapi.UsageRow, totals usageapi.Metrics) {
	type key struct {
		bucket              int64
		model, user, source string
	}
	type acc struct {
		m   usageapi.Metrics
		lat []float64
	}
	groups := map[key]*acc{}
	combos := map[key]bool{}
	all := &acc{}
	bucketOf := func(t time.Time) int64 {
		l := t.In(loc)
		switch g.Bucket {
		case callsdb.BucketHour:
			return l.Add(-time.Duration(l.Minute())*time.Minute - time.Duration(l.Second())*time.Second - time.Duration(l.Nanosecond())).Unix()
		case callsdb.BucketDay:
			return time.Date(l.Year(), l.Month(), l.Day(), 0, 0, 0, 0, loc).Unix()
		}
		return 0
	}
	add := func(a *acc, c *schema.Call) {
		a.m.Calls++
		if c.Status >= 400 || c.Error != "" {
			a.m.Errors++
		}
		a.m.InputTokens += c.InputTokens
		a.m.OutputTokens += c.OutputTokens
		a.m.TotalTokens += c.TotalTokens
		if c.CostUSD != nil {
			a.m.CostUSD += *c.CostUSD
		}
		a.lat = append(a.lat, float64(c.LatencyMS))
	}
	for i := range calls {
		c := &calls[i]
		st := c.StartTime.Truncate(time.Second)
		if st.Before(from) || !st.Before(to) ||
			(f.Model != "" && c.Model != f.Model) || (f.User != "" && c.UserID != f.User) ||
			(f.Source != "" && c.Source != f.Source) || (f.BatchID != "" && c.BatchID != f.BatchID) {
			continue
		}
		k := key{bucket: bucketOf(st)}
		if g.Model {
			k.model = c.Model
		}
		if g.User {
			k.user = c.UserID
		}
		if g.Source {
			k.source = c.Source
		}
		if groups[k] == nil {
			groups[k] = &acc{}
		}
		add(groups[k], c)
		add(all, c)
		combos[key{model: k.model, user: k.user, source: k.source}] = true
	}
	finish := func(a *acc) usageapi.Metrics {
		if len(a.lat) > 0 {
			q := exactQuantiles(a.lat)
			a.m.LatencyP50, a.m.LatencyP95, a.m.LatencyP99 = q.P50, q.P95, q.P99
		}
		return a.m
	}
	totals = finish(all)
	if g.Bucket != callsdb.BucketNone {
		// Every bucket touched by [from, to), found by walking it minute by
		// minute (independent of the server's calendar walk).
		if !g.Model && !g.User && !g.Source {
			combos[key{}] = true
		}
		bset := map[int64]bool{bucketOf(to.Add(-time.Second)): true}
		for t := from; t.Before(to); t = t.Add(time.Minute) {
			bset[bucketOf(t)] = true
		}
		for b := range bset {
			for c := range combos {
				c.bucket = b
				if groups[c] == nil {
					groups[c] = &acc{}
				}
			}
		}
	}
	keys := make([]key, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.bucket != b.bucket {
			return a.bucket < b.bucket
		}
		if a.model != b.model {
			return a.model < b.model
		}
		if a.user != b.user {
			return a.user < b.user
		}
		return a.source < b.source
	})
	for _, k := range keys {
		row := usageapi.UsageRow{Metrics: finish(groups[k])}
		k := k
		switch g.Bucket {
		case callsdb.BucketDay:
			d := time.Unix(k.bucket, 0).In(loc).Format(time.DateOnly)
			row.Day = &d
		case callsdb.BucketHour:
			h := time.Unix(k.bucket, 0).In(loc).Format(time.RFC3339)
			row.Hour = &h
		}
		if g.Model {
			row.Model = &k.model
		}
		if g.User {
			row.User = &k.user
		}
		if g.Source {
			row.Source = &k.source
		}
		rows = append(rows, row)
	}
	return rows, totals
}

func diffMetrics(got, want usageapi.Metrics) error {
	near := func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b))+1e-12 }
	if got.Calls != want.Calls || got.Errors != want.Errors || got.InputTokens != want.InputTokens ||
		got.OutputTokens != want.OutputTokens || got.TotalTokens != want.TotalTokens || !near(got.CostUSD, want.CostUSD) ||
		got.LatencyP50 != want.LatencyP50 || got.LatencyP95 != want.LatencyP95 || got.LatencyP99 != want.LatencyP99 {
		return fmt.Errorf("got %+v, want %+v", got, want)
	}
	return nil
}

func str(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

func diffUsageRows(got, want []usageapi.UsageRow) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d rows, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if str(g.Day) != str(w.Day) || str(g.Hour) != str(w.Hour) || str(g.Model) != str(w.Model) ||
			str(g.User) != str(w.User) || str(g.Source) != str(w.Source) {
			return fmt.Errorf("row %d keys: got day=%s hour=%s model=%s user=%s source=%s, want day=%s hour=%s model=%s user=%s source=%s",
				i, str(g.Day), str(g.Hour), str(g.Model), str(g.User), str(g.Source), str(w.Day), str(w.Hour), str(w.Model), str(w.User), str(w.Source))
		}
		if err := diffMetrics(g.Metrics, w.Metrics); err != nil {
			return fmt.Errorf("row %d (%s %s %s %s %s): %w", i, str(w.Day), str(w.Hour), str(w.Model), str(w.User), str(w.Source), err)
		}
	}
	return nil
}

// apiGet GETs base+path with params and decodes the JSON answer into v
// (when the status is want).
func apiGet(t testing.TB, base, path string, params url.Values, token string, want int, v any) []byte {
	t.Helper()
	u := base + path
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != want {
		t.Fatalf("GET %s: %d, want %d: %s", u, resp.StatusCode, want, body)
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %v: %s", u, err, body)
		}
	}
	return body
}

// groupByParam renders g as the group_by parameter.
func groupByParam(g callsdb.GroupBy) string {
	var p []string
	if g.Bucket != callsdb.BucketNone {
		p = append(p, string(g.Bucket))
	}
	if g.Model {
		p = append(p, "model")
	}
	if g.User {
		p = append(p, "user")
	}
	if g.Source {
		p = append(p, "source")
	}
	out := ""
	for i, s := range p {
		if i > 0 {
			out += ","
		}
		out += s
	}
	return out
}
