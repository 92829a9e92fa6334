package usagebench

import (
	"testing"

	"github.com/callpipe/callpipe/store/callsdb"
)

func TestGroupName(t *testing.T) {
	for g, want := range map[callsdb.GroupBy]string{
		{}:                          "totals",
		{Bucket: callsdb.BucketDay}: "day",
		{Model: true, User: true}:   "model,user",
		{Bucket: callsdb.BucketHour, User: true, Source: true}: "hour,user,source",
	} {
		if got := groupName(g); got != want {
			t.Errorf("%+v: %q, want %q", g, got, want)
		}
	}
}
