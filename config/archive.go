package config

import (
	"strings"
	"time"

	"github.com/minio/minio-go/v7/pkg/encrypt"

	"github.com/callpipe/callpipe/bus"
)

// Archive configures the archive sink (raw calls to S3) and replay.
type Archive struct {
	Consumer      string   `yaml:"consumer" doc:"durable consumer name of the archive sink on CALLPIPE_CALLS"`
	Subject       string   `yaml:"subject" doc:"subjects of CALLPIPE_CALLS the archive sink consumes (replayed calls on them are skipped)"`
	Prefix        string   `yaml:"prefix" doc:"object key prefix of raw archive objects in s3.bucket"`
	FlushBytes    ByteSize `yaml:"flush_bytes" doc:"an archive object is written when its uncompressed NDJSON reaches this size"`
	FlushInterval Duration `yaml:"flush_interval" doc:"... or when its oldest call has waited this long"`
	AckWait       Duration `yaml:"ack_wait" doc:"a call not acknowledged within this is redelivered; must exceed flush_interval (held calls are kept alive with in-progress acks)"`
	MaxAckPending int      `yaml:"max_ack_pending" doc:"calls held unacknowledged in open and uploading objects; bounds memory (about twice the raw bytes)"`
	Compression   string   `yaml:"compression" doc:"zstd level of archive objects: fastest, default or better"`
	PartSize      ByteSize `yaml:"part_size" doc:"multipart upload part size (objects larger than this are uploaded in parts)"`
	MaxUploads    int      `yaml:"max_uploads" doc:"archive objects uploading at once"`

	ReplayCheckpointPrefix string `yaml:"replay_checkpoint_prefix" doc:"Redis key prefix of replay job checkpoints"`
	ReplayMaxInFlight      int    `yaml:"replay_max_in_flight" doc:"replayed calls awaiting a JetStream ack"`
}

// ServerSide is the server-side encryption of s3.sse for every object
// callpipe writes (nil: none asked, the bucket's default applies).
func (s S3) ServerSide() encrypt.ServerSide {
	switch s.SSE {
	case "sse-s3":
		return encrypt.NewSSE()
	case "sse-kms":
		sse, _ := encrypt.NewSSEKMS(s.SSEKMSKey, nil) // a nil context cannot fail to encode
		return sse
	}
	return nil
}

func defaultArchive() Archive {
	return Archive{Consumer: bus.StageOf(bus.StageArchive).Consumer, Subject: bus.StageOf(bus.StageArchive).Subject, Prefix: "raw/v1", FlushBytes: 64 << 20,
		FlushInterval: Duration(60 * time.Second), AckWait: Duration(3 * time.Minute), MaxAckPending: 500000,
		Compression: "fastest", PartSize: 16 << 20, MaxUploads: 2,
		ReplayCheckpointPrefix: "callpipe:replay:", ReplayMaxInFlight: 4096}
}

func (c *Config) validateArchive() []error {
	a := c.Archive
	return []error{
		checkConsumer(bus.StageArchive, "archive", a.Consumer, a.Subject),
		checkKey(a.Prefix != "" && !strings.HasPrefix(a.Prefix, "/") && !strings.Contains(a.Prefix, "//"), "archive.prefix", a.Prefix, "must be a non-empty key prefix without a leading / or empty segments"),
		checkKey(a.FlushBytes >= 1<<10, "archive.flush_bytes", a.FlushBytes, "must be at least 1KiB"),
		checkKey(a.FlushInterval > 0, "archive.flush_interval", a.FlushInterval, "must be positive"),
		checkKey(a.AckWait > a.FlushInterval, "archive.ack_wait", a.AckWait, "must exceed archive.flush_interval"),
		checkKey(a.MaxAckPending >= 1, "archive.max_ack_pending", a.MaxAckPending, "must be at least 1"),
		checkKey(oneOf(a.Compression, "fastest", "default", "better"), "archive.compression", a.Compression, "allowed: fastest, default, better"),
		checkKey(a.PartSize >= 5<<20 && a.PartSize <= 5<<30, "archive.part_size", a.PartSize, "must be 5MiB..5GiB (S3 multipart limits)"),
		checkKey(a.MaxUploads >= 1 && a.MaxUploads <= 64, "archive.max_uploads", a.MaxUploads, "must be 1..64"),
		checkKey(a.ReplayCheckpointPrefix != "", "archive.replay_checkpoint_prefix", a.ReplayCheckpointPrefix, "must not be empty"),
		checkKey(a.ReplayMaxInFlight >= 1 && a.ReplayMaxInFlight <= 1<<20, "archive.replay_max_in_flight", a.ReplayMaxInFlight, "must be 1..1048576"),
	}
}
