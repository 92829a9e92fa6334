// callpipe dashboard: overview, calls and trace views over /api/v1.
// Plain JavaScript, no dependencies; charts are SVG drawn below.
"use strict";

const TZ = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const SVGNS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

const state = {
  from: "", to: "",          // YYYY-MM-DD in TZ, inclusive
  view: "overview",
  meta: { refresh_seconds: 15, langfuse: false },
  filters: { user: "", model: "", status: "", source: "", batch_id: "" },
  cursor: "", pages: 0, listGen: 0, listBusy: 0, overviewGen: 0,
  fmt: "pretty",
  detail: null,
  traceID: "", traceView: "tree",
  settings: null,           // GET /api/v1/settings/langfuse (secret masked)
  timer: null,
};

// ---------- helpers ----------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) el.setAttribute(k, v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

const nf = new Intl.NumberFormat("en-US");
const fmtInt = (n) => nf.format(n);
function fmtCompact(n) {
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "B";
  if (a >= 1e6) return (n / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e3) return (n / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
  return String(Math.round(n));
}
function fmtMS(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 60000) return (ms / 60000).toFixed(1) + " min";
  if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
  return Math.round(ms) + " ms";
}
// fmtSpan shows how long a batch job ran: hours and days read better than
// thousands of minutes.
function fmtSpan(ms) {
  if (ms < 60000) return fmtMS(ms);
  const m = Math.floor(ms / 60000);
  if (m < 60) return `${m} min ${Math.floor((ms % 60000) / 1000)} s`;
  if (m < 1440) return `${Math.floor(m / 60)} h ${m % 60} min`;
  return `${Math.floor(m / 1440)} d ${Math.floor((m % 1440) / 60)} h`;
}
const fmtCost = (c) => (c === null || c === undefined ? "–" : "$" + (c < 0.01 ? c.toFixed(6) : c.toFixed(4)));
const dtf = new Intl.DateTimeFormat("en-GB", { timeZone: TZ, year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
const fmtTime = (iso) => dtf.format(new Date(iso));

// ymd returns YYYY-MM-DD of date d in TZ.
function ymd(d) {
  const p = new Intl.DateTimeFormat("en-CA", { timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit" }).formatToParts(d);
  const g = (t) => p.find((x) => x.type === t).value;
  return `${g("year")}-${g("month")}-${g("day")}`;
}
function addDays(day, n) {
  const [y, m, d] = day.split("-").map(Number);
  const t = new Date(Date.UTC(y, m - 1, d + n));
  return t.toISOString().slice(0, 10);
}
function dayLabel(day) {
  const [y, m, d] = day.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d)).toLocaleDateString("en-US", { month: "short", day: "numeric", timeZone: "UTC" });
}

// ---------- API ----------

class HTTPError extends Error {
  constructor(status, body) { super(body && body.error ? body.error : "HTTP " + status); this.status = status; }
}

async function api(path, params) {
  const url = new URL(path, location.href);
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== undefined && v !== null) url.searchParams.set(k, v);
  const headers = { Accept: "application/json" };
  const tok = localStorage.getItem("callpipe.token");
  if (tok) headers.Authorization = "Bearer " + tok;
  const r = await fetch(url, { headers });
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401) { askToken(); throw new HTTPError(401, body); }
  if (!r.ok) throw new HTTPError(r.status, body);
  return body;
}

function askToken() {
  $("token-modal").hidden = false;
  $("token-input").focus();
}

function showError(err) {
  const b = $("error-banner");
  if (!err) { b.hidden = true; b.textContent = ""; return; }
  b.hidden = false;
  b.textContent = "Could not load data: " + err.message;
}

function markUpdated() {
  $("updated").textContent = "Updated " + new Date().toLocaleTimeString("en-GB", { timeZone: TZ, hour12: false }) +
    " · refreshes every " + state.meta.refresh_seconds + " s";
}

// ---------- charts ----------

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function emptyChart(el, text) {
  el.replaceChildren(h("div", { class: "empty" }, text));
}

// hbars draws horizontal bars: items [{label, values: [..]}], one bar per
// series (stacked vertically inside a row).
function hbars(el, items, series) {
  if (!items.length) return emptyChart(el, "No calls in this period.");
  const W = 560, labelW = 170, valueW = 90, barH = 14, gap = 4, rowPad = 12;
  const rowH = series.length * barH + (series.length - 1) * gap + rowPad;
  const H = items.length * rowH + 8;
  const max = Math.max(1, ...items.flatMap((i) => i.values));
  const scale = (W - labelW - valueW) / max;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  items.forEach((it, r) => {
    const y0 = 4 + r * rowH;
    const g = s("g", { "data-label": it.label });
    // Long names are cut to fit left of the bars; hovering shows the whole name.
    g.append(s("text", { x: labelW - 10, y: y0 + (rowH - rowPad) / 2 + 4, "text-anchor": "end", class: "label" },
      s("title", {}, it.label), truncate(it.label, 24)));
    series.forEach((ser, k) => {
      const y = y0 + k * (barH + gap);
      const f = ser.fmt || fmtInt;
      const w = Math.max(it.values[k] * scale, it.values[k] > 0 ? 2 : 0);
      g.append(s("rect", { x: labelW, y, width: w, height: barH, rx: 3, class: ser.cls, "data-series": ser.key, "data-value": it.values[k] },
        s("title", {}, `${it.label} · ${ser.name}: ${f(it.values[k])}`)));
      g.append(s("text", { x: labelW + w + 6, y: y + barH - 3, class: "value" }, f(it.values[k])));
    });
    svg.append(g);
  });
  const wrap = [];
  if (series.length > 1) wrap.push(legend(series));
  wrap.push(svg);
  el.replaceChildren(...wrap);
}

function legend(series) {
  return h("div", { class: "legend" }, series.map((x) => h("span", {}, h("i", { class: x.sw }), x.name)));
}

function truncate(t, n) { return t.length > n ? t.slice(0, n - 1) + "…" : t; }

// columns draws a daily chart: points [{day, values: [..]}]; mode "line"
// draws series 0 as an area line, "lines" every series as a line, "stack"
// stacks the series as bars. A series' fmt formats its exact values in the
// tooltips (default: integers); axis labels are compact.
function columns(el, points, series, mode) {
  if (!points.length) return emptyChart(el, "No days in this period.");
  const W = 560, H = 240, L = 48, R = 12, T = 12, B = 28;
  const f = (k) => series[k].fmt || fmtInt;
  // In "lines" a null value (a day without calls has no latency) is a gap.
  const totals = points.map((p) => (mode === "stack" ? p.values.reduce((a, b) => a + b, 0) : mode === "lines" ? Math.max(0, ...p.values.filter((v) => v !== null)) : p.values[0]));
  const max = niceMax(Math.max(...totals));
  const iw = W - L - R, ih = H - T - B;
  const step = iw / points.length;
  const y = (v) => T + ih - (v / max) * ih;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  for (let i = 0; i <= 4; i++) {
    const v = (max / 4) * i;
    svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: i === 0 ? "axis" : "grid" }));
    svg.append(s("text", { x: L - 8, y: y(v) + 4, "text-anchor": "end" }, (series[0].axis || fmtCompact)(v)));
  }
  const every = Math.ceil(points.length / 10);
  points.forEach((p, i) => {
    if (i % every === 0) svg.append(s("text", { x: L + step * (i + 0.5), y: H - 8, "text-anchor": "middle" }, dayLabel(p.day)));
  });
  if (mode === "stack") {
    const bw = Math.min(36, step * 0.6);
    points.forEach((p, i) => {
      const g = s("g", { class: "pt", "data-day": p.day });
      let acc = 0;
      series.forEach((ser, k) => {
        const v = p.values[k];
        g.append(s("rect", { x: L + step * (i + 0.5) - bw / 2, y: y(acc + v), width: bw, height: Math.max(0, y(acc) - y(acc + v)),
          class: ser.cls, "data-series": ser.key, "data-value": v },
        s("title", {}, `${p.day} · ${ser.name}: ${f(k)(v)}`)));
        acc += v;
      });
      svg.append(g);
    });
  } else if (mode === "lines") {
    const xs = points.map((_, i) => L + step * (i + 0.5));
    series.forEach((ser, k) => {
      let d = "", pen = "M";
      points.forEach((p, i) => {
        if (p.values[k] === null) { pen = "M"; return; }
        d += `${pen}${xs[i].toFixed(1)},${y(p.values[k]).toFixed(1)}`;
        pen = "L";
      });
      if (d) svg.append(s("path", { d, class: "line " + ser.cls }));
    });
    points.forEach((p, i) => {
      const tip = `${p.day} · ` + series.map((ser, k) => `${ser.name}: ${f(k)(p.values[k])}`).join(" · ");
      svg.append(s("g", { class: "pt", "data-day": p.day }, series.map((ser, k) => p.values[k] === null ? null :
        s("circle", { cx: xs[i], cy: y(p.values[k]), r: 3.5, class: "dot " + ser.cls, "data-series": ser.key, "data-value": p.values[k] },
          s("title", {}, tip)))));
    });
  } else {
    const xs = points.map((_, i) => L + step * (i + 0.5));
    const d = points.map((p, i) => `${i ? "L" : "M"}${xs[i].toFixed(1)},${y(p.values[0]).toFixed(1)}`).join("");
    svg.append(s("path", { d: `${d}L${xs[xs.length - 1].toFixed(1)},${y(0)}L${xs[0].toFixed(1)},${y(0)}Z`, class: "area" }));
    svg.append(s("path", { d, class: "line" }));
    points.forEach((p, i) => {
      svg.append(s("g", { class: "pt", "data-day": p.day },
        s("circle", { cx: xs[i], cy: y(p.values[0]), r: 3.5, class: "dot", "data-series": series[0].key, "data-value": p.values[0] },
          s("title", {}, `${p.day} · ${series[0].name}: ${f(0)(p.values[0])}`))));
    });
  }
  el.replaceChildren(...(series.length > 1 ? [legend(series), svg] : [svg]));
}

// ---------- overview ----------

// loadOverview draws the overview of the range. A newer load makes the
// answers of older ones stale: a slow 30-day answer (or poll) arriving after
// the user picked 7 days never overwrites them.
async function loadOverview() {
  const base = { tz: TZ };
  const gen = ++state.overviewGen;
  const [day, range, daily, sources] = await Promise.all([
    api("api/v1/usage", { ...base, from: state.to, to: state.to, group_by: "model", percentiles: "false" }),
    api("api/v1/usage", { ...base, from: state.from, to: state.to, group_by: "model" }),
    api("api/v1/usage", { ...base, from: state.from, to: state.to, group_by: "day" }),
    api("api/v1/usage", { ...base, from: state.from, to: state.to, group_by: "day,source", percentiles: "false" }),
  ]);
  if (gen !== state.overviewGen) return;
  const isToday = state.to === ymd(new Date());
  $("calls-today-label").textContent = isToday ? "Calls today" : "Calls on " + dayLabel(state.to);
  $("model-calls-title").textContent = isToday ? "Calls per model today" : "Calls per model on " + dayLabel(state.to);
  document.querySelector('[data-testid="calls-today"]').textContent = fmtInt(day.totals.calls);
  $("calls-today-foot").textContent = day.totals.errors ? fmtInt(day.totals.errors) + " errors" : "no errors";
  document.querySelector('[data-testid="input-tokens"]').textContent = fmtInt(range.totals.input_tokens);
  document.querySelector('[data-testid="output-tokens"]').textContent = fmtInt(range.totals.output_tokens);
  document.querySelector('[data-testid="calls-range"]').textContent = fmtInt(range.totals.calls);
  const rangeText = state.from === state.to ? dayLabel(state.from) : `${dayLabel(state.from)} – ${dayLabel(state.to)}`;
  document.querySelectorAll(".range-foot").forEach((e) => { e.textContent = rangeText; });

  const byCalls = [...day.rows].sort((a, b) => b.calls - a.calls);
  hbars($("chart-model-calls"), byCalls.map((r) => ({ label: r.model, values: [r.calls] })),
    [{ key: "calls", name: "Calls", cls: "bar-calls", sw: "sw-calls" }]);
  const byTokens = [...range.rows].sort((a, b) => b.total_tokens - a.total_tokens);
  hbars($("chart-model-tokens"), byTokens.map((r) => ({ label: r.model, values: [r.input_tokens, r.output_tokens] })),
    [{ key: "input_tokens", name: "Input", cls: "bar-in", sw: "sw-in" }, { key: "output_tokens", name: "Output", cls: "bar-out", sw: "sw-out" }]);
  columns($("chart-daily-calls"), daily.rows.map((r) => ({ day: r.day, values: [r.calls] })),
    [{ key: "calls", name: "Calls" }], "line");
  columns($("chart-daily-tokens"), daily.rows.map((r) => ({ day: r.day, values: [r.input_tokens, r.output_tokens] })),
    [{ key: "input_tokens", name: "Input", cls: "bar-in", sw: "sw-in" }, { key: "output_tokens", name: "Output", cls: "bar-out", sw: "sw-out" }], "stack");

  // Online / batch: one stacked column per day, and the range's totals.
  const bySource = {};
  for (const r of sources.rows) (bySource[r.day] ||= { online: 0, batch: 0 })[r.source] = r.calls;
  const days = daily.rows.map((r) => r.day);
  const SOURCES = [{ key: "online", name: "Online", cls: "bar-in", sw: "sw-in" }, { key: "batch", name: "Batch", cls: "bar-out", sw: "sw-out" }];
  columns($("chart-daily-source"), days.map((d) => ({ day: d, values: [(bySource[d] || {}).online || 0, (bySource[d] || {}).batch || 0] })), SOURCES, "stack");
  const srcTotals = { online: 0, batch: 0 };
  for (const r of sources.rows) srcTotals[r.source] = (srcTotals[r.source] || 0) + r.calls;
  hbars($("chart-source"), range.totals.calls ? SOURCES.map((x) => ({ label: x.name, values: [srcTotals[x.key] || 0] })) : [],
    [{ key: "calls", name: "Calls", cls: "bar-calls", sw: "sw-calls" }]);

  // Cost and latency per model over the range, and their daily trend.
  const COST = [{ key: "cost_usd", name: "Cost", cls: "bar-calls", sw: "sw-calls", fmt: fmtCost, axis: fmtCostAxis }];
  hbars($("chart-model-cost"), [...range.rows].sort((a, b) => b.cost_usd - a.cost_usd).map((r) => ({ label: r.model, values: [r.cost_usd] })), COST);
  columns($("chart-daily-cost"), daily.rows.map((r) => ({ day: r.day, values: [r.cost_usd] })), COST, "line");
  const LAT = [
    { key: "latency_ms_p50", name: "p50", cls: "bar-in", sw: "sw-in", fmt: fmtMS, axis: fmtMSAxis },
    { key: "latency_ms_p95", name: "p95", cls: "bar-out", sw: "sw-out", fmt: fmtMS },
    { key: "latency_ms_p99", name: "p99", cls: "bar-p99", sw: "sw-p99", fmt: fmtMS },
  ];
  const lat = (r) => LAT.map((x) => r[x.key]);
  hbars($("chart-model-latency"), [...range.rows].sort((a, b) => b.latency_ms_p95 - a.latency_ms_p95).map((r) => ({ label: r.model, values: lat(r) })), LAT);
  columns($("chart-daily-latency"), daily.rows.map((r) => ({ day: r.day, values: r.calls ? lat(r) : LAT.map(() => null) })), LAT, "lines");
}

function fmtCostAxis(c) { return c === 0 ? "$0" : c >= 1 ? "$" + fmtCompact(c) : "$" + c.toPrecision(2); }
function fmtMSAxis(ms) { return ms >= 1000 ? (ms / 1000).toFixed(ms >= 10000 ? 0 : 1) + " s" : Math.round(ms) + " ms"; }

// ---------- calls ----------

async function loadFilterOptions() {
  const [users, models] = await Promise.all([
    api("api/v1/usage", { tz: TZ, from: state.from, to: state.to, group_by: "user", percentiles: "false" }),
    api("api/v1/usage", { tz: TZ, from: state.from, to: state.to, group_by: "model", percentiles: "false" }),
  ]);
  fillSelect($("f-user"), "All users", users.rows.map((r) => r.user), state.filters.user);
  fillSelect($("f-model"), "All models", models.rows.map((r) => r.model), state.filters.model);
  // Batch ids come from the calls table, not the rollups: they are listed
  // when the Batch filter is opened, not on every visit.
  state.batchRange = "";
  fillSelect($("f-batch"), "All batches", [], state.filters.batch_id);
  $("f-source").value = state.filters.source;
}

async function loadBatchOptions() {
  const key = state.from + "/" + state.to;
  if (state.batchRange === key) return;
  state.batchRange = key;
  const r = await api("api/v1/batches", { tz: TZ, from: state.from, to: state.to, limit: 500 });
  fillSelect($("f-batch"), "All batches", r.batches.map((b) => b.batch_id).filter((id) => id), state.filters.batch_id);
}

function fillSelect(sel, allText, values, current) {
  const opts = [h("option", { value: "" }, allText)];
  const vals = [...new Set(values)].sort();
  if (current && !vals.includes(current)) vals.push(current);
  for (const v of vals) opts.push(h("option", { value: v, title: v }, v || "(none)"));
  sel.replaceChildren(...opts);
  sel.value = current;
}

// loadCalls loads the first page (or, with append, the next one). A newer
// load makes the answers of older ones stale, so a slow poll can never
// overwrite what a filter change or "Load more" showed.
async function loadCalls(append) {
  const params = { tz: TZ, from: state.from, to: state.to, limit: 50, ...state.filters };
  if (append) params.cursor = state.cursor;
  const gen = ++state.listGen;
  state.listBusy++;
  let page;
  try {
    page = await api("api/v1/calls", params);
  } finally {
    state.listBusy--;
  }
  if (gen !== state.listGen) return;
  const body = $("calls-body");
  const rows = page.calls.map((c) => h("tr", { "data-id": c.id, onclick: () => openCall(c.id) },
    h("td", {}, fmtTime(c.start_time)),
    h("td", {}, c.model),
    h("td", {}, c.user_id),
    h("td", { "data-col": "source", title: c.batch_id || null }, c.source === "batch" ? "batch" + (c.batch_id ? " · " + c.batch_id : "") : c.source),
    h("td", {}, h("span", { class: "chip " + (c.is_error ? "err" : "ok"), title: c.error || null }, c.is_error && c.status < 400 ? "error" : c.status)),
    h("td", { class: "num" }, fmtMS(c.latency_ms)),
    h("td", { class: "num", "data-col": "input_tokens" }, fmtInt(c.input_tokens)),
    h("td", { class: "num", "data-col": "output_tokens" }, fmtInt(c.output_tokens)),
    h("td", { class: "num" }, fmtInt(c.total_tokens)),
    h("td", { class: "num" }, fmtCost(c.cost_usd))));
  if (append) body.append(...rows); else body.replaceChildren(...rows);
  state.cursor = page.next_cursor || "";
  state.pages = append ? state.pages + 1 : 1;
  $("calls-more").hidden = !state.cursor;
  const n = body.children.length;
  $("calls-empty").hidden = n > 0;
  $("calls-count").textContent = `${fmtInt(n)} call${n === 1 ? "" : "s"} shown${state.cursor ? " · more available" : ""}`;
}

// ---------- batches ----------

// loadBatches lists the batch jobs of the range; a row opens the calls page
// filtered to that batch.
async function loadBatches() {
  const r = await api("api/v1/batches", { tz: TZ, from: state.from, to: state.to, limit: 500 });
  $("batches-body").replaceChildren(...r.batches.map((b) => h("tr", { "data-id": b.batch_id, onclick: () => showBatch(b.batch_id) },
    h("td", { class: "mono ellipsis", title: b.batch_id || "(no batch id)" }, b.batch_id || "(no batch id)"),
    h("td", { class: "num", "data-col": "calls" }, fmtInt(b.calls)),
    h("td", { class: "num", "data-col": "errors" }, fmtInt(b.errors)),
    h("td", { class: "num", "data-col": "input_tokens" }, fmtInt(b.input_tokens)),
    h("td", { class: "num", "data-col": "output_tokens" }, fmtInt(b.output_tokens)),
    h("td", { class: "num" }, fmtCost(b.cost_usd)),
    h("td", {}, fmtTime(b.first_start)),
    h("td", { class: "num", "data-col": "duration" }, fmtSpan(b.duration_ms)),
    h("td", { class: "ellipsis", title: b.models.join(", ") }, b.models.join(", ")))));
  $("batches-empty").hidden = r.batches.length > 0;
}

function showBatch(id) {
  state.filters = { ...state.filters, source: "batch", batch_id: id };
  location.hash = "#/calls";
}

// ---------- call detail ----------

async function openCall(id) {
  document.querySelectorAll("table.calls tr.selected").forEach((r) => r.classList.remove("selected"));
  const row = document.querySelector(`table.calls tr[data-id="${CSS.escape(id)}"]`);
  if (row) row.classList.add("selected");
  try {
    state.detail = await api("api/v1/calls/" + encodeURIComponent(id));
    renderDetail();
    $("drawer").hidden = false;
    $("scrim").hidden = false;
  } catch (e) { showError(e); }
}

function closeDrawer() {
  $("drawer").hidden = true;
  $("scrim").hidden = true;
  state.detail = null;
}

function stat(k, v, testid) {
  return h("div", { class: "stat" }, h("div", { class: "stat-k" }, k), h("div", { class: "stat-v", "data-testid": testid }, v));
}

function renderDetail() {
  const c = state.detail;
  $("d-title").textContent = `${c.kind} · ${c.model}`;
  $("d-id").textContent = c.id;
  const links = [];
  if (c.trace_id || c.session_id) links.push(h("a", { href: "#/trace/" + encodeURIComponent(c.trace_id || c.session_id), "data-testid": "detail-trace-link", onclick: closeDrawer }, "View trace →"));
  if (c.langfuse_url) links.push(h("a", { href: c.langfuse_url, target: "_blank", rel: "noopener", "data-testid": "langfuse-link" }, "View in Langfuse ↗"));
  $("d-links").replaceChildren(...links);
  $("d-stats").replaceChildren(
    stat("Latency", fmtMS(c.latency_ms), "detail-latency"),
    stat("Time to first token", c.ttft_ms === undefined ? "–" : fmtMS(c.ttft_ms)),
    stat("Status", c.status + (c.error ? " · " + c.error : "")),
    stat("Tokens in", fmtInt(c.input_tokens), "detail-tokens-in"),
    stat("Tokens out", fmtInt(c.output_tokens), "detail-tokens-out"),
    stat("Tokens total", fmtInt(c.total_tokens), "detail-tokens-total"),
    stat("Model instance", c.instance || "–", "detail-instance"),
    stat("User", c.user_id),
    stat("Cost", fmtCost(c.cost_usd)),
    stat("Start", fmtTime(c.start_time)),
    stat("Endpoint", c.endpoint),
    stat("Source", c.source + (c.batch_id ? " · " + c.batch_id : "")),
  );
  document.querySelectorAll("[data-fmt]").forEach((b) => b.classList.toggle("on", b.dataset.fmt === state.fmt));
  $("d-input").replaceChildren(renderValue(c.input !== undefined ? c.input : c.input_text, "messages"));
  $("d-output").replaceChildren(renderValue(c.output !== undefined ? c.output : c.output_text, "messages"));
  $("d-metadata").replaceChildren(renderValue(c.metadata || {}, "kv"));
}

function renderValue(v, kind) {
  if (v === undefined || v === null || v === "") return h("span", { class: "muted" }, "(none)");
  if (state.fmt === "json") return h("pre", { "data-format": "json" }, typeof v === "string" ? JSON.stringify(v) : JSON.stringify(v, null, 2));
  const wrap = h("div", { "data-format": "pretty" });
  if (typeof v === "string") { wrap.append(h("div", { class: "msg-text" }, v)); return wrap; }
  const msgs = Array.isArray(v) ? v : (v && typeof v === "object" && "role" in v ? [v] : null);
  if (kind === "messages" && msgs && msgs.every((m) => m && typeof m === "object" && "role" in m)) {
    for (const m of msgs) {
      wrap.append(h("div", { class: "msg" }, h("div", { class: "msg-role " + m.role }, m.role), h("div", { class: "msg-text" }, contentText(m))));
    }
    return wrap;
  }
  if (v && typeof v === "object" && !Array.isArray(v)) {
    const keys = Object.keys(v);
    if (!keys.length) return h("span", { class: "muted" }, "(none)");
    wrap.append(h("table", { class: "kv" }, keys.map((k) => h("tr", {}, h("td", {}, k), h("td", {}, typeof v[k] === "string" ? v[k] : JSON.stringify(v[k]))))));
    return wrap;
  }
  wrap.append(h("pre", {}, JSON.stringify(v, null, 2)));
  return wrap;
}

function contentText(m) {
  let out = "";
  if (typeof m.content === "string") out = m.content;
  else if (Array.isArray(m.content)) out = m.content.map((p) => (p && p.text) || (p && p.type ? `[${p.type}]` : "")).join("\n");
  else if (m.content !== undefined && m.content !== null) out = JSON.stringify(m.content);
  if (m.tool_calls) out += (out ? "\n" : "") + "tool calls: " + JSON.stringify(m.tool_calls);
  return out || "(empty)";
}

// ---------- trace ----------

async function loadTrace() {
  const t = await api("api/v1/traces/" + encodeURIComponent(state.traceID));
  const r = t.root;
  const head = [
    h("div", {}, h("div", { class: "muted" }, r.type === "session" ? "Session" : "Trace"), h("div", { class: "big mono", "data-testid": "trace-id" }, t.id)),
    h("div", {}, h("div", { class: "muted" }, "Calls"), h("div", { class: "big", "data-testid": "trace-calls" }, fmtInt(r.calls))),
    h("div", {}, h("div", { class: "muted" }, "Duration"), h("div", { class: "big" }, fmtMS(r.duration_ms))),
    h("div", {}, h("div", { class: "muted" }, "Tokens in / out"), h("div", { class: "big" }, `${fmtInt(r.input_tokens)} / ${fmtInt(r.output_tokens)}`)),
    h("div", {}, h("div", { class: "muted" }, "Errors"), h("div", { class: "big" }, fmtInt(r.errors))),
  ];
  if (r.langfuse_url) head.push(h("a", { href: r.langfuse_url, target: "_blank", rel: "noopener", class: "btn" }, "View in Langfuse ↗"));
  if (t.truncated) head.push(h("span", { class: "error-banner" }, "Showing the first calls only"));
  $("trace-head").replaceChildren(...head);
  $("trace-tree").replaceChildren(h("ul", { class: "tree" }, treeNode(r)));
  renderTimeline(t);
  showTraceView();
}

function treeNode(n) {
  const row = h("div", { class: "node " + n.type, "data-node": n.id, onclick: n.type === "call" ? () => openCall(n.id) : null },
    h("span", { class: "node-type " + n.type }, n.type),
    h("span", { class: "node-name" }, n.name),
    n.errors ? h("span", { class: "chip err" }, n.type === "call" ? n.status : n.errors + " errors") : null,
    h("span", { class: "node-meta" },
      h("span", {}, fmtMS(n.duration_ms)),
      h("span", {}, `${fmtInt(n.input_tokens)} → ${fmtInt(n.output_tokens)} tok`)));
  return h("li", {}, row, n.children && n.children.length ? h("ul", {}, n.children.map(treeNode)) : null);
}

function renderTimeline(t) {
  const total = Math.max(1, t.root.duration_ms);
  const rows = t.timeline.map((n) => {
    const bar = h("div", { class: "tl-bar" + (n.errors ? " err" : "") });
    const left = (n.offset_ms / total) * 100, width = Math.max((n.duration_ms / total) * 100, 0.4);
    bar.style.left = left + "%";
    bar.style.width = width + "%";
    const label = h("span", { class: "tl-text" }, fmtMS(n.duration_ms));
    if (left + width > 85) label.style.right = (100 - left + 0.8) + "%"; // no room after the bar: before it
    else label.style.left = (left + width + 0.8) + "%";
    return h("div", { class: "tl-row", "data-node": n.id, onclick: () => openCall(n.id) },
      h("div", { class: "tl-label" }, h("span", { class: "node-name" }, n.name), " ", h("span", { class: "muted" }, "+" + fmtMS(n.offset_ms))),
      h("div", { class: "tl-track" }, bar, label));
  });
  $("trace-timeline").replaceChildren(...rows);
}

function showTraceView() {
  document.querySelectorAll("[data-traceview]").forEach((b) => b.classList.toggle("on", b.dataset.traceview === state.traceView));
  $("trace-tree").hidden = state.traceView !== "tree";
  $("trace-timeline").hidden = state.traceView !== "timeline";
}

// ---------- settings ----------

// What each stage of a connection test means for the operator.
const PROBE_TITLES = {
  ok: "Connection works",
  invalid: "Invalid setting",
  unreachable: "Host unreachable",
  tls: "TLS problem",
  not_langfuse: "Not a Langfuse server",
  auth: "Keys refused",
  wrong_project: "Wrong project",
  refused: "Address not allowed",
};
const FIELD_INPUTS = { host: "lf-host", public_key: "lf-pk", secret_key: "lf-sk", project_id: "lf-project" };

// apiSend sends a JSON body and returns {status, body} for every answer but
// 401 (which asks for the token), so forms can show field errors.
async function apiSend(method, path, body) {
  const headers = { Accept: "application/json", "Content-Type": "application/json" };
  const tok = localStorage.getItem("callpipe.token");
  if (tok) headers.Authorization = "Bearer " + tok;
  const r = await fetch(new URL(path, location.href), { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401) { askToken(); throw new HTTPError(401, data); }
  return { status: r.status, body: data || {} };
}

async function loadSettings() {
  let v;
  try {
    v = await api("api/v1/settings/langfuse");
  } catch (e) {
    if (e.status === 401) throw e;
    renderSource(null, e.message);
    throw e;
  }
  state.settings = v;
  fillSettingsForm(v);
  renderSource(v);
}

function fillSettingsForm(v) {
  $("lf-host").value = v.host || "";
  $("lf-pk").value = v.public_key || "";
  $("lf-project").value = v.project_id || "";
  $("lf-sk").value = "";
  clearFieldErrors();
  secretHint();
}

// secretHint explains what an empty secret field means right now: the
// secret in effect is kept only for the same host and public key.
function secretHint() {
  const v = state.settings;
  const sk = $("lf-sk");
  const hint = $("lf-sk-hint");
  if (!v || !v.secret_key_set) {
    sk.placeholder = "sk-lf-…";
    hint.textContent = "Required.";
    return;
  }
  const same = $("lf-host").value.trim().replace(/\/+$/, "").toLowerCase() === (v.host || "").replace(/\/+$/, "").toLowerCase() &&
    $("lf-pk").value.trim() === v.public_key;
  sk.placeholder = same ? `${v.secret_key_hint} (in effect; leave empty to keep)` : "sk-lf-… (required for a new host or key)";
  hint.textContent = same ? "Leave empty to keep the secret key in effect." : "The secret in effect is only sent to " + v.host + " with " + v.public_key + ": enter the secret key.";
}

function settingsForm() {
  return {
    host: $("lf-host").value.trim(),
    public_key: $("lf-pk").value.trim(),
    secret_key: $("lf-sk").value.trim(),
    project_id: $("lf-project").value.trim(),
  };
}

function clearFieldErrors() {
  for (const id of Object.values(FIELD_INPUTS)) $(id).classList.remove("invalid");
  $("lf-field-error").hidden = true;
}

function showFieldError(body) {
  const id = FIELD_INPUTS[body.field];
  if (id) { $(id).classList.add("invalid"); $(id).focus(); }
  $("lf-field-error").textContent = body.error || "Invalid input";
  $("lf-field-error").hidden = false;
}

function renderSource(v, unavailable) {
  const box = $("lf-source");
  const sub = (t) => h("span", { class: "source-sub" }, t);
  let cls, title, detail;
  if (!v) {
    cls = "none"; title = "Settings unavailable"; detail = unavailable;
  } else if (v.source === "saved") {
    cls = "saved"; title = "Saved in NATS KV — overrides the configuration";
    detail = v.config_host ? "The configuration's host " + v.config_host + " applies again after a reset." : "Nothing is configured underneath: a reset leaves tracing off.";
  } else if (v.host) {
    cls = "config"; title = "From configuration file / environment";
    detail = "Nothing is saved here; saving overrides the configuration.";
  } else {
    cls = "none"; title = "Not configured";
    detail = "Langfuse workers wait, unready, until settings are saved here or configured.";
  }
  box.className = "source " + cls;
  box.dataset.source = v ? (v.host || v.source === "saved" ? v.source : "none") : "unavailable";
  box.replaceChildren(h("span", {}, title, sub(detail)));
  const rows = [];
  if (v) {
    rows.push(["Host", v.host || "–"], ["Public key", v.public_key || "–"],
      ["Secret key", v.secret_key_set ? v.secret_key_hint + " (masked)" : "not set"],
      ["Project", v.project_id || "any"]);
    if (v.updated_at) rows.push(["Saved", fmtTime(v.updated_at)]);
  }
  $("lf-effect").replaceChildren(...rows.map(([k, val]) => h("tr", {}, h("td", {}, k), h("td", { class: k === "Host" || k.endsWith("key") ? "mono" : null }, val))));
  $("lf-reset").disabled = !v || v.source !== "saved";
}

// showProbe shows a test (or save) result: what worked or what failed.
function showProbe(ok, stage, title, message) {
  const box = $("lf-result");
  box.hidden = false;
  box.className = "probe " + (ok === null ? "busy" : ok ? "ok" : "fail");
  box.dataset.stage = stage;
  box.replaceChildren(
    h("span", { class: "probe-stage" }, stage.replace("_", " ")),
    h("div", {}, h("div", { class: "probe-title" }, title), message ? h("div", { class: "probe-msg", "data-testid": "lf-result-message" }, message) : null));
}

async function settingsAction(button, fn) {
  clearFieldErrors();
  const buttons = ["lf-test", "lf-save", "lf-reset"].map($);
  const was = buttons.map((b) => b.disabled);
  buttons.forEach((b) => { b.disabled = true; });
  try {
    await fn();
  } catch (e) {
    if (e.status !== 401) showProbe(false, "error", "Request failed", e.message);
  } finally {
    buttons.forEach((b, i) => { b.disabled = was[i]; });
    if (state.settings) $("lf-reset").disabled = state.settings.source !== "saved";
  }
}

// answered handles a non-2xx answer of the settings API.
function answered(r) {
  if (r.status === 400) { showFieldError(r.body); $("lf-result").hidden = true; return; }
  const title = r.status === 503 ? "Settings unavailable" : r.status === 403 ? "Not allowed (403)" : "Request failed (" + r.status + ")";
  showProbe(false, r.status === 503 ? "unavailable" : r.status === 403 ? "forbidden" : "error", title, r.body.error);
}

function testConnection() {
  return settingsAction($("lf-test"), async () => {
    showProbe(null, "testing", "Testing connection…", "");
    const r = await apiSend("POST", "api/v1/settings/langfuse/test", settingsForm());
    if (r.status !== 200) return answered(r);
    const p = r.body;
    showProbe(p.ok, p.stage, PROBE_TITLES[p.stage] || p.stage, p.message);
  });
}

function saveSettings() {
  return settingsAction($("lf-save"), async () => {
    const r = await apiSend("PUT", "api/v1/settings/langfuse", settingsForm());
    if (r.status !== 200) return answered(r);
    state.settings = r.body;
    fillSettingsForm(r.body);
    renderSource(r.body);
    showProbe(true, "saved", "Saved in NATS KV — overrides the configuration", "Running Langfuse workers switch to " + r.body.host + " within seconds, without a restart.");
  });
}

function resetSettings() {
  return settingsAction($("lf-reset"), async () => {
    const r = await apiSend("DELETE", "api/v1/settings/langfuse");
    if (r.status !== 200) return answered(r);
    state.settings = r.body;
    fillSettingsForm(r.body);
    renderSource(r.body);
    showProbe(true, "reset", r.body.host ? "Back to the configuration" : "Saved settings removed",
      r.body.host ? "Workers switch back to " + r.body.host + " (configuration file / environment)." : "Nothing is configured: Langfuse workers wait until settings are saved.");
  });
}

// ---------- routing, range, polling ----------

function route() {
  closeDrawer();
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, ...rest] = hash.split("/");
  state.view = ["overview", "calls", "batches", "trace", "settings"].includes(page) ? page : "overview";
  if (state.view === "trace") {
    state.traceID = decodeURIComponent(rest.join("/"));
    $("tab-trace").hidden = !state.traceID;
    $("tab-trace").href = "#/trace/" + encodeURIComponent(state.traceID);
  }
  for (const v of ["overview", "calls", "batches", "trace", "settings"]) $("view-" + v).hidden = v !== state.view;
  document.querySelectorAll("[data-tab]").forEach((a) => a.classList.toggle("active", a.dataset.tab === state.view));
  $("range").style.visibility = state.view === "trace" || state.view === "settings" ? "hidden" : "visible";
  refresh(true);
}

function setRange(from, to) {
  applyRange(from, to);
  refresh(true);
}

// applyRange sets the range and the picker without loading anything.
function applyRange(from, to) {
  if (from > to) [from, to] = [to, from];
  state.from = from; state.to = to;
  $("range-from").value = from; $("range-to").value = to;
  const today = ymd(new Date());
  document.querySelectorAll("[data-preset]").forEach((b) => {
    const n = Number(b.dataset.preset);
    b.classList.toggle("on", to === today && from === addDays(today, -(n - 1)));
  });
}

let inflight = 0;
async function refresh(full) {
  const my = ++inflight;
  try {
    if (state.view === "overview") await loadOverview();
    else if (state.view === "calls") {
      if (full) { await loadFilterOptions(); await loadCalls(false); }
      else if (state.pages <= 1 && !state.listBusy) await loadCalls(false); // keep pages the user loaded
    } else if (state.view === "batches") {
      await loadBatches();
    } else if (state.view === "trace" && state.traceID) {
      if (full) await loadTrace();
    } else if (state.view === "settings") {
      if (full) await loadSettings(); // polling never overwrites what is being typed
    }
    if (my === inflight) { showError(null); markUpdated(); }
  } catch (e) {
    if (my === inflight && e.status !== 401) showError(e);
  }
  document.body.dataset.loaded = String(my);
}

function schedule() {
  clearInterval(state.timer);
  state.timer = setInterval(() => { if (!document.hidden) refresh(false); }, state.meta.refresh_seconds * 1000);
}

async function start() {
  $("tz-label").textContent = TZ;
  const today = ymd(new Date());
  state.from = addDays(today, -6); state.to = today;
  document.querySelectorAll("[data-preset]").forEach((b) => b.addEventListener("click", () => {
    const t = ymd(new Date());
    setRange(addDays(t, -(Number(b.dataset.preset) - 1)), t);
  }));
  $("range-from").addEventListener("change", (e) => e.target.value && setRange(e.target.value, state.to));
  $("range-to").addEventListener("change", (e) => e.target.value && setRange(state.from, e.target.value));
  for (const [id, key] of [["f-user", "user"], ["f-model", "model"], ["f-status", "status"], ["f-source", "source"], ["f-batch", "batch_id"]]) {
    $(id).addEventListener("change", (e) => {
      state.filters[key] = e.target.value;
      // Only batch calls have a batch id.
      if (key === "batch_id" && e.target.value) { state.filters.source = "batch"; $("f-source").value = "batch"; }
      if (key === "source" && e.target.value === "online") { state.filters.batch_id = ""; $("f-batch").value = ""; }
      loadCalls(false).catch(showError);
    });
  }
  for (const ev of ["focus", "mousedown"]) $("f-batch").addEventListener(ev, () => loadBatchOptions().catch(showError));
  $("calls-more").addEventListener("click", () => loadCalls(true).catch(showError));
  $("d-close").addEventListener("click", closeDrawer);
  $("scrim").addEventListener("click", closeDrawer);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDrawer(); });
  document.querySelectorAll("[data-fmt]").forEach((b) => b.addEventListener("click", () => { state.fmt = b.dataset.fmt; renderDetail(); }));
  document.querySelectorAll("[data-traceview]").forEach((b) => b.addEventListener("click", () => { state.traceView = b.dataset.traceview; showTraceView(); }));
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem("callpipe.token", $("token-input").value.trim());
    $("token-modal").hidden = true;
    init();
  });
  $("lf-test").addEventListener("click", testConnection);
  $("lf-form").addEventListener("submit", (e) => { e.preventDefault(); saveSettings(); });
  $("lf-reset").addEventListener("click", resetSettings);
  for (const id of ["lf-host", "lf-pk"]) for (const ev of ["input", "change"]) $(id).addEventListener(ev, secretHint);
  window.addEventListener("hashchange", route);
  $("range-from").value = state.from; $("range-to").value = state.to;
  init();
}

async function init() {
  try {
    state.meta = await api("api/v1/meta");
  } catch (e) {
    if (e.status !== 401) showError(e);
    return;
  }
  schedule();
  applyRange(state.from, state.to);
  route();
}

document.addEventListener("DOMContentLoaded", start);
