package transform

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/callpipe/callpipe/schema"
)

// fastDocSeeds are bodies of every shape extract reads, and the unusual
// cases where the binder must give up (case-folded and escaped keys,
// duplicates, wrong types, nulls, big numbers).
var fastDocSeeds = []string{
	`{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"}],"name":"n"}],"temperature":0.7,"stop":["\n"],"stream":true}`,
	`{"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}},{"index":2,"function":{"name":"g","arguments":{"x":[1]}}}]},{"role":"tool","tool_call_id":"c1","content":"42"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}},{"name":"anth"}],"tool_choice":"auto"}`,
	`{"system":[{"type":"text","text":"s"}],"messages":[],"max_tokens":5}`,
	`{"prompt":["a","b"],"n":2,"seed":null,"echo":true}`,
	`{"input":"emb","dimensions":3,"encoding_format":"float"}`,
	`{"query":"q","documents":[{"text":"d"},"e",3],"top_n":2,"return_documents":true}`,
	`{"query":"q","documents":[]}`,
	`{"documents":null,"messages":null,"tools":null}`,
	`{"Messages":[{"role":"user","content":"x"}]}`,
	`{"messages":[{"Role":"user","content":"x"}]}`,
	`{"messa\u0067es":[]}`,
	`{"temperature":1,"temperature":2}`,
	`{"messages":[{"role":5}]}`,
	`{"messages":[null]}`,
	`{"messages":{}}`,
	`{"tempéraure":1,"\u212aey":2}`,
	`{"messages":[{"role":"user","content":"a\"b\\c\u00e9\ud83d\ude00"}]}`,
	`{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi","reasoning_content":"think"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`,
	`{"choices":[{"index":0,"text":"t","finish_reason":null,"logprobs":null}],"usage":{"prompt_tokens":1.0,"completion_tokens":2e0,"total_tokens":-1}}`,
	`{"choices":[{"index":1.5}]}`,
	`{"choices":[{"index":99999999999999999999}]}`,
	`{"usage":{"prompt_tokens":"3"}}`,
	`{"usage":null,"meta":null,"text":null,"bytes":null}`,
	`{"data":[{"embedding":[0.1,0.2],"index":0,"object":"embedding"}],"usage":{"prompt_tokens":2,"total_tokens":2}}`,
	`{"data":[{"url":"https://x/y.png"},{"b64_json":"AAAA"}]}`,
	`{"results":[{"index":0,"relevance_score":0.9,"document":{"text":"d"}}],"meta":{"tokens":{"input_tokens":5,"output_tokens":0}}}`,
	`{"content":[{"type":"text","text":"hi"},{"type":"tool_use","id":"t","name":"f","input":{}}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}`,
	`{"error":{"message":"bad","type":"x"},"detail":"d"}`,
	`{"content_type":"audio/mpeg","bytes":12345}`,
	`{"bytes":1e3}`,
	`[{"choices":[{"index":0,"delta":{"role":"assistant","content":"a"}}]},{"choices":[{"index":0,"delta":{"content":"b","tool_calls":[{"index":0,"id":"x","function":{"name":"f","arguments":"{"}}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}]`,
	`[{"choices":[]},1]`,
	`[]`,
	`{ "choices" : [ { "index" : 0 , "message" : { "role" : "assistant" , "content" : "spaced" } } ] }`,
}

// fixtureBodies are the request and response bodies of the schema's valid
// event fixtures.
func fixtureBodies(t testing.TB) []string {
	paths, _ := filepath.Glob("../schema/testdata/events/valid_*.json")
	var out []string
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var ev struct{ Request, Response json.RawMessage }
		if json.Unmarshal(data, &ev) == nil {
			for _, b := range []json.RawMessage{ev.Request, ev.Response} {
				if len(b) > 0 {
					out = append(out, string(b))
				}
			}
		}
	}
	return out
}

// reused holds the arrays checkFastDoc decodes every body into, one after
// the other.
var reused = newDocs()

// checkFastDoc: whenever the binder takes a body, it gives what the
// reflective decoder gives.
func checkFastDoc(t *testing.T, body string) (took bool) {
	t.Helper()
	raw := json.RawMessage(body)
	if !json.Valid(raw) || len(strings.TrimSpace(body)) == 0 {
		return false
	}
	raw = json.RawMessage(strings.TrimSpace(body)) // as schema.Decode hands a body
	switch raw[0] {
	case '{':
		var fast, slow reqDoc
		d := fastDoc{Binder: schema.NewBinder(raw)}
		if d.request(&fast) {
			took = true
			if err := unmarshal(raw, &slow); err != nil {
				t.Fatalf("binder took a request unmarshal refuses (%v): %s", err, raw)
			}
			if !reflect.DeepEqual(fast, slow) {
				t.Fatalf("request %s:\nbinder    %+v\nunmarshal %+v", raw, fast, slow)
			}
		}
		var fr, sr respDoc
		d = fastDoc{Binder: schema.NewBinder(raw)}
		if d.response(0, &fr) {
			took = true
			if err := unmarshal(raw, &sr); err != nil {
				t.Fatalf("binder took a response unmarshal refuses (%v): %s", err, raw)
			}
			if !reflect.DeepEqual(fr, sr) {
				t.Fatalf("response %s:\nbinder    %+v\nunmarshal %+v", raw, fr, sr)
			}
			// and so it does with the arrays of docs every body before
			// this one was decoded into (as extract reuses them)
			reused.fd.space.reset()
			var rr respDoc
			if !decodeResponse(raw, &rr, reused) || !reflect.DeepEqual(rr, sr) {
				t.Fatalf("response %s, decoded into reused arrays:\nbinder    %+v\nunmarshal %+v", raw, rr, sr)
			}
		}
	case '[':
		reused.fd.space.reset()
		if fast, ok := reused.bind(raw).chunks(); ok {
			took = true
			var slow []respDoc
			if err := unmarshal(raw, &slow); err != nil {
				t.Fatalf("binder took chunks unmarshal refuses (%v): %s", err, raw)
			}
			if !reflect.DeepEqual(fast, slow) {
				t.Fatalf("chunks %s:\nbinder    %+v\nunmarshal %+v", raw, fast, slow)
			}
		}
	}
	return took
}

func TestFastDocMatchesUnmarshal(t *testing.T) {
	took := 0
	bodies := append(append([]string{}, fastDocSeeds...), fixtureBodies(t)...)
	for _, b := range bodies {
		if checkFastDoc(t, b) {
			took++
		}
	}
	// The common shapes must take the fast path, or it is dead weight.
	for _, b := range []string{fastDocSeeds[0], fastDocSeeds[1], fastDocSeeds[17], fastDocSeeds[30]} {
		if !checkFastDoc(t, b) {
			t.Errorf("binder gave up on a common body: %s", b)
		}
	}
	for _, b := range []string{fastDocSeeds[8], fastDocSeeds[9], fastDocSeeds[10], fastDocSeeds[11], fastDocSeeds[12], fastDocSeeds[15]} {
		d := fastDoc{Binder: schema.NewBinder(json.RawMessage(b))}
		if d.request(&reqDoc{}) {
			t.Errorf("binder took a body it must leave to unmarshal: %s", b)
		}
	}
	t.Logf("binder took %d of %d bodies", took, len(bodies))
}

func FuzzFastDocMatchesUnmarshal(f *testing.F) {
	for _, b := range fastDocSeeds {
		f.Add(b)
	}
	for _, b := range fixtureBodies(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body string) { checkFastDoc(t, body) })
}

// BenchmarkDecodeBodies compares the binder with the reflective decoder on
// the 1 KB chat benchmark event's bodies:
//
//	go test ./transform -run '^$' -bench DecodeBodies -benchmem
func BenchmarkDecodeBodies(b *testing.B) {
	ev := map[string]json.RawMessage{}
	if err := json.Unmarshal(benchChatEvent(0), &ev); err != nil {
		b.Fatal(err)
	}
	req, resp := ev["request"], ev["response"]
	b.Run("binder", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var r reqDoc
			var s respDoc
			if !decodeRequest(req, &r, nil) || !decodeResponse(resp, &s, nil) {
				b.Fatal("not decoded")
			}
		}
	})
	b.Run("unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var r reqDoc
			var s respDoc
			if unmarshal(req, &r) != nil || unmarshal(resp, &s) != nil {
				b.Fatal("not decoded")
			}
		}
	})
}
