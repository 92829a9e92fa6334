package callsdb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// CallSummary is one call of the call list (its newest stored copy).
type CallSummary struct {
	ID           string    `json:"id"`
	TraceID      string    `json:"trace_id"`
	SessionID    string    `json:"session_id,omitempty"`
	StartTime    time.Time `json:"start_time"`
	LatencyMS    int64     `json:"latency_ms"`
	TTFTMS       *int64    `json:"ttft_ms,omitempty"`
	Kind         string    `json:"kind"`
	Model        string    `json:"model"`
	Instance     string    `json:"instance,omitempty"`
	UserID       string    `json:"user_id"`
	Status       int       `json:"status"`
	IsError      bool      `json:"is_error"`
	Error        string    `json:"error,omitempty"`
	InputTokens  int64     `json:"input_tokens"`
	OutputTokens int64     `json:"output_tokens"`
	TotalTokens  int64     `json:"total_tokens"`
	CostUSD      *float64  `json:"cost_usd,omitempty"`
	Source       string    `json:"source"`
	BatchID      string    `json:"batch_id,omitempty"`
	Preview      string    `json:"input_preview,omitempty"` // first 240 bytes of the input text
}

// CallList returns one page of calls (newest first) and the cursor of the
// next page (nil on the last page). It reads keys window by window and
// fetches the newest copies of just those calls (see queries_calls.go), so
// its cost follows the page, not the range.
func CallList(ctx context.Context, conn driver.Conn, db string, s CallListSpec) ([]CallSummary, *CallCursor, error) {
	if s.Limit <= 0 {
		return nil, nil, errors.New("clickhouse call list: limit must be positive")
	}
	want := s.Limit + 1 // one more tells whether a next page exists
	floor := callPos{sec: s.From.Unix()}
	upper := posOfMS(s.To.UnixMilli())
	if s.After != nil {
		if a := posAt(s.After.StartMS, s.After.ID); a.less(upper) {
			upper = a
		}
	}
	top := upper
	// Windows end at upper and start window seconds before the earlier of
	// upper and now (plus clock skew): a range that ends in the future (the
	// dashboard asks up to tomorrow) has no calls there to find, and an
	// hour-wide first window over it would come back empty and cost a
	// round trip per widening. Calls stamped ahead of now are still inside
	// the first window, which always reaches up to upper.
	now := time.Now().Add(ClockSkew).Unix()
	var (
		out     []CallSummary
		pending []callPos // keys read, calls not fetched yet, newest first
		seen    = map[string]struct{}{}
		window  = callsFirstWindow
		checked int // keys fetched so far
		matched int // of which matched the filters
	)
	for len(out) < want {
		// rate: the share of keys whose newest copy matches (re-attribution,
		// or filters calls_by_user cannot apply); it sizes the next reads.
		rate := max(float64(matched+1)/float64(checked+1), 0.01)
		short := want - len(out)
		done := !floor.less(upper)
		if !done && float64(len(pending))*rate < float64(short) {
			limit := min(int(float64(short)/rate*1.1)+4, callKeysMax)
			lo := max(floor.sec, min(upper.sec, now)-window)
			keys, err := callKeys(ctx, conn, WithDB(callKeysQuery(s, lo, upper, limit), db))
			if err != nil {
				return nil, nil, err
			}
			for _, k := range keys {
				if _, dup := seen[k.id]; !dup {
					seen[k.id] = struct{}{}
					pending = append(pending, k)
				}
			}
			if len(keys) == limit { // more in this window: go on below the last key
				upper = keys[len(keys)-1]
			} else { // window exhausted: the next one is wider
				upper = callPos{sec: lo}
				switch {
				case len(keys) == 0:
					window *= 8
				case len(keys) < limit/4:
					window *= 4
				default:
					window *= 2
				}
			}
			if floor.less(upper) && float64(len(pending))*rate < float64(short) && len(pending) < callFetchMax {
				continue // read more keys before fetching
			}
		}
		if len(pending) == 0 {
			if done {
				break
			}
			continue
		}
		// Fetch about as many as the page still needs: each id costs a
		// granule of calls per part holding its hour.
		n, size, enough := 0, 0, int(float64(short)/rate*1.1)+2
		for n < len(pending) && n < enough && n < callFetchMax && size < callFetchBytes {
			size += len(pending[n].id) + 4
			n++
		}
		got, err := callFetch(ctx, conn, db, s, pending[:n])
		if err != nil {
			return nil, nil, err
		}
		checked, matched = checked+n, matched+len(got)
		pending = pending[n:]
		for _, c := range got {
			// Copies share their start time, so the newest copy sits at its
			// key; should one not, it still never leaves the page's range
			// (no call on two pages).
			if p := posAt(c.StartTime.UnixMilli(), c.ID); p.less(top) && !p.less(floor) {
				out = append(out, c)
			}
		}
	}
	var next *CallCursor
	if len(out) > s.Limit {
		out = out[:s.Limit]
		last := out[len(out)-1]
		next = &CallCursor{StartMS: last.StartTime.UnixMilli(), ID: last.ID}
	}
	return out, next, nil
}

// callKeys runs one key window (callKeysQuery).
func callKeys(ctx context.Context, conn driver.Conn, query string) ([]callPos, error) {
	var keys []callPos
	err := eachRow(ctx, conn, query, func(rows driver.Rows) error {
		var ts int64
		var id string
		if err := rows.Scan(&ts, &id); err != nil {
			return err
		}
		keys = append(keys, posAt(ts, id))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse call list keys: %w", err)
	}
	return keys, nil
}

// callFetch returns the newest copies of the calls at keys (newest first)
// that match the spec's filters.
func callFetch(ctx context.Context, conn driver.Conn, db string, s CallListSpec, keys []callPos) ([]CallSummary, error) {
	out := []CallSummary{}
	err := eachRow(ctx, conn, WithDB(callFetchQuery(s, keys), db), func(rows driver.Rows) error {
		var c CallSummary
		var ts int64
		var status int32
		var hasTTFT, isErr, hasCost uint8
		var ttft int64
		var cost float64
		if err := rows.Scan(&c.ID, &c.TraceID, &c.SessionID, &ts, &c.LatencyMS, &hasTTFT, &ttft, &c.Kind, &c.Model, &c.Instance,
			&c.UserID, &status, &isErr, &c.Error, &c.InputTokens, &c.OutputTokens, &c.TotalTokens, &hasCost, &cost,
			&c.Source, &c.BatchID, &c.Preview); err != nil {
			return err
		}
		c.StartTime = time.UnixMilli(ts).UTC()
		c.Status, c.IsError = int(status), isErr == 1
		if hasTTFT == 1 {
			c.TTFTMS = &ttft
		}
		if hasCost == 1 {
			c.CostUSD = &cost
		}
		out = append(out, c)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse call list: %w", err)
	}
	return out, nil
}
