package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/internal/retry"
)

// DefaultDLQMaxAge is how long dead letters are kept unless configured.
const DefaultDLQMaxAge = 30 * 24 * time.Hour

// StreamOptions size the streams: CALLPIPE_CALLS and CALLPIPE_NORMALIZED
// alike, CALLPIPE_DLQ by age only.
type StreamOptions struct {
	MaxAge          time.Duration
	MaxBytes        int64 // 0: unlimited
	DuplicateWindow time.Duration
	Replicas        int
	DLQMaxAge       time.Duration // 0: DefaultDLQMaxAge
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

// NormalizedStreamConfig is the JetStream definition of CALLPIPE_NORMALIZED:
// sized like CALLPIPE_CALLS, deduplicating call ids within o.DuplicateWindow.
func NormalizedStreamConfig(o StreamOptions) jetstream.StreamConfig {
	cfg := CallsStreamConfig(o)
	cfg.Name = NormalizedStream
	cfg.Description = "callpipe normalized calls (schema.Call), one or a batch per message"
	cfg.Subjects = []string{NormalizedSubjectPrefix + ".>"}
	return cfg
}

// DeadLetterStreamConfig is the JetStream definition of CALLPIPE_DLQ. Dead
// letters are kept for o.DLQMaxAge, never dropped for size.
func DeadLetterStreamConfig(o StreamOptions) jetstream.StreamConfig {
	maxAge := defaults.IfNotPositive(o.DLQMaxAge, DefaultDLQMaxAge)
	return jetstream.StreamConfig{
		Name:        DeadLetterStream,
		Description: "callpipe dead letters: original bytes, reason in " + HeaderError + ", stage in " + HeaderStage,
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

// EnsureCallsStream creates CALLPIPE_CALLS or updates it to o, so that
// changing a setting takes effect instead of failing: what producers
// (collect, proxy) need before they publish. Safe to run from every replica.
//
// On nats-server 2.14 and later the stream also allows fast batch publishing
// (allow_batched, ADR-50), which replay uses; older servers reject that field,
// so they get the stream without it and replay publishes call by call.
func EnsureCallsStream(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	cfg := CallsStreamConfig(o)
	cfg.AllowBatchPublish = BatchPublishSupported(js.Conn().ConnectedServerVersion())
	return ensure(ctx, js, cfg)
}

// EnsureStreams creates or updates every stream of the pipeline (Streams).
// Safe to run from every replica.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	if err := EnsureCallsStream(ctx, js, o); err != nil {
		return err
	}
	for _, cfg := range []jetstream.StreamConfig{NormalizedStreamConfig(o), DeadLetterStreamConfig(o)} {
		if err := ensure(ctx, js, cfg); err != nil {
			return err
		}
	}
	return nil
}

// jsClusterNotAvailable is JetStream's "temporarily unavailable": a
// cluster without a meta leader yet.
const jsClusterNotAvailable jetstream.ErrorCode = 10008

// provisionBackoff paces ProvisionWhenReady. One attempt reads each stream
// and creates or updates those that differ; on a loaded 3-server cluster an
// update goes through the meta leader and the stream's group, which can
// take seconds.
var provisionBackoff = retry.Backoff{First: time.Second, Max: 15 * time.Second, Attempt: 15 * time.Second}

// ProvisionWhenReady runs ensure (EnsureStreams or EnsureCallsStream on
// some js) until it succeeds, JetStream refuses the configuration, or ctx
// ends. JetStream not answering in time (servers still starting, a cluster
// electing its meta leader, a busy meta leader) is retried, each failure
// logged as a warning: a stage waits for NATS, unready, instead of exiting,
// so the order in which things start does not matter. A refused
// configuration (an API error other than "temporarily unavailable" or a lost
// race to create the stream) is returned at once: no retry changes it.
func ProvisionWhenReady(ctx context.Context, log *slog.Logger, ensure func(context.Context) error) error {
	return retry.Until(ctx, provisionBackoff, ensure, retry.Reporting("jetstream streams", nil, log))
}

// ensure creates the stream or updates it to cfg. A stream that already has
// cfg's settings is left alone: a create-or-update of an unchanged stream
// still goes through a cluster's meta leader and the stream's group, and
// every replica of every stage provisions at start.
func ensure(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	if st, err := js.Stream(ctx, cfg.Name); err == nil && hasSettings(st.CachedInfo().Config, cfg) {
		return nil
	}
	if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("provision stream %s: %w", cfg.Name, refusal(err))
	}
	return nil
}

// refusal is err as ProvisionWhenReady and ConsumerWhenReady see it: an
// answer of JetStream's API is its description and code, marked
// retry.Permanent unless another attempt may succeed ("temporarily
// unavailable", or a create that lost a race with another replica's: the
// next attempt finds what the other made). Anything else (a timeout, no
// responders) is left to retry.
func refusal(err error) error {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return err
	}
	answer := fmt.Errorf("%s (code %d)", apiErr.Description, apiErr.ErrorCode)
	switch apiErr.ErrorCode {
	case jsClusterNotAvailable, jetstream.JSErrCodeStreamNameInUse:
		return answer
	}
	return retry.Permanent(answer)
}

// ConsumerWhenReady creates or updates the durable consumer cfg on stream,
// waiting for JetStream as ProvisionWhenReady does: retried (and logged)
// while it does not answer, returned at once when it refuses cfg.
func ConsumerWhenReady(ctx context.Context, log *slog.Logger, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	var cons jetstream.Consumer
	err := retry.Until(ctx, provisionBackoff, func(ctx context.Context) (err error) {
		if cons, err = js.CreateOrUpdateConsumer(ctx, stream, cfg); err != nil {
			return refusal(err)
		}
		return nil
	}, retry.Reporting("jetstream consumer "+cfg.Durable, nil, log))
	return cons, err
}

// hasSettings reports whether a stream's config (as the server reports it,
// its defaults filled in) has every setting provisioning makes.
func hasSettings(have, want jetstream.StreamConfig) bool {
	return have.Description == want.Description && slices.Equal(have.Subjects, want.Subjects) &&
		have.Storage == want.Storage && have.Retention == want.Retention && have.Discard == want.Discard &&
		have.MaxAge == want.MaxAge && have.MaxBytes == want.MaxBytes && have.Duplicates == want.Duplicates &&
		have.Replicas == want.Replicas && have.AllowBatchPublish == want.AllowBatchPublish
}

// BatchPublishSupported reports whether a nats-server of version (as in the
// INFO of the connection, "2.14.0", "v2.15.2-beta") accepts allow_batched.
// An unknown version counts as unsupported: a missing fast path costs speed,
// a rejected stream config stops the pipeline.
func BatchPublishSupported(version string) bool {
	major, minor, ok := serverVersion(version)
	return ok && (major > 2 || major == 2 && minor >= 14)
}

func serverVersion(v string) (major, minor int, ok bool) {
	v = strings.TrimPrefix(v, "v")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	minorStr, _, _ := strings.Cut(parts[1], "-")
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(minorStr)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return major, minor, true
}
