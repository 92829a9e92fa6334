package callsdb

import (
	"fmt"
	"strings"
	"time"
)

// CallStatus filters the call list: "" (all), "ok", "error" or an HTTP status.
type CallStatus string

// CallListSpec is one page of the call list: calls that started in
// [From, To), newest first, after the cursor position (StartMS, ID) when
// After is set. User, Model, Source, BatchID and Status filter on the
// newest copy of each call.
type CallListSpec struct {
	From, To    time.Time
	User, Model string
	Source      string // "online", "batch" or "" (all)
	BatchID     string // "" (all)
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

// How CallList reads (calls.go):
//
//  1. Keys: callKeysQuery returns the positions (start ms, id) of stored
//     copies, newest first, in one time window [lo, upper) at a time:
//     from calls_by_user (ORDER BY user_id, start_time, ...) when the list
//     is filtered by user, else from calls restricted to the window's hours
//     (its primary key is toStartOfHour(start_time), id). Each is a top-N
//     (ORDER BY ... LIMIT, a partial sort): memory is bounded by N, and the
//     rows read by the window. Copies of a call share id, start_time and
//     start_ms, so a copy's position is the call's; Go drops repeated ids.
//     A filter on a copy (model, source, status) only narrows the keys to a
//     superset of the answer: a call whose newest copy matches has a
//     matching copy.
//  2. Calls: callFetchQuery collapses exactly those ids to their newest
//     copy (argMax by version, over every copy: copies share the hour), in
//     their hours only, and applies every filter to the newest copy, which
//     drops re-attributed calls.
//
// Windows start at one hour below the upper bound (the cursor, or To) and
// grow while they come back short, so a page over 30 days reads about as
// much as its calls need, and a next page starts where the last one ended.

const (
	// callsFirstWindow is the width of the first key window.
	callsFirstWindow = int64(3600)
	// callKeysMax caps the keys one window query returns.
	callKeysMax = 5000
	// callFetchMax and callFetchBytes cap the ids of one fetch (18.16's
	// max_query_size is 256 KiB).
	callFetchMax   = 2000
	callFetchBytes = 96 << 10
)

// callPos is a position in the list order (start second, millisecond, id),
// used as an exclusive upper bound: the list holds keys below it.
type callPos struct {
	sec, ms int64
	id      string
}

// posOfMS is the bound just above every call that started before ms.
func posOfMS(ms int64) callPos {
	return callPos{sec: floorDiv(ms, 1000), ms: ms - floorDiv(ms, 1000)*1000}
}

// posAt is the position of a call that started at ms.
func posAt(ms int64, id string) callPos {
	p := posOfMS(ms)
	p.id = id
	return p
}

// less orders positions (ascending; the list reads them descending).
func (p callPos) less(q callPos) bool {
	if p.sec != q.sec {
		return p.sec < q.sec
	}
	if p.ms != q.ms {
		return p.ms < q.ms
	}
	return p.id < q.id
}

// below is the SQL condition "the stored copy's position is below p".
func (p callPos) below() string {
	t := fmt.Sprintf("toDateTime(%d, 'UTC')", p.sec)
	switch {
	case p.ms == 0 && p.id == "":
		return "start_time < " + t
	case p.id == "":
		return fmt.Sprintf("(start_time < %s OR (start_time = %s AND start_ms < %d))", t, t, p.ms)
	}
	return fmt.Sprintf("(start_time < %s OR (start_time = %s AND (start_ms < %d OR (start_ms = %d AND id < %s))))",
		t, t, p.ms, p.ms, SQLString(p.id))
}

// callKeysQuery is one window of keys: up to limit stored copies with
// lo <= start_time and position below upper, newest first, as
// (c_ts, id) with c_ts = start ms since the epoch.
func callKeysQuery(s CallListSpec, lo int64, upper callPos, limit int) string {
	hi := upper.sec // start_time <= hi: prunes partitions and the primary key
	where := []string{
		fmt.Sprintf("start_time >= toDateTime(%d, 'UTC')", lo),
		fmt.Sprintf("start_time <= toDateTime(%d, 'UTC')", hi),
	}
	table := "calls"
	if s.User != "" {
		table = "calls_by_user"
		where = append([]string{"user_id = " + SQLString(s.User)}, where...)
	} else {
		// The primary key (toStartOfHour(start_time), id) prunes to the
		// window's hours: 18.16 derives that from the start_time range.
		where = append(where, copyFilters(s)...)
	}
	where = append(where, upper.below())
	return fmt.Sprintf(`SELECT toInt64(toUInt32(start_time)) * 1000 + start_ms AS c_ts, id
FROM {db}.%s
WHERE %s
ORDER BY start_time DESC, start_ms DESC, id DESC
LIMIT %d`, table, strings.Join(where, "\n  AND "), limit)
}

// copyFilters are the spec's filters on one stored copy (columns of calls).
func copyFilters(s CallListSpec) []string {
	return callListFilters(s, "model", "user_id", "source", "batch_id", "status", "("+isErrorSQL+")")
}

// newestFilters are the spec's filters on the newest copy (callSummarySQL's
// columns).
func newestFilters(s CallListSpec) []string {
	return callListFilters(s, "c_model", "c_user", "c_source", "c_batch", "c_status", "c_error = 1")
}

// callListFilters renders the spec's filters over the given columns and
// error condition.
func callListFilters(s CallListSpec, model, user, source, batch, status, isError string) []string {
	f := usageFilters(UsageFilter{Model: s.Model, User: s.User, Source: s.Source, BatchID: s.BatchID}, model, user, source, batch)
	switch s.Status {
	case "":
	case "ok":
		f = append(f, "NOT "+isError)
	case "error":
		f = append(f, isError)
	default:
		f = append(f, status+" = "+string(s.Status)) // validated as 3 digits by the caller
	}
	return f
}

// callFetchQuery returns the newest copy of each call at keys that matches
// the spec's filters, newest first. Every copy of a call is in the hour of
// its key: the (hour, id) pairs let the primary key (toStartOfHour(start_time),
// id) skip every granule without one of them. The row filter is PREWHERE
// id IN (a set of strings, much cheaper per row than the set of pairs, which
// then only sees the few rows left), so the wide columns are read for those
// rows only.
func callFetchQuery(s CallListSpec, keys []callPos) string {
	lo, hi := keys[0].sec, keys[0].sec
	ids := make([]string, len(keys))
	pairs := make([]string, len(keys))
	for i, k := range keys {
		lo, hi = min(lo, k.sec), max(hi, k.sec)
		ids[i] = SQLString(k.id)
		pairs[i] = fmt.Sprintf("(toDateTime(%d, 'UTC'), %s)", floorDiv(k.sec, 3600)*3600, ids[i])
	}
	prewhere := "id IN (" + strings.Join(ids, ", ") + ")"
	inner := fmt.Sprintf("start_time >= toDateTime(%d, 'UTC') AND start_time <= toDateTime(%d, 'UTC')\n        AND (toStartOfHour(start_time), id) IN (%s)",
		lo, hi, strings.Join(pairs, ", "))
	return callSummarySQL(prewhere, inner, newestFilters(s), 0)
}

// CallListQuery is the call list as one statement: every call of the range
// collapsed by id, filtered and ordered, Limit+1 rows. It is exact but
// groups every call of [From, To), so CallList does not send it (see
// callKeysQuery); it stays as the reference the tests compare CallList to.
func CallListQuery(s CallListSpec) string {
	f, t := s.From.Unix(), s.To.Unix()
	inner := fmt.Sprintf("start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC')", f, t)
	outer := newestFilters(s)
	if s.After != nil {
		// start_time is never re-attributed, so the cursor also prunes the scan.
		inner += fmt.Sprintf(" AND start_time <= toDateTime(%d, 'UTC')", floorDiv(s.After.StartMS, 1000))
		outer = append(outer, fmt.Sprintf("(c_ts < %d OR (c_ts = %d AND id < %s))", s.After.StartMS, s.After.StartMS, SQLString(s.After.ID)))
	}
	return callSummarySQL("", inner, outer, s.Limit+1)
}

// callSummarySQL collapses the copies of calls matching prewhere (if any)
// and inner (conditions on stored copies) to their newest, keeps those
// matching outer (conditions on the newest copy) and orders them newest
// first; limit 0 is no limit.
func callSummarySQL(prewhere, inner string, outer []string, limit int) string {
	where, lim := "", ""
	if prewhere != "" {
		prewhere = "\n    PREWHERE " + prewhere
	}
	if len(outer) > 0 {
		where = "\nWHERE " + strings.Join(outer, " AND ")
	}
	if limit > 0 {
		lim = fmt.Sprintf("\nLIMIT %d", limit)
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
        argMax(toUInt8(`+isErrorSQL+`), version) AS c_error,
        argMax(error, version) AS c_error_text,
        argMax(input_tokens, version) AS c_in,
        argMax(output_tokens, version) AS c_out,
        argMax(total_tokens, version) AS c_total,
        argMax(toUInt8(isNotNull(cost_usd)), version) AS c_has_cost,
        argMax(ifNull(cost_usd, 0.), version) AS c_cost,
        argMax(source, version) AS c_source,
        argMax(batch_id, version) AS c_batch,
        argMax(substring(input_text, 1, 240), version) AS c_preview
    FROM {db}.calls%s
    WHERE %s
    GROUP BY id
)%s
ORDER BY c_ts DESC, id DESC%s`, prewhere, inner, where, lim)
}

// callListQueries are sample statements of the call list for readQueries:
// the reference query, key windows on calls (every filter) and on
// calls_by_user, with and without a cursor, and a fetch.
func callListQueries(from, to time.Time) []string {
	var q []string
	for _, st := range []CallStatus{"", "ok", "error", "500"} {
		q = append(q, CallListQuery(CallListSpec{From: from, To: to, User: "user-01", Model: "model-1", Status: st, Limit: 50}))
	}
	q = append(q, CallListQuery(CallListSpec{From: from, To: to, Limit: 10, After: &CallCursor{StartMS: to.UnixMilli() - 1, ID: "x"}}))
	lo, top := from.Unix(), posOfMS(to.UnixMilli())
	at := callPos{sec: to.Unix() - 60, ms: 250, id: "o'brien"}
	for _, s := range []CallListSpec{
		{},
		{Model: "model-1", Source: "online", Status: "error"},
		{Source: "batch", BatchID: "b-1"},
		{Status: "ok"},
		{Status: "500"},
		{User: "o'brien", Model: "model-1"},
	} {
		q = append(q, callKeysQuery(s, lo, top, 56), callKeysQuery(s, lo, at, 56))
	}
	q = append(q, callKeysQuery(CallListSpec{}, lo, callPos{sec: to.Unix(), ms: 5}, 10))
	keys := []callPos{{sec: from.Unix(), id: "chdb-0000001"}, {sec: from.Unix() + 7200, ms: 5, id: "o'brien"}}
	for _, s := range []CallListSpec{{}, {User: "user-01", Model: "model-1", Source: "batch", BatchID: "b'1", Status: "ok"}} {
		q = append(q, callFetchQuery(s, keys))
	}
	return q
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}
