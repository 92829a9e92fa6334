package config

// Export configures export jobs (a time range of calls written to S3).
type Export struct {
	Format string `yaml:"format" doc:"default export format: ndjson, csv or parquet"`
}

func defaultExport() Export { return Export{Format: "parquet"} }

func (c *Config) validateExport() []error {
	e := c.Export
	return []error{
		checkKey(oneOf(e.Format, "ndjson", "csv", "parquet"), "export.format", e.Format, "allowed: ndjson, csv, parquet"),
	}
}
