package config

import "time"

// Archive configures the archive sink (raw calls to S3) and replay.
type Archive struct {
	Consumer      string   `yaml:"consumer" doc:"durable consumer name of the archive sink on CALLPIPE_CALLS"`
	Prefix        string   `yaml:"prefix" doc:"object key prefix of raw archive objects in s3.bucket"`
	FlushBytes    ByteSize `yaml:"flush_bytes" doc:"an archive object is written when its uncompressed NDJSON reaches this size"`
	FlushInterval Duration `yaml:"flush_interval" doc:"... or when its oldest call has waited this long"`
}

func defaultArchive() Archive {
	return Archive{Consumer: "callpipe-archive", Prefix: "raw/v1", FlushBytes: 64 << 20, FlushInterval: Duration(60 * time.Second)}
}

func (c *Config) validateArchive() []error {
	a := c.Archive
	return []error{
		checkKey(validIdent(replaceDash(a.Consumer)), "archive.consumer", a.Consumer, "must be letters, digits, - and _"),
		checkKey(a.FlushBytes >= 1<<10, "archive.flush_bytes", a.FlushBytes, "must be at least 1KiB"),
		checkKey(a.FlushInterval > 0, "archive.flush_interval", a.FlushInterval, "must be positive"),
	}
}
