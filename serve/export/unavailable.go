package export

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"
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

// JobsAPI is the jobs API `callpipe serve` mounts: NewHandler over runner,
// or Unavailable naming err when the runner could not be built (S3 or Redis
// missing; logged). stop stops the running jobs (each records its
// checkpoint; at most 30 s) and then calls release, which frees the
// runner's connections; it does nothing when err is set.
func JobsAPI(runner *Runner, release func(), err error, log *slog.Logger) (api http.Handler, stop func()) {
	if err != nil {
		log.Warn("export jobs API unavailable", "err", err)
		return Unavailable(err.Error()), func() {}
	}
	h := NewHandler(runner, log)
	return h, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			log.Error("export jobs shutdown", "err", err)
		}
		release()
	}
}
