package schema

import (
	"encoding/json"
	"time"
)

// Endpoint kinds of a call, from its request path.
const (
	KindChat       = "chat"
	KindCompletion = "completion"
	KindEmbedding  = "embedding"
	KindRerank     = "rerank"
	KindImage      = "image"
	KindAudio      = "audio"
	KindVideo      = "video"
	KindOther      = "other"
)

// Where a call's token counts come from.
const (
	UsageReported  = "reported"  // the model server's usage, valid
	UsageEstimated = "estimated" // counted by callpipe's tokenizer
)

// Where a call's user comes from.
const (
	UserExplicit   = "explicit"   // the event's user field
	UserAPIKey     = "api_key"    // the API key's owner, from Redis
	UserAnonymous  = "anonymous"  // no user and no known key
	UserUnresolved = "unresolved" // a key that could not be looked up (Redis down, not cached)
)

// Call is the normalized record of one call, one per event id, published to
// CALLPIPE_NORMALIZED by the transform workers and consumed by every sink.
// Times are UTC; durations are milliseconds.
type Call struct {
	ID             string     `json:"id"`
	TraceID        string     `json:"trace_id"`
	SessionID      string     `json:"session_id,omitempty"`
	StartTime      time.Time  `json:"start_time"`
	EndTime        time.Time  `json:"end_time"`
	FirstTokenTime *time.Time `json:"first_token_time,omitempty"`
	LatencyMS      int64      `json:"latency_ms"`
	TTFTMS         *int64     `json:"ttft_ms,omitempty"`

	Endpoint string `json:"endpoint"`
	Kind     string `json:"kind"`
	Model    string `json:"model"`
	Instance string `json:"instance,omitempty"`

	UserID       string `json:"user_id"`
	UserSource   string `json:"user_source"`
	APIKeyHash   string `json:"api_key_hash,omitempty"`
	APIKeyPrefix string `json:"api_key_prefix,omitempty"`

	Stream       bool   `json:"stream,omitempty"`
	Status       int    `json:"status"`
	Error        string `json:"error,omitempty"`
	FinishReason string `json:"finish_reason,omitempty"`

	// InputText and OutputText are the call's text, for search and token
	// counting; Input and Output are the structured forms shown in trace views
	// (chat messages, the assistant message with tool calls, summaries of
	// embeddings and images — never vectors or image bytes).
	InputText       string                     `json:"input_text,omitempty"`
	OutputText      string                     `json:"output_text,omitempty"`
	Input           json.RawMessage            `json:"input,omitempty"`
	Output          json.RawMessage            `json:"output,omitempty"`
	ModelParameters map[string]json.RawMessage `json:"model_parameters,omitempty"`

	InputTokens  int64    `json:"input_tokens"`
	OutputTokens int64    `json:"output_tokens"`
	TotalTokens  int64    `json:"total_tokens"`
	UsageSource  string   `json:"usage_source"`
	CostUSD      *float64 `json:"cost_usd,omitempty"`

	Metadata map[string]json.RawMessage `json:"metadata,omitempty"`
	Tags     []string                   `json:"tags,omitempty"`
	Source   string                     `json:"source"`
	BatchID  string                     `json:"batch_id,omitempty"`
	// Capture is the capture policy that produced the stored payload.
	Capture *Capture `json:"capture,omitempty"`
}
