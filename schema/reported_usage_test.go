package schema

import (
	"encoding/json"
	"testing"
)

func TestTokenCount(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	for _, c := range []struct {
		in   *float64
		want int64
		ok   bool
	}{
		{nil, 0, false},
		{f(0), 0, true},
		{f(42), 42, true},
		{f(1 << 53), 1 << 53, true},
		{f(1<<53 + 2), 0, false},
		{f(-1), 0, false}, // Xinference's "unknown"
		{f(2.5), 0, false},
		{f(1e300), 0, false},
	} {
		n, ok := TokenCount(c.in)
		if n != c.want || ok != c.ok {
			t.Errorf("TokenCount(%v) = %d, %v; want %d, %v", c.in, n, ok, c.want, c.ok)
		}
	}
}

func TestReportedUsagePromptCompletion(t *testing.T) {
	for _, c := range []struct {
		body               string
		prompt, completion float64 // -1: nil
	}{
		{`{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}`, 3, 4},
		{`{"input_tokens":5,"output_tokens":6}`, 5, 6},       // rerank's meta.tokens
		{`{"prompt_tokens":1,"input_tokens":9}`, 1, -1},      // prompt_tokens wins
		{`{"completion_tokens":2,"output_tokens":9}`, -1, 2}, // completion_tokens wins
		{`{"total_tokens":7}`, -1, -1},
	} {
		var u ReportedUsage
		if err := json.Unmarshal([]byte(c.body), &u); err != nil {
			t.Fatal(err)
		}
		for _, g := range []struct {
			name string
			got  *float64
			want float64
		}{{"Prompt", u.Prompt(), c.prompt}, {"Completion", u.Completion(), c.completion}} {
			switch {
			case g.want < 0 && g.got != nil:
				t.Errorf("%s: %s() = %v, want nil", c.body, g.name, *g.got)
			case g.want >= 0 && (g.got == nil || *g.got != g.want):
				t.Errorf("%s: %s() = %v, want %v", c.body, g.name, g.got, g.want)
			}
		}
	}
}
