package schema

// ReportedUsage is a usage object as a model server answers it: OpenAI's
// prompt, completion and total tokens, or input and output tokens as
// rerank's meta.tokens has them. Counts are read as numbers, so that an
// invalid count (negative as Xinference's -1, fractional or absurd) can be
// told from a missing one (nil); TokenCount says which counts are valid.
// The proxy reads it into an event's Usage and normalize into a call's
// token counts.
type ReportedUsage struct {
	PromptTokens     *float64 `json:"prompt_tokens"`
	CompletionTokens *float64 `json:"completion_tokens"`
	TotalTokens      *float64 `json:"total_tokens"`
	InputTokens      *float64 `json:"input_tokens"`
	OutputTokens     *float64 `json:"output_tokens"`
}

// Prompt is the reported prompt count: prompt_tokens, else input_tokens.
func (u *ReportedUsage) Prompt() *float64 {
	if u.PromptTokens != nil {
		return u.PromptTokens
	}
	return u.InputTokens
}

// Completion is the reported completion count: completion_tokens, else
// output_tokens.
func (u *ReportedUsage) Completion() *float64 {
	if u.CompletionTokens != nil {
		return u.CompletionTokens
	}
	return u.OutputTokens
}

// TokenCount is a reported count as an integer; ok is false when it is
// missing, negative, fractional or above 2^53 (where float64 stops counting
// every integer).
func TokenCount(f *float64) (n int64, ok bool) {
	if f == nil || *f < 0 || *f > 1<<53 || *f != float64(int64(*f)) {
		return 0, false
	}
	return int64(*f), true
}
