package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The raw call stream: every accepted event, as received (API key hashed).
const (
	CallsStream        = "CALLPIPE_CALLS"
	CallsSubjectPrefix = "callpipe.calls"
)

// StreamOptions size the CALLPIPE_CALLS stream.
type StreamOptions struct {
	MaxAge          time.Duration
	MaxBytes        int64 // 0: unlimited
	DuplicateWindow time.Duration
	Replicas        int
}

// DefaultStreamOptions keeps a week of calls and deduplicates ids for 10 minutes.
func DefaultStreamOptions() StreamOptions {
	return StreamOptions{MaxAge: 7 * 24 * time.Hour, DuplicateWindow: 10 * time.Minute, Replicas: 1}
}

// CallsStreamConfig is the JetStream definition of CALLPIPE_CALLS.
func CallsStreamConfig(o StreamOptions) jetstream.StreamConfig {
	maxBytes := o.MaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	return jetstream.StreamConfig{
		Name:        CallsStream,
		Description: "callpipe raw call events (schema v1)",
		Subjects:    []string{CallsSubjectPrefix + ".>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      o.MaxAge,
		MaxBytes:    maxBytes,
		Duplicates:  o.DuplicateWindow,
		Replicas:    o.Replicas,
	}
}

// EnsureStreams creates CALLPIPE_CALLS or updates it to o, so that changing a
// setting takes effect instead of failing. Safe to run from every replica.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	cfg := CallsStreamConfig(o)
	_, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) {
			return fmt.Errorf("provision stream %s: %s (code %d)", cfg.Name, apiErr.Description, apiErr.ErrorCode)
		}
		return fmt.Errorf("provision stream %s: %w", cfg.Name, err)
	}
	return nil
}
