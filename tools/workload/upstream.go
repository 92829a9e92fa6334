// Package workload is a synthetic Xinference: an OpenAI-compatible upstream
// that answers like Xinference does (chat and completions, streamed or not,
// embeddings, rerank, model list), and a generator that drives a realistic mix
// of calls through the capture proxy while keeping the ground truth of what it
// sent. `callpipe demo` and `callpipe bench` use both.
package workload

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/callpipe/callpipe/internal/defaults"
)

// Model is one model UID the upstream serves.
type Model struct {
	UID  string
	Kind string // chat, embedding or rerank
}

// DefaultModels is the demo's fleet: three chat models, one embedding, one rerank.
func DefaultModels() []Model {
	return []Model{
		{UID: "qwen2.5-instruct", Kind: KindChat},
		{UID: "llama-3.1-instruct", Kind: KindChat},
		{UID: "deepseek-r1-distill-qwen", Kind: KindChat},
		{UID: "bge-m3", Kind: KindEmbedding},
		{UID: "bge-reranker-v2-m3", Kind: KindRerank},
	}
}

// Call kinds the upstream serves.
const (
	KindChat      = "chat"
	KindEmbedding = "embedding"
	KindRerank    = "rerank"
)

// Upstream answers like Xinference. Token counts are a pure function of the
// text (Tokens), so a generator knows what the pipeline must report without
// reading hidden stream chunks.
type Upstream struct {
	Models []Model
	// FirstToken is the delay before the first byte of an answer; TokenDelay
	// the delay between streamed chunks. Zero: answer at once.
	FirstToken time.Duration
	TokenDelay time.Duration
	// Now is the clock of the answers' "created" field; nil: time.Now.
	Now func() time.Time
}

// Tokens is the upstream's token count of a text: its whitespace-separated words.
func Tokens(s string) int64 { return int64(len(strings.Fields(s))) }

// ErrorPrompt makes the upstream fail a chat call the way Xinference does
// when a model worker dies (HTTP 500 with a detail message).
const ErrorPrompt = "please fail this call"

func (u *Upstream) model(uid string) (Model, bool) {
	for _, m := range u.Models {
		if m.UID == uid {
			return m, true
		}
	}
	return Model{}, false
}

func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/v1/models" {
		u.serveModels(w)
		return
	}
	if r.Method != http.MethodPost {
		writeDetail(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	var req request
	if err := json.NewDecoder(io.LimitReader(r.Body, 16<<20)).Decode(&req); err != nil {
		writeDetail(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return
	}
	m, ok := u.model(req.Model)
	if !ok {
		writeDetail(w, http.StatusBadRequest, fmt.Sprintf("Model not found in the model list, uid: %s", req.Model))
		return
	}
	if u.FirstToken > 0 {
		time.Sleep(u.FirstToken)
	}
	switch {
	case r.URL.Path == "/v1/chat/completions" && m.Kind == KindChat:
		u.serveChat(w, &req)
	case r.URL.Path == "/v1/embeddings" && m.Kind == KindEmbedding:
		serveEmbeddings(w, &req)
	case r.URL.Path == "/v1/rerank" && m.Kind == KindRerank:
		serveRerank(w, &req)
	default:
		writeDetail(w, http.StatusBadRequest, fmt.Sprintf("model %s (%s) does not serve %s", m.UID, m.Kind, r.URL.Path))
	}
}

type request struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	} `json:"messages"`
	Stream        bool `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens int             `json:"max_tokens"`
	Input     json.RawMessage `json:"input"`
	Query     string          `json:"query"`
	Documents []string        `json:"documents"`
}

func (r *request) prompt() string {
	var b strings.Builder
	for _, m := range r.Messages {
		b.WriteString(m.Content)
		b.WriteByte(' ')
	}
	return b.String()
}

// Answer is the chat answer the upstream gives to a prompt: deterministic,
// about maxTokens words (at least 1).
func Answer(prompt string, maxTokens int) string {
	maxTokens = defaults.IfNotPositive(maxTokens, 64)
	h := fnv.New64a()
	h.Write([]byte(prompt))
	seed := h.Sum64()
	n := 1 + int(seed%uint64(maxTokens))
	words := make([]string, n)
	for i := range words {
		words[i] = vocabulary[(seed>>uint(i%48)+uint64(i))%uint64(len(vocabulary))]
	}
	return strings.Join(words, " ")
}

var vocabulary = strings.Fields(`the pipeline stores every call once and the rollups stay exact while
workers restart model tokens latency user trace archive replay export stream consumer batch
insert merge partition query result answer question context window cache sample value`)

func (u *Upstream) serveChat(w http.ResponseWriter, req *request) {
	prompt := req.prompt()
	if strings.Contains(prompt, ErrorPrompt) {
		writeDetail(w, http.StatusInternalServerError, "[address=127.0.0.1:40103, pid=7] Remote server 127.0.0.1:40103 closed")
		return
	}
	answer := Answer(prompt, req.MaxTokens)
	usage := map[string]int64{"prompt_tokens": Tokens(prompt), "completion_tokens": Tokens(answer)}
	usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
	id := fmt.Sprintf("chatcmpl-%x", fnv64(prompt))
	now := time.Now
	if u.Now != nil {
		now = u.Now
	}
	created := now().Unix()
	if !req.Stream {
		writeJSON(w, http.StatusOK, map[string]any{
			"id": id, "object": "chat.completion", "created": created, "model": req.Model,
			"choices": []any{map[string]any{"index": 0, "finish_reason": "stop",
				"message": map[string]any{"role": "assistant", "content": answer}}},
			"usage": usage,
		})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	chunk := func(delta map[string]any, finish any, usage any) {
		b, _ := json.Marshal(map[string]any{
			"id": id, "object": "chat.completion.chunk", "created": created, "model": req.Model,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}, "usage": usage,
		})
		// Xinference (sse-starlette) frames events with CRLF.
		fmt.Fprintf(w, "data: %s\r\n\r\n", b)
		if flusher != nil {
			flusher.Flush()
		}
	}
	chunk(map[string]any{"role": "assistant", "content": ""}, nil, nil)
	for i, word := range strings.Fields(answer) {
		if i > 0 {
			word = " " + word
			if u.TokenDelay > 0 {
				time.Sleep(u.TokenDelay)
			}
		}
		chunk(map[string]any{"content": word}, nil, nil)
	}
	chunk(map[string]any{"content": ""}, "stop", nil)
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		b, _ := json.Marshal(map[string]any{"id": id, "object": "chat.completion.chunk", "created": created,
			"model": req.Model, "choices": []any{}, "usage": usage})
		fmt.Fprintf(w, "data: %s\r\n\r\n", b)
	}
	fmt.Fprint(w, "data: [DONE]\r\n\r\n")
}

// EmbeddingInputs is what an embeddings request embeds: a string or a list.
func EmbeddingInputs(raw json.RawMessage) []string {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}
	}
	var many []string
	_ = json.Unmarshal(raw, &many)
	return many
}

func serveEmbeddings(w http.ResponseWriter, req *request) {
	inputs := EmbeddingInputs(req.Input)
	if len(inputs) == 0 {
		writeDetail(w, http.StatusBadRequest, "input: must be a string or a list of strings")
		return
	}
	var tokens int64
	data := make([]any, len(inputs))
	for i, in := range inputs {
		tokens += Tokens(in)
		vec := make([]float64, 8)
		h := fnv64(in)
		for j := range vec {
			vec[j] = float64(int64(h>>uint(j*8))&0xff)/255 - 0.5
		}
		data[i] = map[string]any{"index": i, "object": "embedding", "embedding": vec}
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "model": req.Model, "data": data,
		"usage": map[string]int64{"prompt_tokens": tokens, "total_tokens": tokens}})
}

// RerankTokens is what the upstream reports for a rerank call.
func RerankTokens(query string, docs []string) int64 {
	n := Tokens(query)
	for _, d := range docs {
		n += Tokens(d)
	}
	return n
}

func serveRerank(w http.ResponseWriter, req *request) {
	if req.Query == "" || len(req.Documents) == 0 {
		writeDetail(w, http.StatusBadRequest, "query and documents are required")
		return
	}
	results := make([]any, len(req.Documents))
	for i, d := range req.Documents {
		results[i] = map[string]any{"index": i, "relevance_score": float64(fnv64(req.Query+d)%1000) / 1000, "document": nil}
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": fmt.Sprintf("rerank-%x", fnv64(req.Query)), "results": results,
		"meta": map[string]any{"api_version": nil, "billed_units": nil, "warnings": nil,
			"tokens": map[string]int64{"input_tokens": RerankTokens(req.Query, req.Documents), "output_tokens": 0}}})
}

func (u *Upstream) serveModels(w http.ResponseWriter) {
	data := make([]any, len(u.Models))
	for i, m := range u.Models {
		data[i] = map[string]any{"id": m.UID, "object": "model", "created": 0, "owned_by": "xinference"}
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

func fnv64(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeDetail(w http.ResponseWriter, code int, detail string) {
	writeJSON(w, code, map[string]string{"detail": detail})
}
