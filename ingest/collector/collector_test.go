package collector

import (
	"bytes"
	"testing"
)

func TestSplitNDJSON(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"a", []string{"a"}},
		{"a\nb\n", []string{"a", "b"}},
		{"a\r\n\r\n  \n b \r\n", []string{"a", " b "}},
		{"\n\n{\"x\":1}", []string{`{"x":1}`}},
	}
	for _, tc := range cases {
		got := SplitNDJSON([]byte(tc.in))
		if len(got) != len(tc.want) {
			t.Fatalf("%q: got %q want %q", tc.in, got, tc.want)
		}
		for i := range got {
			if string(got[i]) != tc.want[i] {
				t.Fatalf("%q: line %d = %q want %q", tc.in, i, got[i], tc.want[i])
			}
		}
	}
}

func TestSplitByContentType(t *testing.T) {
	if _, err := split("text/csv", []byte("{}")); err == nil {
		t.Fatal("text/csv accepted")
	}
	got, err := split("application/json; charset=utf-8", []byte(` [ {"a":1} , {"b":2} ] `))
	if err != nil || len(got) != 2 || string(got[1]) != `{"b":2}` {
		t.Fatalf("array: %q %v", got, err)
	}
	if _, err := split("application/json", []byte(`[]`)); err == nil {
		t.Fatal("empty array accepted")
	}
	if _, err := split("application/json", []byte("  ")); err == nil {
		t.Fatal("empty body accepted")
	}
	got, err = split("", []byte(`{"id":"x"}`))
	if err != nil || len(got) != 1 {
		t.Fatalf("default content type: %q %v", got, err)
	}
}

// FuzzSplitNDJSON: lines never contain a newline, never are blank, and
// joining them loses no non-blank byte of the input.
func FuzzSplitNDJSON(f *testing.F) {
	for _, seed := range []string{"", "\n", "a\nb", "a\r\n\r\nb\r", "{\"id\":1}\n{\"id\":2}\n", " \t\n\r\n"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		lines := SplitNDJSON(in)
		var kept int
		for _, l := range lines {
			if bytes.IndexByte(l, '\n') >= 0 {
				t.Fatalf("line holds a newline: %q", l)
			}
			if len(bytes.TrimSpace(l)) == 0 {
				t.Fatalf("blank line returned: %q", l)
			}
			kept += len(bytes.TrimSpace(l))
		}
		var want int
		for _, l := range bytes.Split(in, []byte("\n")) {
			want += len(bytes.TrimSpace(l))
		}
		if kept != want {
			t.Fatalf("non-blank bytes: kept %d of %d", kept, want)
		}
	})
}
