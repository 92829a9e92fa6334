package main

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/schema/capture"
	"github.com/callpipe/callpipe/transform"
)

// capturePolicy is the capture section as a policy; count counts the
// tokens of an event whose payload it drops (nil: none).
func capturePolicy(cfg *config.Config, count capture.Counter) (*capture.Policy, error) {
	c := cfg.Capture
	masks := c.Masks
	if c.DefaultMasks {
		masks = append(append([]string(nil), capture.DefaultMasks...), masks...)
	}
	p, err := capture.New(capture.Options{Payloads: c.Payloads, Models: c.PayloadsModels, Users: c.PayloadsUsers,
		MaxChars: c.MaxChars, Masks: masks, Count: count})
	if err != nil {
		return nil, fmt.Errorf("%w: capture: %w", errConfig, err)
	}
	return p, nil
}

// edgeCapturePolicy is the policy of the proxy and the collector. When it
// may change a payload it counts tokens with the tokenizer normalize uses
// (transform.tokenizer) before it does. The tokenizer is loaded on the first
// count (~0.3 s, ~15 MB per encoding): an edge whose calls all report usage
// and need no redaction never loads it.
func edgeCapturePolicy(cfg *config.Config, log *slog.Logger) (*capture.Policy, error) {
	p, err := capturePolicy(cfg, nil)
	if err != nil || !p.Redacts() {
		return p, err
	}
	var (
		once sync.Once
		n    *transform.Normalizer
	)
	count := func(ev *schema.Event) (int64, int64, bool) {
		once.Do(func() {
			tok, err := transform.NewTokenizer(cfg.Transform.Tokenizer, cfg.Transform.TokenizerModels)
			if err != nil { // not expected: config validation checked the encodings
				log.Error("transform.tokenizer: cannot load; calls redacted at the edge keep only reported usage", "err", err)
			}
			n = &transform.Normalizer{Tokenizer: tok}
		})
		return n.CountUsage(ev)
	}
	return capturePolicy(cfg, count)
}
