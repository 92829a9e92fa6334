package integration

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/callpipe/callpipe/serve/usageapi"
	"github.com/callpipe/callpipe/store/callsdb"
)

// TestServeDashboardAtScale opens the dashboard's "30 days" preset and a
// custom range over CALLPIPE_DASHBOARD_TEST_CALLS synthetic calls (2 million
// by default, 2 % stored twice) spread over the last 30 days with the
// rollups sealed (the browser's local days too): no error banner, the range
// card equals the API, the API answers from the sealed rollups and counts
// every call once.
func TestServeDashboardAtScale(t *testing.T) {
	n := uint64(2_000_000)
	if v := os.Getenv("CALLPIPE_DASHBOARD_TEST_CALLS"); v != "" {
		var err error
		if n, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	out, db := chTestDB(t)
	conn := out.Conn()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	now := time.Now()
	from := now.Add(-30 * 24 * time.Hour).Truncate(time.Hour)
	load := callsdb.SyntheticLoad{Calls: n, From: from, Span: now.Add(-time.Minute).Sub(from), Models: 12, Users: 200, DuplicatePercent: 2, Seed: 11}
	for lo := uint64(0); lo < n; lo += 2_500_000 {
		for _, st := range load.Statements(lo, min(lo+2_500_000, n)) {
			if err := conn.Exec(ctx, callsdb.WithDB(st, db)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// the browser's zone is in clickhouse.rollup.zones, as the README
	// advises: its local days are sealed too
	ny, _ := time.LoadLocation(browserTZ)
	if _, _, err := (&callsdb.Sealer{Conn: conn, Database: db, Zones: []*time.Location{ny}}).Rebuild(ctx, from, now, nil); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, db)
	distinct := func(fromDay, toDay string) uint64 {
		t.Helper()
		f, _ := time.ParseInLocation(time.DateOnly, fromDay, ny)
		to, _ := time.ParseInLocation(time.DateOnly, toDay, ny)
		var c uint64
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT toUInt64(uniqExact(id)) FROM %s.calls WHERE start_time >= toDateTime(%d, 'UTC') AND start_time < toDateTime(%d, 'UTC')",
			db, f.Unix(), to.AddDate(0, 0, 1).Unix())).Scan(&c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	b := newBrowser(t)
	b.do("open dashboard", chromedp.Navigate(p.base+"/"))
	check := func(what, fromDay, toDay string) {
		t.Helper()
		var r usageapi.UsageResponse
		t0 := time.Now()
		apiGet(t, p.base, "/api/v1/usage", url.Values{"from": {fromDay}, "to": {toDay}, "group_by": {"day,model"}, "tz": {browserTZ}}, "", http.StatusOK, &r)
		took := time.Since(t0)
		if want := distinct(fromDay, toDay); r.Totals.Calls != want || r.Percentiles != "histogram" {
			t.Fatalf("%s: API %d calls (%s percentiles), want %d from the sealed rollups", what, r.Totals.Calls, r.Percentiles, want)
		}
		b.wait(what+": range card = API", fmt.Sprintf(`document.querySelector('[data-testid="calls-range"]').textContent === %q && document.getElementById("error-banner").hidden`,
			fmtInt(int64(r.Totals.Calls))))
		t.Logf("%s [%s, %s]: %d calls, API answer in %s", what, fromDay, toDay, r.Totals.Calls, took.Round(time.Millisecond))
	}
	today := now.In(ny).Format(time.DateOnly)
	b.do("30 days preset", chromedp.Click(chromedp.CSS(`[data-preset="30"]`)))
	check("30 days", now.In(ny).AddDate(0, 0, -29).Format(time.DateOnly), today)
	b.shot("scale-30-days")
	cf, ct := now.In(ny).AddDate(0, 0, -20).Format(time.DateOnly), now.In(ny).AddDate(0, 0, -5).Format(time.DateOnly)
	b.setValue("#range-to", ct)
	b.setValue("#range-from", cf)
	check("custom range", cf, ct)
	b.shot("scale-custom-range")
}
