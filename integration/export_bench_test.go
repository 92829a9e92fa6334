package integration

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/callpipe/callpipe/serve/export"
)

// BenchmarkExport exports 20,000 calls (~2.5 KB of text each, 2 days,
// stored in ClickHouse 18.16) to MinIO in each format with default part and
// page sizes, and reports rows/s, MB/s of output and rows per CPU-second of
// this process (ClickHouse and MinIO run on the same machine and are not
// counted in the CPU time).
//
//	go test -run '^$' -bench BenchmarkExport -benchtime 2x ./integration
func BenchmarkExport(b *testing.B) {
	e := newExportEnv(b, 20000)
	from, to := exportBase, exportBase.Add(48*time.Hour)
	r := e.runner(b, export.Config{})
	for _, format := range []string{export.FormatParquet, export.FormatCSV, export.FormatNDJSON} {
		b.Run(format, func(b *testing.B) {
			var rows, bytes int64
			cpu0 := cpuTime()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				res, err := r.Run(context.Background(), export.Spec{From: from, To: to, Format: format,
					Dest: fmt.Sprintf("s3://%s/bench/%s-%d-%d", e.bucket, format, time.Now().UnixNano(), i)}, export.RunOptions{})
				if err != nil {
					b.Fatal(err)
				}
				rows += res.Manifest.Rows
				bytes += res.Manifest.Bytes
			}
			el := time.Since(start).Seconds()
			b.ReportMetric(float64(rows)/el, "rows/s")
			b.ReportMetric(float64(bytes)/el/1e6, "MB/s")
			if cpu := (cpuTime() - cpu0).Seconds(); cpu > 0 {
				b.ReportMetric(float64(rows)/cpu, "rows/cpu-s")
			}
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
