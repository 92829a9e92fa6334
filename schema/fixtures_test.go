package schema

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Fixtures: testdata/events/*.json hold one event each (bytes as sent);
// testdata/expect.json maps each file name to the expected error:
//
//	""                  valid
//	"usage.prompt_tokens"  exactly one FieldError, with that path
//	["id", "model"]     exactly these FieldErrors, in this order
type fixture struct {
	name string
	data []byte
	want []string // nil: valid
}

const minFixtures = 45

func loadFixtures(tb testing.TB) []fixture {
	tb.Helper()
	raw, err := os.ReadFile("testdata/expect.json")
	if err != nil {
		tb.Fatal(err)
	}
	var expect map[string]json.RawMessage
	if err := json.Unmarshal(raw, &expect); err != nil {
		tb.Fatalf("testdata/expect.json: %v", err)
	}
	files, err := filepath.Glob("testdata/events/*.json")
	if err != nil {
		tb.Fatal(err)
	}
	var out []fixture
	for _, path := range files {
		name := filepath.Base(path)
		exp, ok := expect[name]
		if !ok {
			tb.Errorf("%s: no entry in testdata/expect.json", name)
			continue
		}
		delete(expect, name)
		data, err := os.ReadFile(path)
		if err != nil {
			tb.Fatal(err)
		}
		fx := fixture{name: name, data: data}
		var one string
		if err := json.Unmarshal(exp, &one); err == nil {
			if one != "" {
				fx.want = []string{one}
			}
		} else if err := json.Unmarshal(exp, &fx.want); err != nil || len(fx.want) == 0 {
			tb.Fatalf("testdata/expect.json: %s: want a string or a non-empty list of strings, got %s", name, exp)
		}
		if strings.HasPrefix(name, "valid_") != (fx.want == nil) {
			tb.Errorf("%s: name says %s, expect.json says %v", name, strings.SplitN(name, "_", 2)[0], fx.want)
		}
		out = append(out, fx)
	}
	for name := range expect {
		tb.Errorf("testdata/expect.json: %s: no such fixture", name)
	}
	return out
}

func TestFixtures(t *testing.T) {
	fixtures := loadFixtures(t)
	if len(fixtures) < minFixtures {
		t.Fatalf("%d fixtures, want at least %d", len(fixtures), minFixtures)
	}
	for _, fx := range fixtures {
		t.Run(strings.TrimSuffix(fx.name, ".json"), func(t *testing.T) {
			e, err := Decode(fx.data, DefaultLimits())
			got := FieldPaths(err)
			if !slices.Equal(got, fx.want) {
				t.Fatalf("Decode: error fields %q, want %q (error: %v)", got, fx.want, err)
			}
			if err != nil {
				if e != nil {
					t.Errorf("Decode returned an event with an error")
				}
				if _, ok := err.(ValidationError); !ok {
					t.Errorf("error is %T, want ValidationError", err)
				}
				return
			}
			// A decoded event passes Validate, as Go producers' events must.
			if err := e.Validate(); err != nil {
				t.Errorf("Validate after Decode: %v", err)
			}
		})
	}
}

// oversizeEvent pads the full chat fixture's request to just over the
// default limit. (Not committed: 1 MiB of fixture would bloat the repo.)
func oversizeEvent(tb testing.TB) []byte {
	tb.Helper()
	data, err := os.ReadFile("testdata/events/valid_full_chat.json")
	if err != nil {
		tb.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		tb.Fatal(err)
	}
	m["request"] = map[string]any{"prompt": strings.Repeat("x", DefaultMaxEventBytes)}
	out, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func TestOversize(t *testing.T) {
	data := oversizeEvent(t)
	_, err := Decode(data, DefaultLimits())
	want := "(event): event is " + strconv.Itoa(len(data)) + " bytes, limit 1048576"
	if err == nil || err.Error() != want {
		t.Fatalf("Decode(%d bytes) = %v, want %q", len(data), err, want)
	}
	// The limit is inclusive, zero means the default, negative means none.
	if _, err := Decode(data, Limits{MaxEventBytes: len(data)}); err != nil {
		t.Errorf("at the limit: %v", err)
	}
	if _, err := Decode(data, Limits{}); err == nil {
		t.Errorf("Limits{}: want the default limit")
	}
	if _, err := Decode(data, Limits{MaxEventBytes: -1}); err != nil {
		t.Errorf("no limit: %v", err)
	}
	small := []byte(`{"id":"c","start_time":"2024-05-01T12:00:00Z","endpoint":"/v1/x","model":"m"}`)
	if _, err := Decode(small, Limits{MaxEventBytes: len(small) - 1}); FieldPaths(err)[0] != EventField {
		t.Errorf("small limit: %v", err)
	}
}
