package transform

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/ingest"
)

// DefaultDLQMaxAge is how long dead letters are kept unless configured.
const DefaultDLQMaxAge = 30 * 24 * time.Hour

// NormalizedStreamConfig is the JetStream definition of CALLPIPE_NORMALIZED:
// sized like CALLPIPE_CALLS, deduplicating call ids within o.DuplicateWindow.
func NormalizedStreamConfig(o ingest.StreamOptions) jetstream.StreamConfig {
	cfg := ingest.CallsStreamConfig(o)
	cfg.Name = NormalizedStream
	cfg.Description = "callpipe normalized calls (schema.Call), one per call id"
	cfg.Subjects = []string{NormalizedSubjectPrefix + ".>"}
	return cfg
}

// DeadLetterStreamConfig is the JetStream definition of CALLPIPE_DLQ. Dead
// letters are kept for maxAge (DefaultDLQMaxAge when 0), never dropped for size.
func DeadLetterStreamConfig(o ingest.StreamOptions, maxAge time.Duration) jetstream.StreamConfig {
	if maxAge <= 0 {
		maxAge = DefaultDLQMaxAge
	}
	return jetstream.StreamConfig{
		Name:        DeadLetterStream,
		Description: "callpipe dead letters: original bytes, reason in Callpipe-Error, stage in Callpipe-Stage",
		Subjects:    []string{DeadLetterSubjectPrefix + ".>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      maxAge,
		MaxBytes:    -1,
		Duplicates:  o.DuplicateWindow,
		Replicas:    o.Replicas,
	}
}

// EnsureStreams creates CALLPIPE_NORMALIZED and CALLPIPE_DLQ or updates them
// to the given settings. Safe to run from every replica.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o ingest.StreamOptions, dlqMaxAge time.Duration) error {
	for _, cfg := range []jetstream.StreamConfig{NormalizedStreamConfig(o), DeadLetterStreamConfig(o, dlqMaxAge)} {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) {
				return fmt.Errorf("provision stream %s: %s (code %d)", cfg.Name, apiErr.Description, apiErr.ErrorCode)
			}
			return fmt.Errorf("provision stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}
