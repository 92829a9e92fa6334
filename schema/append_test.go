package schema

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// Every valid fixture, decoded, must encode with AppendEvent to the same JSON
// value as json.Marshal, before and after its API key is redacted.
func TestAppendEventMatchesMarshal(t *testing.T) {
	paths, err := filepath.Glob("testdata/events/*.json")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := Decode(data, DefaultLimits())
		if err != nil {
			continue // invalid fixtures are Decode's business
		}
		for _, redact := range []bool{false, true} {
			if redact {
				ev.RedactAPIKey()
			}
			want, err := json.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			got := AppendEvent(nil, ev)
			var a, b any
			if err := json.Unmarshal(want, &a); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(got, &b); err != nil {
				t.Fatalf("%s: AppendEvent wrote invalid JSON: %v\n%s", p, err, got)
			}
			if !reflect.DeepEqual(a, b) {
				t.Fatalf("%s: AppendEvent differs from json.Marshal:\n got %s\nwant %s", p, got, want)
			}
		}
		checked++
	}
	if checked < 10 {
		t.Fatalf("only %d valid fixtures checked", checked)
	}
}
