package callsdb

import (
	"strings"
	"testing"
	"time"
)

// TestUsageFilterLiterals: names from the usage API reach the SQL only as
// escaped literals, and a name containing the {db} placeholder stays a name
// after WithDB instead of turning into the database's.
func TestUsageFilterLiterals(t *testing.T) {
	from := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	q := WithDB(UsageSQL(UsageSpec{From: from, To: from.Add(24 * time.Hour), Group: AllGroupings()[0],
		Filter: UsageFilter{Model: "m'{db}", User: `u\x`}}), "callpipe")
	for _, want := range []string{`'m\'\x7Bdb}'`, `'u\\x'`} {
		if !strings.Contains(q, want) {
			t.Errorf("usage query lacks %s:\n%s", want, q)
		}
	}
	if strings.Contains(q, "m'callpipe") || strings.Contains(q, `m\'callpipe`) {
		t.Errorf("the {db} in a filter value was substituted:\n%s", q)
	}
	list := WithDB(CallListQuery(CallListSpec{From: from, To: from.Add(time.Hour), User: "{db}", Model: "o'brien", Limit: 10}), "callpipe")
	for _, want := range []string{`'\x7Bdb}'`, `'o\'brien'`} {
		if !strings.Contains(list, want) {
			t.Errorf("call list query lacks %s:\n%s", want, list)
		}
	}
}

func TestGroupByNames(t *testing.T) {
	for _, tc := range []struct {
		g    GroupBy
		dims string
		name string
	}{
		{GroupBy{}, "", "all"},
		{GroupBy{Bucket: BucketHour}, "", "hour"},
		{GroupBy{Bucket: BucketDay, Model: true}, "model", "dayxmodel"},
		{GroupBy{User: true, Source: true}, "user,source", "allxuserxsource"},
		{GroupBy{Bucket: BucketHour, Model: true, User: true, Source: true}, "model,user,source", "hourxmodelxuserxsource"},
	} {
		if got := strings.Join(tc.g.Dimensions(), ","); got != tc.dims {
			t.Errorf("%+v: Dimensions %q, want %q", tc.g, got, tc.dims)
		}
		if got := tc.g.String(); got != tc.name {
			t.Errorf("%+v: String %q, want %q", tc.g, got, tc.name)
		}
	}
}
