package transform

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/schema/capture"
)

// PoisonError marks an event that can never be normalized (undecodable or
// invalid); it goes to the dead-letter stream instead of being retried.
type PoisonError struct{ Reason string }

func (e *PoisonError) Error() string { return "poison event: " + e.Reason }

// Normalizer turns raw call events into schema.Call records. It is safe for
// concurrent use.
type Normalizer struct {
	Tokenizer *Tokenizer      // nil: missing usage stays 0, usage_source estimated
	Users     *UserResolver   // nil: explicit user or anonymous
	Prices    PriceTable      // nil: no cost
	Privacy   *capture.Policy // nil: payloads kept as the event holds them
	Limits    schema.Limits   // event size limit (schema.DefaultLimits when zero)

	// LivePrices, when set, replaces Prices: a table that may change while
	// calls are normalized (prices stored in NATS KV).
	LivePrices *LivePrices
}

// Normalize decodes and validates data (schema v1) and returns its call,
// which may point into data (schema.DecodeShared): data must not change
// while the call is in use. Errors are *PoisonError.
func (n *Normalizer) Normalize(ctx context.Context, data []byte) (*schema.Call, error) {
	ev, err := schema.DecodeShared(data, n.Limits)
	if err != nil {
		return nil, &PoisonError{Reason: err.Error()}
	}
	return n.NormalizeEvent(ctx, ev), nil
}

// normalized is a Call with room for the values its pointer fields point
// to: one allocation per call instead of four.
type normalized struct {
	call           schema.Call
	firstTokenTime time.Time
	ttftMS         int64
	costUSD        float64
	capture        schema.Capture
}

// NormalizeEvent normalizes a decoded, valid event.
func (n *Normalizer) NormalizeEvent(ctx context.Context, ev *schema.Event) *schema.Call {
	v := &normalized{call: schema.Call{
		ID:           ev.ID,
		TraceID:      ev.TraceID,
		SessionID:    ev.SessionID,
		StartTime:    ev.StartTime.UTC(),
		Endpoint:     ev.Endpoint,
		Kind:         KindOf(ev.Endpoint),
		Model:        ev.Model,
		Instance:     ev.Instance,
		APIKeyHash:   ev.APIKeyHash,
		APIKeyPrefix: ev.APIKeyPrefix,
		Stream:       ev.Stream,
		Status:       ev.Status,
		Error:        ev.Error,
		Metadata:     ev.Metadata,
		Tags:         ev.Tags,
		Source:       ev.Source,
		BatchID:      ev.BatchID,
	}}
	c := &v.call
	if c.TraceID == "" {
		c.TraceID = c.ID
	}
	if c.Status == 0 {
		c.Status = 200
	}
	if c.Source == "" {
		c.Source = schema.SourceOnline
	}
	c.EndTime = c.StartTime
	if ev.EndTime != nil {
		c.EndTime = ev.EndTime.UTC()
	}
	c.LatencyMS = max(0, c.EndTime.Sub(c.StartTime).Milliseconds())
	if ev.FirstTokenTime != nil {
		v.firstTokenTime = ev.FirstTokenTime.UTC()
		c.FirstTokenTime = &v.firstTokenTime
		v.ttftMS = max(0, v.firstTokenTime.Sub(c.StartTime).Milliseconds())
		c.TTFTMS = &v.ttftMS
	}

	x := extract(c.Kind, ev.Request, ev.Response)
	c.InputText, c.OutputText = x.inputText, x.outputText
	c.Input, c.Output = x.input, x.output
	c.ModelParameters = x.params
	c.FinishReason = x.finishReason
	if c.Error == "" && (c.Status >= 400 || x.errText != "") {
		c.Error = x.errText
	}
	if c.Error == "" && c.Status >= 400 {
		c.Error = "HTTP " + itoa(int64(c.Status))
	}

	n.tokens(c, ev, &x)
	c.UserID, c.UserSource = n.Users.Resolve(ctx, ev.User, ev.APIKeyHash)
	prices := n.Prices
	if n.LivePrices != nil {
		prices = n.LivePrices.Table()
	}
	if cost, ok := prices.costOf(c.Model, c.InputTokens, c.OutputTokens); ok {
		v.costUSD = cost
		c.CostUSD = &v.costUSD
	}
	c.Capture = &v.capture                 // where Privacy.Call writes the record
	n.Privacy.Call(c, ev.User, ev.Capture) // after token counting, which needs the whole text
	return c
}

// tokens fills the token counts: reported usage when present and valid
// (negative counts, as Xinference reports on some tool-call paths, are
// missing), the rest counted with the tokenizer.
func (n *Normalizer) tokens(c *schema.Call, ev *schema.Event, x *extracted) {
	in, out, total := x.usage.in, x.usage.out, x.usage.total
	if u := ev.Usage; u != nil { // the event's usage (validated non-negative) wins
		in, out, total = ptrOr(u.PromptTokens, -1), ptrOr(u.CompletionTokens, -1), ptrOr(u.TotalTokens, -1)
	}
	if in < 0 && out >= 0 && total >= out {
		in = total - out
	}
	if out < 0 && in >= 0 && total >= in {
		out = total - in
	}
	if out < 0 && in >= 0 && !x.hasOutputTokens {
		out = 0 // embeddings, rerank: no output tokens
	}
	c.UsageSource = schema.UsageReported
	if in < 0 {
		in = n.estimate(c.Model, x.inputText, x.inputMessages)
		c.UsageSource = schema.UsageEstimated
	}
	if out < 0 {
		out = 0
		if x.hasOutputTokens {
			out = n.estimate(c.Model, x.outputText+x.extraOutput, 0)
		}
		c.UsageSource = schema.UsageEstimated
	}
	if ev.Capture != nil && ev.Capture.Counted {
		c.UsageSource = schema.UsageEstimated // counted at the edge before the text was dropped
	}
	c.InputTokens, c.OutputTokens, c.TotalTokens = in, out, in+out
}

// CountUsage returns ev's tokens as NormalizeEvent counts them, and whether
// any count was estimated: the edge's capture.Counter, so that a call whose
// text the edge drops (capture mode none) keeps the counts normalize would
// have found.
func (n *Normalizer) CountUsage(ev *schema.Event) (in, out int64, estimated bool) {
	c := &schema.Call{Model: ev.Model, Kind: KindOf(ev.Endpoint)}
	x := extract(c.Kind, ev.Request, ev.Response)
	n.tokens(c, ev, &x)
	return c.InputTokens, c.OutputTokens, c.UsageSource == schema.UsageEstimated
}

// estimate counts text's tokens; chat messages add the chat-format overhead
// OpenAI documents for its models (4 per message, 3 to prime the reply).
func (n *Normalizer) estimate(model, text string, messages int) int64 {
	if n.Tokenizer == nil {
		return 0
	}
	t := n.Tokenizer.Count(model, text)
	if messages > 0 {
		t += int64(4*messages + 3)
	}
	return t
}

func ptrOr(p *int64, def int64) int64 {
	if p == nil {
		return def
	}
	return *p
}

// KindOf returns the endpoint kind (schema.Kind*) of a request path, e.g.
// "/v1/chat/completions" → chat. Query strings and prefixes before /v1 are
// ignored; Anthropic-style /v1/messages counts as chat.
func KindOf(endpoint string) string {
	p := strings.ToLower(endpoint)
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	p = strings.TrimRight(p, "/")
	switch {
	case strings.HasSuffix(p, "/chat/completions"), strings.HasSuffix(p, "/messages"), strings.HasSuffix(p, "/responses"):
		return schema.KindChat
	case strings.HasSuffix(p, "/completions"):
		return schema.KindCompletion
	case strings.Contains(p, "/audio/"):
		return schema.KindAudio // before embeddings: /v1/audio/embeddings is audio
	case strings.HasSuffix(p, "/embeddings"):
		return schema.KindEmbedding
	case strings.HasSuffix(p, "/rerank"):
		return schema.KindRerank
	case strings.Contains(p, "/images/"):
		return schema.KindImage
	case strings.Contains(p, "/video/"), strings.Contains(p, "/videos/"):
		return schema.KindVideo
	}
	return schema.KindOther
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
