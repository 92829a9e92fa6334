package callsdb

import (
	"fmt"
	"io"
	"time"

	"github.com/callpipe/callpipe/internal/textout"
)

// WriteText writes st as `callpipe rollup status` shows it: indented JSON
// when asJSON, else one aligned line per figure, at most five hours listed
// per kind.
func (st RollupStatus) WriteText(w io.Writer, asJSON bool) error {
	if asJSON {
		return textout.JSONIndent(w, st)
	}
	fmt.Fprintf(w, "sealed through   %s (lag %s)\n", st.SealedThrough.Format(time.RFC3339), (time.Duration(st.LagSeconds) * time.Second).String())
	fmt.Fprintf(w, "sealable before  %s (seal_after %s)\n", st.SealableBefore.Format(time.RFC3339), st.SealAfter)
	fmt.Fprintf(w, "sealed           %d hours, %d days, %d weeks, %d local days and %d local weeks of clickhouse.rollup.zones, %d four weeks (per user alone)\n", st.SealedHours, st.SealedDays, st.SealedWeeks, st.SealedLocalDays, st.SealedLocalWeeks, st.SealedFourWeeks)
	if st.DaySoFarHours > 0 {
		fmt.Fprintf(w, "day so far       %s's first %d hours sealed as one (what reads of today read)\n", st.SealableBefore.Add(-time.Hour).Format(time.DateOnly), st.DaySoFarHours)
	}
	for _, d := range st.LocalDaysSoFar {
		fmt.Fprintf(w, "local day so far from %s (a zone's midnight): first %d hours sealed as one\n", d.Start.Format("2006-01-02T15:04Z"), d.Hours)
	}
	fmt.Fprintf(w, "unsealed hours   %d%s\n", len(st.Unsealed), hourList(st.Unsealed))
	fmt.Fprintf(w, "dirty hours      %d%s\n", len(st.Dirty), hourList(st.Dirty))
	if st.WithoutUserCopy > 0 {
		fmt.Fprintf(w, "without user copy %d seals (sealed before migration 0009: run `callpipe rollup rebuild` over them for fast user filters)\n", st.WithoutUserCopy)
	}
	if st.WithoutModelTotals > 0 {
		fmt.Fprintf(w, "without model totals %d hours (sealed before migration 0007: run `callpipe rollup rebuild` over them for fast percentiles per hour and model)\n", st.WithoutModelTotals)
	}
	if st.WithoutUserTotals > 0 {
		fmt.Fprintf(w, "without user totals %d hours (sealed by a build before hour seals were summed per user: run `callpipe rollup rebuild` over them for fast reads grouped by user)\n", st.WithoutUserTotals)
	}
	if st.WithoutModelCopy > 0 {
		fmt.Fprintf(w, "without model copy %d seals (sealed before migration 0008: run `callpipe rollup rebuild` over them for fast overviews without users)\n", st.WithoutModelCopy)
	}
	return nil
}

func hourList(hours []time.Time) string {
	s := ""
	for i, h := range hours {
		if i == 5 {
			return s + fmt.Sprintf(", ... (%d more)", len(hours)-5)
		}
		if i == 0 {
			s = ": "
		} else {
			s += ", "
		}
		s += h.Format("2006-01-02T15")
	}
	return s
}
