package callsdb

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestRollupStatusDaySoFar: `rollup status` shows the days so far (UTC and the zones'),
// as text and as JSON, and no lines for them when there are none.
func TestRollupStatusDaySoFar(t *testing.T) {
	st := RollupStatus{SealableBefore: time.Date(2026, 12, 7, 17, 0, 0, 0, time.UTC), DaySoFarHours: 17, SealedDays: 30,
		LocalDaysSoFar: []DaySoFar{{Start: time.Date(2026, 12, 7, 5, 0, 0, 0, time.UTC), Hours: 12}}}
	var text, js bytes.Buffer
	if err := st.WriteText(&text, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "day so far       2026-12-07's first 17 hours sealed as one") ||
		!strings.Contains(text.String(), "local day so far from 2026-12-07T05:00Z (a zone's midnight): first 12 hours sealed as one") {
		t.Fatalf("text:\n%s", text.String())
	}
	if err := st.WriteText(&js, true); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back["day_so_far_hours"] != float64(17) || back["sealed_days"] != float64(30) ||
		fmt.Sprint(back["local_days_so_far"]) != "[map[hours:12 start:2026-12-07T05:00:00Z]]" {
		t.Fatalf("json %s (err %v)", js.String(), err)
	}
	st.DaySoFarHours, st.LocalDaysSoFar = 0, nil
	text.Reset()
	if err := st.WriteText(&text, false); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(text.String(), "day so far") {
		t.Fatalf("a day so far line without one:\n%s", text.String())
	}
}
