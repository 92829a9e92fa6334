package proxy

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"testing"
)

// FuzzTopLevel holds the Binder's reading of a complete object to
// encoding/json's: whenever bindTopLevel takes a body, it finds the same
// members with the same value bytes as json.Unmarshal into a map of raw
// values, and it takes nothing json.Unmarshal would refuse.
func FuzzTopLevel(f *testing.F) {
	for _, s := range []string{
		`{"model":"bge-m3","input":["a","b"]}`,
		` {"object":"list","data":[{"object":"embedding","embedding":[0.1,-2e-3,3],"index":0}],"model":"bge-m3","usage":{"prompt_tokens":4,"total_tokens":4}} ` + "\n",
		`{"model":"qwen","messages":[{"role":"user","content":"h\u00e9 \"x\""}],"stream":true,"stream_options":{"include_usage":false}}`,
		`{"a":1,"a":2}`,
		`{"m\u006fdel":"x"}`,
		`{"model":"x"} {}`,
		`{"model":"x",}`,
		`{"model":`,
		`{}`,
		`[]`,
		`null`,
		`{"n":01}`,
		`{"s":"\x01"}`,
		"{\"bad\xff\":1}",
		`{"t":true,"f":false,"z":null,"e":1.5E+10}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fields, ok := bindTopLevel(b)
		var want map[string]json.RawMessage
		err := json.Unmarshal(b, &want)
		if !ok {
			if fields != nil {
				t.Fatalf("bindTopLevel(%q) refused the body but returned %v", b, fields)
			}
			return
		}
		if err != nil || want == nil {
			t.Fatalf("bindTopLevel(%q) took a body json.Unmarshal refuses (%v)", b, err)
		}
		if !slices.Equal(slices.Sorted(maps.Keys(fields)), slices.Sorted(maps.Keys(want))) {
			t.Fatalf("bindTopLevel(%q) keys %v, json.Unmarshal %v", b, slices.Sorted(maps.Keys(fields)), slices.Sorted(maps.Keys(want)))
		}
		for k, v := range want {
			if !bytes.Equal(fields[k], v) {
				t.Fatalf("bindTopLevel(%q)[%q] = %q, json.Unmarshal %q", b, k, fields[k], v)
			}
		}
		got, complete := topLevel(b)
		if !complete || len(got) != len(want) {
			t.Fatalf("topLevel(%q) = %v, %v; want the complete object", b, got, complete)
		}
	})
}

// TestTopLevelTakesPlainObjectsWithoutCopying checks that the common bodies
// are read by the Binder (values inside the body, not copies), and that
// bodies it leaves alone still reach encoding/json: escaped keys, truncated
// objects, non-objects.
func TestTopLevelTakesPlainObjectsWithoutCopying(t *testing.T) {
	body := []byte(`{"model":"bge-m3","input":"hello","user":"u1"}`)
	fields, complete := topLevel(body)
	if !complete || string(fields["model"]) != `"bge-m3"` || string(fields["user"]) != `"u1"` {
		t.Fatalf("topLevel = %v, %v", fields, complete)
	}
	if v := fields["input"]; &v[0] != &body[bytes.Index(body, []byte(`"hello"`))] {
		t.Fatal("a plain object's value was copied, not read in place")
	}
	if f, c := topLevel([]byte(`{"m\u006fdel":"x"}`)); !c || string(f["model"]) != `"x"` {
		t.Fatalf("escaped key: %v, %v (encoding/json unescapes it)", f, c)
	}
	if f, c := topLevel([]byte(`{"model":"x","input":"cut her`)); c || string(f["model"]) != `"x"` {
		t.Fatalf("truncated body: %v, %v; want the members before the cut, incomplete", f, c)
	}
	for _, b := range []string{`[1]`, `null`, `"s"`, ``} {
		if f, _ := topLevel([]byte(b)); f != nil {
			t.Fatalf("topLevel(%q) = %v, want nil", b, f)
		}
	}
}
