package usageapi

import (
	"net/http"
	"sort"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// Metrics are the numbers of one usage row and of the totals.
type Metrics struct {
	Calls        uint64  `json:"calls"`
	Errors       uint64  `json:"errors"`
	InputTokens  int64   `json:"input_tokens"`
	OutputTokens int64   `json:"output_tokens"`
	TotalTokens  int64   `json:"total_tokens"`
	CostUSD      float64 `json:"cost_usd"`
	LatencyP50   float64 `json:"latency_ms_p50"`
	LatencyP95   float64 `json:"latency_ms_p95"`
	LatencyP99   float64 `json:"latency_ms_p99"`
}

func metricsOf(r callsdb.UsageRow) Metrics {
	return Metrics{
		Calls: r.Calls, Errors: r.Errors, InputTokens: r.InputTokens, OutputTokens: r.OutputTokens,
		TotalTokens: r.TotalTokens, CostUSD: r.CostUSD,
		LatencyP50: r.LatencyMS.P50, LatencyP95: r.LatencyMS.P95, LatencyP99: r.LatencyMS.P99,
	}
}

// UsageRow is one row of GET /api/v1/usage: the group keys it is grouped by
// (day as YYYY-MM-DD, hour as RFC 3339 in tz) and its metrics.
type UsageRow struct {
	Day    *string `json:"day,omitempty"`
	Hour   *string `json:"hour,omitempty"`
	Model  *string `json:"model,omitempty"`
	User   *string `json:"user,omitempty"`
	Source *string `json:"source,omitempty"`
	Metrics
}

// UsageResponse is the body of GET /api/v1/usage.
type UsageResponse struct {
	From    time.Time  `json:"from"`
	To      time.Time  `json:"to"`
	TZ      string     `json:"tz"`
	GroupBy []string   `json:"group_by"`
	Rows    []UsageRow `json:"rows"`
	Totals  Metrics    `json:"totals"`
	// Percentiles says how latency percentiles were computed: "exact" (every
	// call of the range read), "histogram" (sealed hours read from the
	// rollups' log-linear histograms, relative error at most 0.79 %) or
	// "none" (asked with percentiles=false: they are 0).
	Percentiles string `json:"percentiles"`
	// GroupsOmitted is how many groups limit left out (only with limit):
	// Totals still count them.
	GroupsOmitted *int `json:"groups_omitted,omitempty"`
}

func (s *Server) handleUsage(w http.ResponseWriter, r *http.Request) {
	q, err := newQuery(r.URL.Query(), "from", "to", "group_by", "model", "user", "source", "batch_id", "tz", "percentiles", "limit")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	spec, keys, loc, err := s.usageSpec(q)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, cancel := s.queryContext(r)
	defer cancel()
	a, err := s.store.Usage(ctx, spec)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	resp := UsageResponse{From: spec.From.In(loc), To: spec.To.In(loc), TZ: loc.String(), GroupBy: keys,
		Rows: renderUsage(fillBuckets(a.Rows, spec.Group, spec.From, spec.To, loc), spec.Group, loc), Percentiles: "exact"}
	if a.Totals != nil {
		resp.Totals = metricsOf(*a.Totals)
		if a.Totals.Histogram {
			resp.Percentiles = "histogram"
		}
	}
	if spec.Limit > 0 {
		resp.GroupsOmitted = &a.Omitted
	}
	if spec.SkipPercentiles {
		resp.Percentiles = "none"
	}
	s.writeJSON(w, http.StatusOK, resp)
}

func (s *Server) usageSpec(q *query) (callsdb.UsageSpec, []string, *time.Location, error) {
	var spec callsdb.UsageSpec
	loc, from, to, err := q.zonedRange(s.now())
	if err != nil {
		return spec, nil, nil, err
	}
	spec.From, spec.To = from, to
	g, keys, err := q.groupBy()
	if err != nil {
		return spec, nil, nil, err
	}
	if n := buckets(g.Bucket, spec.From, spec.To, loc); n > maxBuckets {
		return spec, nil, nil, bad("from", "range of about %d %s buckets exceeds %d; narrow from/to or group by day", n, g.Bucket, maxBuckets)
	}
	spec.Group = g
	if spec.Filter.Model, err = q.filter("model"); err != nil {
		return spec, nil, nil, err
	}
	if spec.Filter.User, err = q.filter("user"); err != nil {
		return spec, nil, nil, err
	}
	if spec.Filter.BatchID, err = q.filter("batch_id"); err != nil {
		return spec, nil, nil, err
	}
	if spec.Filter.Source, err = q.source(); err != nil {
		return spec, nil, nil, err
	}
	if err := batchWithSource(spec.Filter.BatchID, spec.Filter.Source); err != nil {
		return spec, nil, nil, err
	}
	if spec.Limit, err = q.groupLimit(g); err != nil {
		return spec, nil, nil, err
	}
	switch p := q.get("percentiles"); p {
	case "", "true":
	case "false":
		spec.SkipPercentiles = true
	default:
		return spec, nil, nil, bad("percentiles", "%q is not true or false", p)
	}
	if loc != time.UTC {
		spec.TZ = loc.String()
	}
	return spec, keys, loc, nil
}

// bucketStarts lists the starts of the hours or days (in loc) that overlap
// [from, to).
func bucketStarts(b callsdb.Bucket, from, to time.Time, loc *time.Location) []time.Time {
	var out []time.Time
	f := from.In(loc)
	switch b {
	case callsdb.BucketHour:
		// The local hour start is found by cutting the local minutes and
		// seconds off the instant (not by rebuilding a wall-clock time, which
		// is ambiguous in the hour repeated at a DST end): right for zones
		// with half-hour offsets and on DST change days.
		hourStart := func(t time.Time) time.Time {
			l := t.In(loc)
			return l.Add(-time.Duration(l.Minute())*time.Minute - time.Duration(l.Second())*time.Second - time.Duration(l.Nanosecond()))
		}
		for t := hourStart(f); t.Before(to); t = hourStart(t.Add(time.Hour)) {
			out = append(out, t)
		}
	case callsdb.BucketDay:
		for t := time.Date(f.Year(), f.Month(), f.Day(), 0, 0, 0, 0, loc); t.Before(to); t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc) {
			out = append(out, t)
		}
	}
	return out
}

type groupKey struct{ model, user, source string }

// fillBuckets adds a zero row for every hour or day of [from, to) that has
// no calls, for each combination of the other group keys that has calls in
// the range (ClickHouse 18.16 has no WITH FILL). Grouped by time only, every
// bucket appears even when the range holds no call at all.
func fillBuckets(rows []callsdb.UsageRow, g callsdb.GroupBy, from, to time.Time, loc *time.Location) []callsdb.UsageRow {
	if g.Bucket == callsdb.BucketNone {
		return rows
	}
	have := map[int64]map[groupKey]callsdb.UsageRow{}
	combos := map[groupKey]bool{}
	for _, r := range rows {
		k := groupKey{r.Model, r.UserID, r.Source}
		combos[k] = true
		b := r.Bucket.Unix()
		if have[b] == nil {
			have[b] = map[groupKey]callsdb.UsageRow{}
		}
		have[b][k] = r
	}
	if !g.Model && !g.User && !g.Source {
		combos[groupKey{}] = true
	}
	keys := make([]groupKey, 0, len(combos))
	for k := range combos {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.model != b.model {
			return a.model < b.model
		}
		if a.user != b.user {
			return a.user < b.user
		}
		return a.source < b.source
	})
	starts := bucketStarts(g.Bucket, from, to, loc)
	listed := map[int64]bool{}
	for _, t := range starts {
		listed[t.Unix()] = true
	}
	for b := range have { // a bucket SQL saw but the calendar did not: keep it
		if !listed[b] {
			starts = append(starts, time.Unix(b, 0).In(loc))
		}
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i].Before(starts[j]) })
	out := make([]callsdb.UsageRow, 0, len(starts)*len(keys))
	for _, t := range starts {
		for _, k := range keys {
			r, ok := have[t.Unix()][k]
			if !ok {
				r = callsdb.UsageRow{Model: k.model, UserID: k.user, Source: k.source}
			}
			r.Bucket = t
			out = append(out, r)
		}
	}
	return out
}

func renderUsage(rows []callsdb.UsageRow, g callsdb.GroupBy, loc *time.Location) []UsageRow {
	out := make([]UsageRow, 0, len(rows))
	for _, r := range rows {
		u := UsageRow{Metrics: metricsOf(r)}
		switch g.Bucket {
		case callsdb.BucketDay:
			d := r.Bucket.In(loc).Format(time.DateOnly)
			u.Day = &d
		case callsdb.BucketHour:
			h := r.Bucket.In(loc).Format(time.RFC3339)
			u.Hour = &h
		}
		if g.Model {
			u.Model = &r.Model
		}
		if g.User {
			u.User = &r.UserID
		}
		if g.Source {
			u.Source = &r.Source
		}
		out = append(out, u)
	}
	return out
}
