package integration

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/callpipe/callpipe/serve/export"
)

// TestExportFormats exports a range of calls stored in ClickHouse 18.16
// (every fifth one stored twice, the newer copy different) in each format and
// reads every part back with that format's reader: the rows must be exactly
// the newest copy of each call of the range, in (hour, id) order, split into
// several parts, with checksums matching the manifest. A filtered export
// (model with quotes and {db}, user) and a rerun (a no-op) are checked too.
func TestExportFormats(t *testing.T) {
	e := newExportEnv(t, 1200)
	from, to := exportBase.Add(5*time.Hour+17*time.Minute), exportBase.Add(41*time.Hour)
	r := e.runner(t, export.Config{PartBytes: 256 << 10, PageRows: 60})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	cases := []struct {
		name, format, compression, model, user string
	}{
		{"parquet", export.FormatParquet, "zstd", "", ""},
		{"csv", export.FormatCSV, "gzip", "", ""},
		{"ndjson", export.FormatNDJSON, "zstd", "", ""},
		{"ndjson-filtered", export.FormatNDJSON, "none", "model-'quoted{db}'", "user-01"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prefix := "exports/" + tc.name
			spec := export.Spec{From: from, To: to, Format: tc.format, Compression: tc.compression,
				Model: tc.model, User: tc.user, Dest: "s3://" + e.bucket + "/" + prefix}
			var updates int
			res, err := r.Run(ctx, spec, export.RunOptions{Progress: func(export.Progress) { updates++ }})
			if err != nil {
				t.Fatal(err)
			}
			want := wantRows(e.calls, from, to, tc.model, tc.user)
			if len(want) < 10 {
				t.Fatalf("fixture: only %d calls in range", len(want))
			}
			m, parts := readExport(t, e, prefix)
			if res.AlreadyDone || res.Resumed || m.JobID != res.JobID || m.Rows != int64(len(want)) {
				t.Fatalf("result %+v, manifest job %s rows %d; want %d rows", res, m.JobID, m.Rows, len(want))
			}
			if tc.model == "" && len(parts) < 3 {
				t.Fatalf("%d parts for %d rows at part_bytes 256KiB; want several", len(parts), m.Rows)
			}
			if updates == 0 {
				t.Fatal("no progress reported")
			}
			compareRows(t, tc.name, decodeParts(t, m, parts), want)

			again, err := r.Run(ctx, spec, export.RunOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !again.AlreadyDone || again.Manifest.FinishedAt != m.FinishedAt {
				t.Fatalf("rerun: %+v, want a no-op reporting the finished export", again)
			}
			st, err := export.LoadState(ctx, e.rdb, e.keyPrefix, res.JobID)
			if err != nil || st == nil || st.State != export.StateSucceeded || st.Manifest == nil {
				t.Fatalf("state: %+v, %v", st, err)
			}
		})
	}

	t.Run("empty-range", func(t *testing.T) {
		prefix := "exports/empty"
		spec := export.Spec{From: exportBase.Add(-48 * time.Hour), To: exportBase.Add(-24 * time.Hour), Format: export.FormatParquet,
			Dest: "s3://" + e.bucket + "/" + prefix}
		if _, err := r.Run(ctx, spec, export.RunOptions{}); err != nil {
			t.Fatal(err)
		}
		m, parts := readExport(t, e, prefix)
		if m.Rows != 0 || len(parts) != 1 || len(decodeParts(t, m, parts)) != 0 {
			t.Fatalf("empty export: %d rows in %d parts; want one readable empty part", m.Rows, len(parts))
		}
	})

	t.Run("dest-not-empty", func(t *testing.T) {
		if _, err := e.s3.PutObject(ctx, e.bucket, "junk/other.txt", strings.NewReader("x"), 1, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := r.Run(ctx, export.Spec{From: from, To: to, Format: export.FormatCSV, Dest: "s3://" + e.bucket + "/junk"}, export.RunOptions{})
		var fe *export.FieldError
		if !errors.As(err, &fe) || fe.Field != "dest" || !strings.Contains(err.Error(), "junk/other.txt") {
			t.Fatalf("export into a prefix holding other objects: %v; want a dest error", err)
		}
	})

	t.Run("dest-taken", func(t *testing.T) {
		spec := export.Spec{From: from, To: to.Add(-time.Hour), Format: export.FormatParquet, Dest: "s3://" + e.bucket + "/exports/parquet"}
		_, err := r.Run(ctx, spec, export.RunOptions{})
		var fe *export.FieldError
		if !errors.As(err, &fe) || fe.Field != "dest" {
			t.Fatalf("export over another job's finished export: %v; want a dest error", err)
		}
	})
}

// TestExportLeaseLost takes a running job's lease away (as a second process
// would after the first one stalled past lease_ttl): the first runner must
// stop at its next fenced write without writing _SUCCESS and without
// deleting the new holder's lease.
func TestExportLeaseLost(t *testing.T) {
	e := newExportEnv(t, 600)
	r := e.runner(t, export.Config{PartBytes: 64 << 10, PageRows: 50})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec := export.Spec{From: exportBase, To: exportBase.Add(48 * time.Hour), Format: export.FormatCSV, Dest: "s3://" + e.bucket + "/stolen"}
	stolen := false
	var leaseKey string
	_, err := r.Run(ctx, spec, export.RunOptions{Rate: 1000, Progress: func(p export.Progress) {
		if p.Parts >= 1 && !stolen {
			stolen = true
			keys, err := e.rdb.Keys(ctx, e.keyPrefix+"lease:*").Result()
			if err != nil || len(keys) != 1 {
				t.Errorf("lease keys %v, %v", keys, err)
				return
			}
			leaseKey = keys[0]
			if err := e.rdb.Set(ctx, leaseKey, "999 thief/pid-1", time.Minute).Err(); err != nil {
				t.Error(err)
			}
		}
	}})
	if !stolen || !errors.Is(err, export.ErrLeaseLost) {
		t.Fatalf("run after its lease was taken: %v (stolen=%v), want ErrLeaseLost", err, stolen)
	}
	if v, _ := e.rdb.Get(ctx, leaseKey).Result(); v != "999 thief/pid-1" {
		t.Fatalf("the new holder's lease was changed to %q", v)
	}
	if _, ok, _ := statKey(ctx, e, "stolen/"+export.SuccessName); ok {
		t.Fatal("_SUCCESS written after the lease was lost")
	}
	var held *export.LeaseHeldError
	if _, err := r.Run(ctx, spec, export.RunOptions{}); !errors.As(err, &held) || held.Holder != "thief/pid-1" || held.Fence != 999 {
		t.Fatalf("run while the thief holds the lease: %v", err)
	}
}

func statKey(ctx context.Context, e *exportEnv, key string) (int64, bool, error) {
	info, err := e.s3.StatObject(ctx, e.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return 0, false, err
	}
	return info.Size, true, nil
}
