package rawarchive

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// DefaultPrefix is the key prefix of version 1 raw archive objects.
const DefaultPrefix = "raw/v1"

const (
	dataSuffix     = ".ndjson.zst"
	manifestSuffix = ".manifest.json"
)

// Object names one archive data object.
type Object struct {
	Key      string
	Hour     time.Time // UTC hour of the calls' start times
	FirstSeq uint64    // smallest stream sequence in the object
	LastSeq  uint64    // largest stream sequence in the object
	Size     int64     // compressed bytes (0 when not listed)
}

// HourPrefix is the key prefix (ending in "/") of the objects of hour h.
func HourPrefix(prefix string, h time.Time) string {
	h = h.UTC()
	return fmt.Sprintf("%sdt=%s/hh=%02d/", dirPrefix(prefix), h.Format(time.DateOnly), h.Hour())
}

func dayPrefix(prefix string, d time.Time) string {
	return dirPrefix(prefix) + "dt=" + d.UTC().Format(time.DateOnly) + "/"
}

func dirPrefix(prefix string) string {
	prefix = strings.Trim(prefix, "/")
	if prefix == "" {
		return ""
	}
	return prefix + "/"
}

func baseName(first, last uint64) string { return fmt.Sprintf("%020d-%020d", first, last) }

// DataKey is the key of the data object of hour h holding sequences first..last.
func DataKey(prefix string, h time.Time, first, last uint64) string {
	return HourPrefix(prefix, h) + baseName(first, last) + dataSuffix
}

// ManifestKey is the key of the manifest of the data object DataKey(prefix, h, first, last).
func ManifestKey(prefix string, h time.Time, first, last uint64) string {
	return HourPrefix(prefix, h) + baseName(first, last) + manifestSuffix
}

// ParseKey parses a data object key written under prefix.
func ParseKey(prefix, key string) (Object, error) {
	o := Object{Key: key}
	rest, ok := strings.CutPrefix(key, dirPrefix(prefix))
	if !ok {
		return o, fmt.Errorf("archive key %q: not under prefix %q", key, prefix)
	}
	name, ok := strings.CutSuffix(rest, dataSuffix)
	if !ok {
		return o, fmt.Errorf("archive key %q: not a %s data object", key, dataSuffix)
	}
	parts := strings.Split(name, "/")
	if len(parts) != 3 || !strings.HasPrefix(parts[0], "dt=") || !strings.HasPrefix(parts[1], "hh=") {
		return o, fmt.Errorf("archive key %q: want dt=YYYY-MM-DD/hh=HH/FIRST-LAST%s", key, dataSuffix)
	}
	day, err := time.Parse(time.DateOnly, parts[0][3:])
	if err != nil {
		return o, fmt.Errorf("archive key %q: dt: %w", key, err)
	}
	hh, err := strconv.Atoi(parts[1][3:])
	if err != nil || hh < 0 || hh > 23 || len(parts[1]) != 5 {
		return o, fmt.Errorf("archive key %q: hh: want 00..23", key)
	}
	first, last, ok := strings.Cut(parts[2], "-")
	if !ok {
		return o, fmt.Errorf("archive key %q: want FIRST-LAST sequences", key)
	}
	if o.FirstSeq, err = strconv.ParseUint(first, 10, 64); err != nil {
		return o, fmt.Errorf("archive key %q: first sequence: %w", key, err)
	}
	if o.LastSeq, err = strconv.ParseUint(last, 10, 64); err != nil {
		return o, fmt.Errorf("archive key %q: last sequence: %w", key, err)
	}
	if o.LastSeq < o.FirstSeq {
		return o, fmt.Errorf("archive key %q: last sequence before first", key)
	}
	o.Hour = day.Add(time.Duration(hh) * time.Hour)
	return o, nil
}
