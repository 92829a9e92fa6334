package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/serve/usageapi"
)

// browserTZ is the browser's time zone in the dashboard test: days and
// "today" are New York days, not UTC ones.
const browserTZ = "America/New_York"

// chromiumPath finds Debian's chromium (deploy/local/chromium.sh installs
// it and prints CHROMIUM_PATH); missing, the test skips, or fails under CI.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("CHROMIUM_PATH"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	msg := "chromium not found: run `eval \"$(deploy/local/chromium.sh)\"`"
	if os.Getenv(harness.EnvCI) != "" {
		t.Fatal(msg + " (CI: failing instead of skipping)")
	}
	t.Skip(msg)
	return ""
}

// artifactsDir is where screenshots go: $CALLPIPE_TEST_ARTIFACTS/<test>, or
// a temporary directory.
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("CALLPIPE_TEST_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	dir = filepath.Join(dir, t.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser drives one headless Chromium tab.
type browser struct {
	t     *testing.T
	ctx   context.Context
	dir   string
	start time.Time
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 960),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	b := &browser{t: t, ctx: ctx, dir: artifactsDir(t), start: time.Now()}
	// The first Run starts the browser; it must not carry a timeout.
	if _, err := chromedp.Call(ctx, emulation.SetTimezoneOverride, emulation.SetTimezoneOverrideParams{TimezoneID: browserTZ}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return b
}

func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.shot("failed-" + strings.ReplaceAll(what, " ", "-"))
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// eval runs a JavaScript expression and decodes its (JSON) value into v.
func (b *browser) eval(expr string, v any) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[json.RawMessage](expr))
	if err != nil {
		b.t.Fatalf("browser: eval %s: %v", expr, err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		b.t.Fatalf("browser: eval %s: %v (%s)", expr, err, raw)
	}
}

// wait polls a JavaScript condition until it is true.
func (b *browser) wait(what, expr string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(15*time.Second))); err != nil {
		b.shot("failed-" + strings.ReplaceAll(what, " ", "-"))
		var state string
		b.eval(`document.getElementById("error-banner").textContent + " | " + document.getElementById("updated").textContent`, &state)
		b.t.Fatalf("browser: waiting for %s: %v (page: %s)", what, err, state)
	}
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	var s string
	b.eval(fmt.Sprintf(`(document.querySelector(%q) || {}).textContent || ""`, sel), &s)
	return strings.TrimSpace(s)
}

// setValue sets a form control and fires its change event, as a user's
// pick in the date picker or a select does.
func (b *browser) setValue(sel, value string) {
	b.t.Helper()
	var ok bool
	b.eval(fmt.Sprintf(`(() => { const e = document.querySelector(%q); if (!e) return false; e.value = %q;
		e.dispatchEvent(new Event("change", {bubbles: true})); return e.value === %q; })()`, sel, value, value), &ok)
	if !ok {
		b.t.Fatalf("browser: could not set %s to %q", sel, value)
	}
}

func (b *browser) shot(name string) {
	b.t.Logf("%s: %s", time.Since(b.start).Round(time.Millisecond), name)
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(b.dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	b.t.Logf("screenshot: %s", p)
}

// fmtInt formats n as the dashboard does (en-US grouping).
func fmtInt(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// TestServeDashboard loads the dashboard of a running `callpipe serve`
// (with a bearer token, a Langfuse host and a 1 s refresh) in headless
// Chromium against a seeded database, and checks that what it shows equals
// the API's answers: the overview cards and charts, the date picker, a
// polling refresh, the calls page with its filters and paging, a call's
// detail panel with the Pretty/JSON toggle and the Langfuse link, and the
// trace view. Screenshots go to $CALLPIPE_TEST_ARTIFACTS.
func TestServeDashboard(t *testing.T) {
	t0 := time.Now()
	out, db := chTestDB(t)
	ny, _ := time.LoadLocation(browserTZ)
	now := time.Now()
	todayStart := time.Date(now.In(ny).Year(), now.In(ny).Month(), now.In(ny).Day(), 0, 0, 0, 0, ny)
	// Calls over the last week — the seven New York dates the overview shows,
	// whatever the time of day the test runs at — and some surely today.
	weekStart := todayStart.AddDate(0, 0, -6)
	calls := serveCalls(21, "ui", 700, weekStart, now.Add(-time.Hour).Sub(weekStart))
	todayFrom := todayStart
	if now.Sub(todayFrom) > 3*time.Hour {
		todayFrom = now.Add(-3 * time.Hour)
	}
	calls = append(calls, serveCalls(22, "ui-today", 40, todayFrom, max(now.Sub(todayFrom)-time.Minute, time.Second))...)
	calls = seedServe(t, out, calls)
	const token = "dash-token"
	p := startServe(t, db, "CALLPIPE_SERVE_TOKENS="+token, "CALLPIPE_SERVE_REFRESH_INTERVAL=1s",
		"CALLPIPE_LANGFUSE_HOST=http://langfuse.test:3000", "CALLPIPE_SERVE_LANGFUSE_PROJECT_ID=proj-1")

	usage := func(from, to, groupBy string) usageapi.UsageResponse {
		t.Helper()
		var r usageapi.UsageResponse
		apiGet(t, p.base, "/api/v1/usage", url.Values{"from": {from}, "to": {to}, "group_by": {groupBy}, "tz": {browserTZ}}, token, http.StatusOK, &r)
		return r
	}
	today := now.In(ny).Format(time.DateOnly)
	weekAgo := now.In(ny).AddDate(0, 0, -6).Format(time.DateOnly)

	t.Logf("seeded and serving after %s", time.Since(t0).Round(time.Millisecond))
	b := newBrowser(t)
	t.Logf("browser up after %s", time.Since(t0).Round(time.Millisecond))
	b.do("open dashboard", chromedp.Navigate(p.base+"/"))
	// The server wants a token: the dashboard asks for it.
	b.wait("token prompt", `!document.getElementById("token-modal").hidden`)
	b.do("enter token", chromedp.SendKeys(chromedp.CSS("#token-input"), token), chromedp.Click(chromedp.CSS("#token-form button")))

	// Overview: cards and charts equal the API (last 7 days, today).
	checkOverview := func(from, to string) {
		t.Helper()
		day, rng, daily := usage(to, to, "model"), usage(from, to, "model"), usage(from, to, "day")
		want := map[string]string{
			"calls-today":   fmtInt(int64(day.Totals.Calls)),
			"input-tokens":  fmtInt(rng.Totals.InputTokens),
			"output-tokens": fmtInt(rng.Totals.OutputTokens),
			"calls-range":   fmtInt(int64(rng.Totals.Calls)),
		}
		// the daily chart's points too: a range whose cards equal the
		// previous range's (every seeded call is in the last week) would
		// otherwise be read before its charts are drawn
		cond := []string{fmt.Sprintf(`document.querySelectorAll('#chart-daily-calls g.pt').length === %d`, len(daily.Rows))}
		for id, v := range want {
			cond = append(cond, fmt.Sprintf(`document.querySelector('[data-testid=%q]').textContent === %q`, id, v))
		}
		b.wait(fmt.Sprintf("overview cards %s..%s = %v, %d daily points", from, to, want, len(daily.Rows)), strings.Join(cond, " && "))
		var bars map[string]float64
		b.eval(`Object.fromEntries([...document.querySelectorAll('#chart-model-calls g[data-label]')].map(g => [g.dataset.label, +g.querySelector('rect').dataset.value]))`, &bars)
		if len(bars) != len(day.Rows) {
			t.Errorf("calls-per-model chart: %d bars, API %d models", len(bars), len(day.Rows))
		}
		for _, r := range day.Rows {
			if bars[*r.Model] != float64(r.Calls) {
				t.Errorf("calls-per-model chart %s: %v, API %d", *r.Model, bars[*r.Model], r.Calls)
			}
		}
		var tok map[string][]float64
		b.eval(`Object.fromEntries([...document.querySelectorAll('#chart-model-tokens g[data-label]')].map(g => [g.dataset.label, [...g.querySelectorAll('rect')].map(r => +r.dataset.value)]))`, &tok)
		for _, r := range rng.Rows {
			if v := tok[*r.Model]; len(v) != 2 || v[0] != float64(r.InputTokens) || v[1] != float64(r.OutputTokens) {
				t.Errorf("tokens-per-model chart %s: %v, API in %d out %d", *r.Model, v, r.InputTokens, r.OutputTokens)
			}
		}
		var trend []struct {
			Day   string  `json:"day"`
			Calls float64 `json:"calls"`
			In    float64 `json:"in"`
			Out   float64 `json:"out"`
		}
		b.eval(`[...document.querySelectorAll('#chart-daily-calls g.pt')].map(g => {
			const t = document.querySelector('#chart-daily-tokens g.pt[data-day="' + g.dataset.day + '"]');
			return {day: g.dataset.day, calls: +g.querySelector('circle').dataset.value,
				in: +t.querySelector('[data-series=input_tokens]').dataset.value, out: +t.querySelector('[data-series=output_tokens]').dataset.value};
		})`, &trend)
		if len(trend) != len(daily.Rows) {
			t.Fatalf("daily charts: %d days, API %d", len(trend), len(daily.Rows))
		}
		for i, r := range daily.Rows {
			if trend[i].Day != *r.Day || trend[i].Calls != float64(r.Calls) || trend[i].In != float64(r.InputTokens) || trend[i].Out != float64(r.OutputTokens) {
				t.Errorf("daily charts day %d: %+v, API %s calls %d in %d out %d", i, trend[i], *r.Day, r.Calls, r.InputTokens, r.OutputTokens)
			}
		}
	}
	checkOverview(weekAgo, today)
	if d := usage(weekAgo, today, "day"); len(d.Rows) != 7 || d.Totals.Calls != uint64(len(calls)) {
		t.Fatalf("seeded week: %d days, %d calls, want 7 days, %d calls", len(d.Rows), d.Totals.Calls, len(calls))
	}
	b.shot("01-overview")
	checkSourceCostLatency(t, b, usage(weekAgo, today, "source"), usage(weekAgo, today, "model"), usage(weekAgo, today, "day"))
	b.do("scroll to cost and latency", chromedp.ScrollIntoView(chromedp.CSS("#chart-model-latency")))
	b.shot("01b-overview-cost-latency")

	// The date picker: three days ending yesterday.
	from3, to3 := now.In(ny).AddDate(0, 0, -3).Format(time.DateOnly), now.In(ny).AddDate(0, 0, -1).Format(time.DateOnly)
	b.setValue("#range-to", to3)
	b.setValue("#range-from", from3)
	checkOverview(from3, to3)
	if got := b.text("#calls-today-label"); !strings.HasPrefix(got, "Calls on ") {
		t.Errorf("card label for a past day: %q", got)
	}
	b.shot("02-overview-date-range")

	// Polling: new calls today show up without a page reload.
	// 30 days: every day of the range charted, the numbers still the API's.
	b.do("preset 30 days", chromedp.Click(chromedp.CSS(`[data-preset="30"]`)))
	from30 := now.In(ny).AddDate(0, 0, -29).Format(time.DateOnly)
	checkOverview(from30, today)
	checkSourceCostLatency(t, b, usage(from30, today, "source"), usage(from30, today, "model"), usage(from30, today, "day"))
	var points int
	b.eval(`document.querySelectorAll('#chart-daily-calls g.pt').length`, &points)
	if points != 30 {
		t.Errorf("30-day range: %d daily points, want 30", points)
	}
	b.shot("02b-overview-30-days")
	b.do("preset 7 days", chromedp.Click(chromedp.CSS(`[data-preset="7"]`)))
	checkOverview(weekAgo, today)
	// A slow answer for an older range never overwrites a newer one: the
	// 30-day answers are held back 1.5 s while 7 days is picked, and every
	// drawing of the daily chart from then on is recorded (a poll would
	// redraw the 7 days a second later).
	b.eval(fmt.Sprintf(`(() => {
		window.__fetch = window.fetch; window.__held = 0; window.__released = 0; window.__drawn = [];
		const f = (u, o) => window.__fetch.call(window, u, o);
		window.fetch = (u, o) => String(u).includes("from=%s")
			? (window.__held++, new Promise((r) => setTimeout(r, 1500)).then(() => f(u, o)).finally(() => window.__released++))
			: f(u, o);
		new MutationObserver(() => window.__drawn.push(document.querySelectorAll('#chart-daily-calls g.pt').length))
			.observe(document.getElementById("chart-daily-calls"), { childList: true, subtree: true });
		return true; })()`, from30), new(bool))
	b.do("preset 30 days, then 7", chromedp.Click(chromedp.CSS(`[data-preset="30"]`)), chromedp.Click(chromedp.CSS(`[data-preset="7"]`)))
	checkOverview(weekAgo, today)
	b.wait("the held-back 30-day answers", `window.__held > 0 && window.__released === window.__held`)
	time.Sleep(500 * time.Millisecond) // drawn, if they were to be
	var drawn []int
	b.eval(`window.__drawn`, &drawn)
	if len(drawn) == 0 || slices.ContainsFunc(drawn, func(n int) bool { return n != 7 }) {
		t.Errorf("daily chart drawn with %v points after 7 days was picked: a 30-day answer arriving late overwrote it", drawn)
	}
	b.eval(`(window.fetch = window.__fetch, true)`, new(bool))
	b.eval(`(window.__noReload = true)`, new(bool))
	before := usage(today, today, "model").Totals.Calls
	fresh := serveCalls(23, "ui-fresh", 3, now.Add(-20*time.Second), 10*time.Second)
	for i := range fresh {
		fresh[i].StartTime, fresh[i].EndTime = time.Now().Add(-2*time.Second), time.Now()
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	if err := out.WriteBatch(wctx, fresh); err != nil {
		t.Fatal(err)
	}
	wcancel()
	if after := usage(today, today, "model").Totals.Calls; after != before+3 {
		t.Fatalf("API today: %d calls after inserting 3 to %d", after, before)
	}
	b.wait("polled refresh", fmt.Sprintf(`document.querySelector('[data-testid="calls-today"]').textContent === %q && window.__noReload === true`, fmtInt(int64(before+3))))
	calls = append(calls, fresh...)

	// Calls page: the newest calls first, as the API lists them.
	listAPI := func(params url.Values) usageapi.CallsResponse {
		t.Helper()
		var r usageapi.CallsResponse
		params.Set("tz", browserTZ)
		params.Set("from", weekAgo)
		params.Set("to", today)
		params.Set("limit", "50")
		apiGet(t, p.base, "/api/v1/calls", params, token, http.StatusOK, &r)
		return r
	}
	rowIDs := `[...document.querySelectorAll('#calls-body tr')].map(r => r.dataset.id)`
	waitRows := func(what string, want usageapi.CallsResponse) {
		t.Helper()
		ids := make([]string, len(want.Calls))
		for i, c := range want.Calls {
			ids[i] = c.ID
		}
		wantJSON, _ := json.Marshal(ids)
		b.wait(what, fmt.Sprintf(`JSON.stringify(%s) === %q`, rowIDs, wantJSON))
	}
	b.do("calls tab", chromedp.Click(chromedp.CSS(`[data-tab="calls"]`)))
	all := listAPI(url.Values{})
	waitRows("calls list", all)
	if all.NextCursor == "" {
		t.Fatal("API: expected more than one page of calls")
	}
	b.do("load more", chromedp.Click(chromedp.CSS("#calls-more")))
	b.wait("second page", fmt.Sprintf(`%s.length > 50`, rowIDs))
	b.shot("03-calls")

	// Filters: user (with a quote in the name), then model, then errors only.
	b.wait("user options", `[...document.querySelectorAll('#f-user option')].some(o => o.value === "o'brien")`)
	b.setValue("#f-user", "o'brien")
	waitRows("user filter", listAPI(url.Values{"user": {"o'brien"}}))
	b.setValue("#f-model", "qwen2.5-7b")
	waitRows("user+model filter", listAPI(url.Values{"user": {"o'brien"}, "model": {"qwen2.5-7b"}}))
	b.setValue("#f-status", "error")
	waitRows("user+model+error filter", listAPI(url.Values{"user": {"o'brien"}, "model": {"qwen2.5-7b"}, "status": {"error"}}))
	var users []string
	b.eval(`[...document.querySelectorAll('#calls-body tr td:nth-child(3)')].map(td => td.textContent)`, &users)
	for _, u := range users {
		if u != "o'brien" {
			t.Errorf("user filter shows a call of %q", u)
		}
	}
	b.shot("04-calls-filtered")
	b.setValue("#f-status", "")
	b.setValue("#f-model", "")
	filtered := listAPI(url.Values{"user": {"o'brien"}})
	waitRows("user filter again", filtered)

	// A call's detail: numbers equal the API's; Pretty/JSON; Langfuse link.
	var chat *usageapi.CallResponse
	for _, c := range filtered.Calls {
		if c.Kind == schema.KindChat && c.TTFTMS != nil {
			var d usageapi.CallResponse
			apiGet(t, p.base, "/api/v1/calls/"+url.PathEscape(c.ID), nil, token, http.StatusOK, &d)
			chat = &d
			break
		}
	}
	if chat == nil {
		t.Fatal("no chat call with TTFT in the filtered list")
	}
	b.do("open call", chromedp.Click(chromedp.CSS(fmt.Sprintf(`#calls-body tr[data-id=%q]`, chat.ID))))
	b.wait("detail panel", fmt.Sprintf(`!document.getElementById("drawer").hidden && document.getElementById("d-id").textContent === %q`, chat.ID))
	for sel, want := range map[string]string{
		`[data-testid="detail-tokens-in"]`:    fmtInt(chat.InputTokens),
		`[data-testid="detail-tokens-out"]`:   fmtInt(chat.OutputTokens),
		`[data-testid="detail-tokens-total"]`: fmtInt(chat.TotalTokens),
		`[data-testid="detail-instance"]`:     chat.Instance,
	} {
		if got := b.text(sel); got != want {
			t.Errorf("detail %s: %q, API %q", sel, got, want)
		}
	}
	if got, want := b.text(`[data-testid="detail-latency"]`), latencyText(chat.LatencyMS); got != want {
		t.Errorf("detail latency: %q, want %q (API %d ms)", got, want, chat.LatencyMS)
	}
	if got := b.text(`#d-input .msg:last-child .msg-text`); got != fmt.Sprint(chat.InputText) {
		t.Errorf("pretty input: %q, API input_text %q", got, chat.InputText)
	}
	if got := b.text(`#d-metadata`); !strings.Contains(got, "team") || !strings.Contains(got, "search") {
		t.Errorf("pretty metadata: %q", got)
	}
	var href string
	b.eval(`document.querySelector('[data-testid="langfuse-link"]').href`, &href)
	if want := "http://langfuse.test:3000/project/proj-1/traces/" + chat.TraceID; href != want || href != chat.LangfuseURL {
		t.Errorf("langfuse link %q, want %q (API %q)", href, want, chat.LangfuseURL)
	}
	b.shot("05-call-detail-pretty")
	b.do("JSON toggle", chromedp.Click(chromedp.CSS(`[data-fmt="json"]`)))
	var inputJSON string
	b.eval(`document.querySelector('#d-input pre[data-format=json]').textContent`, &inputJSON)
	var parsed any
	if err := json.Unmarshal([]byte(inputJSON), &parsed); err != nil || !strings.Contains(inputJSON, `"role": "user"`) {
		t.Errorf("JSON view of the input: %v: %s", err, inputJSON)
	}
	b.shot("06-call-detail-json")

	// The trace view: tree and timeline of the call's trace.
	var tr usageapi.TraceResponse
	apiGet(t, p.base, "/api/v1/traces/"+url.PathEscape(chat.TraceID), nil, token, http.StatusOK, &tr)
	if tr.Root.Calls < 3 || len(tr.Timeline) < 3 {
		t.Fatalf("trace %s has %d calls; the dashboard test needs one of at least 3", chat.TraceID, tr.Root.Calls)
	}
	b.do("view trace", chromedp.Click(chromedp.CSS(`[data-testid="detail-trace-link"]`)))
	b.wait("trace tree", fmt.Sprintf(`document.querySelectorAll('#trace-tree .node.call').length === %d && document.querySelector('[data-testid="trace-id"]').textContent === %q`,
		tr.Root.Calls, chat.TraceID))
	b.shot("07-trace-tree")
	b.do("timeline", chromedp.Click(chromedp.CSS(`[data-traceview="timeline"]`)))
	b.wait("timeline rows", fmt.Sprintf(`!document.getElementById("trace-timeline").hidden && document.querySelectorAll('#trace-timeline .tl-row').length === %d`, len(tr.Timeline)))
	b.shot("08-trace-timeline")
	b.do("open call from timeline", chromedp.Click(chromedp.CSS(fmt.Sprintf(`#trace-timeline .tl-row[data-node=%q]`, chat.ID))))
	b.wait("detail from timeline", fmt.Sprintf(`!document.getElementById("drawer").hidden && document.getElementById("d-id").textContent === %q`, chat.ID))

	// A session: its traces as children.
	sess := ""
	for _, c := range calls {
		if c.SessionID != "" {
			sess = c.SessionID
			break
		}
	}
	b.do("session view", chromedp.Navigate(p.base+"/#/trace/"+url.PathEscape(sess)), chromedp.Click(chromedp.CSS(`[data-traceview="tree"]`)))
	b.wait("session tree", `!document.getElementById("trace-tree").hidden && document.querySelectorAll('#trace-tree .node.trace').length >= 2 && document.querySelector('#trace-tree .node.session') !== null`)
	b.shot("09-session-tree")

	// Batches: one row per batch job with the API's numbers; a row opens the
	// calls page filtered to that batch.
	var batches usageapi.BatchesResponse
	apiGet(t, p.base, "/api/v1/batches", url.Values{"from": {weekAgo}, "to": {today}, "tz": {browserTZ}, "limit": {"500"}}, token, http.StatusOK, &batches)
	if len(batches.Batches) < 2 {
		t.Fatalf("API: %d batches, the seed has 2", len(batches.Batches))
	}
	b.setValue("#f-user", "") // the calls page's filters outlive the page
	b.do("batches tab", chromedp.Navigate(p.base+"/#/batches"))
	b.wait("batch rows", fmt.Sprintf(`document.querySelectorAll('#batches-body tr').length === %d`, len(batches.Batches)))
	var shown map[string][]string
	b.eval(`Object.fromEntries([...document.querySelectorAll('#batches-body tr')].map(r => [r.dataset.id,
		['calls', 'errors', 'input_tokens', 'output_tokens', 'duration'].map(c => r.querySelector('[data-col=' + c + ']').textContent)]))`, &shown)
	for _, bt := range batches.Batches {
		want := []string{fmtInt(int64(bt.Calls)), fmtInt(int64(bt.Errors)), fmtInt(bt.InputTokens), fmtInt(bt.OutputTokens), spanText(bt.DurationMS)}
		if got := shown[bt.BatchID]; strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("batch %s row %v, API %v", bt.BatchID, got, want)
		}
	}
	b.shot("10-batches")
	job := batches.Batches[0].BatchID
	b.do("open batch", chromedp.Click(chromedp.CSS(fmt.Sprintf(`#batches-body tr[data-id=%q]`, job))))
	b.wait("calls of the batch", fmt.Sprintf(`document.getElementById("f-batch").value === %q && document.getElementById("f-source").value === "batch"`, job))
	waitRows("batch filter", listAPI(url.Values{"source": {"batch"}, "batch_id": {job}}))
	var srcCol []string
	b.eval(`[...document.querySelectorAll('#calls-body tr td[data-col=source]')].map(td => td.textContent)`, &srcCol)
	for _, v := range srcCol {
		if v != "batch · "+job {
			t.Errorf("batch filter shows a call with source %q", v)
		}
	}
	b.shot("11-batch-calls")
	b.setValue("#f-source", "online")
	waitRows("online filter", listAPI(url.Values{"source": {"online"}}))
	// The Batch filter lists the range's batches once opened.
	b.eval(`document.getElementById("f-batch").dispatchEvent(new Event("focus")), true`, new(bool))
	var opts []string
	for _, bt := range batches.Batches {
		opts = append(opts, bt.BatchID)
	}
	slices.Sort(opts)
	wantOpts, _ := json.Marshal(append([]string{""}, opts...))
	b.wait("batch options", fmt.Sprintf(`JSON.stringify([...document.querySelectorAll('#f-batch option')].map(o => o.value)) === %q`, wantOpts))

	p.stop(t)
	t.Logf("dashboard test: %s", time.Since(t0).Round(time.Millisecond))
}

// checkSourceCostLatency compares the overview's source, cost and latency
// charts with the API's answers for the same range, tooltips included.
func checkSourceCostLatency(t *testing.T, b *browser, bySource, byModel, daily usageapi.UsageResponse) {
	t.Helper()
	var src map[string]float64
	b.eval(`Object.fromEntries([...document.querySelectorAll('#chart-source g[data-label]')].map(g => [g.dataset.label, +g.querySelector('rect').dataset.value]))`, &src)
	for _, r := range bySource.Rows {
		name := map[string]string{"online": "Online", "batch": "Batch"}[str(r.Source)]
		if src[name] != float64(r.Calls) {
			t.Errorf("calls-by-source chart %s: %v, API %d", name, src[name], r.Calls)
		}
	}
	if len(bySource.Rows) != 2 {
		t.Errorf("API group_by=source: %d rows, the seed has online and batch calls", len(bySource.Rows))
	}
	type bar struct {
		Values []float64 `json:"values"`
		Tips   []string  `json:"tips"`
	}
	read := func(chart string) map[string]bar {
		var m map[string]bar
		b.eval(fmt.Sprintf(`Object.fromEntries([...document.querySelectorAll('#%s g[data-label]')].map(g => [g.dataset.label, {
			values: [...g.querySelectorAll('rect')].map(r => +r.dataset.value), tips: [...g.querySelectorAll('rect title')].map(t => t.textContent)}]))`, chart), &m)
		return m
	}
	near := func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }
	cost, lat := read("chart-model-cost"), read("chart-model-latency")
	for _, r := range byModel.Rows {
		m := *r.Model
		if c := cost[m]; len(c.Values) != 1 || !near(c.Values[0], r.CostUSD) || c.Tips[0] != fmt.Sprintf("%s · Cost: $%.4f", m, r.CostUSD) {
			t.Errorf("cost-per-model chart %s: %+v, API %v", m, c, r.CostUSD)
		}
		l := lat[m]
		if len(l.Values) != 3 || l.Values[0] != r.LatencyP50 || l.Values[1] != r.LatencyP95 || l.Values[2] != r.LatencyP99 ||
			l.Tips[1] != m+" · p95: "+latencyTextF(r.LatencyP95) {
			t.Errorf("latency-per-model chart %s: %+v, API p50 %v p95 %v p99 %v", m, l, r.LatencyP50, r.LatencyP95, r.LatencyP99)
		}
	}
	var days []struct {
		Day  string    `json:"day"`
		Cost float64   `json:"cost"`
		Lat  []float64 `json:"lat"`
	}
	b.eval(`[...document.querySelectorAll('#chart-daily-latency g.pt')].map(g => ({day: g.dataset.day,
		cost: +document.querySelector('#chart-daily-cost g.pt[data-day="' + g.dataset.day + '"] circle').dataset.value,
		lat: [...g.querySelectorAll('circle')].map(c => +c.dataset.value)}))`, &days)
	if len(days) != len(daily.Rows) {
		t.Fatalf("daily latency chart: %d days, API %d", len(days), len(daily.Rows))
	}
	for i, r := range daily.Rows {
		d := days[i]
		if r.Calls == 0 { // no latency that day: a gap in the lines
			if d.Day != *r.Day || len(d.Lat) != 0 {
				t.Errorf("daily latency day %d without calls: %+v", i, d)
			}
			continue
		}
		if d.Day != *r.Day || !near(d.Cost, r.CostUSD) || len(d.Lat) != 3 || d.Lat[0] != r.LatencyP50 || d.Lat[1] != r.LatencyP95 || d.Lat[2] != r.LatencyP99 {
			t.Errorf("daily cost/latency day %d: %+v, API %s cost %v p50 %v p95 %v p99 %v", i, d, *r.Day, r.CostUSD, r.LatencyP50, r.LatencyP95, r.LatencyP99)
		}
	}
}

// spanText is how the dashboard shows a batch job's duration.
func spanText(ms int64) string {
	m := ms / 60000
	switch {
	case ms < 60000:
		return latencyText(ms)
	case m < 60:
		return fmt.Sprintf("%d min %d s", m, ms%60000/1000)
	case m < 1440:
		return fmt.Sprintf("%d h %d min", m/60, m%60)
	}
	return fmt.Sprintf("%d d %d h", m/1440, m%1440/60)
}

// latencyTextF is how the dashboard shows a latency percentile.
func latencyTextF(ms float64) string {
	switch {
	case ms >= 60000:
		return fmt.Sprintf("%.1f min", ms/60000)
	case ms >= 1000:
		return fmt.Sprintf("%.2f s", ms/1000)
	}
	return fmt.Sprintf("%d ms", int64(math.Round(ms)))
}

// latencyText is how the dashboard shows a latency.
func latencyText(ms int64) string {
	switch {
	case ms >= 60000:
		return fmt.Sprintf("%.1f min", float64(ms)/60000)
	case ms >= 1000:
		return fmt.Sprintf("%.2f s", float64(ms)/1000)
	}
	return fmt.Sprintf("%d ms", ms)
}

// TestServeSettingsPage drives the dashboard's Settings page of a running
// `callpipe serve` (Langfuse A configured) in headless Chromium against two
// Langfuse test servers: the configuration is shown as the source in
// effect; "Test connection" with a bad secret for B says the keys were
// refused; saving B's good keys makes "Saved in NATS KV — overrides the
// configuration" the source, with the secret masked; a test with the saved
// secret names B's project; "Reset to configuration" goes back to A. The
// page never holds a secret in clear. Screenshots go to
// $CALLPIPE_TEST_ARTIFACTS.
func TestServeSettingsPage(t *testing.T) {
	settingsStore(t)
	a := langfusetest.New(langfusetest.Options{PublicKey: "pk-lf-a", SecretKey: "sk-lf-a-secret-0001", ProjectID: "proj-a", ProjectName: "team-a"})
	defer a.Close()
	lfB := langfusetest.New(langfusetest.Options{PublicKey: "pk-lf-b", SecretKey: "sk-lf-b-secret-0002", ProjectID: "proj-b", ProjectName: "team-b"})
	defer lfB.Close()
	_, db := chTestDB(t)
	// No tokens: writes must be opened explicitly, and the Langfuse test
	// servers on 127.0.0.1 allowed to Test connection.
	p := startServe(t, db, "CALLPIPE_NATS_URL="+harness.NATS(t),
		"CALLPIPE_SERVE_ALLOW_UNAUTHENTICATED_WRITES=true", "CALLPIPE_SERVE_TEST_CONNECTION_ALLOW_PRIVATE=true",
		"LANGFUSE_HOST="+a.URL, "LANGFUSE_PUBLIC_KEY=pk-lf-a", "LANGFUSE_SECRET_KEY=sk-lf-a-secret-0001")
	waitSettingsAPI(t, p.base, "")

	b := newBrowser(t)
	b.do("open settings", chromedp.Navigate(p.base+"/#/settings"))
	b.wait("configuration in effect", fmt.Sprintf(`document.querySelector('[data-testid=lf-source]').dataset.source === "config" && document.getElementById("lf-host").value === %q`, a.URL))
	if got := b.text(`[data-testid=lf-source]`); !strings.Contains(got, "From configuration file / environment") {
		t.Errorf("source with only the configuration: %q", got)
	}
	var placeholder string
	b.eval(`document.getElementById("lf-sk").placeholder`, &placeholder)
	if placeholder != "sk-lf-…0001 (in effect; leave empty to keep)" {
		t.Errorf("secret placeholder: %q", placeholder)
	}
	b.shot("01-settings-config")

	// A bad secret for B: the keys are refused.
	b.setValue("#lf-host", lfB.URL)
	b.setValue("#lf-pk", "pk-lf-b")
	b.setValue("#lf-sk", "sk-lf-wrong-secret-9")
	if got := b.text("#lf-sk-hint"); !strings.Contains(got, "enter the secret key") {
		t.Errorf("secret hint for a new host and key: %q", got)
	}
	b.do("test bad key", chromedp.Click(chromedp.CSS("#lf-test")))
	b.wait("auth failure shown", `document.getElementById("lf-result").dataset.stage === "auth"`)
	if got := b.text(`#lf-result`); !strings.Contains(got, "Keys refused") || !strings.Contains(got, "refused the keys (401): check the public key pk-lf-b") {
		t.Errorf("bad key result: %q", got)
	}
	b.shot("02-settings-bad-key")

	// Save B's good keys: the saved settings are the source now.
	b.setValue("#lf-sk", "sk-lf-b-secret-0002")
	b.setValue("#lf-project", "proj-b")
	b.do("save", chromedp.Click(chromedp.CSS("#lf-save")))
	b.wait("saved source", `document.querySelector('[data-testid=lf-source]').dataset.source === "saved"`)
	if got := b.text(`[data-testid=lf-source]`); !strings.Contains(got, "Saved in NATS KV — overrides the configuration") || !strings.Contains(got, a.URL) {
		t.Errorf("source after saving: %q", got)
	}
	var skValue string
	b.eval(`document.getElementById("lf-sk").value + "|" + document.getElementById("lf-sk").placeholder`, &skValue)
	if skValue != "|sk-lf-…0002 (in effect; leave empty to keep)" {
		t.Errorf("secret field after saving: %q", skValue)
	}
	var view map[string]any
	apiGet(t, p.base, "/api/v1/settings/langfuse", nil, "", http.StatusOK, &view)
	if view["source"] != "saved" || view["host"] != lfB.URL || view["project_id"] != "proj-b" {
		t.Errorf("API after saving on the page: %v", view)
	}
	// Test with the saved secret (the field stays empty).
	b.do("test saved", chromedp.Click(chromedp.CSS("#lf-test")))
	b.wait("ok shown", `document.getElementById("lf-result").dataset.stage === "ok"`)
	if got := b.text(`#lf-result`); !strings.Contains(got, `connected to Langfuse 3.225.4, project "team-b" (proj-b)`) {
		t.Errorf("good key result: %q", got)
	}
	b.shot("03-settings-saved")

	// A new host with an empty secret is refused in the form.
	b.setValue("#lf-host", "http://elsewhere.example:3000")
	b.do("save elsewhere", chromedp.Click(chromedp.CSS("#lf-save")))
	b.wait("secret required", `!document.getElementById("lf-field-error").hidden && document.getElementById("lf-sk").classList.contains("invalid")`)

	b.do("reset", chromedp.Click(chromedp.CSS("#lf-reset")))
	b.wait("configuration again", fmt.Sprintf(`document.querySelector('[data-testid=lf-source]').dataset.source === "config" && document.getElementById("lf-host").value === %q && document.getElementById("lf-reset").disabled`, a.URL))
	b.shot("04-settings-reset")
	var html string
	b.eval(`document.documentElement.outerHTML`, &html)
	for _, s := range []string{"sk-lf-a-secret-0001", "sk-lf-b-secret-0002"} {
		if strings.Contains(html, s) {
			t.Errorf("the page holds the secret %s", s)
		}
	}
	p.stop(t)
}
