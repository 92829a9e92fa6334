package export

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/parquet-go/parquet-go"
)

func sampleRows(n int) []Row {
	out := make([]Row, n)
	for i := range out {
		st := time.Date(2026, 11, 26, 10, 0, i, 7e6, time.UTC)
		r := Row{ID: "c-" + strings.Repeat("x", i%3) + string(rune('a'+i%26)), StartTime: st, EndTime: st.Add(time.Second),
			Model: "qwen, \"2.5\"", InputText: "line1\nline2,é", Tags: []string{"a", "b"}, Version: uint64(i + 1)}
		if i%2 == 0 {
			ft, ttft, cost := st.Add(100*time.Millisecond), int64(100), 0.25
			r.FirstTokenTime, r.TTFTMS, r.CostUSD = &ft, &ttft, &cost
		} else {
			r.Tags = []string{}
		}
		out[i] = r
	}
	return out
}

// TestEncodersRoundTrip writes rows in every format and compression and
// reads them back with independent readers.
func TestEncodersRoundTrip(t *testing.T) {
	rows := sampleRows(50)
	for _, format := range []string{FormatNDJSON, FormatCSV, FormatParquet} {
		for _, comp := range []string{"zstd", "gzip", "none"} {
			var buf bytes.Buffer
			enc, err := newEncoder[Row](format, comp, RowColumns, &buf)
			if err != nil {
				t.Fatal(err)
			}
			if err := enc.write(rows[:20]); err != nil {
				t.Fatal(err)
			}
			if err := enc.write(rows[20:]); err != nil {
				t.Fatal(err)
			}
			if err := enc.close(); err != nil {
				t.Fatal(err)
			}
			b := buf.Bytes()
			if format != FormatParquet {
				switch comp {
				case "zstd":
					d, _ := zstd.NewReader(bytes.NewReader(b))
					b, err = io.ReadAll(d)
				case "gzip":
					d, _ := gzip.NewReader(bytes.NewReader(b))
					b, err = io.ReadAll(d)
				}
				if err != nil {
					t.Fatalf("%s/%s: %v", format, comp, err)
				}
			}
			switch format {
			case FormatNDJSON:
				lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
				if len(lines) != len(rows) {
					t.Fatalf("ndjson/%s: %d lines", comp, len(lines))
				}
				for i, l := range lines {
					var r Row
					if err := json.Unmarshal([]byte(l), &r); err != nil || r.ID != rows[i].ID || !r.StartTime.Equal(rows[i].StartTime) ||
						(r.CostUSD == nil) != (rows[i].CostUSD == nil) || r.InputText != rows[i].InputText {
						t.Fatalf("ndjson/%s line %d: %s (%v)", comp, i, l, err)
					}
				}
			case FormatCSV:
				recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
				if err != nil || len(recs) != len(rows)+1 || strings.Join(recs[0], ",") != strings.Join(RowColumns, ",") {
					t.Fatalf("csv/%s: %d records, %v", comp, len(recs), err)
				}
				for i, rec := range recs[1:] {
					if len(rec) != len(RowColumns) || rec[0] != rows[i].ID || rec[3] != rows[i].StartTime.Format(TimeLayout) ||
						rec[10] != rows[i].Model || rec[20] != rows[i].InputText {
						t.Fatalf("csv/%s record %d: %q", comp, i, rec)
					}
				}
			case FormatParquet:
				got := make([]Row, len(rows))
				r := parquet.NewGenericReader[Row](bytes.NewReader(b))
				n, err := r.Read(got)
				if (err != nil && err != io.EOF) || n != len(rows) {
					t.Fatalf("parquet/%s: %d rows, %v", comp, n, err)
				}
				for i := range rows {
					g, w := got[i], rows[i]
					if g.ID != w.ID || !g.StartTime.Equal(w.StartTime) || (g.FirstTokenTime == nil) != (w.FirstTokenTime == nil) ||
						(g.TTFTMS == nil) != (w.TTFTMS == nil) || len(g.Tags) != len(w.Tags) || g.Version != w.Version {
						t.Fatalf("parquet/%s row %d: %+v, want %+v", comp, i, g, w)
					}
				}
			}
		}
	}
}

func TestPartExtension(t *testing.T) {
	for _, c := range []struct{ format, comp, want string }{
		{FormatParquet, "zstd", ".parquet"}, {FormatCSV, "gzip", ".csv.gz"}, {FormatNDJSON, "zstd", ".ndjson.zst"}, {FormatNDJSON, "none", ".ndjson"},
	} {
		if got := extension(c.format, c.comp); got != c.want {
			t.Errorf("extension(%s, %s) = %s, want %s", c.format, c.comp, got, c.want)
		}
	}
}
