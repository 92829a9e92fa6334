package transform

import (
	"context"

	"encoding/json"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/schema/capture"
	"strings"
	"testing"
)

// Normalize applies the capture policy to the call it builds (for events
// from publishers that apply none), after counting its tokens.
func TestNormalizeAppliesCapturePolicy(t *testing.T) {
	p, err := capture.New(capture.Options{Payloads: capture.Full, Models: []string{"secret-*=none", "long-*=truncated"},
		MaxChars: 20, Masks: capture.DefaultMasks})
	if err != nil {
		t.Fatal(err)
	}
	n := testNormalizer(t)
	n.Privacy = p
	req := `{"messages":[{"role":"user","content":"Mail bob.smith@example.com or call +1 415-555-0134, key sk-abcdefghijklmnopqrstuvwx\nalice@example.org"}]}`
	resp := `{"choices":[{"message":{"content":"Sure, writing to bob.smith@example.com"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}`
	c, err := n.Normalize(context.Background(), event("p-1", "/v1/chat/completions", "m", req, resp,
		map[string]any{"metadata": map[string]any{"note": "from carol@example.net", "n": 12345678901}}))
	if err != nil {
		t.Fatal(err)
	}
	all := c.InputText + c.OutputText + string(c.Input) + string(c.Output) + string(c.Metadata["note"])
	for _, leak := range []string{"bob.smith@", "alice@", "carol@", "415-555", "sk-abcdef"} {
		if strings.Contains(all, leak) {
			t.Errorf("%q not masked: %s", leak, all)
		}
	}
	if !json.Valid(c.Input) || !json.Valid(c.Output) || !strings.Contains(c.OutputText, capture.Mask) {
		t.Fatalf("masked payload: %s %s", c.Input, c.Output)
	}
	if string(c.Metadata["n"]) != "12345678901" {
		t.Fatalf("numbers are not strings and stay: %s", c.Metadata["n"])
	}
	if c.InputTokens != 5 || c.UsageSource != "reported" {
		t.Fatalf("counts must not change: %+v", c)
	}

	c, _ = n.Normalize(context.Background(), event("p-2", "/v1/chat/completions", "secret-model", req, resp, nil))
	if c.InputText != "" || c.OutputText != "" || c.Input != nil || c.Output != nil || c.InputTokens != 5 {
		t.Fatalf("none: %+v", c)
	}
	long := `{"messages":[{"role":"user","content":"` + strings.Repeat("é", 100) + `"}]}`
	c, _ = n.Normalize(context.Background(), event("p-3", "/v1/chat/completions", "long-model", long, "", nil))
	if c.InputText != strings.Repeat("é", 20)+"…" || !strings.Contains(string(c.Input), `"truncated":true`) || c.InputTokens == 0 {
		t.Fatalf("truncated: %q %s %d", c.InputText, c.Input, c.InputTokens)
	}
}

// The edge's pass and normalize's agree: an event redacted at the edge
// (mode none, its tokens counted with CountUsage before the text is
// dropped, or the reported usage of its response kept) normalizes to the
// counts normalize finds on the whole event, and to the same payload as
// normalize's own pass over the whole event.
func TestEdgeCaptureKeepsNormalizeCounts(t *testing.T) {
	n := testNormalizer(t)
	edge, err := capture.New(capture.Options{Models: []string{"hr-*=none", "trunc-*=truncated"}, MaxChars: 8,
		Masks: capture.DefaultMasks, Count: n.CountUsage})
	if err != nil {
		t.Fatal(err)
	}
	n.Privacy = edge
	req := `{"messages":[{"role":"system","content":"You help HR."},{"role":"user","content":"MARKER-9 mail bob@example.com please"}]}`
	withUsage := `{"choices":[{"message":{"content":"Done, bob@example.com"},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":6,"total_tokens":46}}`
	noUsage := `{"choices":[{"message":{"content":"Done, bob@example.com"},"finish_reason":"stop"}]}`
	for _, tc := range []struct{ name, model, resp, source string }{
		{"none, usage counted", "hr-bot", noUsage, schema.UsageEstimated},
		{"none, usage reported", "hr-bot", withUsage, schema.UsageReported},
		{"truncated", "trunc-bot", noUsage, schema.UsageEstimated},
		{"full", "open-bot", withUsage, schema.UsageReported},
		{"full, masked, usage counted", "open-bot", noUsage, schema.UsageEstimated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := event("e-1", "/v1/chat/completions", tc.model, req, tc.resp, nil)
			whole, err := n.Normalize(context.Background(), raw)
			if err != nil {
				t.Fatal(err)
			}
			ev, err := schema.Decode(raw, schema.DefaultLimits())
			if err != nil {
				t.Fatal(err)
			}
			edge.Event(ev)
			published := schema.AppendEvent(nil, ev)
			if strings.Contains(string(published), "bob@") || (tc.model == "hr-bot" && strings.Contains(string(published), "MARKER-9")) {
				t.Fatalf("published unredacted: %s", published)
			}
			c, err := n.Normalize(context.Background(), published)
			if err != nil {
				t.Fatal(err)
			}
			if c.InputTokens != whole.InputTokens || c.OutputTokens != whole.OutputTokens || c.UsageSource != tc.source || whole.UsageSource != tc.source {
				t.Fatalf("counts after the edge %d/%d %s, on the whole event %d/%d %s, want source %s",
					c.InputTokens, c.OutputTokens, c.UsageSource, whole.InputTokens, whole.OutputTokens, whole.UsageSource, tc.source)
			}
			if c.InputText != whole.InputText || c.OutputText != whole.OutputText || c.Capture.Mode != whole.Capture.Mode ||
				c.Capture.MaskSet != edge.MaskSet() {
				t.Fatalf("after the edge %q %q %+v\nwhole event %q %q %+v", c.InputText, c.OutputText, c.Capture,
					whole.InputText, whole.OutputText, whole.Capture)
			}
		})
	}
}
