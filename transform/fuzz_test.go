package transform

import (
	"github.com/callpipe/callpipe/schema/capture"

	"context"
	"encoding/json"
	"testing"
)

// FuzzNormalize: any input is either a poison event or a call whose record
// is valid JSON decoding to the same call json.Marshal would give; the
// request and response bodies may hold anything.
func FuzzNormalize(f *testing.F) {
	f.Add("/v1/chat/completions", `{"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:x"}}]}]}`,
		`[{"choices":[{"index":0,"delta":{"content":"a","tool_calls":[{"index":1,"function":{"arguments":"{"}}]}}]}]`)
	f.Add("/v1/embeddings", `{"input":[1,2,3]}`, `{"data":[{"embedding":[]}],"usage":{"prompt_tokens":-1}}`)
	f.Add("/v1/rerank", `{"query":"q","documents":[{"text":"d"},"e",3]}`, `{"results":[{"index":0}],"meta":{"tokens":{"input_tokens":1.5}}}`)
	f.Add("/v1/messages", `{"system":[{"type":"text","text":"s"}],"messages":[]}`, `{"content":[{"type":"tool_use","input":{}}],"error":"x"}`)
	f.Add("/v1/images/generations", `{"prompt":"p"}`, `{"data":[{"url":"data:image/png;base64,AA"},{"b64_json":null}]}`)
	n := testNormalizer(f)
	p, err := capture.New(capture.Options{Payloads: capture.Truncated, MaxChars: 5, Masks: capture.DefaultMasks})
	if err != nil {
		f.Fatal(err)
	}
	n.Privacy = p
	f.Fuzz(func(t *testing.T, endpoint, req, resp string) {
		ev := map[string]any{"id": "f", "start_time": "2026-05-01T12:00:00Z", "endpoint": endpoint, "model": "m"}
		if json.Valid([]byte(req)) {
			ev["request"] = json.RawMessage(req)
		}
		if json.Valid([]byte(resp)) {
			ev["response"] = json.RawMessage(resp)
		}
		data, err := json.Marshal(ev)
		if err != nil {
			return
		}
		c, err := n.Normalize(context.Background(), data)
		if err != nil {
			return // poison
		}
		checkEncoding(t, c)
		if c.TotalTokens != c.InputTokens+c.OutputTokens || c.InputTokens < 0 || c.OutputTokens < 0 {
			t.Fatalf("tokens %d+%d=%d", c.InputTokens, c.OutputTokens, c.TotalTokens)
		}
	})
}
