package export

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// ProgressPrinter writes one progress line of a job at most every `every`,
// and the last one when asked (`callpipe export` on stderr).
type ProgressPrinter struct {
	w     io.Writer
	job   string
	every time.Duration
	mu    sync.Mutex
	last  time.Time
	p     *Progress
}

// NewProgressPrinter prints the progress of job to w.
func NewProgressPrinter(w io.Writer, job string, every time.Duration) *ProgressPrinter {
	return &ProgressPrinter{w: w, job: job, every: every}
}

// Update takes the newest progress and prints it when the last line is older than every.
func (pp *ProgressPrinter) Update(p Progress) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	pp.p = &p
	if time.Since(pp.last) >= pp.every {
		pp.last = time.Now()
		pp.print()
	}
}

// Final prints the newest progress.
func (pp *ProgressPrinter) Final() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.p != nil {
		pp.print()
	}
}

func (pp *ProgressPrinter) print() {
	p := pp.p
	est := ""
	if p.EstimatedRows > 0 {
		pct := min(100, float64(p.Rows)*100/float64(p.EstimatedRows))
		est = fmt.Sprintf(" of ≤%d (%.0f%%)", p.EstimatedRows, pct)
		if p.RowsPerSecond > 0 && p.Rows < p.EstimatedRows {
			eta := time.Duration(float64(p.EstimatedRows-p.Rows) / p.RowsPerSecond * float64(time.Second))
			est += fmt.Sprintf(", ETA ≤%s", eta.Round(time.Second))
		}
	}
	fmt.Fprintf(pp.w, "export %s: %d rows%s, %d parts, %.1f MB stored, %.0f rows/s, %.2f MB/s\n",
		pp.job, p.Rows, est, p.Parts, float64(p.Bytes)/1e6, p.RowsPerSecond, p.BytesPerSec/1e6)
}
