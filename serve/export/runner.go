package export

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"sort"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/encrypt"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/internal/defaults"
)

// Object names next to the parts.
const (
	ManifestName = "_manifest.json"
	SuccessName  = "_SUCCESS"
)

// Config tunes a Runner; zero values take the defaults in brackets.
type Config struct {
	Compression    string        // default compression of specs without one [zstd]
	PartBytes      int64         // a part is closed at this many uncompressed row bytes [256 MiB]
	PageRows       int           // rows per ClickHouse query [20000]
	UploadPartSize uint64        // S3 multipart part size [16 MiB]
	LeaseTTL       time.Duration // [30s]
	StateTTL       time.Duration // [7 days]
	KeyPrefix      string        // Redis key prefix ["callpipe:export:"]
	Owner          string        // recorded in the lease [host/pid]
	// ArchivePrefix is the key prefix of raw archive objects in Bucket ["raw/v1"].
	ArchivePrefix string
	// ArchiveBucket holds the raw archive (source archive).
	ArchiveBucket string
	// SSE is the server-side encryption of every object written (nil: the
	// bucket's default applies).
	SSE encrypt.ServerSide
}

// Runner runs export jobs against ClickHouse (database Database), S3 and Redis.
type Runner struct {
	CH       driver.Conn // nil: source calls is unavailable
	Database string
	S3       *minio.Client
	Redis    redis.UniversalClient
	Config   Config
	Log      *slog.Logger
}

func (r *Runner) cfg() Config {
	c := r.Config
	if c.Compression == "" {
		c.Compression = "zstd"
	}
	c.PartBytes = defaults.IfNotPositive(c.PartBytes, 256<<20)
	c.PageRows = defaults.IfNotPositive(c.PageRows, 20000)
	if c.UploadPartSize < 5<<20 {
		c.UploadPartSize = 16 << 20
	}
	c.LeaseTTL = defaults.IfNotPositive(c.LeaseTTL, 30*time.Second)
	c.StateTTL = defaults.IfNotPositive(c.StateTTL, 7*24*time.Hour)
	if c.KeyPrefix == "" {
		c.KeyPrefix = "callpipe:export:"
	}
	if c.Owner == "" {
		host, _ := os.Hostname()
		c.Owner = fmt.Sprintf("%s/pid-%d", host, os.Getpid())
	}
	if c.ArchivePrefix == "" {
		c.ArchivePrefix = "raw/v1"
	}
	return c
}

func (r *Runner) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// RunOptions are per-run knobs.
type RunOptions struct {
	// Rate caps rows per second (0: unlimited), to spare ClickHouse and S3.
	Rate float64
	// Progress is called after every batch of rows.
	Progress func(Progress)
}

// Result is the outcome of Run.
type Result struct {
	JobID string
	// AlreadyDone: the destination already held this job's _SUCCESS; nothing was written.
	AlreadyDone bool
	// Resumed: the run continued after Parts committed by an earlier run.
	Resumed  bool
	Manifest *Manifest
}

// Run executes spec (normalized by it) to completion, resuming from the
// job's checkpoint. It returns *LeaseHeldError when another process runs the
// job and *FieldError for invalid arguments.
func (r *Runner) Run(ctx context.Context, spec Spec, opt RunOptions) (*Result, error) {
	c := r.cfg()
	if err := spec.Normalize(c.Compression); err != nil {
		return nil, err
	}
	switch spec.Source {
	case SourceCalls:
		if r.CH == nil {
			return nil, &FieldError{"source", "calls needs ClickHouse (clickhouse.addr)"}
		}
		return run[Row](ctx, r, c, spec, newCallsSource(r.CH, r.Database, &spec, c.PageRows), opt)
	case SourceArchive:
		bucket := c.ArchiveBucket
		if bucket == "" {
			return nil, &FieldError{"source", "archive needs s3.bucket (the archive's bucket)"}
		}
		return run[RawRow](ctx, r, c, spec, newArchiveSource(r.S3, bucket, c.ArchivePrefix, &spec), opt)
	}
	return nil, &FieldError{"source", "unknown"}
}

// job is one run of a spec.
type job[T any, P record[T]] struct {
	r              *Runner
	c              Config
	spec           Spec
	bucket, prefix string
	lease          *Lease
	st             *State
	src            source[T]
	opt            RunOptions
	log            *slog.Logger

	runStart    time.Time
	runRows     int64
	runStored   int64 // bytes of parts committed by this run
	skippedSeen int64
	lastSave    time.Time
	lastProg    time.Time
	cur         *partUpload
	enc         encoder[T]
	partRows    int64
	partSize    int64
	partAfter   string
	partLast    string
}

func (j *job[T, P]) key(name string) string {
	if j.prefix == "" {
		return name
	}
	return j.prefix + "/" + name
}

func run[T any, P record[T]](ctx context.Context, r *Runner, c Config, spec Spec, src source[T], opt RunOptions) (*Result, error) {
	bucket, prefix, _ := ParseDest(spec.Dest)
	log := r.log().With("job", spec.JobID)
	j := &job[T, P]{r: r, c: c, spec: spec, bucket: bucket, prefix: prefix, src: src, opt: opt, log: log}
	res := &Result{JobID: spec.JobID}

	ok, err := r.S3.BucketExists(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("export %s: s3 bucket %s: %w", spec.JobID, bucket, err)
	}
	if !ok {
		return nil, &FieldError{"dest", fmt.Sprintf("bucket %q does not exist", bucket)}
	}
	if m, err := j.completed(ctx); err != nil || m != nil {
		if err == nil {
			res.AlreadyDone, res.Manifest = true, m
			j.recordDone(ctx, m)
		}
		return res, err
	}

	lease, err := acquireLease(ctx, r.Redis, c.KeyPrefix, spec.JobID, c.Owner, c.LeaseTTL, c.StateTTL)
	if err != nil {
		return nil, err
	}
	j.lease = lease
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := lease.release(rctx); err != nil {
			log.Warn("export: releasing lease (it expires by itself)", "err", err)
		}
	}()
	// Another run may have finished between the check above and the lease.
	if m, err := j.completed(ctx); err != nil || m != nil {
		if err == nil {
			res.AlreadyDone, res.Manifest = true, m
		}
		return res, err
	}

	jctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go lease.keepAlive(jctx, func(err error) { cancel(err) })

	if err := j.loadCheckpoint(jctx); err != nil {
		return nil, err
	}
	res.Resumed = len(j.st.Parts) > 0
	if res.Resumed {
		log.Info("export: resuming from checkpoint", "parts", len(j.st.Parts), "rows", j.st.Progress.Rows, "attempt", j.st.Attempts)
	}
	m, err := j.execute(jctx)
	if err != nil {
		if cause := context.Cause(jctx); cause != nil && errors.Is(cause, ErrLeaseLost) {
			err = fmt.Errorf("%w (%w)", cause, err)
		}
		j.fail(ctx, err)
		return nil, fmt.Errorf("export %s: %w", spec.JobID, err)
	}
	res.Manifest = m
	return res, nil
}

// completedManifest returns the manifest of spec's finished export, nil
// when dest holds no _SUCCESS.
func (r *Runner) completedManifest(ctx context.Context, spec Spec) (*Manifest, error) {
	bucket, prefix, err := ParseDest(spec.Dest)
	if err != nil {
		return nil, err
	}
	j := &job[Row, *Row]{r: r, spec: spec, bucket: bucket, prefix: prefix}
	return j.completed(ctx)
}

// completed returns the manifest when dest holds this job's _SUCCESS; an
// error when it holds another job's.
func (j *job[T, P]) completed(ctx context.Context) (*Manifest, error) {
	ok, _, err := exists(ctx, j.r.S3, j.bucket, j.key(SuccessName))
	if err != nil || !ok {
		return nil, err
	}
	b, ok, err := getSmall(ctx, j.r.S3, j.bucket, j.key(ManifestName))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &FieldError{"dest", fmt.Sprintf("%s holds %s without %s; not overwriting", j.spec.Dest, SuccessName, ManifestName)}
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("export: %s/%s: %w", j.bucket, j.key(ManifestName), err)
	}
	if m.JobID != j.spec.JobID {
		return nil, &FieldError{"dest", fmt.Sprintf("%s already holds the finished export %s; choose another prefix", j.spec.Dest, m.JobID)}
	}
	return &m, nil
}

// recordDone makes Redis say succeeded for a job found complete in S3 (its
// state may have expired or been lost), unless a run holds the lease.
func (j *job[T, P]) recordDone(ctx context.Context, m *Manifest) {
	st, err := LoadState(ctx, j.r.Redis, j.c.KeyPrefix, j.spec.JobID)
	if err != nil || (st != nil && st.State == StateSucceeded) {
		return
	}
	s := &State{ID: m.JobID, Spec: j.spec, State: StateSucceeded, Parts: m.Parts, Manifest: m, Attempts: m.Attempts,
		Query: m.Query, Progress: Progress{Rows: m.Rows, Bytes: m.Bytes, Parts: len(m.Parts), StartedAt: m.StartedAt, UpdatedAt: time.Now().UTC()}}
	b, _ := json.Marshal(s)
	if err := j.r.Redis.Set(ctx, stateKey(j.c.KeyPrefix, m.JobID), b, j.c.StateTTL).Err(); err != nil {
		j.log.Warn("export: recording finished state", "err", err)
	}
}

// loadCheckpoint reads the job's state and keeps the committed parts that
// are still in S3 as they were recorded (a part that is missing or differs
// ends the checkpoint there: it and everything after are written again).
func (j *job[T, P]) loadCheckpoint(ctx context.Context) error {
	st, err := LoadState(ctx, j.r.Redis, j.c.KeyPrefix, j.spec.JobID)
	if err != nil {
		return err
	}
	if st != nil && !st.Spec.sameWork(&j.spec) {
		return &FieldError{"job_id", fmt.Sprintf("%q is already used by an export with other arguments (%s %s..%s)",
			j.spec.JobID, st.Spec.Dest, st.Spec.From.Format(time.RFC3339), st.Spec.To.Format(time.RFC3339))}
	}
	if st == nil {
		// a new job only writes into an empty prefix: it deletes part
		// objects it did not record when it finishes
		if key, err := j.anyObject(ctx); err != nil {
			return err
		} else if key != "" {
			return &FieldError{"dest", fmt.Sprintf("%s is not empty (it holds %s); export into a new prefix", j.spec.Dest, key)}
		}
	}
	if st == nil || st.State == StateSucceeded { // succeeded without _SUCCESS in S3: it was removed, redo
		st = &State{ID: j.spec.JobID}
	}
	st.Spec = j.spec
	for i, p := range st.Parts {
		ok, size, err := exists(ctx, j.r.S3, j.bucket, p.Key)
		if err != nil {
			return err
		}
		if !ok || size != p.Bytes {
			j.log.Warn("export: checkpointed part missing or changed; rewriting from it", "key", p.Key, "exists", ok, "size", size, "want", p.Bytes)
			st.Parts = st.Parts[:i]
			break
		}
	}
	st.Progress.Rows, st.Progress.Bytes, st.Progress.Parts = 0, 0, len(st.Parts)
	for _, p := range st.Parts {
		st.Progress.Rows += p.Rows
		st.Progress.Bytes += p.Bytes
	}
	st.State, st.Owner, st.Fence, st.Error, st.Manifest = StateRunning, j.lease.Owner, j.lease.Fence, "", nil
	st.Attempts++
	if st.Progress.StartedAt.IsZero() {
		st.Progress.StartedAt = time.Now().UTC()
	}
	st.Query, _ = j.src.describe()
	j.st = st
	return st.save(ctx, j.lease, j.c.KeyPrefix, j.c.StateTTL)
}

func (j *job[T, P]) execute(ctx context.Context) (*Manifest, error) {
	after := j.st.cursor()
	est, err := j.src.estimate(ctx, after)
	if err != nil {
		return nil, err
	}
	j.st.Progress.EstimatedRows = j.st.Progress.Rows + est
	j.runStart = time.Now()
	j.partAfter = after
	err = j.src.read(ctx, after, func(rows []T, cursors []string) error {
		if err := j.writeRows(ctx, rows, cursors); err != nil {
			return err
		}
		j.runRows += int64(len(rows))
		j.throttle(ctx)
		if err := j.progress(ctx, false); err != nil {
			return err
		}
		return ctx.Err()
	})
	if err == nil && j.cur == nil && len(j.st.Parts) == 0 {
		// no rows at all: one empty part keeps the schema (Parquet footer,
		// CSV header) readable where consumers expect objects
		err = j.openPart(ctx)
	}
	if err == nil && j.cur != nil {
		err = j.closePart(ctx)
	}
	if err != nil {
		if j.cur != nil {
			j.cur.abort(err)
		}
		return nil, err
	}
	return j.finalize(ctx)
}

// writeRows encodes rows into the current part, closing it whenever it
// reaches PartBytes, so parts end at row boundaries.
func (j *job[T, P]) writeRows(ctx context.Context, rows []T, cursors []string) error {
	lo := 0
	for i := range rows {
		j.partSize += int64(P(&rows[i]).size())
		if j.partSize < j.c.PartBytes && i < len(rows)-1 {
			continue
		}
		if j.cur == nil {
			if err := j.openPart(ctx); err != nil {
				return err
			}
		}
		if err := j.enc.write(rows[lo : i+1]); err != nil {
			return err
		}
		j.partRows += int64(i + 1 - lo)
		j.partLast = cursors[i]
		lo = i + 1
		if j.partSize >= j.c.PartBytes {
			if err := j.closePart(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

func (j *job[T, P]) partKey(n int) string {
	return j.key(fmt.Sprintf("part-%05d%s", n, extension(j.spec.Format, j.spec.Compression)))
}

func (j *job[T, P]) openPart(ctx context.Context) error {
	_, cols := j.src.describe()
	j.cur = startPart(ctx, j.r.S3, j.bucket, j.partKey(len(j.st.Parts)), contentType(j.spec.Format), j.c.UploadPartSize, j.c.SSE)
	enc, err := newEncoder[T, P](j.spec.Format, j.spec.Compression, cols, j.cur)
	if err != nil {
		j.cur.abort(err)
		j.cur = nil
		return err
	}
	j.enc = enc
	return nil
}

// closePart completes the object, then records it as committed (the
// checkpoint): a crash before the record rewrites the same key on resume.
func (j *job[T, P]) closePart(ctx context.Context) error {
	u := j.cur
	if err := j.enc.close(); err != nil {
		u.abort(err)
		j.cur = nil
		return err
	}
	if err := u.finish(); err != nil {
		j.cur = nil
		return err
	}
	j.cur = nil
	ok, size, err := exists(ctx, j.r.S3, j.bucket, u.key)
	if err != nil {
		return err
	}
	if !ok || size != u.n {
		return fmt.Errorf("export: %s/%s after upload: exists=%v size=%d, wrote %d bytes", j.bucket, u.key, ok, size, u.n)
	}
	p := Part{Key: u.key, Rows: j.partRows, Bytes: u.n, SHA256: u.digest(), ETag: u.info.ETag, After: j.partAfter, Last: j.partLast}
	if p.Last == "" {
		p.Last = p.After // the empty part
	}
	j.st.Parts = append(j.st.Parts, p)
	j.st.Progress.Rows += p.Rows
	j.st.Progress.Bytes += p.Bytes
	j.st.Progress.Parts = len(j.st.Parts)
	j.runStored += p.Bytes
	j.syncSkipped()
	j.partAfter, j.partRows, j.partSize = p.Last, 0, 0
	if err := j.st.save(ctx, j.lease, j.c.KeyPrefix, j.c.StateTTL); err != nil {
		return err
	}
	j.log.Info("export: part committed", "key", p.Key, "rows", p.Rows, "bytes", p.Bytes, "parts", len(j.st.Parts), "total_rows", j.st.Progress.Rows)
	return j.progress(ctx, true)
}

// syncSkipped adds the records the source skipped since the last call to
// the state (sources that read ahead may count a few lines past the last
// committed row, which a resumed run counts again).
func (j *job[T, P]) syncSkipped() {
	if sk, ok := j.src.(interface{ skippedRecords() int64 }); ok {
		n := sk.skippedRecords()
		j.st.Skipped += n - j.skippedSeen
		j.skippedSeen = n
	}
}

// anyObject returns the key of some object under the job's prefix ("" if none).
func (j *job[T, P]) anyObject(ctx context.Context) (string, error) {
	p := j.key("")
	lctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing after the first object
	for o := range j.r.S3.ListObjects(lctx, j.bucket, minio.ListObjectsOptions{Prefix: p, Recursive: true, MaxKeys: 1}) {
		if o.Err != nil {
			return "", fmt.Errorf("export: list %s/%s: %w", j.bucket, p, o.Err)
		}
		return o.Key, nil
	}
	return "", nil
}

// finalize removes part objects of earlier attempts that the checkpoint does
// not list, then writes the manifest and, last, _SUCCESS — each only while
// the lease is still ours.
func (j *job[T, P]) finalize(ctx context.Context) (*Manifest, error) {
	keep := map[string]bool{}
	for _, p := range j.st.Parts {
		keep[p.Key] = true
	}
	partPrefix := j.key("part-")
	for obj := range j.r.S3.ListObjects(ctx, j.bucket, minio.ListObjectsOptions{Prefix: partPrefix}) {
		if obj.Err != nil {
			return nil, fmt.Errorf("export: list %s/%s: %w", j.bucket, partPrefix, obj.Err)
		}
		if keep[obj.Key] || path.Dir(obj.Key) != path.Dir(partPrefix) {
			continue
		}
		j.log.Info("export: removing part left by an earlier attempt", "key", obj.Key)
		if err := j.r.S3.RemoveObject(ctx, j.bucket, obj.Key, minio.RemoveObjectOptions{}); err != nil {
			return nil, fmt.Errorf("export: remove %s/%s: %w", j.bucket, obj.Key, err)
		}
	}
	query, cols := j.src.describe()
	m := &Manifest{
		Version: ManifestVersion, Spec: j.spec, Query: query, Args: j.spec.args(), Columns: cols, Parts: j.st.Parts,
		Attempts: j.st.Attempts, Fence: j.lease.Fence, StartedAt: j.st.Progress.StartedAt, FinishedAt: time.Now().UTC(),
	}
	j.syncSkipped()
	if m.Skipped = j.st.Skipped; m.Skipped > 0 {
		j.log.Warn("export: skipped source records that are not events", "skipped", m.Skipped)
	}
	sort.Slice(m.Parts, func(a, b int) bool { return m.Parts[a].Key < m.Parts[b].Key })
	for _, p := range m.Parts {
		m.Rows += p.Rows
		m.Bytes += p.Bytes
	}
	body, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := j.lease.check(ctx); err != nil {
		return nil, err
	}
	if err := putSmall(ctx, j.r.S3, j.bucket, j.key(ManifestName), "application/json", body, j.c.SSE); err != nil {
		return nil, err
	}
	if err := j.lease.check(ctx); err != nil {
		return nil, err
	}
	if err := putSmall(ctx, j.r.S3, j.bucket, j.key(SuccessName), "text/plain", nil, j.c.SSE); err != nil {
		return nil, err
	}
	j.st.State, j.st.Manifest = StateSucceeded, m
	for attempt := 0; ; attempt++ {
		err := j.st.save(ctx, j.lease, j.c.KeyPrefix, j.c.StateTTL)
		if err == nil {
			break
		}
		if attempt == 2 || errors.Is(err, ErrLeaseLost) {
			// _SUCCESS is in place: the export is complete; a later run
			// and GET /api/v1/exports/{id} read that from S3
			j.log.Warn("export: recording success in redis", "err", err)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	j.log.Info("export: done", "rows", m.Rows, "bytes", m.Bytes, "parts", len(m.Parts), "attempts", m.Attempts)
	return m, nil
}

// fail records the error in the job's state (if the lease is still ours).
func (j *job[T, P]) fail(ctx context.Context, err error) {
	if j.st == nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	j.st.State, j.st.Error = StateFailed, err.Error()
	if serr := j.st.save(sctx, j.lease, j.c.KeyPrefix, j.c.StateTTL); serr != nil {
		j.log.Warn("export: recording failure", "err", serr)
	}
	j.log.Error("export failed; rerun to resume from the last committed part", "err", err, "parts", len(j.st.Parts), "rows", j.st.Progress.Rows)
}

func (j *job[T, P]) throttle(ctx context.Context) {
	if j.opt.Rate <= 0 {
		return
	}
	due := time.Duration(float64(j.runRows) / j.opt.Rate * float64(time.Second))
	if wait := due - time.Since(j.runStart); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
}

// progress updates rates, calls the progress hook and, unless force (the
// caller just saved), saves the state at most once a second. Only a lost
// lease is an error: progress is advisory.
func (j *job[T, P]) progress(ctx context.Context, force bool) error {
	p := &j.st.Progress
	if el := time.Since(j.runStart).Seconds(); el > 0 {
		p.RowsPerSecond = float64(j.runRows) / el
		p.BytesPerSec = float64(j.runBytes()) / el
	}
	now := time.Now()
	if j.opt.Progress != nil && (force || now.Sub(j.lastProg) >= 200*time.Millisecond) {
		j.lastProg = now
		cp := *p
		cp.Rows += j.partRows // rows in the open part count as done for display
		j.opt.Progress(cp)
	}
	if !force && now.Sub(j.lastSave) >= time.Second {
		j.lastSave = now
		err := j.st.save(ctx, j.lease, j.c.KeyPrefix, j.c.StateTTL)
		switch {
		case errors.Is(err, ErrLeaseLost):
			return err
		case err != nil && !errors.Is(err, context.Canceled):
			j.log.Warn("export: saving progress", "err", err)
		}
	}
	return nil
}

// runBytes is bytes stored by this run (committed parts plus the open one).
func (j *job[T, P]) runBytes() int64 {
	var n int64
	if j.cur != nil {
		n = j.cur.n
	}
	return n + j.runStored
}

// args is the job's arguments as strings, for the manifest.
func (s *Spec) args() map[string]string {
	a := map[string]string{
		"from": s.From.Format(time.RFC3339), "to": s.To.Format(time.RFC3339), "format": s.Format,
		"dest": s.Dest, "source": s.Source, "compression": s.Compression, "job_id": s.JobID,
	}
	if s.Model != "" {
		a["model"] = s.Model
	}
	if s.User != "" {
		a["user"] = s.User
	}
	return a
}
