package callsdb

import "testing"

func TestParseServerVersion(t *testing.T) {
	for _, tc := range []struct {
		in     string
		major  int
		minor  int
		modern bool
	}{
		{"18.16.1", 18, 16, false},
		{"21.8.15.7", 21, 8, false},
		{"22.1.3.7", 22, 1, false},
		{"22.2.2.1", 22, 2, true},
		{"24.8.4.13", 24, 8, true},
		{"26.7.2.1\n", 26, 7, true},
	} {
		s, err := ParseServerVersion(tc.in)
		if err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		if s.Major != tc.major || s.Minor != tc.minor || s.Modern() != tc.modern {
			t.Errorf("%q: got %d.%d modern=%v, want %d.%d modern=%v", tc.in, s.Major, s.Minor, s.Modern(), tc.major, tc.minor, tc.modern)
		}
	}
	for _, bad := range []string{"", "18", "x.y", "18.-1", "v24.8"} {
		if _, err := ParseServerVersion(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
