package callsdb

import (
	"cmp"
	"context"
	"fmt"
	"iter"
	"log/slog"
	"slices"
	"sync"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Sealed rollups: the protocol.
//
// Writers of usage_rollup (Sealer) and readers (UsageOf) agree through two
// small tables, without transactions (18.16 has none):
//
//  1. A seal of a period (grain, period) has a version: the sealer's clock in
//     Unix nanoseconds when it started reading, unique per Sealer. The sealer
//     writes every usage_rollup row of the seal first (every level: per
//     model and source, per user, for an hour per model with its percentile
//     buckets, for a day per user over all sources), then the
//     copies of its rows keyed by user (usage_rollup_by_user) and of those
//     without users (usage_rollup_by_model), then one usage_seals record (grain, period, version). Readers use a period's rollup rows
//     only through the newest record, selecting exactly (grain, period,
//     version): a seal that failed half-way wrote rows no record names, and
//     sealing again writes a new version beside the old one — the old one is
//     never added to, and readers switch versions in one step.
//  2. An hour is sealed only once it is SealAfter past its end (the
//     redelivery horizon). A call that arrives for an older hour is late:
//     the ClickHouse output marks its hour dirty (usage_dirty_hours) before
//     the INSERT, and again after it if the INSERT ended past the horizon.
//     A reader treats an hour as sealed only if no mark is newer than its
//     seal version minus ClockSkew; otherwise it reads that hour's per-call
//     rows. The sealer re-seals such hours; a mark made while a seal was
//     reading is newer than that seal's start, so the hour stays dirty and
//     is sealed again.
//  3. A day seal lists the 24 hour versions it summed. Readers use a day's
//     rows only while those are still the current, clean hour seals. The
//     day so far of the day (UTC, or of a zone) of the horizon lists fewer:
//     its first hours, which alone it stands for. It is never taken for a
//     whole day (weeks, day buckets, retention), and a day sealed from it
//     sums its rows only while the hours it lists are still current.
//  4. Rows of superseded or abandoned versions are deleted only Grace after
//     the seal that replaced them, longer than any read runs.
//
// So a read counts every call exactly once whether its hour is sealed,
// being re-sealed or dirty, and the rollups are idempotent: sealing an hour
// again replaces it.

// ClockSkew is the clock difference allowed between the hosts that mark
// hours dirty and the sealer, and the margin by which the output marks
// calls late before the sealer may seal their hour.
const ClockSkew = 30 * time.Second

// DefaultSealAfter is the redelivery horizon used when none is configured.
const DefaultSealAfter = 15 * time.Minute

// RollupConfig is how the clickhouse stage seals the usage rollups (Sealer).
type RollupConfig struct {
	Interval  time.Duration // between seal passes
	Lease     time.Duration // TTL of the sealing lease
	SliceRows uint64
	Grace     time.Duration
	Zones     []*time.Location // local days sealed beside UTC days (Sealer.Zones)
}

// NewSealer is the Sealer of the database and topology of oc, with rc's
// sizes.
func NewSealer(conn driver.Conn, oc Config, rc RollupConfig, log *slog.Logger) *Sealer {
	return &Sealer{Conn: conn, Database: oc.Database, Topology: oc.Topology, SealAfter: oc.SealAfter,
		SliceRows: rc.SliceRows, Grace: rc.Grace, Zones: rc.Zones, Log: log}
}

// Sealer seals hours and days of usage_rollup. Several may run at once
// (different versions, the newest record wins); the clickhouse stage runs
// one at a time behind a lease to avoid doing the work twice.
type Sealer struct {
	Conn      driver.Conn
	Database  string
	Topology  Topology
	SealAfter time.Duration // the redelivery horizon (DefaultSealAfter when 0)
	// SliceRows is how many stored call rows one seal query aggregates at
	// most; larger hours are sealed in slices by id hash (default 4M).
	SliceRows uint64
	// Grace is how long superseded seal rows are kept (default 10m).
	Grace time.Duration
	// Zones are the time zones whose local days are sealed too (beside UTC
	// days): a read bucketed by day in such a zone, or over a range of its
	// whole days, reads one row set per day instead of a UTC day corrected
	// by its edge hours. Zones whose offset is not whole hours have none.
	Zones []*time.Location
	Log   *slog.Logger
	Now   func() time.Time

	mu          sync.Mutex
	versions    Versions
	watermark   int64  // hours before it were looked at by an earlier Pass
	replicas    uint64 // per shard, in a cluster (quorum)
	lastCleanup time.Time
}

func (s *Sealer) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Sealer) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Sealer) sealAfter() time.Duration {
	if s.SealAfter <= 0 {
		return DefaultSealAfter
	}
	return s.SealAfter
}

// version is a new seal version: now in Unix nanoseconds, increasing.
func (s *Sealer) version() uint64 { return s.versions.Next(uint64(s.now().UnixNano())) }

// SealableBefore is the end of the hours that may be sealed at now: hours
// that ended at least SealAfter ago.
func SealableBefore(now time.Time, sealAfter time.Duration) time.Time {
	return now.Add(-sealAfter).UTC().Truncate(time.Hour)
}

// ctx carries the sealer's settings in a cluster. Replicas of a shard copy
// each other's parts asynchronously, and a Distributed read uses one
// replica per shard, so:
//   - writes are synchronous (insert_distributed_sync) and reach every
//     replica of their shard before they return (insert_quorum = the
//     shard's replicas): a seal's record, written last, cannot be on a
//     replica that lacks the seal's rows, and sealing waits while a replica
//     is down (unsealed hours are read from the per-call rows meanwhile);
//   - reads skip a replica more than a second behind on inserted parts and
//     fail rather than fall back to it, so a seal never sums the calls of a
//     replica still catching up (the pass is retried).
func (s *Sealer) ctx(ctx context.Context) (context.Context, error) {
	if !s.Topology.Clustered() {
		return ctx, nil
	}
	q, err := s.quorum(ctx)
	if err != nil {
		return ctx, err
	}
	return ch.Context(ctx, ch.WithSettings(ch.Settings{
		"insert_distributed_sync":                            1,
		"insert_quorum":                                      int(q),
		"insert_quorum_timeout":                              60_000,
		"max_replica_delay_for_distributed_queries":          1,
		"fallback_to_stale_replicas_for_distributed_queries": 0,
	})), nil
}

// quorum is the replica count of the cluster's smallest shard, read once.
func (s *Sealer) quorum(ctx context.Context) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.replicas > 0 {
		return s.replicas, nil
	}
	var n uint64
	if err := s.Conn.QueryRow(ctx, ReplicasPerShardQuery(s.Topology.Cluster)).Scan(&n); err != nil {
		return 0, fmt.Errorf("rollup: replicas per shard of cluster %s: %w", s.Topology.Cluster, err)
	}
	if n == 0 {
		return 0, fmt.Errorf("rollup: cluster %s is not in system.clusters of the server (remote_servers)", s.Topology.Cluster)
	}
	s.replicas = n
	return n, nil
}

func (s *Sealer) exec(ctx context.Context, stmt string) error {
	ctx, err := s.ctx(ctx)
	if err != nil {
		return err
	}
	if err := s.Conn.Exec(ctx, WithDB(stmt, s.Database)); err != nil {
		return fmt.Errorf("%w\nstatement: %.300s", err, stmt)
	}
	return nil
}

// sealHoursAtOnce is how many hours one seal statement computes at most:
// progress is reported per statement.
const sealHoursAtOnce = 24

// sealHours computes hours (ascending, Unix seconds at the hour) from their
// per-call rows and records them, several hours a statement (up to a day and
// SliceRows stored rows; a larger hour alone, in slices by id hash), each
// hour at a version of its own. done is called with each statement's
// recorded seals, hours without calls included (0 calls).
func (s *Sealer) sealHours(ctx context.Context, hours []int64, done func([]Seal)) error {
	if len(hours) == 0 {
		return nil
	}
	sliceRows := s.SliceRows
	if sliceRows == 0 {
		sliceRows = 4_000_000
	}
	all := make([]sealRef, len(hours))
	for i, h := range hours {
		all[i] = sealRef{Grain: grainHour, Period: h}
	}
	rows, err := hourCounts(ctx, s.Conn, WithDB(sealCallRowsQuery(all), s.Database))
	if err != nil {
		return fmt.Errorf("seal %d hours from %s: count rows: %w", len(hours), unixUTC(hours[0]), err)
	}
	for _, g := range hourGroups(hours, rows, sliceRows) {
		refs := all[g.from:g.to]
		for k := range refs {
			refs[k].Version = s.version()
		}
		seals, err := s.sealHourGroup(ctx, refs, g.slices)
		if err != nil {
			return err
		}
		done(seals)
	}
	return nil
}

// hourGroup is hours[from:to], sealed by one statement per slice.
type hourGroup struct{ from, to, slices int }

// hourGroups splits hours into groups of consecutive entries holding at
// most sliceRows stored rows and sealHoursAtOnce hours; an hour holding more
// rows is a group of its own, in slices of at most sliceRows.
func hourGroups(hours []int64, rows map[int64]uint64, sliceRows uint64) []hourGroup {
	var out []hourGroup
	for i := 0; i < len(hours); {
		j, total := i+1, rows[hours[i]]
		for j < len(hours) && j-i < sealHoursAtOnce && total+rows[hours[j]] <= sliceRows {
			total += rows[hours[j]]
			j++
		}
		out = append(out, hourGroup{from: i, to: j, slices: max(1, int((total+sliceRows-1)/sliceRows))})
		i = j
	}
	return out
}

// sealHourGroup writes the rows of hour seals refs in slices statements,
// the sums over users, the copy keyed by user, then their records.
func (s *Sealer) sealHourGroup(ctx context.Context, refs []sealRef, slices int) ([]Seal, error) {
	what := fmt.Sprintf("seal hour %s", unixUTC(refs[0].Period))
	if len(refs) > 1 {
		what = fmt.Sprintf("seal %d hours %s..%s", len(refs), unixUTC(refs[0].Period), unixUTC(refs[len(refs)-1].Period))
	}
	for i := 0; i < max(slices, 1); i++ {
		if err := s.exec(ctx, sealHoursSQL(refs, i, slices)); err != nil {
			return nil, fmt.Errorf("%s: slice %d/%d: %w", what, i+1, slices, err)
		}
	}
	if err := s.exec(ctx, sealSummedSQL(refs, levelModels)); err != nil {
		return nil, fmt.Errorf("%s: sum over users: %w", what, err)
	}
	if err := s.exec(ctx, sealModelTotalsSQL(refs)); err != nil {
		return nil, fmt.Errorf("%s: sum per model: %w", what, err)
	}
	if err := s.exec(ctx, sealSummedSQL(refs, levelUserOverModels)); err != nil {
		return nil, fmt.Errorf("%s: sum per user: %w", what, err)
	}
	if err := s.exec(ctx, sealUserCopySQL(refs)); err != nil {
		return nil, fmt.Errorf("%s: copy keyed by user: %w", what, err)
	}
	if err := s.exec(ctx, sealModelCopySQL(refs)); err != nil {
		return nil, fmt.Errorf("%s: copy without users: %w", what, err)
	}
	calls := map[sealRef]uint64{}
	err := eachRow(ctx, s.Conn, WithDB(sealCallsQuery(refs), s.Database), func(r driver.Rows) error {
		ref := sealRef{Grain: grainHour}
		var n uint64
		if err := r.Scan(&ref.Period, &ref.Version, &n); err != nil {
			return err
		}
		calls[ref] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: count calls: %w", what, err)
	}
	seals := make([]Seal, len(refs))
	for i, r := range refs {
		seals[i] = Seal{Grain: grainHour, Period: r.Period, Version: r.Version, Calls: calls[r]}
	}
	if err := s.record(ctx, seals...); err != nil {
		return nil, err
	}
	return seals, nil
}

// sealSpan writes the rows of span seal x (a UTC or local day summed from
// its hours, a week from its days; parts in order), its totals per model and
// user over sources, those per user over models, its copies keyed by user
// and without users, then its record.
func (s *Sealer) sealSpan(ctx context.Context, x Seal, parts []Seal) error {
	refs := make([]sealRef, len(parts))
	for i, h := range parts {
		refs[i] = h.ref()
	}
	what := "day"
	switch {
	case x.Grain == grainWeek:
		what = "week"
	case isLocalWeek(x.Grain):
		what = "local week"
	}
	if err := s.exec(ctx, sealSpanSQL(x.Grain, x.Period, x.Version, refs)); err != nil {
		return fmt.Errorf("seal %s %s (%d parts): %w", what, unixUTC(x.Period), len(parts), err)
	}
	if err := s.exec(ctx, sealSummedSQL([]sealRef{x.ref()}, levelUserTotals)); err != nil {
		return fmt.Errorf("seal %s %s: sum over sources: %w", what, unixUTC(x.Period), err)
	}
	if err := s.exec(ctx, sealSummedSQL([]sealRef{x.ref()}, levelUserOverModels)); err != nil {
		return fmt.Errorf("seal %s %s: sum over models: %w", what, unixUTC(x.Period), err)
	}
	if err := s.exec(ctx, sealUserCopySQL([]sealRef{x.ref()})); err != nil {
		return fmt.Errorf("seal %s %s: copy keyed by user: %w", what, unixUTC(x.Period), err)
	}
	if err := s.exec(ctx, sealModelCopySQL([]sealRef{x.ref()})); err != nil {
		return fmt.Errorf("seal %s %s: copy without users: %w", what, unixUTC(x.Period), err)
	}
	return s.record(ctx, x)
}

// spanSeal is the record of a span (day, week or four weeks) summed from
// parts at version v.
func spanSeal(grain uint8, start int64, v uint64, parts []Seal) Seal {
	seal := Seal{Grain: grain, Period: start, Version: v, HourVersions: make([]uint64, len(parts))}
	for i, h := range parts {
		seal.HourVersions[i] = h.Version
		seal.Calls += h.Calls
	}
	seal.setRecorded()
	return seal
}

// setRecorded sets x's flags to what this release writes for its grain:
// every seal has its copies (user_copy = 2, model_copy = 1) and its rows
// per user alone; days and weeks their totals per user, hours their totals
// per model; four weeks have their rows per user alone and nothing else.
func (x *Seal) setRecorded() {
	x.UserCopy, x.UserTotals, x.ModelTotals, x.ModelCopy, x.UserOverModels = userCopyCurrent, true, false, true, true
	switch {
	case x.Grain == grainHour:
		x.UserTotals, x.ModelTotals = false, true
	case isFourWeeks(x.Grain):
		x.UserCopy, x.UserTotals, x.ModelCopy = 0, false, false
	}
}

// flag is a usage_seals flag column's value.
func flag(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// record writes seal records (after their rows, the copies of those keyed by
// user and without users, and the totals per user), with the flags of what
// this release writes (setRecorded).
func (s *Sealer) record(ctx context.Context, seals ...Seal) error {
	if len(seals) == 0 {
		return nil
	}
	ctx, err := s.ctx(ctx)
	if err != nil {
		return err
	}
	b, err := s.Conn.PrepareBatch(ctx, WithDB(InsertSeal, s.Database))
	if err != nil {
		return fmt.Errorf("record %d seals: %w", len(seals), err)
	}
	at := s.now().UTC().Truncate(time.Second)
	for _, x := range seals {
		hv := x.HourVersions
		if hv == nil {
			hv = []uint64{}
		}
		x.setRecorded()
		if err := b.Append(x.Grain, unixUTC(x.Period), x.Version, x.Calls, hv, at, x.UserCopy, flag(x.UserTotals), flag(x.ModelTotals), flag(x.ModelCopy), flag(x.UserOverModels)); err != nil {
			_ = b.Abort()
			return fmt.Errorf("record %d seals: %w", len(seals), err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("record %d seals: %w", len(seals), err)
	}
	return nil
}

// PassResult is what one Pass did.
type PassResult struct {
	SealableBefore  time.Time // hours before it are sealed now (unless an error says otherwise)
	HoursSealed     int       // hours with calls computed
	EmptyHours      int       // hours without calls recorded as sealed
	Resealed        int       // dirty hours among HoursSealed
	DaysSealed      int       // whole UTC and local days
	DaysSoFarSealed int       // days so far (UTC and local: a day's first hours)
	WeeksSealed     int
	FourWeeksSealed int
	Deleted         int // superseded seals whose rows were deleted
	// SealedThrough: every hour before it is sealed and clean; DirtyHours
	// are hours still read from per-call rows because late calls were
	// marked within ClockSkew of their new seal (sealed again next pass).
	SealedThrough time.Time
	DirtyHours    int
}

// Pass seals every hour that is due and not sealed, re-seals dirty hours,
// seals complete days and weeks, and deletes superseded seal rows past Grace.
func (s *Sealer) Pass(ctx context.Context) (PassResult, error) {
	now := s.now()
	due := SealableBefore(now, s.sealAfter()).Unix()
	res := PassResult{SealableBefore: unixUTC(due)}
	// the pass's reads (seals, dirty marks, hours with calls) skip stale
	// replicas too
	ctx, err := s.ctx(ctx)
	if err != nil {
		return res, err
	}
	firstPass := s.watermark == 0
	if firstPass {
		var first int64
		var n uint64
		if err := s.Conn.QueryRow(ctx, WithDB(QueryFirstCall, s.Database)).Scan(&first, &n); err != nil {
			return res, fmt.Errorf("rollup: first call: %w", err)
		}
		s.watermark = due
		if n > 0 {
			s.watermark = min(floorTo(first, 3600), due)
		}
	}
	dirty, err := loadDirty(ctx, s.Conn, s.Database, 0, due)
	if err != nil {
		return res, err
	}
	lo := s.watermark
	for h := range dirty {
		lo = min(lo, h)
	}
	lo = floorTo(lo, 86400)
	daysFrom, daysTo := daysAround(lo, due)
	weeksFrom, weeksTo := weeksAround(daysFrom, daysTo)
	loadFrom, loadTo := fourWeeksAround(daysFrom, daysTo)
	st, err := loadSeals(ctx, s.Conn, s.Database, min(weeksFrom, loadFrom), max(weeksTo, loadTo))
	if err != nil {
		return res, err
	}
	st.dirty = dirty

	// every hour of [lo, due) without a seal: computed when it holds calls,
	// recorded as sealed-empty when not (so its day can be sealed); then the
	// dirty ones. Hours before the watermark were looked at by an earlier
	// pass, so lo only reaches back to the days of dirty hours.
	withCalls, err := callHours(ctx, s.Conn, s.Database, lo, due)
	if err != nil {
		return res, err
	}
	var todo []int64
	var empty []Seal
	for h := lo; h < due; h += 3600 {
		if _, ok := st.hours[h]; ok {
			continue
		}
		if withCalls[h] {
			todo = append(todo, h)
		} else {
			empty = append(empty, Seal{Grain: grainHour, Period: h, Version: s.version()})
		}
	}
	resealing := map[int64]bool{}
	for h := range dirty {
		if _, sealed := st.hours[h]; !sealed || st.clean(h) {
			continue // unsealed ones are in todo already
		}
		resealing[h] = true
		todo = append(todo, h)
	}
	slices.Sort(todo)
	if err := s.record(ctx, empty...); err != nil {
		return res, err
	}
	for _, x := range empty {
		st.hours[x.Period] = x
	}
	res.EmptyHours = len(empty)
	err = s.sealHours(ctx, todo, func(seals []Seal) {
		for _, x := range seals {
			st.hours[x.Period] = x // clean unless marked within ClockSkew of its start: then sealed again next pass
			// counted once recorded: a pass that fails midway reports what it did
			res.HoursSealed++
			if resealing[x.Period] {
				res.Resealed++
			}
		}
	})
	if err != nil {
		return res, err
	}
	// the first pass also seals the days (local days of zones added since
	// included) that earlier runs left
	if len(todo) > 0 || len(empty) > 0 || firstPass {
		days, err := s.sealDays(ctx, st, daysFrom, due, due)
		res.DaysSealed, res.DaysSoFarSealed = days.whole, days.soFar
		if err != nil {
			return res, err
		}
		weeks, err := s.sealWeeks(ctx, st, weeksFrom, due)
		if res.WeeksSealed = weeks.whole; err != nil {
			return res, err
		}
	}
	// every pass: four weeks are sealed a few at a time, newest first, so
	// that a first pass over a long history (or a day sealed again, which
	// changes 28 of them) does not hold back the hours of the next pass
	if res.FourWeeksSealed, err = s.sealFourWeeks(ctx, st, loadFrom, due, fourWeeksPerPass); err != nil {
		return res, err
	}
	s.watermark = due
	res.SealedThrough = unixUTC(due)
	for h := range st.dirty {
		if !st.clean(h) {
			res.DirtyHours++
			res.SealedThrough = unixUTC(min(res.SealedThrough.Unix(), h))
		}
	}
	if now.Sub(s.lastCleanup) >= s.grace() {
		n, err := s.Cleanup(ctx, min(lo, due-cleanupDays*86400), due)
		res.Deleted = n
		if err != nil {
			return res, err
		}
		s.lastCleanup = now
	}
	return res, nil
}

// cleanupDays is how far back a Pass looks for superseded seals; Rebuild
// cleans its own range.
const cleanupDays = 40

func (s *Sealer) grace() time.Duration {
	if s.Grace <= 0 {
		return 10 * time.Minute
	}
	return s.Grace
}

// sealDays seals every UTC day in [from, to), and every local day of the
// zones there, whose hours are clean sealed and whose day seal is missing or
// summed other hour versions; and, unless its day is one of those, the day
// so far (UTC, and of each zone) through soFar (a whole hour): the leading
// clean hours of its day before it, when there are at least
// minDaySoFarHours of them.
func (s *Sealer) sealDays(ctx context.Context, st *sealState, from, to, soFar int64) (spanCount, error) {
	type day struct {
		grain      uint8
		start, end int64
	}
	var days []day
	d := floorTo(from, 86400)
	for ; d+86400 <= to; d += 86400 {
		days = append(days, day{grainDay, d, d + 86400})
	}
	if today := floorTo(soFar, 86400); today >= d {
		if end, ok := st.daySoFarEnd(today, soFar); ok {
			days = append(days, day{grainDay, today, end})
		}
	}
	for _, loc := range s.Zones {
		for _, w := range localDays(loc, from, to) {
			g, _ := localDayGrain((w[1] - w[0]) / 3600)
			days = append(days, day{g, w[0], w[1]})
		}
		if w, ok := localDayOf(loc, soFar-3600); ok && w[0] >= from && w[1] > to {
			if end, ok := st.daySoFarEnd(w[0], soFar); ok {
				g, _ := localDayGrain((w[1] - w[0]) / 3600)
				days = append(days, day{g, w[0], end})
			}
		}
	}
	var due []dueSpan
	for _, d := range days {
		hours, ok := st.cleanHours(d.start, d.end)
		// a day recorded before migration 0006 or 0010 (no totals per
		// user) is sealed again, though its hours did not change
		if x, _ := st.current(d.grain, d.start); !ok || st.dayCurrent(d.grain, d.start, hours) && x.UserTotals && x.UserOverModels {
			continue
		}
		due = append(due, dueSpan{d.grain, d.start, hours})
	}
	return s.sealSpans(ctx, st, due)
}

// sealWeeks seals every week, and every local week of the zones, lying in
// [from, to) whose seven days are current over clean hours and whose week
// seal is missing or summed other day versions.
func (s *Sealer) sealWeeks(ctx context.Context, st *sealState, from, to int64) (spanCount, error) {
	var due []dueSpan
	weeks := utcSpans(grainWeek, from, to, 7, weekSeconds)
	for _, loc := range s.Zones {
		weeks = append(weeks, localWeeks(loc, from, to)...)
	}
	for _, w := range weeks {
		x, _ := st.current(w.grain, w.start)
		if days, ok := st.spanDays(w.days); ok && (!st.dayCurrent(w.grain, w.start, days) || !x.UserOverModels) {
			due = append(due, dueSpan{w.grain, w.start, days})
		}
	}
	return s.sealSpans(ctx, st, due)
}

// dueSpan is a day or week to seal and the seals it sums, in order.
type dueSpan struct {
	grain uint8
	start int64
	parts []Seal
}

// sealSpans seals spans, each at a new version, and makes them current in
// st. Spans without calls get records only, written together. A UTC or
// local day whose current seal is a day so far over its first hours (at the
// versions in parts) is summed from that seal's rows and the hours after it.
// It counts whole spans apart from days so far (a day's first hours).
func (s *Sealer) sealSpans(ctx context.Context, st *sealState, spans []dueSpan) (sealed spanCount, err error) {
	var empty []Seal
	for _, d := range spans {
		seal := spanSeal(d.grain, d.start, s.version(), d.parts)
		if seal.Calls == 0 {
			empty = append(empty, seal)
			st.setDay(seal)
			continue
		}
		summed := d.parts
		if dayHours(d.grain) > 0 {
			if x, hours, ok := st.currentDay(d.grain, d.start); ok && len(hours) < len(d.parts) {
				summed = append([]Seal{x}, d.parts[len(hours):]...)
			}
		}
		if err := s.sealSpan(ctx, seal, summed); err != nil {
			return sealed, err
		}
		st.setDay(seal)
		sealed.add(seal)
	}
	if err := s.record(ctx, empty...); err != nil {
		return sealed, err
	}
	for _, x := range empty {
		sealed.add(x)
	}
	return sealed, nil
}

// spanCount counts sealed spans: whole days, weeks and four weeks, and days
// so far apart.
type spanCount struct{ whole, soFar int }

func (c *spanCount) add(x Seal) {
	if dayHours(x.Grain) > 0 && !x.wholeDay() {
		c.soFar++
	} else {
		c.whole++
	}
}

// minDaySoFarHours is the fewest leading hours of a day (UTC or local)
// sealed as its day so far (one hour's rows are read as well from its hour
// seal).
const minDaySoFarHours = 2

// fourWeeksPerPass is how many four weeks with calls a Pass seals at most
// (each sums 28 days' rows per user: 1.0 s at 10 M calls a month, 1.4 s at 100 M).
const fourWeeksPerPass = 8

// fourWeeksAround is the range of seals four weeks holding a day of
// [from, to) sum: 28 days and one (a zone's four weeks start up to a day
// before the UTC day of their first hour) on either side.
func fourWeeksAround(from, to int64) (int64, int64) {
	return from - (fourWeeksDays+1)*86400, to + (fourWeeksDays+1)*86400
}

// fourWeekSpans are the four weeks lying whole in [from, to): with loc nil
// the UTC ones, from every UTC midnight; else loc's, from every local
// midnight (localSpans).
func fourWeekSpans(loc *time.Location, from, to int64) []daySpan {
	if loc == nil {
		return utcSpans(grainFourWeeks, from, to, fourWeeksDays, 86400)
	}
	return localSpans(loc, from, to, fourWeeksDays, false, localFourWeeksGrain)
}

// sealFourWeeks seals the four weeks (UTC, and of each zone) lying in
// [from, to) whose 28 days are current over clean hours with their rows per
// user (UserOverModels) and whose seal is missing or summed other day
// versions, newest first; at most most of them with calls (0: no limit).
func (s *Sealer) sealFourWeeks(ctx context.Context, st *sealState, from, to int64, most int) (int, error) {
	spans := fourWeekSpans(nil, from, to)
	for _, loc := range s.Zones {
		spans = append(spans, fourWeekSpans(loc, from, to)...)
	}
	slices.SortStableFunc(spans, func(a, b daySpan) int { return cmp.Compare(b.end, a.end) })
	n := 0
	var empty []Seal
	for _, w := range spans {
		if most > 0 && n >= most {
			break
		}
		parts, ok := st.spanDays(w.days)
		if !ok || st.dayCurrent(w.grain, w.start, parts) || slices.ContainsFunc(parts, func(x Seal) bool { return !x.UserOverModels }) {
			continue
		}
		seal := spanSeal(w.grain, w.start, s.version(), parts)
		if seal.Calls > 0 {
			refs := make([]sealRef, len(parts))
			for i, x := range parts {
				refs[i] = x.ref()
			}
			if err := s.exec(ctx, sealFourWeeksSQL(w.grain, w.start, seal.Version, refs)); err != nil {
				return n, fmt.Errorf("seal four weeks from %s: %w", unixUTC(w.start), err)
			}
			if err := s.record(ctx, seal); err != nil {
				return n, err
			}
			n++
		} else {
			empty = append(empty, seal)
		}
		st.setDay(seal)
	}
	if err := s.record(ctx, empty...); err != nil {
		return n, err
	}
	return n + len(empty), nil
}

// weeksAround widens [from, to) to whole weeks, and a week before: what
// sealWeeks needs loaded (a local week east of UTC starts before its UTC
// week).
func weeksAround(from, to int64) (int64, int64) {
	return floorTo(from, weekSeconds) - weekSeconds, ceilTo(to, weekSeconds)
}

// daysAround is a range holding every UTC or local day (of any zone) that
// holds an hour of [lo, hi): a local day starts at most a day before the
// UTC day of its first hour and ends at most a day after that of its last.
func daysAround(lo, hi int64) (from, to int64) {
	return floorTo(lo, 86400) - 86400, ceilTo(hi, 86400) + 86400
}

// localDays are the days of loc lying whole in [from, to) that are not UTC
// days and start and end on whole UTC hours, as [start, end) in Unix
// seconds: what a local day seal sums. (A zone whose offset is not whole
// hours has none.)
func localDays(loc *time.Location, from, to int64) [][2]int64 {
	var out [][2]int64
	y, m, d := unixUTC(from).In(loc).Date()
	for ; ; d++ {
		w, ok := localDay(loc, y, m, d)
		if w[1] > to {
			return out
		}
		if ok && w[0] >= from {
			out = append(out, w)
		}
	}
}

// localDay is the day y-m-d of loc as [start, end) in Unix seconds, and
// whether a local day seal may sum it: it starts and ends on whole UTC
// hours, lasts 23 to 25 of them and is not a UTC day.
func localDay(loc *time.Location, y int, m time.Month, d int) ([2]int64, bool) {
	start, end := time.Date(y, m, d, 0, 0, 0, 0, loc).Unix(), time.Date(y, m, d+1, 0, 0, 0, 0, loc).Unix()
	_, ok := localDayGrain((end - start) / 3600)
	return [2]int64{start, end}, ok && start%3600 == 0 && end%3600 == 0 && (start%86400 != 0 || end-start != 86400)
}

// localDayOf is the day of loc holding the second t, when a local day seal
// may sum it (localDay).
func localDayOf(loc *time.Location, t int64) ([2]int64, bool) {
	y, m, d := unixUTC(t).In(loc).Date()
	return localDay(loc, y, m, d)
}

// daySpan is a span of whole days to seal or read (a week, four weeks):
// UTC days, or days of a zone; [start, end) in Unix seconds.
type daySpan struct {
	grain      uint8
	start, end int64
	days       [][2]int64
}

// utcDays are the n UTC days from midnight d.
func utcDays(d int64, n int) [][2]int64 {
	days := make([][2]int64, n)
	for i := range days {
		days[i] = [2]int64{d + int64(i)*86400, d + int64(i+1)*86400}
	}
	return days
}

// utcSpans are the spans (of grain) of n UTC days lying whole in [from, to)
// whose starts are multiples of every seconds: weeks from Thursdays,
// four weeks from every midnight.
func utcSpans(grain uint8, from, to int64, n int, every int64) []daySpan {
	var out []daySpan
	for d := ceilTo(from, every); d+int64(n)*86400 <= to; d += every {
		out = append(out, daySpan{grain: grain, start: d, end: d + int64(n)*86400, days: utcDays(d, n)})
	}
	return out
}

// localSpans are the spans of n days of loc lying whole in [from, to), from
// every local midnight (a Thursday's when thursdays), that are not UTC spans
// of n days and whose days each start and end on whole UTC hours: what their
// seals sum (each day's seal: a UTC day's where the local day is one, else
// the local day's). grainOf is the grain of such a span of so many hours
// (false: a length no grain is kept for, and no span).
func localSpans(loc *time.Location, from, to int64, n int, thursdays bool, grainOf func(hours int64) (uint8, bool)) []daySpan {
	var out []daySpan
	y, m, d := unixUTC(from).In(loc).Date()
	step := 1
	if thursdays {
		for time.Date(y, m, d, 0, 0, 0, 0, loc).Weekday() != time.Thursday {
			d++
		}
		step = 7
	}
	for ; ; d += step {
		w := daySpan{start: time.Date(y, m, d, 0, 0, 0, 0, loc).Unix(), end: time.Date(y, m, d+n, 0, 0, 0, 0, loc).Unix()}
		if w.end > to {
			return out
		}
		var ok bool
		w.grain, ok = grainOf((w.end - w.start) / 3600)
		ok = ok && w.start >= from && !(w.start%86400 == 0 && w.end-w.start == int64(n)*86400)
		w.days = make([][2]int64, n)
		for i := range w.days {
			start, end := time.Date(y, m, d+i, 0, 0, 0, 0, loc).Unix(), time.Date(y, m, d+i+1, 0, 0, 0, 0, loc).Unix()
			w.days[i] = [2]int64{start, end}
			_, whole := localDayGrain((end - start) / 3600)
			ok = ok && whole && start%3600 == 0 && end%3600 == 0
		}
		if ok {
			out = append(out, w)
		}
	}
}

// localWeeks are the weeks of loc (seven days from a local Thursday) lying
// whole in [from, to) that are not UTC weeks (localSpans).
func localWeeks(loc *time.Location, from, to int64) []daySpan {
	return localSpans(loc, from, to, 7, true, localWeekGrain)
}

// Rebuild re-seals every hour of [from, to) that is past the horizon, then
// the days and weeks they complete (and the day so far through the range's
// end, when that falls inside the day of the horizon), and reports progress
// after each hour. It is what bulk loads and repairs use; it runs safely
// beside the clickhouse stage.
// Hours within the horizon are left to the stage (returned as notBefore).
func (s *Sealer) Rebuild(ctx context.Context, from, to time.Time, progress func(done, total int, h time.Time)) (sealed int, notBefore time.Time, err error) {
	due := SealableBefore(s.now(), s.sealAfter()).Unix()
	lo, hi := floorTo(from.Unix(), 3600), ceilTo(to.Unix(), 3600)
	notBefore = unixUTC(min(hi, due))
	if hi > due {
		hi = due
	}
	if lo >= hi {
		return 0, notBefore, nil
	}
	// from the first four weeks over the range's first day
	if _, err := s.Cleanup(ctx, floorTo(lo, 86400)-(fourWeeksDays+1)*86400, ceilTo(hi, 86400)); err != nil {
		return 0, notBefore, err
	}
	total := int((hi - lo) / 3600)
	var hours []int64
	for h := lo; h < hi; h += 3600 {
		hours = append(hours, h)
	}
	err = s.sealHours(ctx, hours, func(seals []Seal) {
		sealed += len(seals)
		if progress != nil {
			progress(sealed, total, unixUTC(seals[len(seals)-1].Period))
		}
	})
	if err != nil {
		return sealed, notBefore, err
	}
	daysFrom, daysTo := daysAround(lo, hi)
	weeksFrom, weeksTo := weeksAround(daysFrom, daysTo)
	loadFrom, loadTo := fourWeeksAround(daysFrom, daysTo)
	loadFrom, loadTo = min(weeksFrom, loadFrom), max(weeksTo, loadTo)
	st, err := loadSeals(ctx, s.Conn, s.Database, loadFrom, loadTo)
	if err != nil {
		return sealed, notBefore, err
	}
	if st.dirty, err = loadDirty(ctx, s.Conn, s.Database, loadFrom, loadTo); err != nil {
		return sealed, notBefore, err
	}
	if _, err := s.sealDays(ctx, st, daysFrom, min(daysTo, due), hi); err != nil {
		return sealed, notBefore, err
	}
	if _, err := s.sealWeeks(ctx, st, weeksFrom, min(weeksTo, due)); err != nil {
		return sealed, notBefore, err
	}
	if _, err := s.sealFourWeeks(ctx, st, loadFrom, min(loadTo, due), 0); err != nil {
		return sealed, notBefore, err
	}
	return sealed, notBefore, nil
}

// Cleanup deletes the usage_rollup rows of seals in [from, to) that were
// superseded more than Grace ago, and of abandoned seals (rows without a
// record) older than Grace. It returns how many seals it deleted.
func (s *Sealer) Cleanup(ctx context.Context, from, to int64) (int, error) {
	st, err := loadSeals(ctx, s.Conn, s.Database, from, to)
	if err != nil {
		return 0, err
	}
	limit := uint64(s.now().Add(-s.grace()).UnixNano())
	var gone []sealRef
	err = eachRow(ctx, s.Conn, WithDB(rollupVersionsQuery(from, to), s.Database), func(rows driver.Rows) error {
		var r sealRef
		if err := rows.Scan(&r.Grain, &r.Period, &r.Version); err != nil {
			return err
		}
		cur, ok := st.current(r.Grain, r.Period)
		switch {
		case ok && r.Version == cur.Version:
		case ok && r.Version < cur.Version && cur.Version < limit: // superseded long enough ago
			gone = append(gone, r)
		case r.Version < limit && (!ok || r.Version > cur.Version): // abandoned seal
			gone = append(gone, r)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("rollup cleanup: list versions: %w", err)
	}
	for i := 0; i < len(gone); i += 1000 {
		part := gone[i:min(i+1000, len(gone))]
		for _, stmt := range deleteRollupVersionsStatements(s.Topology, part) {
			if err := s.exec(ctx, stmt); err != nil {
				return i, fmt.Errorf("rollup cleanup: %w", err)
			}
		}
		s.log().Info("rollup: superseded seals deleted", "seals", len(part))
	}
	return len(gone), nil
}

// Seal is one usage_seals record.
type Seal struct {
	Grain   uint8
	Period  int64 // Unix seconds
	Version uint64
	Calls   uint64
	// HourVersions: a day seal's are the versions of its hours, in order
	// (a day so far, UTC or local: of its first hours only); a week's or
	// four weeks' of its days.
	HourVersions []uint64
	// UserCopy is where the seal's rows keyed by user are also copied:
	// userCopyCurrent (usage_rollup_user_copy, since migration 0009),
	// userCopyLegacy (usage_rollup_by_user, migrations 0004 to 0008) or 0
	// (nowhere, before 0004).
	UserCopy uint8
	// UserTotals: a day seal's rows keyed by user are also summed over
	// sources and batches (levelUserTotals; not for days recorded before
	// migration 0006, nor for hours).
	UserTotals bool
	// UserOverModels: the seal's rows keyed by user are also summed per
	// user (levelUserOverModels; not for spans recorded before migration
	// 0010, nor for hours recorded before hour seals wrote them).
	UserOverModels bool
	// ModelTotals: an hour seal's rows are also summed per model over
	// sources, with their percentile buckets (levelModelTotals; not for
	// hours recorded before migration 0007, nor for days).
	ModelTotals bool
	// ModelCopy: the seal's rows summed over users (and an hour's per
	// model) are also in usage_rollup_by_model (seals recorded before
	// migration 0008 are not).
	ModelCopy bool
}

func (x Seal) ref() sealRef { return sealRef{Grain: x.Grain, Period: x.Period, Version: x.Version} }

// sealState is the newest seals and dirty marks of a range.
type sealState struct {
	hours     map[int64]Seal
	days      map[int64]Seal   // UTC days
	localDays map[sealKey]Seal // local days and weeks of zones (grainLocalDay*, grainLocalWeek*)
	weeks     map[int64]Seal
	dirty     map[int64]uint64 // hour -> newest mark (Unix ns)
}

// sealKey names a period: local days of different lengths may start at
// the same hour.
type sealKey struct {
	grain uint8
	start int64
}

func newSealState() *sealState {
	return &sealState{hours: map[int64]Seal{}, days: map[int64]Seal{}, localDays: map[sealKey]Seal{}, weeks: map[int64]Seal{}, dirty: map[int64]uint64{}}
}

func (st *sealState) current(grain uint8, p int64) (Seal, bool) {
	var x Seal
	var ok bool
	switch grain {
	case grainHour:
		x, ok = st.hours[p]
	case grainDay:
		x, ok = st.days[p]
	case grainWeek:
		x, ok = st.weeks[p]
	default:
		x, ok = st.localDays[sealKey{grain, p}]
	}
	return x, ok
}

// all yields every current seal: hours, UTC and local days, weeks.
func (st *sealState) all() iter.Seq[Seal] {
	return func(yield func(Seal) bool) {
		for _, m := range []map[int64]Seal{st.hours, st.days, st.weeks} {
			for _, x := range m {
				if !yield(x) {
					return
				}
			}
		}
		for _, x := range st.localDays {
			if !yield(x) {
				return
			}
		}
	}
}

// setDay makes x the current seal of its UTC or local day, or week.
func (st *sealState) setDay(x Seal) {
	switch x.Grain {
	case grainDay:
		st.days[x.Period] = x
	case grainWeek:
		st.weeks[x.Period] = x
	default:
		st.localDays[sealKey{x.Grain, x.Period}] = x
	}
}

// clean reports whether hour h's newest seal may be read: no mark is newer
// than the seal's start minus ClockSkew.
func (st *sealState) clean(h int64) bool {
	x, ok := st.hours[h]
	if !ok {
		return false
	}
	mark, dirty := st.dirty[h]
	return !dirty || mark+uint64(ClockSkew) < x.Version
}

// cleanThrough is the end of the run of clean hours from d, at most to.
func (st *sealState) cleanThrough(d, to int64) int64 {
	h := d
	for h < to && st.clean(h) {
		h += 3600
	}
	return h
}

// wholeDay reports whether UTC day d has a seal of all its hours (not a
// day so far).
func (st *sealState) wholeDay(d int64) bool {
	x, ok := st.days[d]
	return ok && x.wholeDay()
}

// wholeDay reports whether x, a UTC or local day's seal, lists every hour
// of its day (not a day so far).
func (x Seal) wholeDay() bool { return len(x.HourVersions) == dayHours(x.Grain) }

// daySoFarEnd is the end of the day so far of the day from start through
// soFar (its leading clean hours), if it has at least minDaySoFarHours.
func (st *sealState) daySoFarEnd(start, soFar int64) (int64, bool) {
	end := st.cleanThrough(start, soFar)
	return end, end-start >= minDaySoFarHours*3600
}

// cleanHours returns the seals of the hours of [from, to) if all are clean.
func (st *sealState) cleanHours(from, to int64) ([]Seal, bool) {
	hours := make([]Seal, 0, (to-from)/3600)
	for h := from; h < to; h += 3600 {
		if !st.clean(h) {
			return nil, false
		}
		hours = append(hours, st.hours[h])
	}
	return hours, true
}

// spanDays returns the seals of days ([start, end): UTC days, or local days
// of 23 to 25 hours) if every one of them is current over clean hours.
func (st *sealState) spanDays(days [][2]int64) ([]Seal, bool) {
	out := make([]Seal, 0, len(days))
	for _, d := range days {
		grain := grainDay
		if d[0]%86400 != 0 || d[1]-d[0] != 86400 {
			grain, _ = localDayGrain((d[1] - d[0]) / 3600)
		}
		hours, clean := st.cleanHours(d[0], d[1])
		if !clean || !st.dayCurrent(grain, d[0], hours) {
			return nil, false
		}
		x, _ := st.current(grain, d[0])
		out = append(out, x)
	}
	return out, true
}

// currentSpan returns the seal of the week or four weeks (grain, start),
// UTC or local, if it summed exactly the current seals of its days.
func (st *sealState) currentSpan(grain uint8, start int64, days [][2]int64) (Seal, bool) {
	parts, ok := st.spanDays(days)
	if !ok || !st.dayCurrent(grain, start, parts) {
		return Seal{}, false
	}
	return st.current(grain, start)
}

// currentDay returns the seal of the UTC or local day (grain, start) and
// the clean hour seals it stands for, if it summed exactly those: all its
// day's hours, or for a day so far its first ones.
func (st *sealState) currentDay(grain uint8, start int64) (Seal, []Seal, bool) {
	x, ok := st.current(grain, start)
	if !ok || len(x.HourVersions) == 0 {
		return Seal{}, nil, false
	}
	hours, clean := st.cleanHours(start, start+int64(len(x.HourVersions))*3600)
	if !clean || !st.dayCurrent(grain, start, hours) {
		return Seal{}, nil, false
	}
	return x, hours, true
}

// dayCurrent reports whether the seal of the span (grain, start) summed
// exactly these seals: a day its hours, a week its days.
func (st *sealState) dayCurrent(grain uint8, start int64, hours []Seal) bool {
	x, ok := st.current(grain, start)
	if !ok || len(x.HourVersions) != len(hours) {
		return false
	}
	for i, h := range hours {
		if x.HourVersions[i] != h.Version {
			return false
		}
	}
	return true
}

func loadSeals(ctx context.Context, conn driver.Conn, db string, from, to int64) (*sealState, error) {
	st := newSealState()
	err := eachRow(ctx, conn, WithDB(sealsQuery(from, to), db), func(rows driver.Rows) error {
		var x Seal
		var userTotals, modelTotals, modelCopy, userOverModels uint8
		if err := rows.Scan(&x.Grain, &x.Period, &x.Version, &x.Calls, &x.HourVersions, &x.UserCopy, &userTotals, &modelTotals, &modelCopy, &userOverModels); err != nil {
			return err
		}
		x.UserTotals, x.ModelTotals, x.ModelCopy, x.UserOverModels = userTotals == 1, modelTotals == 1, modelCopy == 1, userOverModels == 1
		if x.Grain == grainHour {
			st.hours[x.Period] = x
		} else {
			st.setDay(x)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rollup: read seals: %w", err)
	}
	return st, nil
}

func loadDirty(ctx context.Context, conn driver.Conn, db string, from, to int64) (map[int64]uint64, error) {
	out, err := hourCounts(ctx, conn, WithDB(dirtyQuery(from, to), db))
	if err != nil {
		return nil, fmt.Errorf("rollup: read dirty hours: %w", err)
	}
	return out, nil
}

func callHours(ctx context.Context, conn driver.Conn, db string, from, to int64) (map[int64]bool, error) {
	out := map[int64]bool{}
	err := eachRow(ctx, conn, WithDB(callHoursQuery(from, to), db), func(rows driver.Rows) error {
		var h int64
		if err := rows.Scan(&h); err != nil {
			return err
		}
		out[h] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rollup: hours with calls: %w", err)
	}
	return out, nil
}

// MarkDirty marks hours (Unix seconds at the hour) for re-sealing, at now.
func MarkDirty(ctx context.Context, conn driver.Conn, db string, topo Topology, hours []int64, reason string, now time.Time) error {
	if len(hours) == 0 {
		return nil
	}
	if topo.Clustered() {
		ctx = ch.Context(ctx, ch.WithSettings(ch.Settings{"insert_distributed_sync": 1}))
	}
	b, err := conn.PrepareBatch(ctx, WithDB(InsertDirtyHours, db))
	if err != nil {
		return fmt.Errorf("mark %d hours dirty: %w", len(hours), err)
	}
	at := uint64(now.UnixNano())
	for _, h := range hours {
		if err := b.Append(unixUTC(h), at, reason); err != nil {
			_ = b.Abort()
			return fmt.Errorf("mark %d hours dirty: %w", len(hours), err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("mark %d hours dirty: %w", len(hours), err)
	}
	return nil
}

// LateHours returns the distinct hours (Unix seconds) of starts that are
// late at now: their hour ended more than sealAfter - ClockSkew ago, so the
// sealer may have sealed (or be sealing) it.
func LateHours(starts iter.Seq[time.Time], now time.Time, sealAfter time.Duration) []int64 {
	if sealAfter <= 0 {
		sealAfter = DefaultSealAfter
	}
	limit := now.Add(-(sealAfter - ClockSkew)).Unix() // hour end at or before this is late
	var out []int64
	for t := range starts {
		h := floorTo(t.Unix(), 3600)
		if h+3600 <= limit && !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

func unixUTC(s int64) time.Time { return time.Unix(s, 0).UTC() }

func floorTo(x, step int64) int64 {
	r := x % step
	if r < 0 {
		r += step
	}
	return x - r
}

func ceilTo(x, step int64) int64 {
	f := floorTo(x, step)
	if f == x {
		return x
	}
	return f + step
}

// RollupStatus is where sealing stands.
type RollupStatus struct {
	Now            time.Time `json:"now"`
	SealAfter      string    `json:"seal_after"`
	SealableBefore time.Time `json:"sealable_before"` // hours before it are due
	SealedThrough  time.Time `json:"sealed_through"`  // every hour before it is sealed and clean
	LagSeconds     float64   `json:"lag_seconds"`
	SealedHours    int       `json:"sealed_hours"`
	SealedDays     int       `json:"sealed_days"` // whole UTC days
	// DaySoFarHours: the UTC day holding the hour before SealableBefore is
	// sealed over its first this many hours as one day so far, which reads
	// of today read as one row per group instead of an hour row each (0:
	// none).
	DaySoFarHours int `json:"day_so_far_hours"`
	// LocalDaysSoFar are the days so far of the zones in
	// clickhouse.rollup.zones whose day holds the hour before
	// SealableBefore, by local midnight (as a UTC time).
	LocalDaysSoFar []DaySoFar `json:"local_days_so_far"`
	SealedWeeks    int        `json:"sealed_weeks"`
	// SealedLocalDays and SealedLocalWeeks count the sealed days and weeks
	// of the zones in clickhouse.rollup.zones that are not UTC ones.
	SealedLocalDays  int `json:"sealed_local_days"`
	SealedLocalWeeks int `json:"sealed_local_weeks"`
	// SealedFourWeeks counts the four weeks sealed (28 days from a UTC or a
	// zone's midnight, rows per user alone).
	SealedFourWeeks int         `json:"sealed_four_weeks"`
	Unsealed        []time.Time `json:"unsealed_hours"` // due hours with calls and no seal
	Dirty           []time.Time `json:"dirty_hours"`    // sealed hours with newer late calls
	// WithoutUserCopy counts current seals (hours and days) recorded before
	// migration 0009, without their rows in usage_rollup_user_copy: reads
	// filtered by user over them are slower until `rollup rebuild` (those
	// recorded before 0004, or mixed with newer ones, much slower).
	WithoutUserCopy int `json:"seals_without_user_copy"`
	// WithoutModelTotals counts current hour seals recorded before
	// migration 0007, without their rows per model: reads per hour and
	// model over them weigh every group's histograms until `rollup rebuild`.
	WithoutModelTotals int `json:"hours_without_model_totals"`
	// WithoutUserTotals counts current hour seals recorded before hour
	// seals summed their rows per user (Seal.UserOverModels): reads grouped
	// by user alone read those hours at levelUsers until `rollup rebuild`.
	WithoutUserTotals int `json:"hours_without_user_totals"`
	// WithoutModelCopy counts current seals (hours, days, local days,
	// weeks) recorded before migration 0008, without their rows in
	// usage_rollup_by_model: reads without users over them are slower
	// until `rollup rebuild`.
	WithoutModelCopy int        `json:"seals_without_model_copy"`
	FirstCall        *time.Time `json:"first_call,omitempty"`
}

// DaySoFar is a zone's day sealed over its first hours as one.
type DaySoFar struct {
	Start time.Time `json:"start"` // the local midnight
	Hours int       `json:"hours"`
}

// Status reads the seals, the dirty marks and the hours holding calls.
func Status(ctx context.Context, conn driver.Conn, db string, sealAfter time.Duration, now time.Time) (RollupStatus, error) {
	if sealAfter <= 0 {
		sealAfter = DefaultSealAfter
	}
	due := SealableBefore(now, sealAfter).Unix()
	out := RollupStatus{Now: now.UTC(), SealAfter: sealAfter.String(), SealableBefore: unixUTC(due), SealedThrough: unixUTC(due),
		LocalDaysSoFar: []DaySoFar{}, Unsealed: []time.Time{}, Dirty: []time.Time{}}
	var first int64
	var n uint64
	if err := conn.QueryRow(ctx, WithDB(QueryFirstCall, db)).Scan(&first, &n); err != nil {
		return out, fmt.Errorf("rollup status: %w", err)
	}
	lo := floorTo(due, 86400)
	if n > 0 {
		f := unixUTC(first)
		out.FirstCall = &f
		lo = min(lo, floorTo(first, 86400))
	}
	st, err := loadSeals(ctx, conn, db, lo, due)
	if err != nil {
		return out, err
	}
	if st.dirty, err = loadDirty(ctx, conn, db, lo, due); err != nil {
		return out, err
	}
	withCalls, err := callHours(ctx, conn, db, lo, due)
	if err != nil {
		return out, err
	}
	out.SealedHours, out.SealedWeeks = len(st.hours), len(st.weeks)
	// a day so far shown is the one of the day holding the last due hour
	current := func(grain uint8, start int64) bool {
		return start < due && due <= start+int64(dayHours(grain))*3600
	}
	for d, x := range st.days {
		if x.wholeDay() {
			out.SealedDays++
		} else if current(grainDay, d) {
			out.DaySoFarHours = len(x.HourVersions)
		}
	}
	for k, x := range st.localDays {
		switch {
		case isFourWeeks(k.grain):
			out.SealedFourWeeks++
		case isLocalWeek(k.grain):
			out.SealedLocalWeeks++
		case x.wholeDay():
			out.SealedLocalDays++
		case current(k.grain, k.start):
			out.LocalDaysSoFar = append(out.LocalDaysSoFar, DaySoFar{Start: unixUTC(k.start), Hours: len(x.HourVersions)})
		}
	}
	slices.SortFunc(out.LocalDaysSoFar, func(a, b DaySoFar) int { return a.Start.Compare(b.Start) })
	for x := range st.all() {
		if x.UserCopy != userCopyCurrent && (x.Grain == grainHour || x.Grain == grainDay) {
			out.WithoutUserCopy++
		}
		if !x.ModelTotals && x.Grain == grainHour {
			out.WithoutModelTotals++
		}
		if !x.UserOverModels && x.Grain == grainHour {
			out.WithoutUserTotals++
		}
		if !x.ModelCopy && !isFourWeeks(x.Grain) {
			out.WithoutModelCopy++
		}
	}
	pending := due
	for h := lo; h < due; h += 3600 {
		_, sealed := st.hours[h]
		switch {
		case !sealed && withCalls[h]:
			out.Unsealed = append(out.Unsealed, unixUTC(h))
		case sealed && !st.clean(h):
			out.Dirty = append(out.Dirty, unixUTC(h))
		default:
			continue
		}
		pending = min(pending, h)
	}
	out.SealedThrough = unixUTC(pending)
	out.LagSeconds = now.Sub(out.SealedThrough).Seconds()
	return out, nil
}

// hourCounts reads query's rows of (hour in Unix seconds, number).
func hourCounts(ctx context.Context, conn driver.Conn, query string) (map[int64]uint64, error) {
	out := map[int64]uint64{}
	err := eachRow(ctx, conn, query, func(rows driver.Rows) error {
		var h int64
		var n uint64
		if err := rows.Scan(&h, &n); err != nil {
			return err
		}
		out[h] = n
		return nil
	})
	return out, err
}
