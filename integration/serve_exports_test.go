package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// TestServeExportJobs checks that `callpipe serve` mounts the export jobs API
// behind its bearer-token auth: a bad field is named, an unknown job is 404,
// and a real job runs to success and is visible by id.
func TestServeExportJobs(t *testing.T) {
	s3 := harness.S3(t)
	bucket := "serve-exports-" + testkit.RandomHex(t, 5)
	mc, err := rawarchive.NewClient(rawarchive.S3Config{Endpoint: s3.Endpoint, AccessKey: s3.AccessKey, SecretKey: s3.SecretKey, UseSSL: s3.UseSSL, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := mc.MakeBucket(t.Context(), bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	_, db := chTestDB(t)
	p := startServe(t, db,
		"CALLPIPE_SERVE_TOKENS=tok-1",
		"CALLPIPE_REDIS_ADDR="+harness.Redis(t),
		"CALLPIPE_S3_ENDPOINT="+s3.Endpoint, "CALLPIPE_S3_ACCESS_KEY="+s3.AccessKey, "CALLPIPE_S3_SECRET_KEY="+s3.SecretKey,
		"CALLPIPE_S3_BUCKET="+bucket)

	post := func(body, token string) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodPost, p.base+"/api/v1/exports", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	if code, _ := post(`{}`, ""); code != http.StatusUnauthorized {
		t.Fatalf("POST without token: %d, want 401", code)
	}
	if code, m := post(`{"from":"2026-11-26T00:00:00Z","to":"2026-11-27T00:00:00Z","format":"xlsx","dest":"s3://`+bucket+`/x"}`, "tok-1"); code != 400 || m["field"] != "format" {
		t.Fatalf("POST with a bad format: %d %v, want 400 naming format", code, m)
	}
	if code, _ := httpGet(t, p.base+"/api/v1/exports/exp-unknown", "Authorization", "Bearer tok-1"); code != http.StatusNotFound {
		t.Fatalf("GET unknown job: %d, want 404", code)
	}
	code, m := post(`{"from":"2026-11-26T00:00:00Z","to":"2026-11-27T00:00:00Z","format":"ndjson","dest":"s3://`+bucket+`/empty-day"}`, "tok-1")
	if code != http.StatusAccepted && code != http.StatusOK {
		t.Fatalf("POST export: %d %v", code, m)
	}
	id, _ := m["id"].(string)
	testkit.WaitFor(t, 60*time.Second, "export job succeeded", func() (bool, string) {
		code, body := httpGet(t, p.base+"/api/v1/exports/"+id, "Authorization", "Bearer tok-1")
		return code == 200 && strings.Contains(body, `"state":"succeeded"`), fmt.Sprintf("%d %s", code, body)
	})
	if _, err := mc.StatObject(t.Context(), bucket, "empty-day/_SUCCESS", minio.StatObjectOptions{}); err != nil {
		t.Fatalf("_SUCCESS of the job: %v", err)
	}
	p.stop(t)
}
