package export

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/callpipe/callpipe/store/callsdb"
)

// source reads an export's rows in a fixed order and can restart after any
// row it emitted, named by that row's cursor.
type source[T any] interface {
	// describe is the query recorded in the manifest and the columns.
	describe() (query string, columns []string)
	// estimate is an upper bound of the rows after cursor (0: unknown).
	estimate(ctx context.Context, after string) (int64, error)
	// read calls emit with consecutive batches of rows after cursor, each
	// row with its own cursor, until the range is done or emit fails.
	read(ctx context.Context, after string, emit func(rows []T, cursors []string) error) error
}

// callsSource reads {db}.calls in (hour, id) order — the table's sort key —
// in windows of whole hours, one page of pageRows per query, each page
// after the last row of the one before. A cursor is "<hour unix>/<id>".
type callsSource struct {
	conn     driver.Conn
	db       string
	filter   callsdb.ExportFilter
	pageRows int
	hours    []callsdb.ExportHour
}

func newCallsSource(conn driver.Conn, db string, spec *Spec, pageRows int) *callsSource {
	return &callsSource{conn: conn, db: db, pageRows: pageRows,
		filter: callsdb.ExportFilter{From: spec.From, To: spec.To, Model: spec.Model, User: spec.User}}
}

func (s *callsSource) describe() (string, []string) {
	return callsdb.WithDB(callsdb.ExportQuery(s.filter), s.db), RowColumns
}

func parseCallsCursor(c string) (hour time.Time, id string, err error) {
	if c == "" {
		return time.Time{}, "", nil
	}
	h, id, ok := strings.Cut(c, "/")
	sec, perr := strconv.ParseInt(h, 10, 64)
	if !ok || perr != nil {
		return time.Time{}, "", fmt.Errorf("export: bad calls cursor %q", c)
	}
	return time.Unix(sec, 0).UTC(), id, nil
}

func callsCursor(r *Row) string {
	return strconv.FormatInt(r.StartTime.Truncate(time.Hour).Unix(), 10) + "/" + r.ID
}

// resume loads the range's hours (once) and parses the cursor after, where
// estimate and read start.
func (s *callsSource) resume(ctx context.Context, after string) (hour time.Time, id string, err error) {
	if s.hours == nil {
		h, err := callsdb.ExportHours(ctx, s.conn, s.db, s.filter)
		if err != nil {
			return time.Time{}, "", err
		}
		if h == nil {
			h = []callsdb.ExportHour{} // loaded: no hour holds calls
		}
		s.hours = h
	}
	return parseCallsCursor(after)
}

func (s *callsSource) estimate(ctx context.Context, after string) (int64, error) {
	ch, _, err := s.resume(ctx, after)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, h := range s.hours {
		if !h.Hour.Before(ch) {
			n += h.Stored
		}
	}
	return int64(n), nil
}

func (s *callsSource) read(ctx context.Context, after string, emit func([]Row, []string) error) error {
	curHour, curID, err := s.resume(ctx, after)
	if err != nil {
		return err
	}
	var cur *callsdb.ExportCursor
	if after != "" {
		cur = &callsdb.ExportCursor{Hour: curHour, ID: curID}
	}
	hours := s.hours
	for len(hours) > 0 && hours[0].Hour.Before(curHour) {
		hours = hours[1:]
	}
	var page []callsdb.ExportRow
	rows := make([]Row, 0, s.pageRows)
	cursors := make([]string, 0, s.pageRows)
	for len(hours) > 0 {
		// a window of consecutive hours holding about a page: sparse
		// ranges take few queries, busy hours one window each
		n, stored := 1, hours[0].Stored
		for n < len(hours) && stored+hours[n].Stored <= uint64(s.pageRows) {
			stored += hours[n].Stored
			n++
		}
		from, to := maxTime(hours[0].Hour, s.filter.From), minTime(hours[n-1].Hour.Add(time.Hour), s.filter.To)
		hours = hours[n:]
		for {
			page, err = callsdb.ExportPage(ctx, s.conn, s.db, s.filter, from, to, cur, s.pageRows, page)
			if err != nil {
				return err
			}
			if len(page) == 0 {
				break
			}
			rows, cursors = rows[:0], cursors[:0]
			for i := range page {
				r := rowFromStored(&page[i])
				rows = append(rows, r)
				cursors = append(cursors, callsCursor(&r))
			}
			last := &rows[len(rows)-1]
			cur = &callsdb.ExportCursor{Hour: last.StartTime.Truncate(time.Hour), ID: last.ID}
			if err := emit(rows, cursors); err != nil {
				return err
			}
			if len(page) < s.pageRows {
				break
			}
		}
	}
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
