package transform

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/callpipe/callpipe/schema"
)

// Payload capture modes.
const (
	PayloadsFull      = "full"      // keep input and output
	PayloadsTruncated = "truncated" // keep at most MaxChars characters of each
	PayloadsNone      = "none"      // drop input and output (counts, model, user... stay)
)

// DefaultMasks are applied unless disabled: e-mail addresses, phone
// numbers and API-key-like strings.
var DefaultMasks = []string{
	`[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}`,
	`\+?\(?\d{1,4}\)?[\s.\-]?\(?\d{2,4}\)?[\s.\-]?\d{3,4}[\s.\-]?\d{3,4}`,
	`\b(?:sk|pk|rk|xf|api|key)[-_][A-Za-z0-9_\-]{16,}`,
}

// Mask replaces what a mask matched.
const Mask = "[REDACTED]"

// PrivacyOptions configure what of a call's payload reaches the sinks.
type PrivacyOptions struct {
	Payloads string   // default mode: full, truncated or none
	Models   []string // per-model modes, PATTERN=MODE (glob over the lower-cased model name), first match wins
	MaxChars int      // characters kept of each text in truncated mode (default 2000)
	Masks    []string // regular expressions replaced by Mask in input, output and metadata
}

// Privacy applies the payload mode and the masks to normalized calls,
// before any sink sees them.
type Privacy struct {
	mode     string
	rules    []privRule
	maxChars int
	masks    []mask
}

// mask is a regular expression and, for the default masks, a cheap test
// that rules a match out (most payloads hold no e-mail address).
type mask struct {
	re       *regexp.Regexp
	possible *maskFilter
}

type maskFilter struct {
	str   func(string) bool
	bytes func([]byte) bool
}

func filterOf[F func(string) bool, G func([]byte) bool](f F, g G) *maskFilter {
	return &maskFilter{str: f, bytes: g}
}

var defaultMaskFilters = map[string]*maskFilter{
	DefaultMasks[0]: filterOf(hasByte[string], hasByte[[]byte]),
	DefaultMasks[1]: filterOf(hasDigitRun[string], hasDigitRun[[]byte]),
	DefaultMasks[2]: filterOf(hasKeyPrefix[string], hasKeyPrefix[[]byte]),
}

func hasByte[T ~string | ~[]byte](b T) bool {
	for i := 0; i < len(b); i++ {
		if b[i] == '@' {
			return true
		}
	}
	return false
}

// hasDigitRun reports whether b holds 7 digits separated only by phone
// punctuation.
func hasDigitRun[T ~string | ~[]byte](b T) bool {
	n := 0
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c >= '0' && c <= '9':
			if n++; n >= 7 {
				return true
			}
		case c == ' ' || c == '-' || c == '.' || c == '(' || c == ')' || c == '+':
		default:
			n = 0
		}
	}
	return false
}

// hasKeyPrefix reports whether b holds sk-, pk-, rk-, xf-, api- or key-
// (or with _), the start of the default API-key mask.
func hasKeyPrefix[T ~string | ~[]byte](b T) bool {
	for i := 2; i < len(b); i++ {
		if c := b[i]; c != '-' && c != '_' {
			continue
		}
		p, q := b[i-2], b[i-1]
		switch {
		case q == 'k' && (p == 's' || p == 'p' || p == 'r'), p == 'x' && q == 'f',
			i >= 3 && b[i-3] == 'a' && p == 'p' && q == 'i', i >= 3 && b[i-3] == 'k' && p == 'e' && q == 'y':
			return true
		}
	}
	return false
}

// NewPrivacy validates o.
func NewPrivacy(o PrivacyOptions) (*Privacy, error) {
	p := &Privacy{mode: o.Payloads, maxChars: o.MaxChars}
	if p.mode == "" {
		p.mode = PayloadsFull
	}
	if p.maxChars <= 0 {
		p.maxChars = 2000
	}
	valid := func(m string) bool { return m == PayloadsFull || m == PayloadsTruncated || m == PayloadsNone }
	if !valid(p.mode) {
		return nil, fmt.Errorf("payloads %q: want full, truncated or none", p.mode)
	}
	for _, r := range o.Models {
		pat, mode, ok := strings.Cut(r, "=")
		pat, mode = strings.ToLower(strings.TrimSpace(pat)), strings.TrimSpace(mode)
		if _, err := path.Match(pat, ""); !ok || pat == "" || err != nil || !valid(mode) {
			return nil, fmt.Errorf("payload rule %q: want PATTERN=full|truncated|none", r)
		}
		p.rules = append(p.rules, privRule{pat, mode})
	}
	for _, m := range o.Masks {
		re, err := regexp.Compile(m)
		if err != nil {
			return nil, fmt.Errorf("mask %q: %w", m, err)
		}
		p.masks = append(p.masks, mask{re: re, possible: defaultMaskFilters[m]})
	}
	return p, nil
}

// Mode returns the payload mode for model.
func (p *Privacy) Mode(model string) string {
	m := strings.ToLower(model)
	for _, r := range p.rules {
		if ok, _ := path.Match(r.pattern, m); ok {
			return r.mode
		}
	}
	return p.mode
}

// Apply drops, truncates and masks c's payload in place.
func (p *Privacy) Apply(c *schema.Call) {
	if p == nil {
		return
	}
	switch p.Mode(c.Model) {
	case PayloadsNone:
		c.InputText, c.OutputText, c.Input, c.Output = "", "", nil, nil
	case PayloadsTruncated:
		c.InputText, c.OutputText = truncateChars(c.InputText, p.maxChars), truncateChars(c.OutputText, p.maxChars)
		c.Input, c.Output = p.truncateJSON(c.Input, c.InputText), p.truncateJSON(c.Output, c.OutputText)
	}
	if len(p.masks) == 0 {
		return
	}
	c.InputText, c.OutputText = p.maskString(c.InputText), p.maskString(c.OutputText)
	c.Error = p.maskString(c.Error)
	c.Input, c.Output = p.maskJSON(c.Input), p.maskJSON(c.Output)
	for k, v := range c.Metadata {
		c.Metadata[k] = p.maskJSON(v)
	}
}

// truncateJSON keeps a structured payload that fits, else replaces it by
// its truncated text.
func (p *Privacy) truncateJSON(raw json.RawMessage, text string) json.RawMessage {
	if utf8.RuneCount(raw) <= p.maxChars {
		return raw
	}
	return mustJSON(map[string]any{"truncated": true, "text": text})
}

func truncateChars(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := 0
	for j := range s {
		if i == n {
			return s[:j] + "…"
		}
		i++
	}
	return s
}

func (p *Privacy) maskString(s string) string {
	for _, m := range p.masks {
		if s == "" || (m.possible != nil && !m.possible.str(s)) {
			continue
		}
		if m.re.MatchString(s) {
			s = m.re.ReplaceAllLiteralString(s, Mask)
		}
	}
	return s
}

// maskJSON masks the strings of a JSON value. Masking the raw text is the
// fast path; when that would break the JSON (a match across an escape or a
// number), the value is decoded and only its strings are masked.
func (p *Privacy) maskJSON(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 {
		return raw
	}
	out := []byte(raw)
	changed := false
	for _, m := range p.masks {
		if m.possible != nil && !m.possible.bytes(out) {
			continue
		}
		if m.re.Match(out) {
			out = m.re.ReplaceAllLiteral(out, []byte(Mask))
			changed = true
		}
	}
	if !changed {
		return raw
	}
	if json.Valid(out) && !bytes.Contains(out, []byte(`\`+Mask)) {
		return out
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // numbers stay exactly as they were
	if dec.Decode(&v) != nil {
		return mustJSON(Mask)
	}
	return mustJSON(p.maskValue(v))
}

func (p *Privacy) maskValue(v any) any {
	switch x := v.(type) {
	case string:
		return p.maskString(x)
	case []any:
		for i := range x {
			x[i] = p.maskValue(x[i])
		}
	case map[string]any:
		for k, e := range x {
			x[k] = p.maskValue(e)
		}
	}
	return v
}

type privRule struct{ pattern, mode string }
