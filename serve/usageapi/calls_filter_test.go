package usageapi

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestCallsFilters: user, model, source, batch_id and status reach the call list's
// spec; a source other than online or batch is refused naming it.
func TestCallsFilters(t *testing.T) {
	st := &fakeStore{}
	s := newTestServer(t, st, Options{})
	if code, body := get(t, s, "/api/v1/calls?user=o'brien&model=m&source=batch&batch_id=b-7&status=429&limit=7"); code != http.StatusOK {
		t.Fatalf("%d %v", code, body)
	}
	got := st.list[0]
	if got.User != "o'brien" || got.Model != "m" || got.Source != "batch" || got.BatchID != "b-7" || got.Status != callsdb.CallStatus("429") || got.Limit != 7 {
		t.Errorf("spec %+v", got)
	}
	code, body := get(t, s, "/api/v1/calls?source=nightly")
	if code != http.StatusBadRequest || body["param"] != "source" || !strings.Contains(body["error"].(string), "online or batch") {
		t.Errorf("source=nightly: %d %v", code, body)
	}
}

// TestBatchIDWithOnlineRefused: a batch_id filter with source=online can
// match nothing; the call list and usage refuse it naming batch_id.
func TestBatchIDWithOnlineRefused(t *testing.T) {
	s := newTestServer(t, &fakeStore{}, Options{})
	for _, target := range []string{"/api/v1/calls?source=online&batch_id=b", "/api/v1/usage?source=online&batch_id=b"} {
		code, body := get(t, s, target)
		if code != http.StatusBadRequest || body["param"] != "batch_id" || !strings.Contains(body["error"].(string), "only batch calls have a batch id") {
			t.Errorf("%s: %d %v", target, code, body)
		}
	}
}

// TestBatches: the range and limit reach the store; the answer lists the
// store's batches with times in the asked zone; unknown parameters are refused.
func TestBatches(t *testing.T) {
	first := time.Date(2026, 3, 7, 10, 0, 0, 0, time.UTC)
	st := &fakeStore{batches: []callsdb.BatchSummary{{BatchID: "nightly", Calls: 3, Errors: 1, TotalTokens: 90,
		FirstStart: first, LastEnd: first.Add(90 * time.Second), DurationMS: 90000, Models: []string{"m"}}}}
	s := newTestServer(t, st, Options{})
	code, body := get(t, s, "/api/v1/batches?from=2026-03-07&to=2026-03-08&tz=Asia/Tokyo&limit=20")
	if code != http.StatusOK {
		t.Fatalf("%d %v", code, body)
	}
	spec := st.batchSpecs[0]
	if spec.Limit != 20 || !spec.From.Equal(time.Date(2026, 3, 6, 15, 0, 0, 0, time.UTC)) || !spec.To.Equal(time.Date(2026, 3, 8, 15, 0, 0, 0, time.UTC)) {
		t.Errorf("spec %+v", spec)
	}
	b := body["batches"].([]any)[0].(map[string]any)
	if b["batch_id"] != "nightly" || b["calls"].(float64) != 3 || b["errors"].(float64) != 1 || b["duration_ms"].(float64) != 90000 ||
		b["first_start"] != "2026-03-07T19:00:00+09:00" {
		t.Errorf("batch %v", b)
	}
	if code, body := get(t, s, "/api/v1/batches?source=batch"); code != http.StatusBadRequest || body["param"] != "source" {
		t.Errorf("unknown param: %d %v", code, body)
	}
}
