package export

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/encrypt"
)

// partUpload streams one object to S3 as a multipart upload (minio-go with
// unknown size uploads partSize chunks as they fill) while hashing and
// counting the bytes.
type partUpload struct {
	key  string
	pw   *io.PipeWriter
	sum  hash.Hash
	n    int64
	done chan error
	info minio.UploadInfo
}

func startPart(ctx context.Context, c *minio.Client, bucket, key, contentType string, partSize uint64, sse encrypt.ServerSide) *partUpload {
	pr, pw := io.Pipe()
	u := &partUpload{key: key, pw: pw, sum: sha256.New(), done: make(chan error, 1)}
	go func() {
		info, err := c.PutObject(ctx, bucket, key, pr, -1, minio.PutObjectOptions{
			ContentType: contentType, PartSize: partSize, ServerSideEncryption: sse,
		})
		if err != nil {
			err = fmt.Errorf("s3 upload %s/%s: %w", bucket, key, err)
		}
		u.info = info
		pr.CloseWithError(err) // unblocks a writer when the upload failed early
		u.done <- err
	}()
	return u
}

func (u *partUpload) Write(p []byte) (int, error) {
	n, err := u.pw.Write(p)
	u.sum.Write(p[:n])
	u.n += int64(n)
	return n, err
}

// finish ends the object and waits for the upload to complete.
func (u *partUpload) finish() error {
	_ = u.pw.Close()
	return <-u.done
}

// abort fails the upload (minio-go aborts the multipart upload) and waits.
func (u *partUpload) abort(cause error) {
	_ = u.pw.CloseWithError(cause)
	<-u.done
}

func (u *partUpload) digest() string { return hex.EncodeToString(u.sum.Sum(nil)) }

// putSmall stores a small object in one request.
func putSmall(ctx context.Context, c *minio.Client, bucket, key, contentType string, body []byte, sse encrypt.ServerSide) error {
	if _, err := c.PutObject(ctx, bucket, key, bytes.NewReader(body), int64(len(body)),
		minio.PutObjectOptions{ContentType: contentType, ServerSideEncryption: sse}); err != nil {
		return fmt.Errorf("s3 put %s/%s: %w", bucket, key, err)
	}
	return nil
}

// getSmall reads an object; ok is false when it does not exist.
func getSmall(ctx context.Context, c *minio.Client, bucket, key string) (body []byte, ok bool, err error) {
	obj, err := c.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, false, fmt.Errorf("s3 get %s/%s: %w", bucket, key, err)
	}
	defer obj.Close()
	body, err = io.ReadAll(io.LimitReader(obj, 64<<20))
	if err != nil {
		if isNotFound(err) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("s3 get %s/%s: %w", bucket, key, err)
	}
	return body, true, nil
}

// exists reports whether key exists and its size.
func exists(ctx context.Context, c *minio.Client, bucket, key string) (bool, int64, error) {
	info, err := c.StatObject(ctx, bucket, key, minio.StatObjectOptions{})
	if err != nil {
		if isNotFound(err) {
			return false, 0, nil
		}
		return false, 0, fmt.Errorf("s3 stat %s/%s: %w", bucket, key, err)
	}
	return true, info.Size, nil
}

func isNotFound(err error) bool {
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		return resp.Code == "NoSuchKey" || resp.StatusCode == 404
	}
	return strings.Contains(err.Error(), "does not exist")
}
