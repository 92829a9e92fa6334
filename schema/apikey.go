package schema

import (
	"crypto/sha256"
	"encoding/hex"
	"unicode/utf8"
)

// HashAPIKey returns the lowercase hex SHA-256 of key: the form in which API
// keys are stored and looked up (Event.APIKeyHash, the Redis user lookup).
func HashAPIKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// APIKeyPrefix returns the part of key kept in clear for display: its first
// 7 characters (Xinference keys are "xf-" and 48 alphanumerics; its audit
// log keeps 7), but never more than half of a short key.
func APIKeyPrefix(key string) string {
	return ClipChars(key, min(APIKeyPrefixChars, utf8.RuneCountInString(key)/2))
}

// RedactAPIKey replaces a clear APIKey with APIKeyHash (HashAPIKey) and
// APIKeyPrefix (APIKeyPrefix), and clears APIKey. Ingest calls it before an
// event goes anywhere. It does nothing if APIKey is empty.
func (e *Event) RedactAPIKey() {
	if e.APIKey == "" {
		return
	}
	e.APIKeyHash = HashAPIKey(e.APIKey)
	e.APIKeyPrefix = APIKeyPrefix(e.APIKey)
	e.APIKey = ""
}
