package transform

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestPrivacy(t *testing.T) {
	p, err := NewPrivacy(PrivacyOptions{Payloads: PayloadsFull, Models: []string{"secret-*=none", "long-*=truncated"},
		MaxChars: 20, Masks: DefaultMasks})
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
	if !json.Valid(c.Input) || !json.Valid(c.Output) || !strings.Contains(c.OutputText, Mask) {
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
	for _, bad := range []PrivacyOptions{{Payloads: "some"}, {Models: []string{"x=all"}}, {Masks: []string{"("}}} {
		if _, err := NewPrivacy(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
