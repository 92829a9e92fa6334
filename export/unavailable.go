package export

import (
	"encoding/json"
	"net/http"
)

// Unavailable answers the jobs API with 503 naming reason: `callpipe serve`
// mounts it when S3 or Redis is not configured, and still serves usage.
func Unavailable(reason string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "export jobs are unavailable: " + reason})
	})
}
