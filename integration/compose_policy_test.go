package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/encrypt"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/store/rawarchive"
	"github.com/callpipe/callpipe/tools/doctor"
)

// composeMinIOPolicy is the policy minio-init of the compose stack gives
// callpipe's MinIO user (deploy/compose/docker-compose.yml).
func composeMinIOPolicy(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "deploy", "compose", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(raw), "cat > /tmp/callpipe-policy.json <<'EOF'\n")
	doc, _, ok2 := strings.Cut(rest, "\n        EOF\n")
	if !ok || !ok2 {
		t.Fatal("no policy document in minio-init")
	}
	return doc
}

// TestComposeMinIOPolicySuffices runs what callpipe does in S3 — doctor's
// write probe, a multipart upload with SSE-S3, list, stat, read, delete —
// with credentials limited to the compose stack's policy for callpipe (an
// STS session policy of the root user, which MinIO intersects with it), and
// checks that the same credentials cannot reach another bucket, create one or
// change a bucket's policy.
func TestComposeMinIOPolicySuffices(t *testing.T) {
	pki := newTestPKI(t)
	m := startTLSMinIO(t, pki)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root, err := rawarchive.NewClient(rawarchive.S3Config{Endpoint: m.endpoint, AccessKey: m.user, SecretKey: m.password, UseSSL: true, PathStyle: true, TLS: pki.clientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"callpipe", "other-bucket"} {
		if err := rawarchive.EnsureBucket(ctx, root, b, "us-east-1"); err != nil {
			t.Fatal(err)
		}
	}
	tr := &http.Transport{TLSClientConfig: pki.clientTLS()}
	creds := credentials.New(&credentials.STSAssumeRole{Client: &http.Client{Transport: tr}, STSEndpoint: "https://" + m.endpoint,
		Options: credentials.STSAssumeRoleOptions{AccessKey: m.user, SecretKey: m.password, Policy: composeMinIOPolicy(t), DurationSeconds: 3600}})
	c, err := minio.New(m.endpoint, &minio.Options{Creds: creds, Secure: true, Transport: tr, Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}

	if rs := doctor.S3(m.endpoint, "callpipe", c)(ctx); rs[0].Status != doctor.OK {
		t.Fatalf("doctor's S3 check with callpipe's policy: %+v", rs)
	}
	body := make([]byte, 6<<20)
	_, _ = rand.Read(body)
	if _, err := c.PutObject(ctx, "callpipe", "raw/v1/x.ndjson.zst", bytes.NewReader(body), -1,
		minio.PutObjectOptions{PartSize: 5 << 20, ServerSideEncryption: encrypt.NewSSE()}); err != nil {
		t.Fatalf("multipart upload with SSE-S3: %v", err)
	}
	n := 0
	for o := range c.ListObjects(ctx, "callpipe", minio.ListObjectsOptions{Prefix: "raw/v1/", Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("list: %v", o.Err)
		}
		n++
	}
	if n != 1 {
		t.Errorf("listed %d objects, want 1", n)
	}
	obj, err := c.GetObject(ctx, "callpipe", "raw/v1/x.ndjson.zst", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(obj)
	obj.Close()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}
	if err := c.RemoveObject(ctx, "callpipe", "raw/v1/x.ndjson.zst", minio.RemoveObjectOptions{}); err != nil {
		t.Fatalf("delete: %v", err)
	}

	denied := func(what string, err error) {
		t.Helper()
		if code := minio.ToErrorResponse(err).Code; code != "AccessDenied" {
			t.Errorf("%s with callpipe's policy: %v (code %q), want AccessDenied", what, err, code)
		}
	}
	_, err = c.PutObject(ctx, "other-bucket", "x", bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{})
	denied("writing to another bucket", err)
	_, err = c.BucketExists(ctx, "other-bucket")
	denied("reaching another bucket", err)
	denied("creating a bucket", c.MakeBucket(ctx, "new-bucket", minio.MakeBucketOptions{}))
	denied("changing the bucket policy", c.SetBucketPolicy(ctx, "callpipe", `{"Version":"2012-10-17","Statement":[]}`))
	denied("deleting the bucket", c.RemoveBucket(ctx, "callpipe"))
}
