// Package export writes a time range of calls to S3 as large objects: the
// normalized calls from ClickHouse, or the raw events of the S3 archive, as
// NDJSON, CSV or Parquet, followed by a _manifest.json and a _SUCCESS marker.
//
// A job is identified by its arguments (or a given id). A Redis lease makes
// one process run it at a time; each finished part is recorded as a
// checkpoint in Redis, so a job that dies resumes after its last recorded
// part instead of starting over, and _SUCCESS is written only after every
// part and the manifest are stored.
package export

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Formats and sources of an export.
const (
	FormatNDJSON  = "ndjson"
	FormatCSV     = "csv"
	FormatParquet = "parquet"

	SourceCalls   = "calls"
	SourceArchive = "archive"
)

// Spec is what an export job writes. Its JSON form is the body of
// POST /api/v1/exports.
type Spec struct {
	From   time.Time `json:"from"`
	To     time.Time `json:"to"`
	Model  string    `json:"model,omitempty"`
	User   string    `json:"user,omitempty"`
	Format string    `json:"format"`
	Dest   string    `json:"dest"`
	Source string    `json:"source,omitempty"`
	// Compression is zstd, gzip or none ("" takes the runner's default).
	Compression string `json:"compression,omitempty"`
	// JobID names the job; empty derives it from the other fields.
	JobID string `json:"job_id,omitempty"`
}

// FieldError is an invalid Spec field.
type FieldError struct {
	Field, Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

var jobIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// Normalize fills defaults (source calls) and truncates times to the second
// in UTC, then validates. The first invalid field is returned as a *FieldError.
func (s *Spec) Normalize(defaultCompression string) error {
	if s.Source == "" {
		s.Source = SourceCalls
	}
	if s.Compression == "" {
		s.Compression = defaultCompression
	}
	s.From, s.To = s.From.UTC(), s.To.UTC()
	switch {
	case s.From.IsZero():
		return &FieldError{"from", "required (RFC 3339 time, e.g. 2026-11-26T00:00:00Z)"}
	case s.To.IsZero():
		return &FieldError{"to", "required (RFC 3339 time, e.g. 2026-11-27T00:00:00Z)"}
	case s.From.Nanosecond() != 0:
		return &FieldError{"from", "must be whole seconds"}
	case s.To.Nanosecond() != 0:
		return &FieldError{"to", "must be whole seconds"}
	case !s.To.After(s.From):
		return &FieldError{"to", fmt.Sprintf("must be after from (%s)", s.From.Format(time.RFC3339))}
	case s.From.Unix() < 0 || s.To.Unix() >= 1<<32:
		return &FieldError{"from", "range must lie within 1970..2106 (ClickHouse DateTime)"}
	case s.Format != FormatNDJSON && s.Format != FormatCSV && s.Format != FormatParquet:
		return &FieldError{"format", fmt.Sprintf("%q: allowed: ndjson, csv, parquet", s.Format)}
	case s.Source != SourceCalls && s.Source != SourceArchive:
		return &FieldError{"source", fmt.Sprintf("%q: allowed: calls, archive", s.Source)}
	case s.Compression != "zstd" && s.Compression != "gzip" && s.Compression != "none":
		return &FieldError{"compression", fmt.Sprintf("%q: allowed: zstd, gzip, none", s.Compression)}
	case s.JobID != "" && !jobIDPattern.MatchString(s.JobID):
		return &FieldError{"job_id", "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"}
	case strings.ContainsAny(s.Model, "\x00"):
		return &FieldError{"model", "must not contain NUL"}
	case strings.ContainsAny(s.User, "\x00"):
		return &FieldError{"user", "must not contain NUL"}
	}
	if _, _, err := ParseDest(s.Dest); err != nil {
		return err
	}
	if s.JobID == "" {
		s.JobID = s.derivedID()
	}
	return nil
}

// derivedID is a stable id from every argument, so the same request from
// two replicas (or a rerun) names the same job.
func (s *Spec) derivedID() string {
	c := *s
	c.JobID = ""
	b, _ := json.Marshal(c)
	sum := sha256.Sum256(b)
	return "exp-" + hex.EncodeToString(sum[:8])
}

// sameWork reports whether two specs write the same thing (ids aside).
func (s *Spec) sameWork(o *Spec) bool {
	a, b := *s, *o
	a.JobID, b.JobID = "", ""
	return a.From.Equal(b.From) && a.To.Equal(b.To) && a.Model == b.Model && a.User == b.User &&
		a.Format == b.Format && a.Dest == b.Dest && a.Source == b.Source && a.Compression == b.Compression
}

var bucketPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// ParseDest splits s3://bucket/prefix. The prefix has no leading or trailing
// slash and may be empty (objects at the bucket's root).
func ParseDest(dest string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(dest, "s3://")
	if !ok {
		return "", "", &FieldError{"dest", fmt.Sprintf("%q: must be s3://bucket/prefix", dest)}
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	if !bucketPattern.MatchString(bucket) {
		return "", "", &FieldError{"dest", fmt.Sprintf("%q: bucket must be 3-63 lowercase letters, digits, dots or hyphens", bucket)}
	}
	prefix = strings.Trim(prefix, "/")
	if strings.Contains(prefix, "//") {
		return "", "", &FieldError{"dest", fmt.Sprintf("%q: prefix must not contain empty path segments", prefix)}
	}
	return bucket, prefix, nil
}

// ParseTime accepts RFC 3339 (2026-11-26T20:00:00Z), a UTC date-hour-minute
// (2026-11-26T20:00), a UTC date-hour (2026-11-26T20) or a UTC date (2026-11-26).
func ParseTime(field, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, &FieldError{field, "required"}
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02T15", "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, &FieldError{field, fmt.Sprintf("%q: not a time (RFC 3339, or UTC 2006-01-02[T15[:04[:05]]])", v)}
}
