package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/callpipe/callpipe/serve/export"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// TestExportArchive exports raw archive objects (written with the archive
// package's builder, several objects per hour, plus a line that is not an
// event) with --source archive: NDJSON parts hold exactly the archived lines
// of the range, byte for byte, in archive order; Parquet parts read back as
// the same events. An export stopped after its first part resumes from the
// archive cursor and ends with the same lines.
func TestExportArchive(t *testing.T) {
	e := newExportEnv(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const prefix = "raw/v1"
	var seq uint64
	type line struct {
		b     []byte
		start time.Time
		model string
	}
	var all []line
	for h := 0; h < 4; h++ {
		hour := exportBase.Add(time.Duration(h) * time.Hour)
		for obj := 0; obj < 2; obj++ {
			b, err := rawarchive.NewBuilder(prefix, "CALLPIPE_CALLS", "default", hour, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 150; i++ {
				seq++
				start := hour.Add(time.Duration(obj*1800+i*11) * time.Second).Add(123 * time.Millisecond)
				model := fmt.Sprintf("m-%d", seq%3)
				raw := []byte(fmt.Sprintf(`{"id":"raw-%06d","start_time":%q,"endpoint":"/v1/chat/completions","model":%q,"user":"u-%d","request":{"messages":[{"role":"user","content":"hello %d \u00e9"}]},"pad":"%s"}`,
					seq, start.Format(time.RFC3339Nano), model, seq%2, seq, bytes.Repeat([]byte("x"), 600)))
				if seq == 7 {
					raw = []byte(`not json at all`)
				}
				if err := b.Add(seq, raw, start); err != nil {
					t.Fatal(err)
				}
				all = append(all, line{b: raw, start: start, model: model})
			}
			built, err := b.Finish(rawarchive.FlushSize, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if err := rawarchive.PutManifest(ctx, e.s3, e.bucket, built, nil); err != nil {
				t.Fatal(err)
			}
			if err := rawarchive.PutData(ctx, e.s3, e.bucket, built, 16<<20, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	from, to := exportBase.Add(30*time.Minute), exportBase.Add(3*time.Hour+15*time.Minute)
	var want [][]byte
	for _, l := range all {
		st := l.start.Truncate(time.Second)
		if bytes.HasPrefix(l.b, []byte("{")) && !st.Before(from) && st.Before(to) && l.model == "m-1" {
			want = append(want, l.b)
		}
	}
	r := e.runner(t, export.Config{PartBytes: 32 << 10, ArchiveBucket: e.bucket, ArchivePrefix: prefix})

	spec := export.Spec{From: from, To: to, Model: "m-1", Source: export.SourceArchive, Format: export.FormatNDJSON,
		Compression: "gzip", Dest: "s3://" + e.bucket + "/out/ndjson"}
	stop, stopCancel := context.WithCancel(ctx)
	_, err := r.Run(stop, spec, export.RunOptions{Rate: 2000, Progress: func(p export.Progress) {
		if p.Parts >= 1 {
			stopCancel()
		}
	}})
	stopCancel()
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped export: %v, want context canceled", err)
	}
	res, err := r.Run(ctx, spec, export.RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed {
		t.Fatal("second run did not resume from the checkpoint")
	}
	m, parts := readExport(t, e, "out/ndjson")
	var got [][]byte
	for _, p := range parts {
		for _, l := range bytes.Split(decompress(t, "gzip", p), []byte("\n")) {
			if len(l) > 0 {
				got = append(got, l)
			}
		}
	}
	if len(got) != len(want) || m.Rows != int64(len(want)) || len(parts) < 3 {
		t.Fatalf("%d lines (manifest %d) in %d parts, want %d lines in several parts", len(got), m.Rows, len(parts), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("line %d:\n got  %s\n want %s", i, got[i], want[i])
		}
	}

	spec.Format, spec.Compression, spec.Dest, spec.Model = export.FormatParquet, "zstd", "s3://"+e.bucket+"/out/parquet", ""
	if _, err := r.Run(ctx, spec, export.RunOptions{}); err != nil {
		t.Fatal(err)
	}
	m, parts = readExport(t, e, "out/parquet")
	var rows []export.RawRow
	for _, p := range parts {
		rows = append(rows, readParquet[export.RawRow](t, p, "zstd")...)
	}
	n := 0
	for _, l := range all {
		st := l.start.Truncate(time.Second)
		if !bytes.HasPrefix(l.b, []byte("{")) || st.Before(from) || !st.Before(to) {
			continue
		}
		if n >= len(rows) || rows[n].Event != string(l.b) || !rows[n].StartTime.Equal(l.start.Truncate(time.Millisecond)) || rows[n].Model != l.model {
			t.Fatalf("parquet row %d: %+v, want event %s", n, rows[min(n, len(rows)-1)], l.b)
		}
		n++
	}
	if n != len(rows) || m.Rows != int64(n) || m.Skipped != 1 {
		t.Fatalf("parquet: %d rows (manifest %d, skipped %d), want %d and the one line that is not an event skipped", len(rows), m.Rows, m.Skipped, n)
	}
}
