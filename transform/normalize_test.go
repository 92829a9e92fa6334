package transform

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
)

var (
	tokOnce sync.Once
	tokVal  *Tokenizer
)

func testTokenizer(t testing.TB) *Tokenizer {
	tokOnce.Do(func() {
		var err error
		tokVal, err = NewTokenizer("o200k_base", []string{"gpt-4*=cl100k_base"})
		if err != nil {
			t.Fatal(err)
		}
	})
	return tokVal
}

func testNormalizer(t testing.TB) *Normalizer {
	prices, err := ParsePrices([]string{"qwen2.5-*=1/2", "bge-*=0.1/0"})
	if err != nil {
		t.Fatal(err)
	}
	return &Normalizer{Tokenizer: testTokenizer(t), Prices: prices}
}

// event builds a raw event around a request and response body.
func event(id, endpoint, model string, req, resp string, extra map[string]any) []byte {
	e := map[string]any{
		"id": id, "start_time": "2026-05-01T12:00:00Z", "end_time": "2026-05-01T12:00:01.5Z",
		"endpoint": endpoint, "model": model,
	}
	if req != "" {
		e["request"] = json.RawMessage(req)
	}
	if resp != "" {
		e["response"] = json.RawMessage(resp)
	}
	for k, v := range extra {
		e[k] = v
	}
	b, err := json.Marshal(e)
	if err != nil {
		panic(err)
	}
	return b
}

func normalize(t *testing.T, data []byte) *schema.Call {
	t.Helper()
	c, err := testNormalizer(t).Normalize(context.Background(), data)
	if err != nil {
		t.Fatalf("normalize: %v", err)
	}
	// every record must survive a JSON round trip
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var back schema.Call
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestKindOf(t *testing.T) {
	cases := map[string]string{
		"/v1/chat/completions":        schema.KindChat,
		"/v1/chat/completions?x=1":    schema.KindChat,
		"/v1/messages":                schema.KindChat,
		"/anthropic/v1/messages":      schema.KindChat,
		"/v1/completions":             schema.KindCompletion,
		"/v1/embeddings":              schema.KindEmbedding,
		"/v1/rerank":                  schema.KindRerank,
		"/v1/images/generations":      schema.KindImage,
		"/v1/images/ocr":              schema.KindImage,
		"/v1/audio/transcriptions":    schema.KindAudio,
		"/v1/audio/speech":            schema.KindAudio,
		"/v1/audio/embeddings":        schema.KindAudio,
		"/v1/video/generations":       schema.KindVideo,
		"/v1/video/generations/image": schema.KindVideo,
		"/v1/models":                  schema.KindOther,
		"/v1/convert_ids_to_tokens":   schema.KindOther,
		"/V1/Chat/Completions/":       schema.KindChat,
		"/prefix/v1/embeddings":       schema.KindEmbedding,
	}
	for path, want := range cases {
		if got := KindOf(path); got != want {
			t.Errorf("KindOf(%q) = %s, want %s", path, got, want)
		}
	}
}

func TestChatReportedUsage(t *testing.T) {
	req := `{"model":"qwen2.5-instruct","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Hi there"}],"temperature":0.2,"top_p":0.9,"max_tokens":64,"stream":false,"tools":[{"type":"function","function":{"name":"get_weather"}}]}`
	resp := `{"id":"c1","object":"chat.completion","model":"qwen2.5-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":3,"total_tokens":23}}`
	c := normalize(t, event("chat-1", "/v1/chat/completions", "qwen2.5-instruct", req, resp,
		map[string]any{"first_token_time": "2026-05-01T12:00:00.25Z", "instance": "node-1:9997", "user": "alice",
			"usage": map[string]int{"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}}))
	if c.Kind != schema.KindChat || c.LatencyMS != 1500 || c.TTFTMS == nil || *c.TTFTMS != 250 {
		t.Fatalf("kind/latency/ttft: %s %d %v", c.Kind, c.LatencyMS, c.TTFTMS)
	}
	if c.InputTokens != 20 || c.OutputTokens != 3 || c.TotalTokens != 23 || c.UsageSource != schema.UsageReported {
		t.Fatalf("tokens: %d/%d/%d %s", c.InputTokens, c.OutputTokens, c.TotalTokens, c.UsageSource)
	}
	if c.InputText != "You are terse.\nHi there" || c.OutputText != "Hello!" || c.FinishReason != "stop" {
		t.Fatalf("text: %q %q %q", c.InputText, c.OutputText, c.FinishReason)
	}
	if string(c.ModelParameters["temperature"]) != "0.2" || string(c.ModelParameters["max_tokens"]) != "64" ||
		string(c.ModelParameters["top_p"]) != "0.9" || string(c.ModelParameters["tools"]) != `["get_weather"]` {
		t.Fatalf("params: %v", c.ModelParameters)
	}
	if c.UserID != "alice" || c.UserSource != schema.UserExplicit || c.Instance != "node-1:9997" {
		t.Fatalf("user/instance: %s %s %s", c.UserID, c.UserSource, c.Instance)
	}
	if c.CostUSD == nil || *c.CostUSD != (20*1+3*2)/1e6 {
		t.Fatalf("cost: %v", c.CostUSD)
	}
	if string(c.Output) != `{"role":"assistant","content":"Hello!"}` {
		t.Fatalf("output: %s", c.Output)
	}
	if !strings.Contains(string(c.Input), `"role":"system"`) {
		t.Fatalf("input: %s", c.Input)
	}
	if c.Status != 200 || c.Error != "" || c.Source != schema.SourceOnline || c.TraceID != "chat-1" {
		t.Fatalf("status/defaults: %+v", c)
	}
}

func TestChatUsageOnlyInResponse(t *testing.T) {
	req := `{"messages":[{"role":"user","content":"Hi"}]}`
	resp := `{"choices":[{"index":0,"message":{"role":"assistant","content":"Yo"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}`
	c := normalize(t, event("chat-2", "/v1/chat/completions", "m", req, resp, nil))
	if c.InputTokens != 7 || c.OutputTokens != 2 || c.UsageSource != schema.UsageReported {
		t.Fatalf("tokens: %d/%d %s", c.InputTokens, c.OutputTokens, c.UsageSource)
	}
}

func TestChatToolCallsNegativeUsage(t *testing.T) {
	// Xinference's tool-call path reports -1 for every count: treat as missing.
	req := `{"messages":[{"role":"user","content":"Weather in Paris?"},{"role":"assistant","content":null,"tool_calls":[{"id":"t0","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"paris\"}"}}]},{"role":"tool","tool_call_id":"t0","content":"sunny"}],"tool_choice":"auto"}`
	resp := `{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":-1,"completion_tokens":-1,"total_tokens":-1}}`
	c := normalize(t, event("tool-1", "/v1/chat/completions", "qwen2.5-instruct", req, resp, nil))
	if c.UsageSource != schema.UsageEstimated || c.InputTokens <= 0 || c.OutputTokens <= 0 || c.TotalTokens != c.InputTokens+c.OutputTokens {
		t.Fatalf("usage: %d/%d/%d %s", c.InputTokens, c.OutputTokens, c.TotalTokens, c.UsageSource)
	}
	if c.FinishReason != "tool_calls" || c.OutputText != `get_weather({"city":"Paris"})` {
		t.Fatalf("output: %q %q", c.FinishReason, c.OutputText)
	}
	if !strings.Contains(string(c.Output), `"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]`) {
		t.Fatalf("output json: %s", c.Output)
	}
	if !strings.Contains(c.InputText, "sunny") || !strings.Contains(c.InputText, `lookup({"q":"paris"})`) {
		t.Fatalf("input text (tool role, assistant tool call): %q", c.InputText)
	}
	if !strings.Contains(string(c.Input), `"tool_call_id":"t0"`) || !strings.Contains(string(c.Input), `"role":"tool"`) {
		t.Fatalf("input json: %s", c.Input)
	}
}

func TestChatMultimodalParts(t *testing.T) {
	img := "data:image/png;base64," + strings.Repeat("A", 5000)
	req := `{"messages":[{"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"` + img + `"}},{"type":"image_url","image_url":{"url":"https://example.com/cat.png"}},{"type":"text","text":"Be brief."}]}]}`
	resp := `{"choices":[{"index":0,"message":{"role":"assistant","content":"A cat."},"finish_reason":"stop"}]}`
	c := normalize(t, event("mm-1", "/v1/chat/completions", "qwen2-vl", req, resp, nil))
	if c.InputText != "What is in this image?\nBe brief." {
		t.Fatalf("input text: %q", c.InputText)
	}
	if strings.Contains(string(c.Input), "AAAA") || !strings.Contains(string(c.Input), "https://example.com/cat.png") {
		t.Fatalf("input must summarise inline images and keep links: %s", c.Input)
	}
	if c.UsageSource != schema.UsageEstimated || c.InputTokens == 0 || c.OutputTokens == 0 {
		t.Fatalf("missing usage must be estimated: %+v", c)
	}
	if c.CostUSD != nil {
		t.Fatalf("unknown model must have no cost, got %v", *c.CostUSD)
	}
}

func TestChatStreamingAssembledAndChunks(t *testing.T) {
	req := `{"messages":[{"role":"user","content":"Count"}],"stream":true,"stream_options":{"include_usage":true}}`
	// As the proxy captures it: assembled into the non-streamed shape.
	assembled := `{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"1 2 3"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}`
	c := normalize(t, event("s-1", "/v1/chat/completions", "m", req, assembled,
		map[string]any{"stream": true, "first_token_time": "2026-05-01T12:00:00.1Z"}))
	if !c.Stream || c.OutputText != "1 2 3" || c.InputTokens != 5 || c.OutputTokens != 6 || *c.TTFTMS != 100 {
		t.Fatalf("assembled stream: %+v", c)
	}
	// As some producers send it: the list of chunks, with tool call deltas and no usage.
	chunks := `[{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"1 "}}]},
	{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"2 3"}}]},
	{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c9","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]}}]},
	{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]},"finish_reason":"tool_calls"}]}]`
	c = normalize(t, event("s-2", "/v1/chat/completions", "m", req, chunks, map[string]any{"stream": true}))
	if c.OutputText != "1 2 3\nf({\"a\":1})" || c.FinishReason != "tool_calls" || c.UsageSource != schema.UsageEstimated {
		t.Fatalf("chunks: %q %q %s", c.OutputText, c.FinishReason, c.UsageSource)
	}
	// Streamed chunks with usage in the last chunk.
	chunks = `[{"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}]},{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}]`
	c = normalize(t, event("s-3", "/v1/chat/completions", "m", req, chunks, map[string]any{"stream": true}))
	if c.InputTokens != 4 || c.OutputTokens != 1 || c.UsageSource != schema.UsageReported {
		t.Fatalf("chunk usage: %+v", c)
	}
}

func TestChatError(t *testing.T) {
	req := `{"messages":[{"role":"user","content":"Hi"}]}`
	resp := `{"detail":"Model not found in the model list, uid: nope"}`
	c := normalize(t, event("e-1", "/v1/chat/completions", "nope", req, resp, map[string]any{"status": 400}))
	if c.Status != 400 || c.Error != "Model not found in the model list, uid: nope" || c.OutputTokens != 0 {
		t.Fatalf("error: %d %q %d", c.Status, c.Error, c.OutputTokens)
	}
	// streamed error inside a 200 response, and an explicit error field winning
	resp = `{"object":"chat.completion","choices":[],"error":{"message":"CUDA out of memory"}}`
	c = normalize(t, event("e-2", "/v1/chat/completions", "m", req, resp, map[string]any{"stream": true}))
	if c.Error != "CUDA out of memory" {
		t.Fatalf("stream error: %q", c.Error)
	}
	c = normalize(t, event("e-3", "/v1/chat/completions", "m", req, "", map[string]any{"status": 502, "error": "upstream unreachable"}))
	if c.Status != 502 || c.Error != "upstream unreachable" || c.OutputText != "" {
		t.Fatalf("explicit error: %+v", c)
	}
	c = normalize(t, event("e-4", "/v1/chat/completions", "m", req, "", map[string]any{"status": 500}))
	if c.Error != "HTTP 500" {
		t.Fatalf("bare status: %q", c.Error)
	}
}

func TestAnthropicMessages(t *testing.T) {
	req := `{"model":"m","system":"Be nice","max_tokens":100,"messages":[{"role":"user","content":[{"type":"text","text":"Hi"},{"type":"tool_result","tool_use_id":"x","content":"42"}]}]}`
	resp := `{"type":"message","role":"assistant","content":[{"type":"text","text":"Hello"},{"type":"tool_use","id":"tu1","name":"calc","input":{"x":1}}],"stop_reason":"tool_use","usage":{"input_tokens":12,"output_tokens":8}}`
	c := normalize(t, event("a-1", "/anthropic/v1/messages", "m", req, resp, nil))
	if c.Kind != schema.KindChat || c.InputText != "Be nice\nHi\n42" || c.OutputText != "Hello\ncalc({\"x\":1})" ||
		c.FinishReason != "tool_use" || c.InputTokens != 12 || c.OutputTokens != 8 || c.UsageSource != schema.UsageReported {
		t.Fatalf("anthropic: %+v", c)
	}
}

func TestCompletion(t *testing.T) {
	req := `{"prompt":"Once upon a time","max_tokens":16,"temperature":1}`
	resp := `{"object":"text_completion","choices":[{"index":0,"text":" there was a fox.","finish_reason":"length"}],"usage":{"prompt_tokens":4,"completion_tokens":5,"total_tokens":9}}`
	c := normalize(t, event("cmp-1", "/v1/completions", "qwen2.5-base", req, resp, nil))
	if c.Kind != schema.KindCompletion || c.InputText != "Once upon a time" || c.OutputText != " there was a fox." ||
		c.FinishReason != "length" || c.InputTokens != 4 || c.OutputTokens != 5 || string(c.Output) != `" there was a fox."` {
		t.Fatalf("completion: %+v", c)
	}
	// streamed completion chunks, no usage
	chunks := `[{"object":"text_completion","choices":[{"index":0,"text":"a"}]},{"object":"text_completion","choices":[{"index":0,"text":"b","finish_reason":"stop"}]}]`
	c = normalize(t, event("cmp-2", "/v1/completions", "m", req, chunks, map[string]any{"stream": true}))
	if c.OutputText != "ab" || c.UsageSource != schema.UsageEstimated || c.InputTokens != testTokenizer(t).Count("m", "Once upon a time") {
		t.Fatalf("completion chunks: %+v", c)
	}
}

func TestEmbedding(t *testing.T) {
	req := `{"input":["hello world","second text"],"encoding_format":"float"}`
	resp := `{"object":"list","model":"bge-m3","data":[{"index":0,"object":"embedding","embedding":[0.1,0.2,0.3,0.4]},{"index":1,"object":"embedding","embedding":[0.5,0.6,0.7,0.8]}],"usage":{"prompt_tokens":6,"total_tokens":6}}`
	c := normalize(t, event("emb-1", "/v1/embeddings", "bge-m3", req, resp, map[string]any{"usage": map[string]int{"prompt_tokens": 6, "total_tokens": 6}}))
	if c.Kind != schema.KindEmbedding || c.InputText != "hello world\nsecond text" || c.InputTokens != 6 || c.OutputTokens != 0 ||
		c.UsageSource != schema.UsageReported || c.CostUSD == nil {
		t.Fatalf("embedding: %+v", c)
	}
	if strings.Contains(string(c.Output), "0.1") || string(c.Output) != `{"dimensions":4,"embeddings":2}` {
		t.Fatalf("embedding output must be a summary: %s", c.Output)
	}
	// no usage at all: input estimated, output 0
	c = normalize(t, event("emb-2", "/v1/embeddings", "bge-m3", `{"input":"hello"}`, `{"data":[{"embedding":"AAAA"}]}`, nil))
	if c.UsageSource != schema.UsageEstimated || c.InputTokens != 1 || c.OutputTokens != 0 || string(c.Output) != `{"embeddings":1,"encoding":"base64"}` {
		t.Fatalf("embedding estimate: %+v %s", c, c.Output)
	}
}

func TestRerank(t *testing.T) {
	req := `{"query":"capital of France","documents":["Paris is the capital.","Berlin is in Germany."],"top_n":1,"return_documents":false}`
	resp := `{"id":"r1","results":[{"index":0,"relevance_score":0.98,"document":null}],"meta":{"api_version":null,"billed_units":null,"tokens":{"input_tokens":15,"output_tokens":0},"warnings":null}}`
	c := normalize(t, event("rr-1", "/v1/rerank", "bge-reranker", req, resp, nil))
	if c.Kind != schema.KindRerank || c.InputText != "capital of France\nParis is the capital.\nBerlin is in Germany." ||
		c.InputTokens != 15 || c.OutputTokens != 0 || c.UsageSource != schema.UsageReported || string(c.ModelParameters["top_n"]) != "1" {
		t.Fatalf("rerank: %+v", c)
	}
	if string(c.Output) != `[{"index":0,"relevance_score":0.98}]` {
		t.Fatalf("rerank output: %s", c.Output)
	}
	// documents as objects, meta.tokens -1
	req = `{"query":"q","documents":[{"text":"d1"}]}`
	resp = `{"results":[],"meta":{"tokens":{"input_tokens":-1,"output_tokens":-1}}}`
	c = normalize(t, event("rr-2", "/v1/rerank", "bge-reranker", req, resp, nil))
	if c.InputText != "q\nd1" || c.UsageSource != schema.UsageEstimated {
		t.Fatalf("rerank objects: %+v", c)
	}
}

func TestImage(t *testing.T) {
	req := `{"prompt":"a red fox","n":2,"size":"512x512","response_format":"b64_json"}`
	resp := `{"created":1,"data":[{"b64_json":"` + strings.Repeat("Q", 4000) + `"},{"url":"http://host/img.png"}]}`
	c := normalize(t, event("img-1", "/v1/images/generations", "sd3", req, resp, nil))
	if c.Kind != schema.KindImage || c.InputText != "a red fox" || strings.Contains(string(c.Output), "QQQQ") ||
		string(c.Output) != `{"images":2,"inline":1,"urls":["http://host/img.png"]}` || string(c.ModelParameters["size"]) != `"512x512"` {
		t.Fatalf("image: %+v %s", c, c.Output)
	}
	if c.OutputTokens != 0 || c.UsageSource != schema.UsageEstimated {
		t.Fatalf("image tokens: %+v", c)
	}
}

func TestAudio(t *testing.T) {
	// transcription: multipart request (captured as a summary), JSON text response
	c := normalize(t, event("au-1", "/v1/audio/transcriptions", "whisper", `{"content_type":"multipart/form-data","bytes":52000}`, `{"text":"hello there"}`, nil))
	if c.Kind != schema.KindAudio || c.OutputText != "hello there" || c.InputText != "" {
		t.Fatalf("transcription: %+v", c)
	}
	// speech: JSON request, binary response summarised by the proxy
	c = normalize(t, event("au-2", "/v1/audio/speech", "chattts", `{"input":"Say hi","voice":"echo","speed":1.0}`, `{"content_type":"audio/mpeg","bytes":12345}`, nil))
	if c.InputText != "Say hi" || string(c.Output) != `{"content_type":"audio/mpeg","bytes":12345}` || string(c.ModelParameters["voice"]) != `"echo"` {
		t.Fatalf("speech: %+v %s", c, c.Output)
	}
}

func TestVideoAndOther(t *testing.T) {
	c := normalize(t, event("v-1", "/v1/video/generations", "cogvideox", `{"prompt":"a cat surfing"}`, `{"created":1,"data":[{"url":"http://h/v.mp4"}]}`, nil))
	if c.Kind != schema.KindVideo || c.InputText != "a cat surfing" || string(c.Output) != `{"urls":["http://h/v.mp4"],"videos":1}` {
		t.Fatalf("video: %+v %s", c, c.Output)
	}
	c = normalize(t, event("o-1", "/v1/models", "-", "", `{"object":"list","data":[]}`, map[string]any{"endpoint": "/v1/models"}))
	if c.Kind != schema.KindOther || c.InputTokens != 0 || c.OutputTokens != 0 {
		t.Fatalf("other: %+v", c)
	}
}

func TestPoison(t *testing.T) {
	n := testNormalizer(t)
	for name, data := range map[string]string{
		"not json":         `{"id":`,
		"missing model":    `{"id":"x","start_time":"2026-05-01T12:00:00Z","endpoint":"/v1/chat/completions"}`,
		"negative usage":   `{"id":"x","start_time":"2026-05-01T12:00:00Z","endpoint":"/v1/e","model":"m","usage":{"prompt_tokens":-1}}`,
		"end before start": `{"id":"x","start_time":"2026-05-01T12:00:00Z","end_time":"2026-05-01T11:00:00Z","endpoint":"/v1/e","model":"m"}`,
	} {
		_, err := n.Normalize(context.Background(), []byte(data))
		var p *PoisonError
		if err == nil || !asPoison(err, &p) || p.Reason == "" {
			t.Errorf("%s: want a PoisonError, got %v", name, err)
		}
	}
}

func asPoison(err error, p **PoisonError) bool {
	pe, ok := err.(*PoisonError)
	*p = pe
	return ok
}

func TestTimesAreUTC(t *testing.T) {
	data := event("tz-1", "/v1/chat/completions", "m", "", "", map[string]any{
		"start_time": "2026-05-01T14:00:00+02:00", "end_time": "2026-05-01T14:00:02+02:00"})
	c := normalize(t, data)
	if c.StartTime.Location() != time.UTC || !c.StartTime.Equal(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)) || c.LatencyMS != 2000 {
		t.Fatalf("times: %v %v %d", c.StartTime, c.EndTime, c.LatencyMS)
	}
}

func TestPrices(t *testing.T) {
	pt, err := ParsePrices([]string{"qwen2.5-72b*=2/6", "qwen2.5-*=0.5/1.5"})
	if err != nil {
		t.Fatal(err)
	}
	if c := pt.Cost("Qwen2.5-72B-Instruct", 1_000_000, 1_000_000); c == nil || *c != 8 {
		t.Fatalf("first match: %v", c)
	}
	if c := pt.Cost("qwen2.5-7b", 2_000_000, 0); c == nil || *c != 1 {
		t.Fatalf("second: %v", c)
	}
	if c := pt.Cost("llama", 1, 1); c != nil {
		t.Fatalf("unknown model must have no cost")
	}
	for _, bad := range []string{"x", "x=1", "x=a/b", "x=-1/1", "[=1/1"} {
		if _, err := ParsePrices([]string{bad}); err == nil {
			t.Errorf("ParsePrices(%q) accepted", bad)
		}
	}
}

func TestTokenizer(t *testing.T) {
	tok := testTokenizer(t)
	// o200k_base and cl100k_base known counts
	if n := tok.Count("qwen", "hello world"); n != 2 {
		t.Fatalf("o200k hello world = %d", n)
	}
	if n := tok.Count("gpt-4-turbo", "tiktoken is great!"); n != 6 {
		t.Fatalf("cl100k = %d", n)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if tok.Count("m", "The quick brown fox jumps over the lazy dog.") != 10 {
					t.Error("concurrent count mismatch")
					return
				}
			}
		})
	}
	wg.Wait()
	if _, err := NewTokenizer("nope", nil); err == nil {
		t.Fatal("unknown encoding accepted")
	}
}

// Every endpoint kind: an error response (Xinference's {"detail": ...}) gives
// the status and message and no output tokens; usage of -1 in the response
// is treated as missing, so input tokens are estimated from the request.
func TestErrorsAndMinusOneUsageEveryKind(t *testing.T) {
	for _, tc := range []struct {
		endpoint, kind, req, inputText string
	}{
		{"/v1/chat/completions", schema.KindChat, `{"messages":[{"role":"user","content":"hello world"}]}`, "hello world"},
		{"/v1/completions", schema.KindCompletion, `{"prompt":"hello world"}`, "hello world"},
		{"/v1/embeddings", schema.KindEmbedding, `{"input":"hello world"}`, "hello world"},
		{"/v1/rerank", schema.KindRerank, `{"query":"hello","documents":["world"]}`, "hello\nworld"},
		{"/v1/images/generations", schema.KindImage, `{"prompt":"hello world"}`, "hello world"},
		{"/v1/audio/speech", schema.KindAudio, `{"input":"hello world"}`, "hello world"},
		{"/v1/video/generations", schema.KindVideo, `{"prompt":"hello world"}`, "hello world"},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			resp := `{"detail":"[address=node-1:9997] model crashed","usage":{"prompt_tokens":-1,"completion_tokens":-1,"total_tokens":-1}}`
			c := normalize(t, event("err-"+tc.kind, tc.endpoint, "m", tc.req, resp, map[string]any{"status": 500}))
			if c.Kind != tc.kind || c.Status != 500 || c.Error != "[address=node-1:9997] model crashed" {
				t.Fatalf("kind %q status %d error %q", c.Kind, c.Status, c.Error)
			}
			if c.InputText != tc.inputText || c.OutputText != "" || c.OutputTokens != 0 {
				t.Fatalf("input %q output %q output tokens %d", c.InputText, c.OutputText, c.OutputTokens)
			}
			want := testTokenizer(t).Count("m", tc.inputText)
			if c.UsageSource != schema.UsageEstimated || c.InputTokens < want || c.InputTokens > want+8 {
				t.Fatalf("-1 usage: source %s input tokens %d, want estimated ≈ %d", c.UsageSource, c.InputTokens, want)
			}
		})
	}
}
