package replay

import (
	"strings"
	"testing"
	"time"
)

func TestParseRangeAndSinks(t *testing.T) {
	f, to, err := ParseRange("2026-11-26", "2026-11-26T20")
	if err != nil || !f.Equal(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)) || to.Sub(f) != 20*time.Hour {
		t.Fatalf("ParseRange = %v %v %v", f, to, err)
	}
	for _, c := range [][2]string{{"", "2026-11-26"}, {"2026-11-26", "2026-11-25"}, {"yesterday", "2026-11-26"}} {
		if _, _, err := ParseRange(c[0], c[1]); err == nil || !strings.HasPrefix(err.Error(), "--") {
			t.Errorf("ParseRange(%q, %q) = %v, want an error naming the flag", c[0], c[1], err)
		}
	}
	if s, err := ParseSinks(" clickhouse, "); err != nil || len(s) != 1 || s[0] != "clickhouse" {
		t.Errorf("ParseSinks = %v %v", s, err)
	}
	if _, err := ParseSinks("archive"); err == nil || !strings.Contains(err.Error(), `unknown sink "archive"`) {
		t.Errorf("ParseSinks(archive) = %v", err)
	}
	now := time.Date(2026, 11, 26, 2, 30, 0, 0, time.UTC)
	if h := Hours(now.Add(-150*time.Minute), now.Add(time.Hour), now); len(h) != 3 {
		t.Errorf("Hours = %v, want the 3 begun hours", h)
	}
}
