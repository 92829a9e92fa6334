package doctor

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/minio/minio-go/v7"
)

// ProbePrefix is where the S3 check writes (and at once deletes) its probe object.
const ProbePrefix = ".callpipe-doctor/"

// S3 checks that the bucket exists and that the credentials may write and
// delete objects in it (what the archive sink and exports need).
func S3(endpoint, bucket string, client *minio.Client) Check {
	return func(ctx context.Context) []Result {
		label := "s3"
		exists, err := client.BucketExists(ctx, bucket)
		if err != nil {
			return []Result{fail(label, s3Fix(err), "%s bucket %s: %v", endpoint, bucket, err)}
		}
		if !exists {
			return []Result{fail(label, fmt.Sprintf("start the archive stage (`callpipe worker --stages archive` creates it), create it (mc mb ALIAS/%s) or set s3.bucket (CALLPIPE_S3_BUCKET)", bucket),
				"%s: bucket %s does not exist", endpoint, bucket)}
		}
		var rnd [8]byte
		_, _ = rand.Read(rnd[:])
		key := ProbePrefix + hex.EncodeToString(rnd[:])
		body := []byte("callpipe doctor write probe\n")
		if _, err := client.PutObject(ctx, bucket, key, bytes.NewReader(body), int64(len(body)),
			minio.PutObjectOptions{ContentType: "text/plain"}); err != nil {
			return []Result{fail(label, "grant the access key s3:PutObject on "+bucket+"/* (the archive sink writes there)",
				"%s: bucket %s exists, but writing %s failed: %v", endpoint, bucket, key, err)}
		}
		if err := client.RemoveObject(ctx, bucket, key, minio.RemoveObjectOptions{}); err != nil {
			return []Result{fail(label, "grant the access key s3:DeleteObject on "+bucket+"/"+ProbePrefix+"* and delete "+key+" by hand",
				"%s: bucket %s writable, but deleting the probe %s failed: %v", endpoint, bucket, key, err)}
		}
		return []Result{ok(label, "%s: bucket %s exists, write and delete allowed", endpoint, bucket)}
	}
}

func s3Fix(err error) string {
	switch minio.ToErrorResponse(err).Code {
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch":
		return "check s3.access_key and s3.secret_key (CALLPIPE_S3_ACCESS_KEY, CALLPIPE_S3_SECRET_KEY) and the key's policy on the bucket"
	}
	return "check s3.endpoint (CALLPIPE_S3_ENDPOINT, host:port without scheme), s3.use_ssl and that MinIO/S3 is reachable"
}
