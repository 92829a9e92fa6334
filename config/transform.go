package config

import (
	"path"
	"regexp"
	"strconv"
	"strings"
)

// validTokenizerModels checks transform.tokenizer_models entries (PATTERN=ENCODING).
func validTokenizerModels(rules []string) error {
	for _, r := range rules {
		pat, enc, ok := strings.Cut(r, "=")
		_, perr := path.Match(strings.TrimSpace(pat), "")
		if !ok || strings.TrimSpace(pat) == "" || perr != nil || !oneOf(strings.TrimSpace(enc), "o200k_base", "cl100k_base") {
			return &Error{Key: "transform.tokenizer_models", Value: r, Allowed: "want PATTERN=ENCODING, a glob and o200k_base or cl100k_base"}
		}
	}
	return nil
}

// validPrices checks transform.prices entries (PATTERN=INPUT/OUTPUT, USD per 1M tokens).
func validPrices(entries []string) error {
	for _, e := range entries {
		pat, prices, ok := strings.Cut(e, "=")
		in, out, ok2 := strings.Cut(prices, "/")
		_, perr := path.Match(strings.TrimSpace(pat), "")
		pi, err1 := strconv.ParseFloat(strings.TrimSpace(in), 64)
		po, err2 := strconv.ParseFloat(strings.TrimSpace(out), 64)
		if !ok || !ok2 || strings.TrimSpace(pat) == "" || perr != nil || err1 != nil || err2 != nil || pi < 0 || po < 0 || pi != pi || po != po {
			return &Error{Key: "transform.prices", Value: e, Allowed: "want PATTERN=INPUT/OUTPUT with non-negative USD per 1M tokens, e.g. qwen2.5-*=0.5/1.5"}
		}
	}
	return nil
}

// validPayloadRules checks capture.payloads_models or capture.payloads_users
// entries (PATTERN=MODE); key names the one at fault.
func validPayloadRules(key string, rules []string) error {
	for _, r := range rules {
		pat, mode, ok := strings.Cut(r, "=")
		_, perr := path.Match(strings.TrimSpace(pat), "")
		if !ok || strings.TrimSpace(pat) == "" || perr != nil || !oneOf(strings.TrimSpace(mode), "full", "truncated", "none") {
			return &Error{Key: key, Value: r, Allowed: "want PATTERN=full|truncated|none"}
		}
	}
	return nil
}

// validMasks checks capture.masks (RE2 regular expressions).
func validMasks(masks []string) error {
	for _, m := range masks {
		if _, err := regexp.Compile(m); err != nil {
			return &Error{Key: "capture.masks", Value: m, Allowed: "must be an RE2 regular expression: " + err.Error()}
		}
	}
	return nil
}
