package usageapi

import (
	"net/http"
	"strings"
	"testing"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestCallsFilters: user, model, source and status reach the call list's
// spec; a source other than online or batch is refused naming it.
func TestCallsFilters(t *testing.T) {
	st := &fakeStore{}
	s := newTestServer(t, st, Options{})
	if code, body := get(t, s, "/api/v1/calls?user=o'brien&model=m&source=batch&status=429&limit=7"); code != http.StatusOK {
		t.Fatalf("%d %v", code, body)
	}
	got := st.list[0]
	if got.User != "o'brien" || got.Model != "m" || got.Source != "batch" || got.Status != callsdb.CallStatus("429") || got.Limit != 7 {
		t.Errorf("spec %+v", got)
	}
	code, body := get(t, s, "/api/v1/calls?source=nightly")
	if code != http.StatusBadRequest || body["param"] != "source" || !strings.Contains(body["error"].(string), "online or batch") {
		t.Errorf("source=nightly: %d %v", code, body)
	}
}
