// Package schema defines call-event schema v1: the JSON that producers send to
// callpipe and that travels on the CALLPIPE_CALLS stream.
package schema

import (
	"encoding/json"
	"time"
)

// Version is the call-event schema version carried by this package.
const Version = 1

// Sources of a call: made online by a client, or by a batch job.
const (
	SourceOnline = "online"
	SourceBatch  = "batch"
)

// Event is one model call as producers report it.
//
// APIKey is accepted from producers but never leaves ingest in clear: ingest
// replaces it with APIKeyHash and APIKeyPrefix (see RedactAPIKey).
//
// Decode parses and validates an Event; Validate checks one built in Go;
// the JSON Schema (JSONSchema, call-event.v1.json) states the same rules for
// other languages.
//
// Encoding is plain json.Marshal. Zero values are omitted, and mean absent.
// Time fields marshal as RFC 3339 with nanosecond precision (Go's
// time.RFC3339Nano: "2024-05-01T12:00:00.123456789+05:30", trailing zeros of
// the fraction dropped) in their own location, so the offset an event was
// decoded with is kept ("Z" for UTC). A marshalled valid Event decodes to an
// equal Event (FuzzDecode checks this round trip). Request, Response and
// Metadata values are re-emitted compacted, with <, > and & escaped as
// json.Marshal does; their JSON value is unchanged.
type Event struct {
	ID             string                     `json:"id"`
	TraceID        string                     `json:"trace_id,omitempty"`
	SessionID      string                     `json:"session_id,omitempty"`
	StartTime      time.Time                  `json:"start_time"`
	EndTime        *time.Time                 `json:"end_time,omitempty"`
	FirstTokenTime *time.Time                 `json:"first_token_time,omitempty"`
	Endpoint       string                     `json:"endpoint"`
	Model          string                     `json:"model"`
	Instance       string                     `json:"instance,omitempty"`
	User           string                     `json:"user,omitempty"`
	APIKey         string                     `json:"api_key,omitempty"`
	APIKeyHash     string                     `json:"api_key_hash,omitempty"`
	APIKeyPrefix   string                     `json:"api_key_prefix,omitempty"`
	Request        json.RawMessage            `json:"request,omitempty"`
	Response       json.RawMessage            `json:"response,omitempty"`
	Stream         bool                       `json:"stream,omitempty"`
	Status         int                        `json:"status,omitempty"`
	Error          string                     `json:"error,omitempty"`
	Usage          *Usage                     `json:"usage,omitempty"`
	Metadata       map[string]json.RawMessage `json:"metadata,omitempty"`
	Tags           []string                   `json:"tags,omitempty"`
	Source         string                     `json:"source,omitempty"`
	BatchID        string                     `json:"batch_id,omitempty"`
	// RequestTruncated marks a request body captured only in part because it
	// exceeded the capture limit; the upstream still received all of it.
	RequestTruncated bool `json:"request_truncated,omitempty"`
	// Capture is the capture policy that redacted Request, Response, Error
	// and Metadata before the event was published (set by ingest; nil on
	// events from publishers that apply none).
	Capture *Capture `json:"capture,omitempty"`
}

// Capture modes: what of a call's payload is kept.
const (
	CaptureFull      = "full"      // input and output kept
	CaptureTruncated = "truncated" // every text cut to the policy's max_chars
	CaptureNone      = "none"      // input and output dropped; counts, model, user... kept
)

// Capture records which capture policy produced a call's stored payload.
type Capture struct {
	Mode string `json:"mode"` // CaptureFull, CaptureTruncated or CaptureNone
	// MaskSet names the masks applied (a version derived from their
	// patterns; equal configurations give equal versions).
	MaskSet string `json:"mask_set,omitempty"`
	// Counted: the usage was counted by callpipe's tokenizer before the text
	// was dropped (the upstream reported none).
	Counted bool `json:"counted,omitempty"`
}

// Usage is the OpenAI-shaped token usage of a call. A nil field is unknown.
type Usage struct {
	PromptTokens     *int64 `json:"prompt_tokens,omitempty"`
	CompletionTokens *int64 `json:"completion_tokens,omitempty"`
	TotalTokens      *int64 `json:"total_tokens,omitempty"`
}
