// Package settings holds what operators change at run time from the
// dashboard, as in the Xinference WebUI's tracing settings: the Langfuse
// host and keys. Settings live in a NATS KV bucket, so every replica of every
// role sees a change within moments and nothing else needs a database.
//
// Precedence: a value saved here wins over the configuration file and the
// environment, which remain the bootstrap (and the whole story when nothing
// was saved). Every reader reports which source is in effect.
//
// The Langfuse secret key never reaches the bucket in clear: a Store seals it
// with a Sealer (AES-256-GCM under langfuse.settings_key, bound to the host
// and public key) and refuses to save a secret without one. Reading a sealed
// value without the key, or with another, is an error that names the key; a
// watcher gets it as Effective.Err, so that nothing is sent until it is fixed.
package settings

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
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

// Store reads and writes settings in the KV bucket. The Langfuse secret key
// is stored sealed (Sealer): without a sealer a Store reads settings that
// have no secret, or a plain one saved by an older release, but saves no
// secret.
type Store struct {
	kv     jetstream.KeyValue
	sealer *Sealer
}

// Option configures a Store.
type Option func(*Store)

// WithSealer seals the secret key on save and unseals it on read; nil is
// no sealer.
func WithSealer(s *Sealer) Option { return func(st *Store) { st.sealer = s } }

// Open creates the bucket when missing (safe from every replica). With a
// sealer, a secret saved in plain text by an older release is sealed in
// place.
func Open(ctx context.Context, js jetstream.JetStream, replicas int, opts ...Option) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: Bucket, Description: "callpipe run-time settings (Langfuse host and keys)", History: 5,
		Storage: jetstream.FileStorage, Replicas: max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("settings bucket %s: %w", Bucket, err)
	}
	s := &Store{kv: kv}
	for _, o := range opts {
		o(s)
	}
	if err := s.sealPlain(ctx, js); err != nil {
		return nil, err
	}
	return s, nil
}

// OpenExisting opens the bucket without creating it (readers that must not
// change NATS, such as doctor); jetstream.ErrBucketNotFound when missing.
func OpenExisting(ctx context.Context, js jetstream.JetStream, opts ...Option) (*Store, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		return nil, fmt.Errorf("settings bucket %s: %w", Bucket, err)
	}
	s := &Store{kv: kv}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// stored is the bucket's form of Langfuse: the secret only sealed.
type stored struct {
	Host      string `json:"host"`
	PublicKey string `json:"public_key"`
	// SecretKey is a plain secret saved before sealing existed; read, never
	// written.
	SecretKey string    `json:"secret_key,omitempty"`
	Sealed    string    `json:"secret_key_sealed,omitempty"`
	ProjectID string    `json:"project_id,omitempty"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// decode turns a bucket value into Langfuse, unsealing the secret.
func (s *Store) decode(raw []byte) (Langfuse, error) {
	var v stored
	if err := json.Unmarshal(raw, &v); err != nil {
		return Langfuse{}, fmt.Errorf("settings %s: stored value is not valid: %w", LangfuseKey, err)
	}
	l := Langfuse{Host: v.Host, PublicKey: v.PublicKey, SecretKey: v.SecretKey, ProjectID: v.ProjectID, UpdatedAt: v.UpdatedAt}
	if v.Sealed != "" {
		if s.sealer == nil {
			return Langfuse{}, fmt.Errorf("settings %s: the saved secret key is sealed: %w", LangfuseKey, ErrNoKey)
		}
		secret, err := s.sealer.Open(v.Sealed, v.Host, v.PublicKey)
		if err != nil {
			return Langfuse{}, fmt.Errorf("settings %s: %w", LangfuseKey, err)
		}
		l.SecretKey = secret
	}
	return l, nil
}

// encode is the bucket value of l, its secret sealed.
func (s *Store) encode(l Langfuse) ([]byte, error) {
	v := stored{Host: l.Host, PublicKey: l.PublicKey, ProjectID: l.ProjectID, UpdatedAt: l.UpdatedAt}
	if l.SecretKey != "" {
		if s.sealer == nil {
			return nil, fmt.Errorf("settings %s: saving a secret key: %w", LangfuseKey, ErrNoKey)
		}
		sealed, err := s.sealer.Seal(l.SecretKey, l.Host, l.PublicKey)
		if err != nil {
			return nil, err
		}
		v.Sealed = sealed
	}
	return json.Marshal(v)
}

// sealPlain seals a plain secret saved by an older release (only if the
// value did not change meanwhile), then drops the older revisions of the
// key, which may hold it in clear too.
func (s *Store) sealPlain(ctx context.Context, js jetstream.JetStream) error {
	if s.sealer == nil {
		return nil
	}
	e, err := s.kv.Get(ctx, LangfuseKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("settings get %s: %w", LangfuseKey, err)
	}
	var v stored
	if json.Unmarshal(e.Value(), &v) != nil || v.SecretKey == "" {
		return nil // sealed already, or broken: readers report it
	}
	l, err := s.decode(e.Value())
	if err != nil {
		return err
	}
	b, err := s.encode(l)
	if err != nil {
		return err
	}
	if _, err := s.kv.Update(ctx, LangfuseKey, b, e.Revision()); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil // changed meanwhile: whoever wrote it sealed it
		}
		return fmt.Errorf("settings %s: sealing the plain secret saved by an older release: %w", LangfuseKey, err)
	}
	stream, err := js.Stream(ctx, "KV_"+Bucket)
	if err == nil {
		err = stream.Purge(ctx, jetstream.WithPurgeSubject("$KV."+Bucket+"."+LangfuseKey), jetstream.WithPurgeKeep(1))
	}
	if err != nil {
		return fmt.Errorf("settings %s: dropping the revisions that hold the plain secret: %w", LangfuseKey, err)
	}
	return nil
}

// OpenWhenReady opens the bucket as Open does, trying again while NATS does
// not answer (after 1s, doubling up to 15s; each try bounded by 10s): serve
// and the Langfuse stage start before NATS without failing. failed reports
// each failure and the wait before the next try. The error is ctx's when ctx
// ended first.
func OpenWhenReady(ctx context.Context, js jetstream.JetStream, replicas int, failed func(err error, wait time.Duration), opts ...Option) (*Store, error) {
	var store *Store
	err := retry.Until(ctx, retry.Backoff{First: time.Second, Max: 15 * time.Second, Attempt: 10 * time.Second},
		func(ctx context.Context) (err error) {
			store, err = Open(ctx, js, replicas, opts...)
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
	l, err = s.decode(e.Value())
	if err != nil {
		return Langfuse{}, false, err
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
	b, err := s.encode(l)
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
// Err is set (and Langfuse empty) when saved settings exist but cannot be
// read, e.g. their secret is sealed under another key: nothing should be
// sent then, rather than fall back to the configuration.
type Effective struct {
	Langfuse
	Source string
	Err    error
}

// WatchLangfuse calls fn with the settings in effect now and after every
// change (saved settings, or fallback when they are deleted), until ctx ends.
func (s *Store) WatchLangfuse(ctx context.Context, fallback Langfuse, fn func(Effective)) error {
	sentInitial := false
	err := bus.WatchKey(ctx, s.kv, LangfuseKey, func(e jetstream.KeyValueEntry) {
		if e == nil { // end of the initial values
			if !sentInitial {
				fn(Effective{Langfuse: fallback, Source: SourceConfig})
				sentInitial = true
			}
			return
		}
		sentInitial = true
		if e.Operation() != jetstream.KeyValuePut {
			fn(Effective{Langfuse: fallback, Source: SourceConfig})
			return
		}
		l, err := s.decode(e.Value())
		if err != nil {
			fn(Effective{Source: SourceSaved, Err: err})
			return
		}
		fn(Effective{Langfuse: l, Source: SourceSaved})
	})
	if err != nil {
		return fmt.Errorf("settings: %w", err)
	}
	return nil
}
