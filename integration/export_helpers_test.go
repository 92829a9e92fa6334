package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"
	"github.com/parquet-go/parquet-go"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/serve/export"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// exportEnv is a fresh ClickHouse database seeded with calls through the
// sink's Output, a fresh bucket and a Redis key prefix of the test's own.
type exportEnv struct {
	db        string
	seed      *chsink.Output // no text cap: exported rows equal the calls
	s3        *minio.Client
	s3cfg     harness.S3Config
	bucket    string
	rdb       *redis.Client
	redisAddr string
	keyPrefix string
	chAddr    string
	calls     []schema.Call // newest version of every stored call
}

var exportBase = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)

func newExportEnv(t testing.TB, n int) *exportEnv {
	t.Helper()
	_, db := chTestDB(t)
	e := &exportEnv{db: db, chAddr: harness.ClickHouse(t).Native}
	e.seed = chsink.NewOutput(chsink.OutputConfig{Config: callsdb.Config{Addr: e.chAddr, Database: db, User: "default"}, MaxInFlight: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e.seed.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.seed.Close() })

	e.s3cfg = harness.S3(t)
	c, err := rawarchive.NewClient(rawarchive.S3Config{Endpoint: e.s3cfg.Endpoint, AccessKey: e.s3cfg.AccessKey, SecretKey: e.s3cfg.SecretKey, UseSSL: e.s3cfg.UseSSL, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	e.s3 = c
	e.bucket = "export-" + testkit.RandomHex(t, 5)
	if err := c.MakeBucket(ctx, e.bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
		defer ccancel()
		for o := range c.ListObjects(cctx, e.bucket, minio.ListObjectsOptions{Recursive: true}) {
			if o.Err == nil {
				_ = c.RemoveObject(cctx, e.bucket, o.Key, minio.RemoveObjectOptions{})
			}
		}
		_ = c.RemoveBucket(cctx, e.bucket)
	})

	e.redisAddr = harness.Redis(t)
	e.rdb = redis.NewClient(&redis.Options{Addr: e.redisAddr})
	e.keyPrefix = "callpipe:export:test:" + testkit.RandomHex(t, 4) + ":"
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		if keys, err := e.rdb.Keys(cctx, e.keyPrefix+"*").Result(); err == nil && len(keys) > 0 {
			_ = e.rdb.Del(cctx, keys...).Err()
		}
		_ = e.rdb.Close()
	})

	if n > 0 {
		calls := genCalls(17, "exp", n, 2, 3, 4, exportBase)
		for i := range calls {
			if i%7 == 0 {
				calls[i].Model = "model-'quoted{db}'" // literals must survive quoting
			}
		}
		if err := e.seed.WriteBatch(ctx, calls); err != nil {
			t.Fatal(err)
		}
		// a second, newer copy of every fifth call: exports carry the newest
		again := make([]schema.Call, 0, n/5)
		for i := 0; i < n; i += 5 {
			calls[i].OutputText = "second version"
			again = append(again, calls[i])
		}
		if err := e.seed.WriteBatch(ctx, again); err != nil {
			t.Fatal(err)
		}
		e.calls = calls
	}
	return e
}

func (e *exportEnv) runner(t testing.TB, cfg export.Config) *export.Runner {
	t.Helper()
	cfg.KeyPrefix = e.keyPrefix
	return &export.Runner{CH: e.seed.Conn(), Database: e.db, S3: e.s3, Redis: e.rdb, Config: cfg}
}

// env is the environment of a callpipe child process pointed at this test's
// database, bucket and Redis keys.
func (e *exportEnv) env(extra ...string) []string {
	return append([]string{
		"PATH=/usr/bin:/bin",
		"CALLPIPE_CLICKHOUSE_ADDR=" + e.chAddr, "CALLPIPE_CLICKHOUSE_DATABASE=" + e.db,
		"CALLPIPE_S3_ENDPOINT=" + e.s3cfg.Endpoint, "CALLPIPE_S3_ACCESS_KEY=" + e.s3cfg.AccessKey,
		"CALLPIPE_S3_SECRET_KEY=" + e.s3cfg.SecretKey, "CALLPIPE_S3_USE_SSL=" + strconv.FormatBool(e.s3cfg.UseSSL),
		"CALLPIPE_REDIS_ADDR=" + e.redisAddr, "CALLPIPE_EXPORT_KEY_PREFIX=" + e.keyPrefix,
		"CALLPIPE_LOG_FORMAT=text",
	}, extra...)
}

// wantRows is what an export of [from, to) filtered by model and user must
// hold, in export order: (hour of start, id).
func wantRows(calls []schema.Call, from, to time.Time, model, user string) []export.Row {
	var out []export.Row
	for i := range calls {
		c := &calls[i]
		st := c.StartTime.UTC().Truncate(time.Second)
		if st.Before(from) || !st.Before(to) || (model != "" && c.Model != model) || (user != "" && c.UserID != user) {
			continue
		}
		ms := func(t time.Time) time.Time { return t.UTC().Truncate(time.Millisecond) }
		r := export.Row{
			ID: c.ID, TraceID: c.TraceID, SessionID: c.SessionID, StartTime: ms(c.StartTime), EndTime: ms(c.EndTime),
			LatencyMS: c.LatencyMS, TTFTMS: c.TTFTMS, Endpoint: c.Endpoint, Kind: c.Kind, Model: c.Model,
			Instance: c.Instance, UserID: c.UserID, UserSource: c.UserSource, APIKeyHash: c.APIKeyHash,
			APIKeyPrefix: c.APIKeyPrefix, Stream: c.Stream, Status: int32(c.Status), Error: c.Error,
			FinishReason: c.FinishReason, InputText: c.InputText, OutputText: c.OutputText,
			Input: string(c.Input), Output: string(c.Output), InputTokens: c.InputTokens, OutputTokens: c.OutputTokens,
			TotalTokens: c.TotalTokens, UsageSource: c.UsageSource, CostUSD: c.CostUSD, Tags: c.Tags,
			Source: c.Source, BatchID: c.BatchID,
		}
		if c.FirstTokenTime != nil {
			ft := ms(*c.FirstTokenTime)
			r.FirstTokenTime = &ft
		}
		if c.Capture != nil {
			r.CaptureMode, r.CaptureMaskSet = c.Capture.Mode, c.Capture.MaskSet
		}
		if len(c.Metadata) > 0 {
			b, _ := json.Marshal(c.Metadata) // sorted keys, as the sink stores them
			r.Metadata = string(b)
		}
		if r.Tags == nil {
			r.Tags = []string{}
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		hi, hj := out[i].StartTime.Truncate(time.Hour), out[j].StartTime.Truncate(time.Hour)
		if !hi.Equal(hj) {
			return hi.Before(hj)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// compareRows checks got against want field by field (through their JSON
// form, times in UTC); Version is only checked to be set.
func compareRows(t *testing.T, what string, got, want []export.Row) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d rows, want %d", what, len(got), len(want))
	}
	for i := range want {
		g := got[i]
		if g.Version == 0 {
			t.Fatalf("%s: row %d (%s) has no version", what, i, g.ID)
		}
		g.Version = 0
		norm := func(r *export.Row) {
			r.StartTime, r.EndTime = r.StartTime.UTC(), r.EndTime.UTC()
			if r.FirstTokenTime != nil {
				ft := r.FirstTokenTime.UTC()
				r.FirstTokenTime = &ft
			}
		}
		norm(&g)
		w := want[i]
		norm(&w)
		gb, _ := json.Marshal(g)
		wb, _ := json.Marshal(w)
		if !bytes.Equal(gb, wb) {
			t.Fatalf("%s: row %d differs:\n got  %s\n want %s", what, i, gb, wb)
		}
	}
}

// readExport checks the layout of a finished export under prefix (parts as
// the manifest lists them with their sizes and checksums, the manifest,
// exactly one _SUCCESS) and returns the manifest and the parts' bytes, in order.
func readExport(t *testing.T, e *exportEnv, prefix string) (*export.Manifest, [][]byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var keys []string
	success := 0
	for o := range e.s3.ListObjects(ctx, e.bucket, minio.ListObjectsOptions{Prefix: prefix + "/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		switch {
		case strings.HasSuffix(o.Key, "/"+export.SuccessName):
			success++
		case strings.HasSuffix(o.Key, "/"+export.ManifestName):
		default:
			keys = append(keys, o.Key)
		}
	}
	if success != 1 {
		t.Fatalf("%s: %d %s objects, want 1", prefix, success, export.SuccessName)
	}
	mb := getObject(t, e, prefix+"/"+export.ManifestName)
	var m export.Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		t.Fatalf("manifest: %v\n%s", err, mb)
	}
	if len(m.Parts) != len(keys) {
		t.Fatalf("manifest lists %d parts, bucket holds %d: %v", len(m.Parts), len(keys), keys)
	}
	var parts [][]byte
	var rows, size int64
	for i, p := range m.Parts {
		if p.Key != keys[i] {
			t.Fatalf("part %d: manifest %s, bucket %s", i, p.Key, keys[i])
		}
		b := getObject(t, e, p.Key)
		sum := sha256.Sum256(b)
		if int64(len(b)) != p.Bytes || hex.EncodeToString(sum[:]) != p.SHA256 {
			t.Fatalf("part %s: %d bytes sha256 %x, manifest says %d bytes %s", p.Key, len(b), sum, p.Bytes, p.SHA256)
		}
		rows += p.Rows
		size += p.Bytes
		parts = append(parts, b)
	}
	if rows != m.Rows || size != m.Bytes {
		t.Fatalf("manifest totals rows=%d bytes=%d, parts add up to %d, %d", m.Rows, m.Bytes, rows, size)
	}
	if m.Query == "" || m.Args["dest"] == "" {
		t.Fatalf("manifest lacks query or args: %+v", m)
	}
	return &m, parts
}

func getObject(t *testing.T, e *exportEnv, key string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o, err := e.s3.GetObject(ctx, e.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	b, err := io.ReadAll(o)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return b
}

func decompress(t *testing.T, compression string, b []byte) []byte {
	t.Helper()
	switch compression {
	case "zstd":
		d, err := zstd.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		out, err := io.ReadAll(d)
		if err != nil {
			t.Fatal(err)
		}
		return out
	case "gzip":
		d, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(d)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	return b
}

// decodeParts reads every part back with a reader of its format: parquet-go's
// reader, encoding/csv, or a JSON decoder per line.
func decodeParts(t *testing.T, m *export.Manifest, parts [][]byte) []export.Row {
	t.Helper()
	var out []export.Row
	for i, b := range parts {
		var rows []export.Row
		switch m.Format {
		case export.FormatParquet:
			rows = readParquet[export.Row](t, b, m.Compression)
		case export.FormatCSV:
			rows = readCSV(t, decompress(t, m.Compression, b))
		case export.FormatNDJSON:
			for _, line := range bytes.Split(decompress(t, m.Compression, b), []byte("\n")) {
				if len(line) == 0 {
					continue
				}
				var r export.Row
				if err := json.Unmarshal(line, &r); err != nil {
					t.Fatalf("part %d: %v: %s", i, err, line)
				}
				rows = append(rows, r)
			}
		}
		if int64(len(rows)) != m.Parts[i].Rows {
			t.Fatalf("part %s holds %d rows, manifest says %d", m.Parts[i].Key, len(rows), m.Parts[i].Rows)
		}
		out = append(out, rows...)
	}
	return out
}

func readParquet[T any](t *testing.T, b []byte, compression string) []T {
	t.Helper()
	f, err := parquet.OpenFile(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("parquet open: %v", err)
	}
	wantCodec := map[string]string{"zstd": "ZSTD", "gzip": "GZIP", "none": "UNCOMPRESSED"}[compression]
	for _, rg := range f.Metadata().RowGroups {
		for _, col := range rg.Columns {
			if got := col.MetaData.Codec.String(); got != wantCodec {
				t.Fatalf("parquet column %v: codec %s, want %s", col.MetaData.PathInSchema, got, wantCodec)
			}
		}
	}
	if start, ok := f.Schema().Lookup("start_time"); !ok || !strings.HasPrefix(start.Node.Type().LogicalType().String(), "TIMESTAMP") {
		t.Fatalf("parquet start_time is not a timestamp column: %v", f.Schema())
	}
	r := parquet.NewGenericReader[T](bytes.NewReader(b))
	defer r.Close()
	rows := make([]T, r.NumRows())
	n, err := r.Read(rows)
	if err != nil && err != io.EOF {
		t.Fatalf("parquet read: %v", err)
	}
	return rows[:n]
}

// readCSV parses the CSV layout documented in export-README: header, RFC 3339
// UTC millisecond times, empty for null, tags as a JSON array.
func readCSV(t *testing.T, b []byte) []export.Row {
	t.Helper()
	recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil {
		t.Fatalf("csv: %v", err)
	}
	if len(recs) == 0 || strings.Join(recs[0], ",") != strings.Join(export.RowColumns, ",") {
		t.Fatalf("csv header %v", recs[:min(1, len(recs))])
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	var out []export.Row
	for _, rec := range recs[1:] {
		f := func(name string) string { return rec[col[name]] }
		tm := func(name string) time.Time {
			v, err := time.Parse(time.RFC3339Nano, f(name))
			if err != nil {
				t.Fatalf("csv %s: %v", name, err)
			}
			return v
		}
		i64 := func(name string) int64 {
			v, err := strconv.ParseInt(f(name), 10, 64)
			if err != nil {
				t.Fatalf("csv %s: %v", name, err)
			}
			return v
		}
		r := export.Row{
			ID: f("id"), TraceID: f("trace_id"), SessionID: f("session_id"), StartTime: tm("start_time"), EndTime: tm("end_time"),
			LatencyMS: i64("latency_ms"), Endpoint: f("endpoint"), Kind: f("kind"), Model: f("model"), Instance: f("instance"),
			UserID: f("user_id"), UserSource: f("user_source"), APIKeyHash: f("api_key_hash"), APIKeyPrefix: f("api_key_prefix"),
			Stream: f("stream") == "true", Status: int32(i64("status")), Error: f("error"), FinishReason: f("finish_reason"),
			InputText: f("input_text"), OutputText: f("output_text"), Input: f("input"), Output: f("output"),
			ModelParameters: f("model_parameters"), InputTokens: i64("input_tokens"), OutputTokens: i64("output_tokens"),
			TotalTokens: i64("total_tokens"), UsageSource: f("usage_source"), Metadata: f("metadata"), Source: f("source"),
			BatchID: f("batch_id"), Truncated: f("truncated") == "true",
			CaptureMode: f("capture_mode"), CaptureMaskSet: f("capture_mask_set"),
		}
		if f("first_token_time") != "" {
			ft := tm("first_token_time")
			r.FirstTokenTime = &ft
		}
		if f("ttft_ms") != "" {
			v := i64("ttft_ms")
			r.TTFTMS = &v
		}
		if f("cost_usd") != "" {
			v, err := strconv.ParseFloat(f("cost_usd"), 64)
			if err != nil {
				t.Fatalf("csv cost_usd: %v", err)
			}
			r.CostUSD = &v
		}
		if err := json.Unmarshal([]byte(f("tags")), &r.Tags); err != nil {
			t.Fatalf("csv tags %q: %v", f("tags"), err)
		}
		v, err := strconv.ParseUint(f("version"), 10, 64)
		if err != nil {
			t.Fatalf("csv version: %v", err)
		}
		r.Version = v
		out = append(out, r)
	}
	return out
}

func fmtRange(from, to time.Time) string {
	return fmt.Sprintf("%s..%s", from.Format(time.RFC3339), to.Format(time.RFC3339))
}
