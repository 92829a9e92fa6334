package callsdb

import (
	"slices"
	"testing"
)

func TestAddrs(t *testing.T) {
	for in, want := range map[string][]string{
		"h:9000":                {"h:9000"},
		"a:1, b:2 ,c:3":         {"a:1", "b:2", "c:3"},
		"":                      nil,
		"127.0.0.1:29000,,x:29": {"127.0.0.1:29000", "x:29"},
	} {
		if got := Addrs(in); !slices.Equal(got, want) {
			t.Errorf("Addrs(%q) = %q, want %q", in, got, want)
		}
	}
}
