package usageapi

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/callpipe/callpipe/store/callsdb"
)

// ParamError is a bad query parameter; the API answers 400 with both fields.
type ParamError struct {
	Param  string `json:"param"`
	Reason string `json:"error"`
}

func (e *ParamError) Error() string { return e.Param + ": " + e.Reason }

func bad(param, format string, args ...any) error {
	return &ParamError{Param: param, Reason: fmt.Sprintf(format, args...)}
}

// Limits of the API's parameters.
const (
	maxFilterBytes = 256
	maxBuckets     = 10000 // hour or day buckets of one usage answer (zero rows included)
	defaultLimit   = 50
	maxLimit       = 500
	maxGroupLimit  = 1000 // groups of a usage answer with limit
	defaultDays    = 7
)

var tzRe = regexp.MustCompile(`^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$`)

// query reads the parameters of one request; unknown parameters are
// rejected so a typo (grup_by) never silently means "no grouping".
type query struct {
	v       url.Values
	allowed map[string]bool
}

func newQuery(v url.Values, allowed ...string) (*query, error) {
	q := &query{v: v, allowed: map[string]bool{}}
	for _, a := range allowed {
		q.allowed[a] = true
	}
	for k, vals := range v {
		if !q.allowed[k] {
			return nil, bad(k, "unknown parameter (allowed: %s)", strings.Join(allowed, ", "))
		}
		if len(vals) > 1 {
			return nil, bad(k, "given %d times; give it once", len(vals))
		}
	}
	return q, nil
}

func (q *query) get(name string) string { return q.v.Get(name) }

// filter is a plain string filter (model, user, batch_id).
func (q *query) filter(name string) (string, error) {
	s := q.get(name)
	if len(s) > maxFilterBytes {
		return "", bad(name, "longer than %d bytes", maxFilterBytes)
	}
	if !utf8.ValidString(s) {
		return "", bad(name, "not valid UTF-8")
	}
	return s, nil
}

func (q *query) location() (*time.Location, error) {
	tz := q.get("tz")
	if tz == "" {
		return time.UTC, nil
	}
	if !tzRe.MatchString(tz) || len(tz) > 64 {
		return nil, bad("tz", "%q is not an IANA time zone name (e.g. Europe/Berlin)", tz)
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, bad("tz", "unknown time zone %q", tz)
	}
	return loc, nil
}

// zonedRange is location and timeRange: the request's time zone and range.
func (q *query) zonedRange(now time.Time) (loc *time.Location, from, to time.Time, err error) {
	if loc, err = q.location(); err != nil {
		return nil, from, to, err
	}
	from, to, err = q.timeRange(loc, now)
	return loc, from, to, err
}

// timeRange reads from and to: RFC 3339 times, or dates YYYY-MM-DD in loc
// (from = the start of that day, to = the end of that day, i.e. the start of
// the next). Default: the last 7 days including today, ending now.
// Fractions of a second are cut: ranges are whole seconds.
func (q *query) timeRange(loc *time.Location, now time.Time) (from, to time.Time, err error) {
	to = now.Truncate(time.Second).Add(time.Second)
	if s := q.get("to"); s != "" {
		if to, err = parseTime("to", s, loc, true); err != nil {
			return
		}
	}
	if s := q.get("from"); s != "" {
		if from, err = parseTime("from", s, loc, false); err != nil {
			return
		}
	} else {
		y, m, d := to.Add(-time.Nanosecond).In(loc).Date()
		from = time.Date(y, m, d-(defaultDays-1), 0, 0, 0, 0, loc)
	}
	if !to.After(from) {
		return from, to, bad("to", "must be after from (%s)", from.Format(time.RFC3339))
	}
	return from, to, nil
}

func parseTime(param, s string, loc *time.Location, end bool) (time.Time, error) {
	if d, err := time.ParseInLocation(time.DateOnly, s, loc); err == nil {
		if end {
			d = time.Date(d.Year(), d.Month(), d.Day()+1, 0, 0, 0, 0, loc)
		}
		return d, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, bad(param, "%q is not a time: want RFC 3339 (2026-11-20T08:00:00Z) or a date (2026-11-20)", s)
	}
	if t.Year() < 1970 || t.Year() > 2105 {
		return time.Time{}, bad(param, "%q is outside 1970..2105", s)
	}
	return t.Truncate(time.Second), nil
}

// groupBy parses "day,model": at most one of day and hour, each key once.
func (q *query) groupBy() (callsdb.GroupBy, []string, error) {
	var g callsdb.GroupBy
	var keys []string
	s := q.get("group_by")
	if s == "" {
		return g, []string{}, nil
	}
	seen := map[string]bool{}
	for _, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		if seen[k] {
			return g, nil, bad("group_by", "%q given twice", k)
		}
		seen[k] = true
		switch k {
		case "day", "hour":
			if g.Bucket != callsdb.BucketNone {
				return g, nil, bad("group_by", "day and hour exclude each other")
			}
			g.Bucket = callsdb.Bucket(k)
		case "model":
			g.Model = true
		case "user":
			g.User = true
		case "source":
			g.Source = true
		default:
			return g, nil, bad("group_by", "unknown key %q (allowed: day, hour, model, user, source)", k)
		}
		keys = append(keys, k)
	}
	return g, keys, nil
}

func (q *query) source() (string, error) {
	s := q.get("source")
	switch s {
	case "", "online", "batch":
		return s, nil
	}
	return "", bad("source", "%q is not online or batch", s)
}

func (q *query) limit() (int, error) { return q.count("limit", defaultLimit, maxLimit) }

// groupLimit is the usage answer's limit on groups (0: none), for a
// grouping by model, user or source.
func (q *query) groupLimit(g callsdb.GroupBy) (int, error) {
	n, err := q.count("limit", 0, maxGroupLimit)
	if err == nil && n > 0 && !g.Keyed() {
		return 0, bad("limit", "limits the groups of model, user or source; group_by has none of them")
	}
	return n, err
}

// count reads parameter name as an integer in 1..max (def when absent).
func (q *query) count(name string, def, max int) (int, error) {
	s := q.get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		return 0, bad(name, "%q is not an integer in 1..%d", s, max)
	}
	return n, nil
}

var statusRe = regexp.MustCompile(`^[1-5][0-9][0-9]$`)

func (q *query) status() (callsdb.CallStatus, error) {
	s := q.get("status")
	if s == "" || s == "ok" || s == "error" || statusRe.MatchString(s) {
		return callsdb.CallStatus(s), nil
	}
	return "", bad("status", "%q is not ok, error or an HTTP status (100..599)", s)
}

// Cursors are opaque to clients: base64url of the JSON position.
func encodeCursor(c *callsdb.CallCursor) string {
	if c == nil {
		return ""
	}
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (q *query) cursor() (*callsdb.CallCursor, error) {
	s := q.get("cursor")
	if s == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	var c callsdb.CallCursor
	if err != nil || json.Unmarshal(b, &c) != nil || c.ID == "" {
		return nil, bad("cursor", "malformed; pass next_cursor of the previous page unchanged")
	}
	return &c, nil
}

// buckets is how many hour or day buckets [from, to) spans in loc.
func buckets(b callsdb.Bucket, from, to time.Time, loc *time.Location) int {
	switch b {
	case callsdb.BucketHour:
		return int(to.Sub(from)/time.Hour) + 2
	case callsdb.BucketDay:
		return int(to.Sub(from)/(24*time.Hour)) + 2
	}
	return 1
}
