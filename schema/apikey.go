package schema

import (
	"crypto/sha256"
	"encoding/hex"
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
	runes := 0
	for range key {
		runes++
	}
	n := min(APIKeyPrefixChars, runes/2)
	i := 0
	for j := range key {
		if i == n {
			return key[:j]
		}
		i++
	}
	return key
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
