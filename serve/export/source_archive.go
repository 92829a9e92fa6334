package export

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/callpipe/callpipe/store/rawarchive"
	"github.com/minio/minio-go/v7"
)

// RawRow is one archived raw event as exported with --source archive: the
// fields it is filtered by, and the event exactly as received (Event). In
// NDJSON a row is the event line itself, byte for byte.
type RawRow struct {
	ID        string    `parquet:"id" json:"id"`
	StartTime time.Time `parquet:"start_time,timestamp(millisecond)" json:"start_time"`
	Model     string    `parquet:"model" json:"model"`
	User      string    `parquet:"user" json:"user"`
	Event     string    `parquet:"event" json:"event"`
}

// RawColumns are the CSV header and Parquet columns of RawRow.
var RawColumns = []string{"id", "start_time", "model", "user", "event"}

func (r *RawRow) size() int { return len(r.Event) + 1 }

func (r *RawRow) appendJSON(b []byte) ([]byte, error) { return append(b, r.Event...), nil }

func (r *RawRow) csvRecord(rec []string) []string {
	return append(rec[:0], r.ID, r.StartTime.UTC().Format(TimeLayout), r.Model, r.User, r.Event)
}

// archiveSource reads the raw archive objects of the range in key order
// (hour, then first sequence), every line in object order, keeping the
// events whose start_time is in the range and whose model and user match.
// A cursor is "<object key>#<line number>".
type archiveSource struct {
	c              *minio.Client
	bucket, prefix string
	spec           *Spec
	objects        []rawarchive.Object
	// skipped counts lines that are not JSON objects with an id and a
	// start_time (the archive keeps what it received), in this run.
	skipped int64
}

func (s *archiveSource) skippedRecords() int64 { return s.skipped }

func newArchiveSource(c *minio.Client, bucket, prefix string, spec *Spec) *archiveSource {
	return &archiveSource{c: c, bucket: bucket, prefix: strings.Trim(prefix, "/"), spec: spec}
}

func (s *archiveSource) describe() (string, []string) {
	q := fmt.Sprintf("archive s3://%s/%s objects of hours [%s, %s), lines with start_time in [%s, %s)",
		s.bucket, s.prefix, s.spec.From.Truncate(time.Hour).Format(time.RFC3339), s.spec.To.Format(time.RFC3339),
		s.spec.From.Format(time.RFC3339), s.spec.To.Format(time.RFC3339))
	if s.spec.Model != "" {
		q += ", model = " + strconv.Quote(s.spec.Model)
	}
	if s.spec.User != "" {
		q += ", user = " + strconv.Quote(s.spec.User)
	}
	return q, RawColumns
}

// resume lists the range's objects (once) and parses the cursor after,
// where estimate and read start.
func (s *archiveSource) resume(ctx context.Context, after string) (key string, line int64, err error) {
	if s.objects == nil {
		objs, err := rawarchive.Keys(ctx, s.c, s.bucket, s.prefix, s.spec.From, s.spec.To)
		if err != nil {
			return "", 0, err
		}
		if objs == nil {
			objs = []rawarchive.Object{}
		}
		s.objects = objs
	}
	return parseArchiveCursor(after)
}

func parseArchiveCursor(c string) (key string, line int64, err error) {
	if c == "" {
		return "", -1, nil
	}
	i := strings.LastIndexByte(c, '#')
	if i < 0 {
		return "", 0, fmt.Errorf("export: bad archive cursor %q", c)
	}
	line, err = strconv.ParseInt(c[i+1:], 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("export: bad archive cursor %q", c)
	}
	return c[:i], line, nil
}

// estimate uses the objects' user metadata (event counts), which counts
// every event of the hour: an upper bound.
func (s *archiveSource) estimate(ctx context.Context, after string) (int64, error) {
	key, _, err := s.resume(ctx, after)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, o := range s.objects {
		if o.Key < key {
			continue
		}
		m, err := rawarchive.Stat(ctx, s.c, s.bucket, s.prefix, o.Key)
		if err != nil {
			return 0, nil // metadata is only for progress
		}
		n += int64(m.Count)
	}
	return n, nil
}

// rawHead is what filtering needs of a raw event.
type rawHead struct {
	ID        string    `json:"id"`
	StartTime time.Time `json:"start_time"`
	Model     string    `json:"model"`
	User      string    `json:"user"`
}

func (s *archiveSource) read(ctx context.Context, after string, emit func([]RawRow, []string) error) error {
	curKey, curLine, err := s.resume(ctx, after)
	if err != nil {
		return err
	}
	const batch = 2000
	rows := make([]RawRow, 0, batch)
	cursors := make([]string, 0, batch)
	flush := func() error {
		if len(rows) == 0 {
			return nil
		}
		err := emit(rows, cursors)
		rows, cursors = rows[:0], cursors[:0]
		return err
	}
	for _, o := range s.objects {
		if o.Key < curKey {
			continue
		}
		skipTo := int64(-1)
		if o.Key == curKey {
			skipTo = curLine
		}
		var n int64 = -1
		err := rawarchive.ReadObject(ctx, s.c, s.bucket, o.Key, func(line []byte) error {
			n++
			if n <= skipTo {
				return nil
			}
			var h rawHead
			if err := json.Unmarshal(line, &h); err != nil || h.ID == "" || h.StartTime.IsZero() {
				s.skipped++
				return nil
			}
			st := h.StartTime.UTC()
			if st.Before(s.spec.From) || !st.Before(s.spec.To) ||
				(s.spec.Model != "" && h.Model != s.spec.Model) || (s.spec.User != "" && h.User != s.spec.User) {
				return nil
			}
			rows = append(rows, RawRow{ID: h.ID, StartTime: st, Model: h.Model, User: h.User, Event: string(line)})
			cursors = append(cursors, o.Key+"#"+strconv.FormatInt(n, 10))
			if len(rows) == batch {
				return flush()
			}
			return nil
		})
		if err != nil {
			return err
		}
		// a batch never spans objects, so the cursor of its last row
		// always names the object it was read from
		if err := flush(); err != nil {
			return err
		}
	}
	return nil
}
