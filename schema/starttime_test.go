package schema

import (
	"testing"
	"time"
)

func TestStartTime(t *testing.T) {
	want := time.Date(2026, 11, 26, 20, 15, 0, 5e8, time.UTC)
	for _, tc := range []struct {
		name, data string
		ok         bool
	}{
		{"first key", `{"start_time":"2026-11-26T20:15:00.5Z","id":"a"}`, true},
		{"after nested values", `{"request":{"start_time":"1999-01-01T00:00:00Z","m":[1,{"x":"}"}]},"id":"a\"b","start_time":"2026-11-26T21:15:00.5+01:00"}`, true},
		{"escaped key", `{"start\u005ftime":"2026-11-26T20:15:00.5Z"}`, true},
		{"only nested", `{"request":{"start_time":"2026-11-26T20:15:00.5Z"}}`, false},
		{"missing", `{"id":"a"}`, false},
		{"not a timestamp", `{"start_time":"yesterday"}`, false},
		{"wrong type", `{"start_time":1764188100}`, false},
		{"not an object", `["start_time","2026-11-26T20:15:00.5Z"]`, false},
		{"syntax error before", `{"id":"a" "start_time":"2026-11-26T20:15:00.5Z"}`, false},
		{"truncated", `{"id":"a","start_ti`, false},
		{"empty", ``, false},
	} {
		got, ok := StartTime([]byte(tc.data))
		if ok != tc.ok || (ok && !got.Equal(want)) {
			t.Errorf("%s: StartTime(%s) = %v, %v; want ok=%v (%v)", tc.name, tc.data, got, ok, tc.ok, want)
		}
	}
}
