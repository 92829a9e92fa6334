package clickhouse

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/callpipe/callpipe/store/callsdb"
)

// TestRollupMetricsKinds: each kind of seal a pass reports is counted under
// its own label (an hour sealed again only as reseal, a day so far apart
// from whole days), and a failed pass counts an error without moving the
// sealed-through gauge.
func TestRollupMetricsKinds(t *testing.T) {
	m := newRollupMetrics(prometheus.NewRegistry())
	through := time.Date(2026, 12, 7, 5, 0, 0, 0, time.UTC)
	m.observe(callsdb.PassResult{HoursSealed: 5, Resealed: 2, EmptyHours: 3, DaysSealed: 1, DaysSoFarSealed: 2,
		WeeksSealed: 4, FourWeeksSealed: 6, SealedThrough: through, DirtyHours: 7}, nil, time.Second)
	want := map[string]float64{"hour": 3, "reseal": 2, "empty_hour": 3, "day": 1, "day_so_far": 2, "week": 4, "four_weeks": 6}
	for kind, n := range want {
		if got := value(t, m.seals.WithLabelValues(kind)); got != n {
			t.Errorf("seals{kind=%q} = %v, want %v", kind, got, n)
		}
	}
	if got := value(t, m.sealedThrough); got != float64(through.Unix()) {
		t.Errorf("sealed through = %v, want %d", got, through.Unix())
	}
	if got := value(t, m.dirty); got != 7 {
		t.Errorf("dirty = %v, want 7", got)
	}
	m.observe(callsdb.PassResult{DaysSoFarSealed: 1}, errors.New("clickhouse down"), time.Second)
	if got := value(t, m.errors); got != 1 {
		t.Errorf("errors = %v, want 1", got)
	}
	if got := value(t, m.seals.WithLabelValues("day_so_far")); got != 3 {
		t.Errorf("seals{kind=\"day_so_far\"} after a failed pass = %v, want 3 (what it sealed counts)", got)
	}
	if got := value(t, m.sealedThrough); got != float64(through.Unix()) {
		t.Errorf("sealed through moved on a failed pass: %v", got)
	}
}

// value is the value of a counter or gauge.
func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}
