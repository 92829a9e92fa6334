package callsdb

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"golang.org/x/sync/errgroup"

	"github.com/callpipe/callpipe/schema"
)

// UsageRow is one group of the usage overview. Empty Model/UserID/Source and
// a zero Bucket mean "not grouped by it".
type UsageRow struct {
	Bucket       time.Time // start of the hour or day (in the spec's zone)
	Model        string
	UserID       string
	Source       string `json:",omitempty"`
	Calls        uint64
	Errors       uint64 // status >= 400 or an error message
	InputTokens  int64
	OutputTokens int64
	TotalTokens  int64
	CostUSD      float64
	LatencyMS    Quantiles
	TTFTCalls    uint64    // calls with a time to first token
	TTFTMS       Quantiles // over TTFTCalls; zero when there are none
	// Histogram: the quantiles come from the sealed rollups' histograms
	// (relative error at most HistogramRelativeError); else they are exact.
	Histogram bool `json:",omitempty"`
}

// Quantiles are p50/p95/p99 with ClickHouse quantileExact's ranks (the
// element at index floor(level*n) of the sorted values).
type Quantiles struct{ P50, P95, P99 float64 }

// Usage returns exact usage for calls that started in [from, to) (whole
// seconds, UTC), grouped as g says, ordered by bucket, model, user. Each call
// counts once however often it was delivered or inserted.
func Usage(ctx context.Context, conn driver.Conn, db string, from, to time.Time, g GroupBy) ([]UsageRow, error) {
	return UsageOf(ctx, conn, db, UsageSpec{From: from, To: to, Group: g})
}

// UsageOf returns usage for s, ordered by its group keys. Buckets are the
// start of the hour or day in s.TZ (times in that location). Counts, tokens
// and cost are exact; each call counts once however often it was delivered
// or inserted. Hours with a clean seal are read from the rollups (latency
// and TTFT quantiles then come from histograms, Histogram set), the rest
// from the per-call rows (exact quantiles when nothing is read from the
// rollups).
func UsageOf(ctx context.Context, conn driver.Conn, db string, s UsageSpec) ([]UsageRow, error) {
	r, err := newUsageReader(ctx, conn, db, s)
	if err != nil {
		return nil, err
	}
	return r.read(ctx, s, r.plan(s))
}

// UsageAnswer is what the usage API answers for a spec.
type UsageAnswer struct {
	Rows []UsageRow
	// Totals are those of the spec's range and filter, every group's
	// (Limit leaves none out of them); nil when nothing is in range.
	Totals *UsageRow
	// Omitted is how many groups Limit left out.
	Omitted int
}

// UsageWithTotals is UsageOf(s) and the totals of its range and filter
// (s without groups), what the usage API answers, planned over one read of
// the seal records. Without percentiles (or groups) the totals are the sums
// of the rows, as every call is in one group; with them the totals'
// quantiles need a read of their own, which runs beside the rows'. With a
// Limit the rows are first read without percentiles, to pick the groups by
// their calls; then the percentiles of the groups kept are read alone.
func UsageWithTotals(ctx context.Context, conn driver.Conn, db string, s UsageSpec) (UsageAnswer, error) {
	r, err := newUsageReader(ctx, conn, db, s)
	if err != nil {
		return UsageAnswer{}, err
	}
	limited := s.Limit > 0 && s.Group.Keyed()
	all := s // every group's rows
	if limited {
		// with percentiles the groups kept are read again, sums and all
		all.SkipPercentiles, all.rankOnly = true, !s.SkipPercentiles
	}
	ownTotals := !s.SkipPercentiles && s.Group != (GroupBy{})
	var rows, total []UsageRow
	g, gctx := errgroup.WithContext(ctx)
	rowsPlan := r.plan(all) // plans first: reads may run at once, plans not
	if ownTotals {
		t := s
		t.Group = GroupBy{}
		totalsPlan := r.plan(t)
		g.Go(func() (err error) {
			total, err = r.read(gctx, t, totalsPlan)
			return err
		})
	}
	g.Go(func() (err error) {
		rows, err = r.read(gctx, all, rowsPlan)
		return err
	})
	if err := g.Wait(); err != nil {
		return UsageAnswer{}, err
	}
	var a UsageAnswer
	switch {
	case !ownTotals:
		a.Totals = sumUsage(rows)
	case len(total) == 1:
		a.Totals = &total[0]
	}
	if !limited {
		a.Rows = rows
		return a, nil
	}
	kept, omitted := topGroups(rows, s.Limit)
	a.Omitted = omitted
	if !s.SkipPercentiles && len(kept) > 0 {
		p := s
		if omitted > 0 && namesFit(kept) {
			p.Filter = withGroups(s.Filter, s.Group, kept)
		}
		if rows, err = r.read(ctx, p, r.plan(p)); err != nil {
			return UsageAnswer{}, err
		}
	}
	a.Rows = slices.DeleteFunc(rows, func(x UsageRow) bool { return !kept[groupOf(x)] })
	return a, nil
}

// compare orders groups by model, user, source (time aside).
func (k usageKey) compare(o usageKey) int {
	return cmp.Or(cmp.Compare(k.model, o.model), cmp.Compare(k.user, o.user), cmp.Compare(k.source, o.source))
}

// groupOf is a usage row's group as a Limit counts it: its keys but time.
func groupOf(r UsageRow) usageKey { return usageKey{model: r.Model, user: r.UserID, source: r.Source} }

// topGroups picks the limit groups of rows with the most calls (ties by
// model, user, source) and counts the others.
func topGroups(rows []UsageRow, limit int) (kept map[usageKey]bool, omitted int) {
	index := map[usageKey]int{}
	type group struct {
		key   usageKey
		calls uint64
	}
	var groups []group
	for _, r := range rows {
		k := groupOf(r)
		i, ok := index[k]
		if !ok {
			i = len(groups)
			index[k] = i
			groups = append(groups, group{key: k})
		}
		groups[i].calls += r.Calls
	}
	slices.SortFunc(groups, func(a, b group) int { return cmp.Or(cmp.Compare(b.calls, a.calls), a.key.compare(b.key)) })
	n := min(limit, len(groups))
	kept = make(map[usageKey]bool, n)
	for _, g := range groups[:n] {
		kept[g.key] = true
	}
	return kept, len(groups) - n
}

// maxGroupNames bounds the names a read of a Limit's groups lists in its
// SQL, well inside ClickHouse's max_query_size (256 KiB): names are up to
// 256 characters, and a thousand groups of long ones would not fit.
const maxGroupNames = 96 << 10

// namesFit reports whether the keys of groups fit in maxGroupNames; when
// they do not, the percentiles are read for every group and those of the
// groups kept picked from them (slower, the same answer).
func namesFit(groups map[usageKey]bool) bool {
	n := 0
	for k := range groups {
		n += len(k.model) + len(k.user) + len(k.source)
	}
	return n <= maxGroupNames
}

// withGroups is f narrowed to groups of g: a read of those groups alone.
func withGroups(f UsageFilter, g GroupBy, groups map[usageKey]bool) UsageFilter {
	keys := slices.SortedFunc(maps.Keys(groups), usageKey.compare)
	f.only = &groupSet{by: GroupBy{Model: g.Model, User: g.User, Source: g.Source}, groups: keys}
	return f
}

// sumUsage is the one row of rows summed (nil for none); its quantiles are
// a lone row's, else zero.
func sumUsage(rows []UsageRow) *UsageRow {
	switch len(rows) {
	case 0:
		return nil
	case 1:
		t := rows[0]
		t.Bucket, t.Model, t.UserID, t.Source = time.Time{}, "", "", ""
		return &t
	}
	var t UsageRow
	for _, r := range rows {
		t.Calls += r.Calls
		t.Errors += r.Errors
		t.InputTokens += r.InputTokens
		t.OutputTokens += r.OutputTokens
		t.TotalTokens += r.TotalTokens
		t.CostUSD += r.CostUSD
		t.TTFTCalls += r.TTFTCalls
		t.Histogram = t.Histogram || r.Histogram
	}
	return &t
}

// usageReader reads usage over one load of the seal records and dirty
// marks of a range: plans of several specs of that range agree on them.
type usageReader struct {
	conn driver.Conn
	db   string
	loc  *time.Location
	st   *sealState
}

func newUsageReader(ctx context.Context, conn driver.Conn, db string, s UsageSpec) (*usageReader, error) {
	if !s.To.After(s.From) {
		return nil, fmt.Errorf("clickhouse usage: empty range [%s, %s)", s.From, s.To)
	}
	loc := time.UTC
	if s.TZ != "" {
		var err error
		if loc, err = time.LoadLocation(s.TZ); err != nil {
			return nil, fmt.Errorf("clickhouse usage: time zone: %w", err)
		}
	}
	from, to := floorTo(s.From.Unix(), 86400), ceilTo(s.To.Unix(), 86400)
	st, err := loadSeals(ctx, conn, db, from, to)
	if err != nil {
		return nil, fmt.Errorf("clickhouse usage %s: %w", s.Group, err)
	}
	if st.dirty, err = loadDirty(ctx, conn, db, from, to); err != nil {
		return nil, fmt.Errorf("clickhouse usage %s: %w", s.Group, err)
	}
	return &usageReader{conn: conn, db: db, loc: loc, st: st}, nil
}

// plan plans s (of the reader's range and zone) over the loaded records.
func (r *usageReader) plan(s UsageSpec) usagePlan { return planUsage(s, r.st, r.loc) }

// read runs plan p of s; it only reads the loaded records, so reads may
// run at once.
func (r *usageReader) read(ctx context.Context, s UsageSpec, p usagePlan) ([]UsageRow, error) {
	if len(p.rollup) == 0 {
		return usageExact(ctx, r.conn, r.db, s, p, r.loc)
	}
	out, err := usageSums(ctx, r.conn, r.db, s, p, r.loc)
	if err != nil {
		return nil, fmt.Errorf("clickhouse usage %s: %w", s.Group, err)
	}
	return out, nil
}

// usageKey is a usage row's group.
type usageKey struct {
	bucket              int64
	model, user, source string
}

func (r UsageRow) key() usageKey { return usageKey{r.Bucket.Unix(), r.Model, r.UserID, r.Source} }

// scanKeys are the scan destinations of a usage row's group columns.
func (r *UsageRow) scanKeys(s UsageSpec) []any {
	dest := []any{&r.Bucket, &r.Model, &r.UserID}
	if s.Group.Source {
		dest = append(dest, &r.Source)
	}
	return dest
}

// settleBucket puts r's bucket into loc, or zero when s has no time bucket.
func settleBucket(r *UsageRow, s UsageSpec, loc *time.Location) {
	r.Bucket = r.Bucket.In(loc)
	if s.Group.Bucket == BucketNone {
		r.Bucket = time.Time{}
	}
}

// usageExact reads a plan without rollup rows: sums and exact quantiles of
// the per-call rows in one query.
func usageExact(ctx context.Context, conn driver.Conn, db string, s UsageSpec, plan usagePlan, loc *time.Location) ([]UsageRow, error) {
	rows, err := conn.Query(ctx, WithDB(usageExactSQL(s, plan.perCallWhere()), db))
	if err != nil {
		return nil, fmt.Errorf("clickhouse usage %s: %w", s.Group, err)
	}
	defer rows.Close()
	var out []UsageRow
	for rows.Next() {
		var r UsageRow
		var lat, ttft []float64
		dest := append(r.scanKeys(s), &r.Calls, &r.Errors, &r.InputTokens, &r.OutputTokens, &r.TotalTokens, &r.CostUSD,
			&lat, &r.TTFTCalls, &ttft)
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("clickhouse usage %s: %w", s.Group, err)
		}
		settleBucket(&r, s, loc)
		if !s.SkipPercentiles {
			r.LatencyMS = quantiles(lat)
			if r.TTFTCalls > 0 {
				r.TTFTMS = quantiles(ttft)
			}
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("clickhouse usage %s: %w", s.Group, err)
	}
	return out, nil
}

// usageSums reads the usage of a plan with rollup rows (usageRollupSQL),
// with the quantiles of its histograms unless s skips them.
func usageSums(ctx context.Context, conn driver.Conn, db string, s UsageSpec, plan usagePlan, loc *time.Location) ([]UsageRow, error) {
	rows, err := conn.Query(ctx, WithDB(usageRollupSQL(s, plan), db))
	if err != nil {
		return nil, fmt.Errorf("sums: %w", err)
	}
	defer rows.Close()
	mode := histogramMergeOf(s, plan.signed())
	var merge histogramMerger
	var out []UsageRow
	// one row scanned into at a time, then copied out: a read of tens of
	// thousands of groups allocates no row and no destination list per row
	var r UsageRow
	var latText, ttftText string
	var latH, ttftH Histogram
	var latQ, ttftQ []uint16
	dest := append(r.scanKeys(s), &r.Calls, &r.Errors, &r.InputTokens, &r.OutputTokens, &r.TotalTokens, &r.CostUSD)
	switch mode {
	case mergeArray:
		dest = append(dest, &latQ, &r.TTFTCalls, &ttftQ)
	case mergeText:
		dest = append(dest, &latText, &r.TTFTCalls, &ttftText)
	case mergeSumMap:
		dest = append(dest, &latH.Buckets, &latH.Counts, &r.TTFTCalls, &ttftH.Buckets, &ttftH.Counts)
	default:
		dest = append(dest, &r.TTFTCalls)
	}
	for rows.Next() {
		r = UsageRow{}
		latQ, ttftQ = latQ[:0], ttftQ[:0]
		latH, ttftH = Histogram{}, Histogram{}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("sums: %w", err)
		}
		settleBucket(&r, s, loc)
		if mode == mergeText {
			if latH, err = merge.parse(latText); err != nil {
				return nil, fmt.Errorf("latency histogram: %w", err)
			}
			if ttftH, err = merge.parse(ttftText); err != nil {
				return nil, fmt.Errorf("TTFT histogram: %w", err)
			}
		}
		switch mode {
		case mergeArray:
			r.Histogram = true
			r.LatencyMS = histogramQuantiles(latQ)
			if r.TTFTCalls > 0 {
				r.TTFTMS = histogramQuantiles(ttftQ)
			}
		case mergeText, mergeSumMap:
			r.Histogram = true
			r.LatencyMS, r.TTFTMS = latH.Quantiles(), ttftH.Quantiles()
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sums: %w", err)
	}
	return out, nil
}

func quantiles(v []float64) Quantiles {
	if len(v) != 3 {
		return Quantiles{}
	}
	return Quantiles{P50: v[0], P95: v[1], P99: v[2]}
}

// CallCounts returns the number of distinct call ids in {db}.calls and the
// number of stored rows (which exceeds it while redelivered copies are not
// merged yet).
func CallCounts(ctx context.Context, conn driver.Conn, db string) (distinct, rows uint64, err error) {
	if err = conn.QueryRow(ctx, WithDB(QueryCallsDistinct, db)).Scan(&distinct); err != nil {
		return 0, 0, fmt.Errorf("clickhouse count calls: %w", err)
	}
	if err = conn.QueryRow(ctx, WithDB(QueryCallsRows, db)).Scan(&rows); err != nil {
		return 0, 0, fmt.Errorf("clickhouse count rows: %w", err)
	}
	return distinct, rows, nil
}

// StoredCall is a call as stored in {db}.calls: the normalized record, and
// whether text was cut to clickhouse.max_text_bytes (then Input/Output may
// be cut JSON, returned as a JSON string).
type StoredCall struct {
	schema.Call
	Truncated bool `json:"truncated"`
}

// ErrNotFound is returned for a call or trace id that is not stored.
var ErrNotFound = errors.New("not found")

// CallDetail returns the newest stored copy of call id, or ErrNotFound.
func CallDetail(ctx context.Context, conn driver.Conn, db, id string) (*StoredCall, error) {
	calls, err := queryCalls(ctx, conn, WithDB(CallQuery(id), db))
	if err != nil {
		return nil, fmt.Errorf("clickhouse call %q: %w", id, err)
	}
	if len(calls) == 0 {
		return nil, fmt.Errorf("clickhouse call %q: %w", id, ErrNotFound)
	}
	return &calls[0], nil
}

// TraceCalls returns the calls sharing trace_id or session_id id, earliest
// first, at most limit.
func TraceCalls(ctx context.Context, conn driver.Conn, db, id string, limit int) ([]StoredCall, error) {
	calls, err := queryCalls(ctx, conn, WithDB(TraceQuery(id, limit), db))
	if err != nil {
		return nil, fmt.Errorf("clickhouse trace %q: %w", id, err)
	}
	return calls, nil
}

func queryCalls(ctx context.Context, conn driver.Conn, sql string) ([]StoredCall, error) {
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []StoredCall
	for rows.Next() {
		var c StoredCall
		var startMS, endMS uint16
		var ftMS *uint16
		var stream, truncated uint8
		var status int32
		var input, output, params, metadata string
		if err := rows.Scan(&c.ID, &c.TraceID, &c.SessionID, &c.StartTime, &startMS, &c.EndTime, &endMS,
			&c.FirstTokenTime, &ftMS, &c.LatencyMS, &c.TTFTMS,
			&c.Endpoint, &c.Kind, &c.Model, &c.Instance, &c.UserID, &c.UserSource, &c.APIKeyHash, &c.APIKeyPrefix,
			&stream, &status, &c.Error, &c.FinishReason, &c.InputText, &c.OutputText, &input, &output, &params,
			&c.InputTokens, &c.OutputTokens, &c.TotalTokens, &c.UsageSource, &c.CostUSD, &metadata, &c.Tags,
			&c.Source, &c.BatchID, &truncated); err != nil {
			return nil, err
		}
		c.StartTime = c.StartTime.UTC().Add(time.Duration(startMS) * time.Millisecond)
		c.EndTime = c.EndTime.UTC().Add(time.Duration(endMS) * time.Millisecond)
		if c.FirstTokenTime != nil {
			ft := c.FirstTokenTime.UTC()
			if ftMS != nil {
				ft = ft.Add(time.Duration(*ftMS) * time.Millisecond)
			}
			c.FirstTokenTime = &ft
		}
		c.Stream, c.Status, c.Truncated = stream == 1, int(status), truncated == 1
		c.Input, c.Output = rawJSON(input), rawJSON(output)
		c.ModelParameters, c.Metadata = jsonMap(params), jsonMap(metadata)
		if len(c.Tags) == 0 {
			c.Tags = nil
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// rawJSON returns s as JSON: itself when valid (the sink stores the
// structured input/output as JSON text), else as a JSON string (text cut at
// clickhouse.max_text_bytes).
func rawJSON(s string) json.RawMessage {
	if s == "" {
		return nil
	}
	if json.Valid([]byte(s)) {
		return json.RawMessage(s)
	}
	b, _ := json.Marshal(s)
	return b
}

// jsonMap parses a stored JSON object (metadata, model parameters); text
// that is not one is kept under "_raw" rather than dropped.
func jsonMap(s string) map[string]json.RawMessage {
	if s == "" {
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return map[string]json.RawMessage{"_raw": rawJSON(s)}
	}
	return m
}
