package rawarchive

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"
)

// Keys lists the data objects under prefix whose hour overlaps [from, to),
// ordered by hour, then by first sequence. Objects hold whole hours: callers
// filter lines by start time themselves.
func Keys(ctx context.Context, c *minio.Client, bucket, prefix string, from, to time.Time) ([]Object, error) {
	if !to.After(from) {
		return nil, fmt.Errorf("archive keys: empty range [%s, %s)", from, to)
	}
	first, last := from.UTC().Truncate(time.Hour), to.UTC()
	var out []Object
	for day := first.Truncate(24 * time.Hour); day.Before(last); day = day.Add(24 * time.Hour) {
		for info := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: dayPrefix(prefix, day), Recursive: true}) {
			if info.Err != nil {
				return nil, fmt.Errorf("archive list %s/%s: %w", bucket, dayPrefix(prefix, day), info.Err)
			}
			if !strings.HasSuffix(info.Key, dataSuffix) {
				continue
			}
			o, err := ParseKey(prefix, info.Key)
			if err != nil {
				return nil, err
			}
			if o.Hour.Before(first) || !o.Hour.Before(last) {
				continue
			}
			o.Size = info.Size
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// ReadObject calls fn with every line (raw event, without newline) of the
// data object key, in order. The slice is only valid during the call. An
// error from fn stops the read and is returned.
func ReadObject(ctx context.Context, c *minio.Client, bucket, key string, fn func(line []byte) error) error {
	obj, err := c.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return fmt.Errorf("archive get %s: %w", key, err)
	}
	defer obj.Close()
	dec, err := zstd.NewReader(obj, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return fmt.Errorf("archive %s: %w", key, err)
	}
	defer dec.Close()
	if err := ReadLines(dec, fn); err != nil {
		return fmt.Errorf("archive %s: %w", key, err)
	}
	return nil
}

// ReadLines calls fn with every line of the uncompressed NDJSON in r.
func ReadLines(r io.Reader, fn func(line []byte) error) error {
	br := bufio.NewReaderSize(r, 1<<20)
	var long []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, chunk...)
			continue
		}
		line := chunk
		if long != nil {
			long = append(long, chunk...)
			line = long
		}
		if len(line) > 0 && line[len(line)-1] == '\n' {
			line = line[:len(line)-1]
		}
		if len(line) > 0 {
			if ferr := fn(line); ferr != nil {
				return ferr
			}
		}
		long = long[:0:0]
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
	}
}

// Stat returns the Meta stored with the data object key.
func Stat(ctx context.Context, c *minio.Client, bucket, prefix, key string) (Meta, error) {
	o, err := ParseKey(prefix, key)
	if err != nil {
		return Meta{}, err
	}
	info, err := c.StatObject(ctx, bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return Meta{}, fmt.Errorf("archive stat %s: %w", key, err)
	}
	m, err := parseUserMetadata(o.Hour, info.UserMetadata)
	if err != nil {
		return m, fmt.Errorf("archive stat %s: %w", key, err)
	}
	return m, nil
}

// ReadManifest returns the manifest of the data object key.
func ReadManifest(ctx context.Context, c *minio.Client, bucket, prefix, key string) (*Manifest, error) {
	o, err := ParseKey(prefix, key)
	if err != nil {
		return nil, err
	}
	return GetManifest(ctx, c, bucket, ManifestKey(prefix, o.Hour, o.FirstSeq, o.LastSeq))
}

// GetManifest reads the manifest stored under the manifest key mkey.
func GetManifest(ctx context.Context, c *minio.Client, bucket, mkey string) (*Manifest, error) {
	obj, err := c.GetObject(ctx, bucket, mkey, minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("archive get manifest %s: %w", mkey, err)
	}
	defer obj.Close()
	var m Manifest
	if err := json.NewDecoder(obj).Decode(&m); err != nil {
		return nil, fmt.Errorf("archive manifest %s: %w", mkey, err)
	}
	return &m, nil
}

// HourKeys lists what is stored for hour h: the keys of its data objects (as
// a set) and of its manifests. A manifest without its data object is an
// upload that was interrupted (see the sink's commit protocol).
func HourKeys(ctx context.Context, c *minio.Client, bucket, prefix string, h time.Time) (data map[string]bool, manifests []string, err error) {
	hp := HourPrefix(prefix, h)
	data = map[string]bool{}
	for info := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: hp, Recursive: true}) {
		if info.Err != nil {
			return nil, nil, fmt.Errorf("archive list %s: %w", hp, info.Err)
		}
		switch {
		case strings.HasSuffix(info.Key, dataSuffix):
			data[info.Key] = true
		case strings.HasSuffix(info.Key, manifestSuffix):
			manifests = append(manifests, info.Key)
		}
	}
	return data, manifests, nil
}
