package config

import (
	"strings"
	"testing"
)

func TestTransformSettings(t *testing.T) {
	c, err := Load(Sources{File: writeFile(t, "transform:\n  prices: [\"qwen2.5-*=0.5/1.5\"]\n"), Getenv: env(map[string]string{
		"CALLPIPE_TRANSFORM_TOKENIZER_MODELS": "gpt-4*=cl100k_base,llama*=o200k_base",
		"CALLPIPE_TRANSFORM_ACK_WAIT":         "5s",
	})})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Transform.Prices) != 1 || len(c.Transform.TokenizerModels) != 2 || c.Transform.AckWait.String() != "5s" {
		t.Fatalf("%+v", c.Transform)
	}
	for name, tc := range map[string]struct{ env, key string }{
		"price format":    {"CALLPIPE_TRANSFORM_PRICES=qwen:1", "transform.prices"},
		"negative price":  {"CALLPIPE_TRANSFORM_PRICES=q=-1/2", "transform.prices"},
		"bad pattern":     {"CALLPIPE_TRANSFORM_PRICES=[=1/2", "transform.prices"},
		"encoding":        {"CALLPIPE_TRANSFORM_TOKENIZER=p50k_base", "transform.tokenizer"},
		"model encoding":  {"CALLPIPE_TRANSFORM_TOKENIZER_MODELS=x=gpt2", "transform.tokenizer_models"},
		"subject":         {"CALLPIPE_TRANSFORM_SUBJECT=other.>", "transform.subject"},
		"batch":           {"CALLPIPE_TRANSFORM_BATCH=0", "transform.batch"},
		"ack wait":        {"CALLPIPE_TRANSFORM_ACK_WAIT=10ms", "transform.ack_wait"},
		"consumer":        {"CALLPIPE_TRANSFORM_CONSUMER=a.b", "transform.consumer"},
		"user cache ttl":  {"CALLPIPE_TRANSFORM_USER_CACHE_TTL=0s", "transform.user_cache_ttl"},
		"max ack pending": {"CALLPIPE_TRANSFORM_MAX_ACK_PENDING=1", "transform.max_ack_pending"},
		"payloads":        {"CALLPIPE_CAPTURE_PAYLOADS=some", "capture.payloads"},
		"payload models":  {"CALLPIPE_CAPTURE_PAYLOADS_MODELS=x=all", "capture.payloads_models"},
		"masks":           {"CALLPIPE_CAPTURE_MASKS=(", "capture.masks"},
		"max chars":       {"CALLPIPE_CAPTURE_MAX_CHARS=0", "capture.max_chars"},
	} {
		k, v, _ := strings.Cut(tc.env, "=")
		_, err := Load(Sources{File: writeFile(t, ""), Getenv: env(map[string]string{k: v})})
		if err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%s: error %v does not name %s", name, err, tc.key)
		}
	}
}
