package replay

import (
	"fmt"
	"time"
)

// Summary is the line `callpipe replay` prints about a run: stopped (and
// checkpointed), finished earlier, a dry run's counts, or what it published.
func (res *Result) Summary(dryRun, stopped bool) string {
	switch {
	case stopped:
		return fmt.Sprintf("replay %s: stopped after %d calls published (checkpointed); run the same command again to resume", res.Job, res.Published)
	case res.AlreadyDone:
		return fmt.Sprintf("replay %s: already finished earlier (%d calls published); nothing sent. Use another --job to replay again.", res.Job, res.Published)
	case dryRun:
		return fmt.Sprintf("replay %s (dry run): %d objects, %d lines, %d calls match, %d undecodable", res.Job, res.Objects, res.Lines, res.Matched, res.Undecodable)
	}
	dups := fmt.Sprintf("%d duplicates", res.Duplicates)
	if res.Batched > 0 { // JetStream acks a fast batch as a whole: its duplicates are unknown
		dups = fmt.Sprintf("%d in fast batches, duplicates not counted; %d duplicates among the others", res.Batched, res.Duplicates)
	}
	return fmt.Sprintf("replay %s: done: %d objects (%d finished earlier), %d calls published (%s), %d undecodable lines skipped, %s",
		res.Job, res.Objects, res.Resumed, res.Published, dups, res.Undecodable, res.Elapsed.Round(time.Millisecond))
}
