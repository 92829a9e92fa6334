package clickhouse

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/callsdb"
)

func TestCallRowMatchesColumns(t *testing.T) {
	start := time.Date(2026, 11, 1, 10, 0, 0, 123_456_789, time.UTC)
	ft := start.Add(45 * time.Millisecond)
	ttft := int64(45)
	cost := 0.25
	c := schema.Call{ID: "c1", StartTime: start, EndTime: start.Add(time.Second), FirstTokenTime: &ft, TTFTMS: &ttft,
		LatencyMS: 1000, Model: "m", Stream: true, Status: 200, CostUSD: &cost,
		Metadata: map[string]json.RawMessage{"b": json.RawMessage(`2`), "a": json.RawMessage(`"x"`)}}
	row := CallRow(&c, 0, start, 7)
	if len(row) != len(callsdb.CallColumns) {
		t.Fatalf("%d values for %d columns", len(row), len(callsdb.CallColumns))
	}
	get := func(col string) any {
		for i, n := range callsdb.CallColumns {
			if n == col {
				return row[i]
			}
		}
		t.Fatalf("no column %s", col)
		return nil
	}
	if got := get("start_time").(time.Time); !got.Equal(start.Truncate(time.Second)) {
		t.Errorf("start_time %v", got)
	}
	if got := get("start_ms").(uint16); got != 123 {
		t.Errorf("start_ms %d", got)
	}
	if got := *get("first_token_ms").(*uint16); got != 168 {
		t.Errorf("first_token_ms %d", got)
	}
	if got := get("metadata").(string); got != `{"a":"x","b":2}` {
		t.Errorf("metadata %s", got)
	}
	if got := get("tags").([]string); got == nil || len(got) != 0 {
		t.Errorf("tags %#v, want empty non-nil", got)
	}
	if got := get("stream").(uint8); got != 1 {
		t.Errorf("stream %d", got)
	}
	if got := get("version").(uint64); got != 7 {
		t.Errorf("version %d", got)
	}
	if got := get("cost_usd").(*float64); got == nil || *got != 0.25 {
		t.Errorf("cost %v", got)
	}
	// every column slice has one entry per call
	cols := callColumns([]schema.Call{c, c, c}, 0, start, 1)
	for j, col := range cols {
		if n := reflect.ValueOf(col).Len(); n != 3 {
			t.Errorf("column %s has %d values", callsdb.CallColumns[j], n)
		}
	}
}

func TestTruncationKeepsUTF8(t *testing.T) {
	text := strings.Repeat("é", 10) // 2 bytes each
	c := schema.Call{ID: "c", StartTime: time.Unix(0, 0), InputText: text, OutputText: "short"}
	row := CallRow(&c, 5, time.Unix(0, 0), 1)
	in := row[indexOf("input_text")].(string)
	if in != "éé" || !utf8.ValidString(in) {
		t.Errorf("input_text %q, want 2 whole runes", in)
	}
	if row[indexOf("output_text")].(string) != "short" {
		t.Error("output_text changed")
	}
	if row[indexOf("truncated")].(uint8) != 1 {
		t.Error("truncated not set")
	}
	if r := CallRow(&schema.Call{ID: "c", InputText: text}, 0, time.Unix(0, 0), 1); r[indexOf("truncated")].(uint8) != 0 {
		t.Error("max 0 must keep everything")
	}
}

func indexOf(col string) int {
	for i, n := range callsdb.CallColumns {
		if n == col {
			return i
		}
	}
	panic(col)
}

func TestDecodeCall(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{"id":"a","start_time":"2026-11-01T00:00:00Z"}`, true},
		{`{"id":"","start_time":"2026-11-01T00:00:00Z"}`, false},
		{`{"id":"a"}`, false},
		{`{"id":"a","start_time":12}`, false},
		{`{"id":"a","start_time":"2200-01-01T00:00:00Z"}`, false},
		{`not json`, false},
	} {
		_, err := decodeCall([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func TestUsageQueryGroupings(t *testing.T) {
	from, to := time.Unix(1700000000, 0), time.Unix(1700086400, 0)
	seen := map[string]bool{}
	for _, g := range callsdb.AllGroupings() {
		q := callsdb.UsageQuery(from, to, g)
		if seen[q] {
			t.Errorf("%s: same SQL as another grouping", g)
		}
		seen[q] = true
		if !strings.Contains(q, "{db}.calls") || !strings.Contains(q, "1700000000") || !strings.Contains(q, "{db}.calls FINAL") {
			t.Errorf("%s: %s", g, q)
		}
	}
	if len(seen) != 12 {
		t.Fatalf("%d groupings", len(seen))
	}
}

// jsonObject writes what encoding/json writes for the same map (sorted
// keys, the same escapes), and "" for an empty one.
func TestJSONObjectMatchesEncodingJSON(t *testing.T) {
	m := map[string]json.RawMessage{"b": json.RawMessage(`{"x":1}`), "a<&>\"\n": json.RawMessage(`"v"`), "é": json.RawMessage(`[1,2]`), "n": nil}
	want, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if got := jsonObject(m); got != string(want) {
		t.Errorf("jsonObject = %s\nwant        %s", got, want)
	}
	if got := jsonObject(nil); got != "" {
		t.Errorf("empty: %q", got)
	}
}
