package config

import "time"

// Export configures export jobs (a time range of calls written to S3).
type Export struct {
	Format         string   `yaml:"format" doc:"default export format: ndjson, csv or parquet"`
	Source         string   `yaml:"source" doc:"default export source: calls (normalized calls from ClickHouse) or archive (raw events from the S3 archive)"`
	Compression    string   `yaml:"compression" doc:"compression of export objects: zstd, gzip or none (Parquet compresses its pages with it; NDJSON and CSV objects get .zst or .gz)"`
	PartBytes      ByteSize `yaml:"part_bytes" doc:"an export object (part) is closed once its rows reach this many uncompressed bytes"`
	PageRows       int      `yaml:"page_rows" doc:"rows read from ClickHouse per query (memory bound of the reader)"`
	UploadPartSize ByteSize `yaml:"upload_part_size" doc:"S3 multipart upload part size (at least 5MiB)"`
	LeaseTTL       Duration `yaml:"lease_ttl" doc:"a job's Redis lease expires this long after its holder stopped renewing it (a dead job is resumable after it)"`
	StateTTL       Duration `yaml:"state_ttl" doc:"how long Redis keeps a job's state and checkpoint"`
	KeyPrefix      string   `yaml:"key_prefix" doc:"Redis key prefix of export leases, job states and checkpoints"`
}

func defaultExport() Export {
	return Export{Format: "parquet", Source: "calls", Compression: "zstd", PartBytes: 256 << 20, PageRows: 20000,
		UploadPartSize: 16 << 20, LeaseTTL: Duration(30 * time.Second), StateTTL: Duration(7 * 24 * time.Hour),
		KeyPrefix: "callpipe:export:"}
}

func (c *Config) validateExport() []error {
	e := c.Export
	return []error{
		checkKey(oneOf(e.Format, "ndjson", "csv", "parquet"), "export.format", e.Format, "allowed: ndjson, csv, parquet"),
		checkKey(oneOf(e.Source, "calls", "archive"), "export.source", e.Source, "allowed: calls, archive"),
		checkKey(oneOf(e.Compression, "zstd", "gzip", "none"), "export.compression", e.Compression, "allowed: zstd, gzip, none"),
		checkKey(e.PartBytes >= 1<<10, "export.part_bytes", e.PartBytes, "must be at least 1KiB"),
		checkKey(e.PageRows >= 1 && e.PageRows <= 1000000, "export.page_rows", e.PageRows, "must be 1..1000000"),
		checkKey(e.UploadPartSize >= 5<<20, "export.upload_part_size", e.UploadPartSize, "must be at least 5MiB (S3 minimum)"),
		checkKey(e.LeaseTTL >= Duration(time.Second), "export.lease_ttl", e.LeaseTTL, "must be at least 1s"),
		checkKey(e.StateTTL >= Duration(time.Hour), "export.state_ttl", e.StateTTL, "must be at least 1h"),
		checkKey(e.KeyPrefix != "", "export.key_prefix", e.KeyPrefix, "must not be empty"),
	}
}
