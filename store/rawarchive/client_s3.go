package rawarchive

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/encrypt"
)

// S3Config is how to reach the bucket (the s3 configuration section).
type S3Config struct {
	Endpoint  string // host:port
	AccessKey string
	SecretKey string
	Region    string
	UseSSL    bool
	PathStyle bool
	TLS       *tls.Config // nil: system roots
	// MaxRetries bounds minio-go's retries of one request (0: its default of
	// 10), so that a caller that must answer quickly can give up early.
	MaxRetries int
}

// NewClient returns a minio-go client for c.
func NewClient(c S3Config) (*minio.Client, error) {
	o := &minio.Options{
		Creds:      credentials.NewStaticV4(c.AccessKey, c.SecretKey, ""),
		Secure:     c.UseSSL,
		Region:     c.Region,
		MaxRetries: c.MaxRetries,
	}
	if c.PathStyle {
		o.BucketLookup = minio.BucketLookupPath
	}
	if c.TLS != nil {
		tr, err := minio.DefaultTransport(c.UseSSL)
		if err != nil {
			return nil, fmt.Errorf("s3 transport: %w", err)
		}
		tr.TLSClientConfig = c.TLS
		o.Transport = http.RoundTripper(tr)
	}
	cl, err := minio.New(c.Endpoint, o)
	if err != nil {
		return nil, fmt.Errorf("s3 client %s: %w", c.Endpoint, err)
	}
	return cl, nil
}

// EnsureBucket creates bucket when it does not exist.
func EnsureBucket(ctx context.Context, c *minio.Client, bucket, region string) error {
	ok, err := c.BucketExists(ctx, bucket)
	if err != nil {
		return fmt.Errorf("s3 bucket %s: %w", bucket, err)
	}
	if ok {
		return nil
	}
	if err := c.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: region}); err != nil {
		if code := minio.ToErrorResponse(err).Code; code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
			return nil
		}
		return fmt.Errorf("s3 create bucket %s: %w", bucket, err)
	}
	return nil
}

// PutManifest stores b's manifest, which claims its stream sequences. sse is
// the server-side encryption asked for (nil: the bucket's default).
func PutManifest(ctx context.Context, c *minio.Client, bucket string, b *Built, sse encrypt.ServerSide) error {
	body, err := json.Marshal(&b.Manifest)
	if err != nil {
		return fmt.Errorf("archive manifest %s: %w", b.ManifestKey, err)
	}
	if _, err := c.PutObject(ctx, bucket, b.ManifestKey, bytes.NewReader(body), int64(len(body)),
		minio.PutObjectOptions{ContentType: "application/json", ServerSideEncryption: sse}); err != nil {
		return fmt.Errorf("archive put manifest %s: %w", b.ManifestKey, err)
	}
	return nil
}

// PutData uploads b's data object (multipart in parts of partSize when larger)
// with its Meta as user metadata, encrypted by the server as sse asks (nil:
// the bucket's default).
func PutData(ctx context.Context, c *minio.Client, bucket string, b *Built, partSize uint64, sse encrypt.ServerSide) error {
	key := b.Manifest.Key
	if _, err := c.PutObject(ctx, bucket, key, bytes.NewReader(b.Data), int64(len(b.Data)), minio.PutObjectOptions{
		ContentType:  "application/zstd",
		UserMetadata: b.Manifest.Meta.userMetadata(),
		PartSize:     partSize,

		ServerSideEncryption: sse,
	}); err != nil {
		return fmt.Errorf("archive put %s: %w", key, err)
	}
	return nil
}
