package clickhouse

import (
	"fmt"
	"strings"
	"time"
)

// CallStatus filters the call list: "" (all), "ok", "error" or an HTTP status.
type CallStatus string

// CallListSpec is one page of the call list: calls that started in
// [From, To), newest first, after the cursor position (StartMS, ID) when
// After is set.
type CallListSpec struct {
	From, To    time.Time
	User, Model string
	Status      CallStatus
	Limit       int
	After       *CallCursor
}

// CallCursor is the position of the last call of a page: its start time in
// Unix milliseconds and its id. Paging by this key (not by offset) keeps
// pages stable while calls are inserted.
type CallCursor struct {
	StartMS int64  `json:"t"`
	ID      string `json:"id"`
}

// CallListQuery is the SQL of CallList: it returns Limit+1 rows so the caller
// knows whether another page follows.
func CallListQuery(s CallListSpec) string {
	f, t := s.From.Unix(), s.To.Unix()
	inner := []string{fmt.Sprintf("start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC')", f, t)}
	var outer []string
	if s.After != nil {
		// start_time is never re-attributed, so the cursor also prunes the scan.
		inner = append(inner, fmt.Sprintf("start_time <= toDateTime(%d, 'UTC')", floorDiv(s.After.StartMS, 1000)))
		outer = append(outer, fmt.Sprintf("(c_ts < %d OR (c_ts = %d AND id < %s))", s.After.StartMS, s.After.StartMS, SQLString(s.After.ID)))
	}
	if s.User != "" {
		outer = append(outer, "c_user = "+SQLString(s.User))
	}
	if s.Model != "" {
		outer = append(outer, "c_model = "+SQLString(s.Model))
	}
	switch s.Status {
	case "":
	case "ok":
		outer = append(outer, "c_error = 0")
	case "error":
		outer = append(outer, "c_error = 1")
	default:
		outer = append(outer, "c_status = "+string(s.Status)) // validated as 3 digits by the caller
	}
	where := ""
	if len(outer) > 0 {
		where = "\nWHERE " + strings.Join(outer, " AND ")
	}
	return fmt.Sprintf(`SELECT id, c_trace, c_session, c_ts, c_latency, c_has_ttft, c_ttft, c_kind, c_model, c_instance, c_user,
    c_status, c_error, c_error_text, c_in, c_out, c_total, c_has_cost, c_cost, c_source, c_batch, c_preview
FROM
(
    SELECT
        id,
        argMax(trace_id, version) AS c_trace,
        argMax(session_id, version) AS c_session,
        argMax(toInt64(toUInt32(start_time)) * 1000 + start_ms, version) AS c_ts,
        argMax(latency_ms, version) AS c_latency,
        argMax(toUInt8(isNotNull(ttft_ms)), version) AS c_has_ttft,
        argMax(ifNull(ttft_ms, 0), version) AS c_ttft,
        argMax(kind, version) AS c_kind,
        argMax(model, version) AS c_model,
        argMax(instance, version) AS c_instance,
        argMax(user_id, version) AS c_user,
        argMax(status, version) AS c_status,
        argMax(toUInt8((status >= 400) OR (error != '')), version) AS c_error,
        argMax(error, version) AS c_error_text,
        argMax(input_tokens, version) AS c_in,
        argMax(output_tokens, version) AS c_out,
        argMax(total_tokens, version) AS c_total,
        argMax(toUInt8(isNotNull(cost_usd)), version) AS c_has_cost,
        argMax(ifNull(cost_usd, 0.), version) AS c_cost,
        argMax(source, version) AS c_source,
        argMax(batch_id, version) AS c_batch,
        argMax(substring(input_text, 1, 240), version) AS c_preview
    FROM {db}.calls
    WHERE %s
    GROUP BY id
)%s
ORDER BY c_ts DESC, id DESC
LIMIT %d`, strings.Join(inner, " AND "), where, s.Limit+1)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}
