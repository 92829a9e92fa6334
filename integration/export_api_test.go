package integration

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/serve/export"
)

// TestExportAPI drives POST /api/v1/exports and GET /api/v1/exports/{id}
// (export.NewHandler over real ClickHouse, MinIO and Redis): bad bodies get
// 400 naming the field, a good one 202 and a job id whose state goes to
// succeeded with the manifest, whose objects read back as the source rows;
// posting it again answers 200 succeeded.
func TestExportAPI(t *testing.T) {
	e := newExportEnv(t, 500)
	h := export.NewHandler(e.runner(t, export.Config{PartBytes: 256 << 10, PageRows: 100}), nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}()
	from, to := exportBase.Add(3*time.Hour), exportBase.Add(40*time.Hour)
	dest := "s3://" + e.bucket + "/api"
	body := func(over map[string]any) string {
		m := map[string]any{"from": from.Format(time.RFC3339), "to": to.Format(time.RFC3339), "format": "ndjson", "dest": dest}
		for k, v := range over {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	post := func(b string) (int, map[string]any) {
		resp, err := http.Post(srv.URL+"/api/v1/exports", "application/json", strings.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		raw, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("POST answer %d is not JSON: %s", resp.StatusCode, raw)
		}
		return resp.StatusCode, out
	}

	for _, tc := range []struct {
		body, field string
	}{
		{body(map[string]any{"dest": nil}), "dest"},
		{body(map[string]any{"dest": "http://x/y"}), "dest"},
		{body(map[string]any{"format": "xml"}), "format"},
		{body(map[string]any{"from": "yesterday"}), "from"},
		{body(map[string]any{"to": from.Add(-time.Hour).Format(time.RFC3339)}), "to"},
		{body(map[string]any{"source": "kafka"}), "source"},
		{body(map[string]any{"job_id": "../etc"}), "job_id"},
		{body(map[string]any{"frm": "x"}), "frm"},
		{`{"from": 5}`, "from"},
	} {
		code, out := post(tc.body)
		if code != http.StatusBadRequest || out["field"] != tc.field || !strings.Contains(out["error"].(string), tc.field) {
			t.Errorf("POST %s: %d %v; want 400 naming %s", tc.body, code, out, tc.field)
		}
	}

	code, out := post(body(nil))
	id, _ := out["id"].(string)
	if code != http.StatusAccepted || id == "" || out["status_url"] != "/api/v1/exports/"+id {
		t.Fatalf("POST: %d %v; want 202 with the job id", code, out)
	}
	var st export.Status
	testkit.WaitFor(t, 2*time.Minute, "job succeeded", func() (bool, string) {
		resp, err := http.Get(srv.URL + "/api/v1/exports/" + id)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		st = export.Status{}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &st) != nil {
			return false, string(raw)
		}
		if st.State == export.StateFailed {
			t.Fatalf("job failed: %s\n%s", st.Error, raw)
		}
		return st.State == export.StateSucceeded, string(raw)
	})
	want := wantRows(e.calls, from, to, "", "")
	if st.Manifest == nil || st.Manifest.Rows != int64(len(want)) || st.Progress.Rows != int64(len(want)) || st.Parts != len(st.Manifest.Parts) {
		t.Fatalf("status %+v; want %d rows", st, len(want))
	}
	m, parts := readExport(t, e, "api")
	compareRows(t, "api ndjson", decodeParts(t, m, parts), want)

	if code, out := post(body(nil)); code != http.StatusOK || out["state"] != export.StateSucceeded || out["id"] != id {
		t.Fatalf("POST again: %d %v; want 200 succeeded", code, out)
	}
	resp, err := http.Get(srv.URL + "/api/v1/exports/exp-unknown")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET unknown job: %d, want 404", resp.StatusCode)
	}
}
