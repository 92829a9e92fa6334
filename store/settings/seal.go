package settings

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// KeyConfig names the configuration key of the settings key in messages.
const KeyConfig = "langfuse.settings_key (CALLPIPE_LANGFUSE_SETTINGS_KEY)"

// sealPrefix starts every sealed secret: format version 1 is
// "cpseal1.<key id>.<base64url(nonce || AES-256-GCM ciphertext)>".
const sealPrefix = "cpseal1."

// ErrNoKey means a secret must be sealed or unsealed but no settings key is
// configured.
var ErrNoKey = errors.New("no settings key: set " + KeyConfig + " to 32 random bytes, base64 (openssl rand -base64 32)")

// Sealer encrypts the Langfuse secret key before it is stored in the NATS
// KV bucket, so that whoever reads the bucket (a NATS user with access to
// it, a copy of the JetStream store, a backup) learns nothing of the
// secret without the key, which lives only in callpipe's configuration.
//
// The ciphertext is bound to the host and public key it was saved with
// (additional authenticated data): a bucket writer who changes the host
// cannot make callpipe send the sealed secret somewhere else.
type Sealer struct {
	aead cipher.AEAD
	id   string
}

// ParseKey reads a settings key: 32 bytes as standard or URL base64 (with
// or without padding) or as 64 hex digits.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if len(s) == 64 {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != 32 {
				return nil, fmt.Errorf("decodes to %d bytes, want 32", len(b))
			}
			return b, nil
		}
	}
	return nil, errors.New("must be 32 bytes as base64 or 64 hex digits (generate one: openssl rand -base64 32)")
}

// NewSealer returns a Sealer for a 32-byte key (AES-256-GCM).
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("settings key: %d bytes, want 32", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("settings key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("settings key: %w", err)
	}
	sum := sha256.Sum256(append([]byte("callpipe settings key id\x00"), key...))
	return &Sealer{aead: aead, id: hex.EncodeToString(sum[:4])}, nil
}

// SealerFromConfig is NewSealer(ParseKey(s)); nil without error when s is
// empty (no key configured).
func SealerFromConfig(s string) (*Sealer, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	key, err := ParseKey(s)
	if err != nil {
		return nil, err
	}
	return NewSealer(key)
}

// KeyID identifies the key without revealing it (a hash prefix), so that an
// error can say that a value was sealed under another key.
func (s *Sealer) KeyID() string { return s.id }

func aad(host, publicKey string) []byte {
	return []byte("callpipe/settings/langfuse\x00" + host + "\x00" + publicKey)
}

// Seal encrypts secret for the given host and public key.
func (s *Sealer) Seal(secret, host, publicKey string) (string, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("seal: %w", err)
	}
	ct := s.aead.Seal(nonce, nonce, []byte(secret), aad(host, publicKey))
	return sealPrefix + s.id + "." + base64.RawURLEncoding.EncodeToString(ct), nil
}

// Open decrypts a sealed secret saved for host and publicKey. The error says
// whether the value was sealed under another key or was altered.
func (s *Sealer) Open(sealed, host, publicKey string) (string, error) {
	rest, ok := strings.CutPrefix(sealed, sealPrefix)
	id, body, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 {
		return "", errors.New("sealed secret: not in the cpseal1 format")
	}
	if id != s.id {
		return "", fmt.Errorf("sealed secret: sealed under settings key id %s, but %s has id %s: configure the key it was saved with, or save the Langfuse settings again", id, KeyConfig, s.id)
	}
	ct, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil || len(ct) < s.aead.NonceSize()+s.aead.Overhead() {
		return "", errors.New("sealed secret: damaged (bad encoding or length)")
	}
	n := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, ct[:n], ct[n:], aad(host, publicKey))
	if err != nil {
		return "", errors.New("sealed secret: authentication failed: the stored value was altered (host or public key changed outside callpipe?); save the Langfuse settings again")
	}
	return string(plain), nil
}
