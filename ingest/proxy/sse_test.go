package proxy

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
)

// runScanner feeds stream to a filtering scanner in the given pieces and
// returns what it forwards and the assembled response.
func runScanner(stream []byte, cuts []int, filter bool, chat bool) (out []byte, asm *streamAssembler) {
	asm = &streamAssembler{limit: 1 << 20, chat: chat}
	sc := &sseScanner{filter: filter, lineMax: 1 << 20, holdMax: 64 << 10,
		onEvent: func(d []byte, trunc bool) bool {
			_, usageOnly := asm.add(d, trunc)
			return filter && usageOnly
		}}
	prev := 0
	for _, c := range cuts {
		if c < prev || c > len(stream) {
			continue
		}
		out = sc.feed(stream[prev:c], out)
		prev = c
	}
	out = sc.feed(stream[prev:], out)
	out = sc.finish(out)
	return out, asm
}

func withLineEnds(b []byte, eol string) []byte {
	return bytes.ReplaceAll(b, []byte("\r\n"), []byte(eol))
}

func TestScannerDropsUsageChunkAtAnySplit(t *testing.T) {
	for _, eol := range []string{"\r\n", "\n", "\r"} {
		with := withLineEnds(xinfChatStream(true, true, false), eol)
		without := withLineEnds(xinfChatStream(true, false, false), eol)
		step := 1
		if eol != "\r\n" {
			step = 7
		}
		for i := 0; i <= len(with); i += step {
			out, asm := runScanner(with, []int{i}, true, true)
			if !bytes.Equal(out, without) {
				t.Fatalf("eol %q split at %d:\n got %q\nwant %q", eol, i, out, without)
			}
			if asm.usage == nil {
				t.Fatalf("eol %q split at %d: usage not recorded", eol, i)
			}
		}
		r := rand.New(rand.NewPCG(1, uint64(len(eol))))
		for range 50 {
			var cuts []int
			for c := 0; c < len(with); c += 1 + r.IntN(40) {
				cuts = append(cuts, c)
			}
			if out, _ := runScanner(with, cuts, true, true); !bytes.Equal(out, without) {
				t.Fatalf("eol %q random split: got %q", eol, out)
			}
		}
	}
}

func TestScannerPassthroughWhenNothingDropped(t *testing.T) {
	// The client asked for usage itself: nothing may be dropped.
	stream := xinfChatStream(true, true, false)
	out, _ := runScanner(stream, []int{7, 100, 101}, false, true)
	if out != nil {
		t.Fatalf("observing scanner produced output")
	}
	// A filtering scanner with no usage chunk passes the stream unchanged,
	// including comments, odd fields and a final unterminated event.
	odd := []byte(": hi\r\nevent: x\r\nid: 3\r\nretry: 10\r\ndata\r\n\r\n\n\ndata: {\"choices\":[]}\r\n\r\ndata: tail-without-blank-line")
	if out, _ := runScanner(odd, []int{3, 4, 20}, true, true); !bytes.Equal(out, odd) {
		t.Fatalf("got %q", out)
	}
}

func TestScannerReleasesLargeEvents(t *testing.T) {
	big := `{"choices":[],"usage":{"prompt_tokens":1},"pad":"` + strings.Repeat("x", 70<<10) + `"}`
	stream := []byte("data: " + big + "\n\ndata: [DONE]\n\n")
	out, _ := runScanner(stream, []int{1000, 65 << 10}, true, true)
	if !bytes.Equal(out, stream) {
		t.Fatalf("an event larger than the hold limit must pass (len %d vs %d)", len(out), len(stream))
	}
}

func TestAssembleChatToolCalls(t *testing.T) {
	_, asm := runScanner(xinfChatStream(true, true, false), nil, false, true)
	var got struct {
		Object  string `json:"object"`
		Model   string `json:"model"`
		Choices []struct {
			Message struct {
				Role      string  `json:"role"`
				Content   *string `json:"content"`
				ToolCalls []struct {
					ID       string `json:"id"`
					Type     string `json:"type"`
					Function struct {
						Name      string `json:"name"`
						Arguments string `json:"arguments"`
					} `json:"function"`
				} `json:"tool_calls"`
			} `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage map[string]int `json:"usage"`
	}
	res := asm.result()
	if err := json.Unmarshal(res, &got); err != nil {
		t.Fatalf("%v: %s", err, res)
	}
	if got.Object != "chat.completion" || got.Model != "qwen3-instruct" || len(got.Choices) != 1 {
		t.Fatalf("assembled: %s", res)
	}
	c := got.Choices[0]
	if c.FinishReason != "tool_calls" || c.Message.Role != "assistant" || c.Message.Content == nil || *c.Message.Content != "Let me check." {
		t.Fatalf("assembled choice: %s", res)
	}
	if len(c.Message.ToolCalls) != 3 {
		t.Fatalf("want 3 tool calls: %s", res)
	}
	want := []struct{ id, name, args string }{
		{"call_a1", "get_weather", `{"city": "Paris"}`},
		{"call_b2", "get_time", `{"tz": "Europe/Paris"}`},
		{"call_c3", "lookup", `{"q": "louvre"}`},
	}
	for i, w := range want {
		tc := c.Message.ToolCalls[i]
		if tc.ID != w.id || tc.Function.Name != w.name || tc.Function.Arguments != w.args || tc.Type != "function" {
			t.Fatalf("tool call %d = %+v, want %+v", i, tc, w)
		}
	}
	if got.Usage["total_tokens"] != 59 {
		t.Fatalf("usage: %s", res)
	}
}

func TestAssembleCompletionAndTruncation(t *testing.T) {
	_, asm := runScanner(xinfCompletionStream(false), nil, false, false)
	res := asm.result()
	if !strings.Contains(string(res), `"object":"text_completion"`) ||
		!strings.Contains(string(res), `"text":"Once upon a time"`) ||
		!strings.Contains(string(res), `"finish_reason":"length"`) {
		t.Fatalf("assembled completion: %s", res)
	}
	asm = &streamAssembler{limit: 5, chat: true}
	asm.add([]byte(`{"choices":[{"index":0,"delta":{"content":"héllo wörld"}}]}`), false)
	if !asm.truncated || !strings.Contains(string(asm.result()), `"content":"héll"`) {
		t.Fatalf("truncation: %s", asm.result())
	}
}

func TestAssembleStreamError(t *testing.T) {
	a := &streamAssembler{limit: 100, chat: true}
	a.add([]byte(`{"error": "[address=0.0.0.0:40103, pid=7] CUDA out of memory"}`), false)
	if a.errMsg != "[address=0.0.0.0:40103, pid=7] CUDA out of memory" {
		t.Fatalf("errMsg = %q", a.errMsg)
	}
	a.add([]byte(`{"error":{"message":"bad things","code":500}}`), false)
	if a.errMsg != "bad things" {
		t.Fatalf("errMsg = %q", a.errMsg)
	}
}

// FuzzSSEAssemble feeds arbitrary bytes, cut at arbitrary places, through the
// scanner and the assembler. Never a panic; the forwarded bytes do not depend
// on how the stream was cut; a filter that drops nothing forwards the input
// unchanged; and the assembled response is valid JSON.
func FuzzSSEAssemble(f *testing.F) {
	f.Add(xinfChatStream(true, true, false), []byte{5, 200, 17})
	f.Add(withLineEnds(xinfChatStream(false, true, false), "\r"), []byte{1})
	f.Add(xinfCompletionStream(true), []byte{})
	f.Add([]byte("data: {\"choices\":[],\"usage\":{\"total_tokens\":-1}}\r\n\r\n"), []byte{3, 3})
	f.Add([]byte("data: {\"choices\":[{\"index\":-5,\"delta\":{\"tool_calls\":[{\"index\":99999999999}]}}]}\n\n"), []byte{})
	f.Fuzz(func(t *testing.T, stream []byte, cutBytes []byte) {
		var cuts []int
		pos := 0
		for _, c := range cutBytes {
			pos += int(c)
			cuts = append(cuts, pos)
		}
		whole, asm := runScanner(stream, nil, true, true)
		split, _ := runScanner(stream, cuts, true, true)
		if !bytes.Equal(whole, split) {
			t.Fatalf("output depends on chunking:\nwhole %q\nsplit %q", whole, split)
		}
		if res := asm.result(); !json.Valid(res) {
			t.Fatalf("assembled response is not JSON: %q", res)
		}
		usageFrom(asm.usage)

		// A filter that never drops is the identity.
		var out []byte
		sc := &sseScanner{filter: true, lineMax: 64, holdMax: 128, onEvent: func([]byte, bool) bool { return false }}
		prev := 0
		for _, c := range cuts {
			if c >= prev && c <= len(stream) {
				out = sc.feed(stream[prev:c], out)
				prev = c
			}
		}
		out = sc.feed(stream[prev:], out)
		out = sc.finish(out)
		if !bytes.Equal(out, stream) {
			t.Fatalf("non-dropping filter changed the stream:\n in %q\nout %q", stream, out)
		}
	})
}
