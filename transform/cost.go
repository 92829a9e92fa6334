package transform

import (
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// Price is what a model costs per million tokens, in USD.
type Price struct {
	Pattern       string  // path.Match glob over the lower-cased model name (a row's name when re is set)
	InputPerMTok  float64 // USD per 1,000,000 input tokens
	OutputPerMTok float64 // USD per 1,000,000 output tokens

	re       *regexp.Regexp // a ModelPrice row's matchPattern, over the model name as sent
	unpriced bool           // a row without prices: its models get no cost
}

func (p *Price) matches(model, lower string) bool {
	if p.re != nil {
		return p.re.MatchString(model)
	}
	ok, _ := path.Match(p.Pattern, lower)
	return ok
}

// PriceTable maps model names to prices; the first matching pattern wins.
type PriceTable []Price

// ParsePrices reads entries "PATTERN=INPUT/OUTPUT" (USD per million input and
// output tokens), e.g. "qwen2.5-*=0.5/1.5" or "bge-*=0.02/0".
func ParsePrices(entries []string) (PriceTable, error) {
	var pt PriceTable
	for _, e := range entries {
		pat, prices, ok := strings.Cut(e, "=")
		pat = strings.ToLower(strings.TrimSpace(pat))
		in, out, ok2 := strings.Cut(prices, "/")
		if !ok || !ok2 || pat == "" {
			return nil, fmt.Errorf("price %q: want PATTERN=INPUT/OUTPUT (USD per 1M tokens)", e)
		}
		if _, err := path.Match(pat, ""); err != nil {
			return nil, fmt.Errorf("price %q: bad pattern: %w", e, err)
		}
		pi, err1 := strconv.ParseFloat(strings.TrimSpace(in), 64)
		po, err2 := strconv.ParseFloat(strings.TrimSpace(out), 64)
		if err1 != nil || err2 != nil || pi < 0 || po < 0 || pi != pi || po != po {
			return nil, fmt.Errorf("price %q: prices must be non-negative numbers", e)
		}
		pt = append(pt, Price{Pattern: pat, InputPerMTok: pi, OutputPerMTok: po})
	}
	return pt, nil
}

// Cost returns the cost of a call in USD, or nil when model has no price
// (unknown models get no cost, not zero).
func (pt PriceTable) Cost(model string, inputTokens, outputTokens int64) *float64 {
	if c, ok := pt.costOf(model, inputTokens, outputTokens); ok {
		return &c
	}
	return nil
}

// costOf is Cost without the allocation: ok is false when model has no price.
func (pt PriceTable) costOf(model string, inputTokens, outputTokens int64) (float64, bool) {
	if len(pt) == 0 {
		return 0, false
	}
	m := strings.ToLower(model)
	for _, p := range pt {
		if p.matches(model, m) {
			if p.unpriced {
				return 0, false
			}
			return (float64(inputTokens)*p.InputPerMTok + float64(outputTokens)*p.OutputPerMTok) / 1e6, true
		}
	}
	return 0, false
}
