package callsdb

import (
	"strings"
	"testing"
	"time"
)

func TestCallPos(t *testing.T) {
	for _, tc := range []struct {
		ms   int64
		want callPos
	}{
		{1767225600123, callPos{sec: 1767225600, ms: 123}},
		{1767225600000, callPos{sec: 1767225600}},
		{-1, callPos{sec: -1, ms: 999}},
	} {
		if got := posOfMS(tc.ms); got != tc.want {
			t.Errorf("posOfMS(%d) = %+v, want %+v", tc.ms, got, tc.want)
		}
	}
	ordered := []callPos{{sec: 5}, {sec: 5, id: "a"}, {sec: 5, ms: 1}, {sec: 5, ms: 1, id: "a"}, {sec: 5, ms: 1, id: "b"}, {sec: 6}}
	for i := range ordered {
		for j := range ordered {
			if got := ordered[i].less(ordered[j]); got != (i < j) {
				t.Errorf("%+v < %+v = %v", ordered[i], ordered[j], got)
			}
		}
	}
	for _, tc := range []struct {
		p    callPos
		want string
	}{
		{callPos{sec: 100}, "start_time < toDateTime(100, 'UTC')"},
		{callPos{sec: 100, ms: 7}, "(start_time < toDateTime(100, 'UTC') OR (start_time = toDateTime(100, 'UTC') AND start_ms < 7))"},
		{callPos{sec: 100, ms: 7, id: "o'{db}"}, `(start_time < toDateTime(100, 'UTC') OR (start_time = toDateTime(100, 'UTC') AND (start_ms < 7 OR (start_ms = 7 AND id < 'o\'\x7Bdb}'))))`},
	} {
		if got := tc.p.below(); got != tc.want {
			t.Errorf("%+v.below() =\n%s\nwant\n%s", tc.p, got, tc.want)
		}
	}
}

// TestCallKeysQuery: without a user the keys come from calls with every
// filter on the copy; with a user from calls_by_user (which has no model,
// source or status: those wait for the fetch).
func TestCallKeysQuery(t *testing.T) {
	upper := callPos{sec: 2000, ms: 3, id: "c-9"}
	q := WithDB(callKeysQuery(CallListSpec{Model: "m'{db}", Source: "batch", Status: "error"}, 1000, upper, 61), "cp")
	for _, want := range []string{
		"FROM cp.calls\n",
		"start_time >= toDateTime(1000, 'UTC')",
		"start_time <= toDateTime(2000, 'UTC')",
		`model = 'm\'\x7Bdb}'`,
		"source = 'batch'",
		"AND ((status >= 400) OR (error != ''))",
		"id < 'c-9'",
		"ORDER BY start_time DESC, start_ms DESC, id DESC\nLIMIT 61",
	} {
		if !strings.Contains(q, want) {
			t.Errorf("keys query lacks %q:\n%s", want, q)
		}
	}
	if strings.Contains(q, "GROUP BY") {
		t.Errorf("a key window must not aggregate:\n%s", q)
	}
	for st, want := range map[CallStatus]string{"ok": "NOT ((status >= 400) OR (error != ''))", "429": "status = 429"} {
		if q := callKeysQuery(CallListSpec{Status: st}, 0, upper, 5); !strings.Contains(q, want) {
			t.Errorf("status %s: lacks %q:\n%s", st, want, q)
		}
	}
	q = WithDB(callKeysQuery(CallListSpec{User: "{db}", Model: "m", Status: "ok"}, 1000, callPos{sec: 2000}, 10), "cp")
	for _, want := range []string{"FROM cp.calls_by_user\n", `user_id = '\x7Bdb}'`, "start_time < toDateTime(2000, 'UTC')"} {
		if !strings.Contains(q, want) {
			t.Errorf("user keys query lacks %q:\n%s", want, q)
		}
	}
	for _, bad := range []string{"model", "status", "start_ms <"} {
		if strings.Contains(q, bad) {
			t.Errorf("user keys query has %q:\n%s", bad, q)
		}
	}
}

// TestCallFetchQuery: the fetch looks up (hour, id) pairs in calls and
// filters the newest copy, not the stored ones.
func TestCallFetchQuery(t *testing.T) {
	keys := []callPos{{sec: 7205, ms: 1, id: "a"}, {sec: 3599, id: "b'{db}"}}
	q := WithDB(callFetchQuery(CallListSpec{User: "u", Model: "m", Source: "online", Status: "500"}, keys), "cp")
	for _, want := range []string{
		"FROM cp.calls\n    PREWHERE id IN ('a', 'b\\'\\x7Bdb}')\n",
		"WHERE start_time >= toDateTime(3599, 'UTC') AND start_time <= toDateTime(7205, 'UTC')\n        AND (toStartOfHour(start_time), id) IN ((toDateTime(7200, 'UTC'), 'a'), (toDateTime(0, 'UTC'), 'b\\'\\x7Bdb}'))",
		"GROUP BY id",
		"WHERE c_model = 'm' AND c_user = 'u' AND c_source = 'online' AND c_status = 500",
		"ORDER BY c_ts DESC, id DESC",
	} {
		if !strings.Contains(q, want) {
			t.Errorf("fetch query lacks %q:\n%s", want, q)
		}
	}
	if strings.Contains(q, "LIMIT") {
		t.Errorf("fetch query is limited:\n%s", q)
	}
}

// TestCallListQueriesSampled: readQueries (and so the chDB check) holds
// every kind of statement CallList sends.
func TestCallListQueriesSampled(t *testing.T) {
	from := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	all := strings.Join(readQueries(from, from.Add(24*time.Hour)), "\n;\n")
	for _, want := range []string{"FROM {db}.calls_by_user\n", "AND (toStartOfHour(start_time), id) IN", "ORDER BY start_time DESC, start_ms DESC, id DESC"} {
		if !strings.Contains(all, want) {
			t.Errorf("readQueries has no call list statement with %q", want)
		}
	}
}
