package proxy

// A fake Xinference: realistic response bodies and streams for every endpoint
// kind the proxy captures. Streams are framed as Xinference's sse-starlette
// frames them: "data: ...\r\n\r\n", with ": ping" comments.

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

const created = 1767225600

func sseEvent(b *bytes.Buffer, data string) { b.WriteString("data: " + data + "\r\n\r\n") }

func chatChunk(choices, usage string) string {
	return fmt.Sprintf(`{"id":"chatcmpl-4f1c2a","model":"qwen3-instruct","created":%d,"object":"chat.completion.chunk","choices":%s,"usage":%s}`,
		created, choices, usage)
}

// xinfChatStream is a chat/completions stream. includeUsage adds the
// usage-only chunk that stream_options.include_usage asks for; errAfter ends
// the stream with Xinference's error event after the first content.
func xinfChatStream(tools, includeUsage, errAfter bool) []byte {
	return xinfChatStreamParts(tools, includeUsage, errAfter)[0]
}

// xinfChatStreamParts returns the stream as the events Xinference writes one
// by one (element 0 is the whole stream).
func xinfChatStreamParts(tools, includeUsage, errAfter bool) [][]byte {
	var parts []string
	add := func(s string) { parts = append(parts, s) }
	add(": ping - 2026-01-01 00:00:00.000000+00:00\r\n\r\n")
	ev := func(data string) { var b bytes.Buffer; sseEvent(&b, data); add(b.String()) }
	ev(chatChunk(`[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]`, "null"))
	words := []string{"Hello", " world"}
	if tools {
		words = []string{"Let", " me", " check."}
	}
	for i, w := range words {
		ev(chatChunk(fmt.Sprintf(`[{"index":0,"delta":{"content":%q},"finish_reason":null}]`, w), "null"))
		if errAfter && i == 0 {
			ev(`{"error": "[address=0.0.0.0:40103, pid=7] CUDA out of memory"}`)
			return append([][]byte{[]byte(strings.Join(parts, ""))}, toBytes(parts)...)
		}
	}
	finish := "stop"
	if tools {
		finish = "tool_calls"
		// Xinference style: one complete call per chunk, every one at index 0.
		ev(chatChunk(`[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"index":0,"id":"call_a1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},"logprobs":null,"finish_reason":null}]`, "null"))
		ev(chatChunk(`[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"index":0,"id":"call_b2","type":"function","function":{"name":"get_time","arguments":"{\"tz\": \"Europe/Paris\"}"}}]},"logprobs":null,"finish_reason":null}]`, "null"))
		// OpenAI style: name first, arguments in pieces.
		ev(chatChunk(`[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_c3","type":"function","function":{"name":"lookup","arguments":""}}]},"finish_reason":null}]`, "null"))
		ev(chatChunk(`[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"q\": "}}]},"finish_reason":null}]`, "null"))
		ev(chatChunk(`[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"\"louvre\"}"}}]},"finish_reason":null}]`, "null"))
	}
	ev(chatChunk(fmt.Sprintf(`[{"index":0,"delta":{"content":""},"finish_reason":%q}]`, finish), "null"))
	if includeUsage {
		ev(fmt.Sprintf(`{"id":"chatcmpl-4f1c2a","model":"qwen3-instruct","created":%d,"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":42,"completion_tokens":17,"total_tokens":59}}`, created))
	}
	ev("[DONE]")
	return append([][]byte{[]byte(strings.Join(parts, ""))}, toBytes(parts)...)
}

func gzipped(s string) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write([]byte(s))
	zw.Close()
	return b.Bytes()
}

func toBytes(parts []string) [][]byte {
	out := make([][]byte, len(parts))
	for i, p := range parts {
		out[i] = []byte(p)
	}
	return out
}

func xinfCompletionStream(includeUsage bool) []byte {
	var b bytes.Buffer
	chunk := func(text, finish string) string {
		return fmt.Sprintf(`{"id":"cmpl-77ab","object":"text_completion","created":%d,"model":"qwen2.5-base","choices":[{"text":%q,"index":0,"logprobs":null,"finish_reason":%s}],"usage":null}`,
			created, text, finish)
	}
	for _, w := range []string{"Once", " upon", " a", " time"} {
		sseEvent(&b, chunk(w, "null"))
	}
	sseEvent(&b, chunk("", `"length"`))
	if includeUsage {
		sseEvent(&b, fmt.Sprintf(`{"id":"cmpl-77ab","object":"text_completion","created":%d,"model":"qwen2.5-base","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}`, created))
	}
	sseEvent(&b, "[DONE]")
	return b.Bytes()
}

const (
	chatJSON = `{"id":"chatcmpl-8d2d","object":"chat.completion","created":1767225600,"model":"qwen3-instruct",` +
		`"choices":[{"index":0,"message":{"role":"assistant","content":"Paris is the capital of France.","tool_calls":[]},"finish_reason":"stop"}],` +
		`"usage":{"prompt_tokens":21,"completion_tokens":8,"total_tokens":29}}`
	chatNegUsageJSON = `{"id":"chatcmpl-1e3","object":"chat.completion","created":1767225600,"model":"qwen3-instruct",` +
		`"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_9f","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},"finish_reason":"tool_calls"}],` +
		`"usage":{"prompt_tokens":-1,"completion_tokens":-1,"total_tokens":-1}}`
	embeddingsJSON = `{"object":"list","model":"bge-m3","data":[{"index":0,"object":"embedding","embedding":[0.0123,-0.0441,0.0915,0.0031]}],` +
		`"usage":{"prompt_tokens":6,"total_tokens":6}}`
	rerankJSON = `{"id":"6a0d2f3e-1b7c-4c1e-9a55-0c1f0d9e7b21","results":[{"index":1,"relevance_score":0.981,"document":null},{"index":0,"relevance_score":0.017,"document":null}],` +
		`"meta":{"api_version":null,"billed_units":null,"tokens":{"input_tokens":37,"output_tokens":0},"warnings":null}}`
	imageJSON  = `{"created":1767225600,"data":[{"url":null,"b64_json":"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="}]}`
	videoJSON  = `{"created":1767225600,"data":[{"url":"/tmp/xinference/video/4b1f.mp4","b64_json":null}]}`
	modelsJSON = `{"object":"list","data":[{"id":"qwen3-instruct","object":"model","created":0,"owned_by":"xinference"}]}`
	speechMP3  = "ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x64\x00\x00\x00\x00binary-audio-frames"
)

// fakeXinference serves the endpoints; the model named in a request selects
// a behaviour (errors, slow or hanging streams...).
type fakeXinference struct {
	srv     *httptest.Server
	release chan struct{} // lets a "slow" stream continue
	mu      sync.Mutex
	bodies  map[string][][]byte // path -> request bodies as received
	headers map[string][]http.Header
	hangEnd chan struct{} // closed when a "hang" stream sees its request cancelled
}

func newFakeXinference(t testing.TB) *fakeXinference {
	x := &fakeXinference{release: make(chan struct{}), bodies: map[string][][]byte{},
		headers: map[string][]http.Header{}, hangEnd: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", x.chat)
	mux.HandleFunc("POST /v1/completions", func(w http.ResponseWriter, r *http.Request) {
		req := x.parse(r)
		writeStream(w, r, [][]byte{xinfCompletionStream(includeUsage(req))})
	})
	mux.HandleFunc("POST /v1/embeddings", jsonHandler(200, embeddingsJSON))
	mux.HandleFunc("POST /v1/rerank", jsonHandler(200, rerankJSON))
	mux.HandleFunc("POST /v1/images/generations", jsonHandler(200, imageJSON))
	mux.HandleFunc("POST /v1/audio/transcriptions", func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseMultipartForm(1 << 20); err != nil || r.FormValue("model") == "" {
			http.Error(w, `{"detail":"bad form"}`, 400)
			return
		}
		f, _, err := r.FormFile("file")
		if err != nil {
			http.Error(w, `{"detail":"no file"}`, 400)
			return
		}
		n, _ := io.Copy(io.Discard, f)
		jsonHandler(200, fmt.Sprintf(`{"text":"hello from %d bytes of audio"}`, n))(w, r)
	})
	mux.HandleFunc("POST /v1/audio/speech", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "audio/mpeg")
		io.WriteString(w, speechMP3)
	})
	mux.HandleFunc("GET /v1/models", jsonHandler(200, modelsJSON))
	mux.HandleFunc("POST /v1/video/generations", func(w http.ResponseWriter, r *http.Request) {
		// Compressed when the client accepts it, as behind GZipMiddleware.
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		w.Write(gzipped(videoJSON))
	})
	x.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		x.mu.Lock()
		x.bodies[r.URL.Path] = append(x.bodies[r.URL.Path], body)
		x.headers[r.URL.Path] = append(x.headers[r.URL.Path], r.Header.Clone())
		x.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		w.Header().Set("X-Upstream", "xinference")
		mux.ServeHTTP(w, r)
	}))
	return x
}

func (x *fakeXinference) lastBody(path string) []byte {
	x.mu.Lock()
	defer x.mu.Unlock()
	b := x.bodies[path]
	if len(b) == 0 {
		return nil
	}
	return b[len(b)-1]
}

// requests is the number of requests the upstream got on path.
func (x *fakeXinference) requests(path string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.bodies[path])
}

func (x *fakeXinference) lastHeader(path string) http.Header {
	x.mu.Lock()
	defer x.mu.Unlock()
	h := x.headers[path]
	if len(h) == 0 {
		return nil
	}
	return h[len(h)-1]
}

type chatReq struct {
	Model         string          `json:"model"`
	Stream        bool            `json:"stream"`
	StreamOptions json.RawMessage `json:"stream_options"`
	Tools         json.RawMessage `json:"tools"`
}

func (x *fakeXinference) parse(r *http.Request) chatReq {
	var req chatReq
	json.NewDecoder(r.Body).Decode(&req)
	return req
}

func includeUsage(req chatReq) bool {
	var so struct {
		IncludeUsage bool `json:"include_usage"`
	}
	json.Unmarshal(req.StreamOptions, &so)
	return so.IncludeUsage
}

func jsonHandler(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// writeStream writes each part as one write, flushed, like sse-starlette.
func writeStream(w http.ResponseWriter, r *http.Request, parts [][]byte) {
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(200)
	rc := http.NewResponseController(w)
	for _, p := range parts {
		w.Write(p)
		rc.Flush()
	}
}

func (x *fakeXinference) chat(w http.ResponseWriter, r *http.Request) {
	req := x.parse(r)
	switch req.Model {
	case "err-400":
		jsonHandler(400, `{"detail":"Model not found in the model list, uid: err-400"}`)(w, r)
		return
	case "err-500":
		jsonHandler(500, `{"detail":"[address=0.0.0.0:34591, pid=3811] CUDA out of memory. Tried to allocate 2.00 GiB"}`)(w, r)
		return
	case "neg-usage":
		jsonHandler(200, chatNegUsageJSON)(w, r)
		return
	case "strict":
		if req.StreamOptions != nil {
			jsonHandler(422, `{"detail":[{"type":"extra_forbidden","loc":["body","stream_options"],"msg":"Extra inputs are not permitted"}]}`)(w, r)
			return
		}
	}
	if !req.Stream {
		jsonHandler(200, chatJSON)(w, r)
		return
	}
	tools := len(req.Tools) > 0
	parts := xinfChatStreamParts(tools, includeUsage(req), req.Model == "stream-error")[1:]
	switch req.Model {
	case "slow":
		writeStream(w, r, parts[:3]) // ping, role, first word
		select {
		case <-x.release:
		case <-time.After(10 * time.Second):
		}
		rc := http.NewResponseController(w)
		for _, p := range parts[3:] {
			w.Write(p)
			rc.Flush()
		}
	case "die":
		writeStream(w, r, parts[:3])
		panic(http.ErrAbortHandler) // the connection drops mid-stream
	case "hang":
		writeStream(w, r, parts[:3])
		select {
		case <-r.Context().Done():
			close(x.hangEnd)
		case <-time.After(10 * time.Second):
		}
	default:
		writeStream(w, r, parts)
	}
}
