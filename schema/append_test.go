package schema

import (
	"bytes"
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

// AppendJSONString must write exactly what encoding/json writes for every
// string, whichever byte falls at whichever place of its 8-byte words: each
// byte value is tried at every offset of a 24-byte plain text, alone and
// next to a multi-byte character, an invalid byte and U+2028.
func TestAppendJSONStringMatchesMarshal(t *testing.T) {
	const plain = "abcdefghijklmnopqrstuvwx"
	check := func(s string) {
		t.Helper()
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendJSONString([]byte("x"), s); string(got[1:]) != string(want) {
			t.Fatalf("AppendJSONString(%q) = %s, want %s", s, got[1:], want)
		}
	}
	for _, extra := range []string{"", "é", "\xff", "\u2028", "日本", "\u2029z"} {
		for c := 0; c < 256; c++ {
			for at := 0; at <= len(plain); at++ {
				check(plain[:at] + string([]byte{byte(c)}) + extra + plain[at:])
			}
		}
	}
	check("")
	check("<script>&amp;</script>\n\t\r\"\\")
}

func FuzzAppendJSONString(f *testing.F) {
	f.Add("plain text of some length, more than eight bytes")
	f.Add("a\"b\\c<d>e&f\x00g\u2028h\xffi日本")
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := AppendJSONString(nil, s); string(got) != string(want) {
			t.Fatalf("AppendJSONString(%q) = %s, want %s", s, got, want)
		}
	})
}

// An event whose bodies span lines (pretty-printed, or a trailing newline)
// is written on one line, as json.Marshal writes it, with the same values.
func TestAppendEventIsOneLine(t *testing.T) {
	ev, err := Decode([]byte("{\"id\":\"ml-1\",\"start_time\":\"2026-11-01T10:00:00Z\",\"endpoint\":\"/v1/chat/completions\",\"model\":\"m\","+
		"\"request\":{\n  \"messages\": [\n    {\"role\": \"user\", \"content\": \"a\\nb\"}\n  ]\n}\n,"+
		"\"response\":{\"choices\":[]}\n,\"metadata\":{\"k\":[\n1,\n2]}}"), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	got := AppendEvent(nil, ev)
	if bytes.IndexByte(got, '\n') >= 0 {
		t.Fatalf("AppendEvent wrote more than one line:\n%s", got)
	}
	want, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	if json.Unmarshal(got, &a) != nil || json.Unmarshal(want, &b) != nil || !reflect.DeepEqual(a, b) {
		t.Fatalf("AppendEvent differs from json.Marshal:\n got %s\nwant %s", got, want)
	}
	if !bytes.Contains(got, []byte(`"request":{"messages":[{"role":"user","content":"a\nb"}]}`)) || !bytes.Contains(got, []byte(`"response":{"choices":[]}`)) {
		t.Fatalf("bodies not compacted: %s", got)
	}
}
