package workload

import (
	"strconv"
	"strings"
	"time"
)

// ChatEvent is a schema v1 event of a chat call with reported usage, built
// directly as NDJSON for load generators that must not spend their CPU on
// encoding/json.
type ChatEvent struct {
	ID               string
	Model            string
	User             string // explicit user; empty: APIKey is sent instead
	APIKey           string
	Start            time.Time
	Latency, TTFT    time.Duration
	Prompt, Answer   string // plain text without characters JSON must escape
	PromptTokens     int64
	CompletionTokens int64
}

// Append appends the event and a newline to dst.
func (e *ChatEvent) Append(dst []byte) []byte {
	dst = append(dst, `{"id":"`...)
	dst = append(dst, e.ID...)
	dst = append(dst, `","start_time":"`...)
	dst = e.Start.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","end_time":"`...)
	dst = e.Start.Add(e.Latency).UTC().AppendFormat(dst, time.RFC3339Nano)
	if e.TTFT > 0 {
		dst = append(dst, `","first_token_time":"`...)
		dst = e.Start.Add(e.TTFT).UTC().AppendFormat(dst, time.RFC3339Nano)
		dst = append(dst, `","stream":true`...)
	} else {
		dst = append(dst, '"')
	}
	dst = append(dst, `,"endpoint":"/v1/chat/completions","model":"`...)
	dst = append(dst, e.Model...)
	if e.User != "" {
		dst = append(dst, `","user":"`...)
		dst = append(dst, e.User...)
	} else {
		dst = append(dst, `","api_key":"`...)
		dst = append(dst, e.APIKey...)
	}
	dst = append(dst, `","status":200,"request":{"model":"`...)
	dst = append(dst, e.Model...)
	dst = append(dst, `","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"`...)
	dst = append(dst, e.Prompt...)
	dst = append(dst, `"}],"temperature":0.7,"max_tokens":512},"response":{"object":"chat.completion","model":"`...)
	dst = append(dst, e.Model...)
	dst = append(dst, `","choices":[{"index":0,"message":{"role":"assistant","content":"`...)
	dst = append(dst, e.Answer...)
	dst = append(dst, `"},"finish_reason":"stop"}]},"usage":{"prompt_tokens":`...)
	dst = strconv.AppendInt(dst, e.PromptTokens, 10)
	dst = append(dst, `,"completion_tokens":`...)
	dst = strconv.AppendInt(dst, e.CompletionTokens, 10)
	dst = append(dst, `,"total_tokens":`...)
	dst = strconv.AppendInt(dst, e.PromptTokens+e.CompletionTokens, 10)
	dst = append(dst, "}}\n"...)
	return dst
}

// Filler is n bytes of plain words, for padding events to a size.
func Filler(n int) string {
	const words = "the quick brown fox jumps over the lazy dog while the pipeline counts every token once "
	if n <= 0 {
		return ""
	}
	return strings.Repeat(words, n/len(words)+1)[:n]
}
