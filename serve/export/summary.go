package export

import (
	"context"
	"fmt"
	"io"
	"time"
)

// RunPrinting is Run as `callpipe export` shows it: a line naming the job
// and its range, then progress every second, on progress.
func (r *Runner) RunPrinting(ctx context.Context, spec Spec, rate float64, progress io.Writer) (*Result, error) {
	fmt.Fprintf(progress, "export %s: %s %s..%s → %s (%s, %s)\n", spec.JobID, spec.Source,
		spec.From.Format(time.RFC3339), spec.To.Format(time.RFC3339), spec.Dest, spec.Format, spec.Compression)
	pr := NewProgressPrinter(progress, spec.JobID, time.Second)
	res, err := r.Run(ctx, spec, RunOptions{Rate: rate, Progress: pr.Update})
	pr.Final()
	return res, err
}

// Summary is the one line that tells how a run to dest ended.
func (res *Result) Summary(dest string) string {
	m := res.Manifest
	if res.AlreadyDone {
		return fmt.Sprintf("export %s: already complete (%d rows in %d parts, finished %s); nothing written",
			res.JobID, m.Rows, len(m.Parts), m.FinishedAt.Format(time.RFC3339))
	}
	how := ""
	if res.Resumed {
		how = fmt.Sprintf(", resumed (attempt %d)", m.Attempts)
	}
	return fmt.Sprintf("export %s: done: %d rows in %d parts, %d bytes%s → %s/%s",
		res.JobID, m.Rows, len(m.Parts), m.Bytes, how, dest, ManifestName)
}
