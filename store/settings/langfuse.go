// Package settings holds what operators change at run time from the
// dashboard, as in the Xinference WebUI's tracing settings: the Langfuse
// host and keys. Settings live in a NATS KV bucket, so every replica of every
// role sees a change within moments and nothing else needs a database.
//
// Precedence: a value saved here wins over the configuration file and the
// environment, which remain the bootstrap (and the whole story when nothing
// was saved). Every reader reports which source is in effect.
package settings

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/internal/retry"
)

// Bucket is the NATS KV bucket of callpipe's run-time settings.
const Bucket = "callpipe_settings"

// LangfuseKey is the key of the Langfuse settings in Bucket.
const LangfuseKey = "langfuse"

// Sources of the Langfuse settings in effect.
const (
	SourceSaved  = "saved"  // saved from the dashboard or API (NATS KV)
	SourceConfig = "config" // configuration file, environment or flags
)

// Langfuse is where traces go.
type Langfuse struct {
	Host      string    `json:"host"`
	PublicKey string    `json:"public_key"`
	SecretKey string    `json:"secret_key"`
	ProjectID string    `json:"project_id,omitempty"` // expected project; empty: any
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// Configured reports whether traces can be sent at all.
func (l Langfuse) Configured() bool { return l.Host != "" && l.PublicKey != "" && l.SecretKey != "" }

// Validate names the first bad field.
func (l Langfuse) Validate() error {
	switch {
	case l.Host == "":
		return &FieldError{Field: "host", Reason: "required"}
	case !strings.HasPrefix(l.Host, "http://") && !strings.HasPrefix(l.Host, "https://"):
		return &FieldError{Field: "host", Reason: "must be an http:// or https:// URL"}
	case l.PublicKey == "":
		return &FieldError{Field: "public_key", Reason: "required"}
	case !strings.HasPrefix(l.PublicKey, "pk-lf-"):
		return &FieldError{Field: "public_key", Reason: `must start with "pk-lf-"`}
	case l.SecretKey == "":
		return &FieldError{Field: "secret_key", Reason: "required"}
	case !strings.HasPrefix(l.SecretKey, "sk-lf-"):
		return &FieldError{Field: "secret_key", Reason: `must start with "sk-lf-"`}
	}
	return nil
}

// FieldError is a bad settings field.
type FieldError struct{ Field, Reason string }

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// SecretHint shows enough of a secret to recognise it, never enough to use it.
func SecretHint(secret string) string {
	if secret == "" {
		return ""
	}
	if len(secret) <= 10 {
		return "…"
	}
	return secret[:6] + "…" + secret[len(secret)-4:]
}

// Store reads and writes settings in the KV bucket.
type Store struct {
	kv jetstream.KeyValue
}

// Open creates the bucket when missing (safe from every replica).
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: Bucket, Description: "callpipe run-time settings (Langfuse host and keys)", History: 5,
		Storage: jetstream.FileStorage, Replicas: max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("settings bucket %s: %w", Bucket, err)
	}
	return &Store{kv: kv}, nil
}

// OpenWhenReady opens the bucket as Open does, trying again while NATS does
// not answer (after 1s, doubling up to 15s; each try bounded by 10s): serve
// and the Langfuse stage start before NATS without failing. failed reports
// each failure and the wait before the next try. The error is ctx's when ctx
// ended first.
func OpenWhenReady(ctx context.Context, js jetstream.JetStream, replicas int, failed func(err error, wait time.Duration)) (*Store, error) {
	var store *Store
	err := retry.Until(ctx, retry.Backoff{First: time.Second, Max: 15 * time.Second, Attempt: 10 * time.Second},
		func(ctx context.Context) (err error) {
			store, err = Open(ctx, js, replicas)
			return err
		}, failed)
	return store, err
}

// Langfuse returns the saved settings; ok is false when none were saved.
func (s *Store) Langfuse(ctx context.Context) (l Langfuse, ok bool, err error) {
	e, err := s.kv.Get(ctx, LangfuseKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Langfuse{}, false, nil
	}
	if err != nil {
		return Langfuse{}, false, fmt.Errorf("settings get %s: %w", LangfuseKey, err)
	}
	if err := json.Unmarshal(e.Value(), &l); err != nil {
		return Langfuse{}, false, fmt.Errorf("settings %s: stored value is not valid: %w", LangfuseKey, err)
	}
	return l, true, nil
}

// PutLangfuse saves l (validated) as the settings in effect.
func (s *Store) PutLangfuse(ctx context.Context, l Langfuse) error {
	if err := l.Validate(); err != nil {
		return err
	}
	if l.UpdatedAt.IsZero() {
		l.UpdatedAt = time.Now().UTC()
	}
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, LangfuseKey, b); err != nil {
		return fmt.Errorf("settings put %s: %w", LangfuseKey, err)
	}
	return nil
}

// DeleteLangfuse forgets the saved settings: the configuration applies again.
func (s *Store) DeleteLangfuse(ctx context.Context) error {
	if err := s.kv.Delete(ctx, LangfuseKey); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("settings delete %s: %w", LangfuseKey, err)
	}
	return nil
}

// Effective is the Langfuse settings in effect and where they come from.
type Effective struct {
	Langfuse
	Source string
}

// WatchLangfuse calls fn with the settings in effect now and after every
// change (saved settings, or fallback when they are deleted), until ctx ends.
func (s *Store) WatchLangfuse(ctx context.Context, fallback Langfuse, fn func(Effective)) error {
	w, err := s.kv.Watch(ctx, LangfuseKey)
	if err != nil {
		return fmt.Errorf("settings watch %s: %w", LangfuseKey, err)
	}
	defer w.Stop()
	sentInitial := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("settings watch closed")
			}
			if e == nil { // end of the initial values
				if !sentInitial {
					fn(Effective{Langfuse: fallback, Source: SourceConfig})
					sentInitial = true
				}
				continue
			}
			sentInitial = true
			if e.Operation() != jetstream.KeyValuePut {
				fn(Effective{Langfuse: fallback, Source: SourceConfig})
				continue
			}
			var l Langfuse
			if err := json.Unmarshal(e.Value(), &l); err != nil {
				continue // a broken value is reported by readers, not applied
			}
			fn(Effective{Langfuse: l, Source: SourceSaved})
		}
	}
}
