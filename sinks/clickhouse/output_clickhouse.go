package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/callsdb"
)

// OutputConfig is how the output reaches ClickHouse (the store's Config)
// and how it writes.
type OutputConfig struct {
	callsdb.Config

	// MaxTextBytes caps input/output text, structured input/output and error
	// (0 = no cap).
	MaxTextBytes int
	// MaxInFlight is how many batch inserts may run at once (default 1).
	MaxInFlight int
}

// Output writes batches of calls into {db}.calls (and, through the
// materialized views, into the usage rollups) with the native protocol's
// batch insert: PrepareBatch, Append per row, Send. One Send is one INSERT,
// i.e. one part per partition touched in calls and in each rollup ledger.
type Output struct {
	cfg      OutputConfig
	conn     driver.Conn
	inflight chan struct{}
	insert   string
	server   callsdb.Server
	versions callsdb.Versions
}

// NewOutput returns an unconnected output.
func NewOutput(cfg OutputConfig) *Output {
	cfg.MaxInFlight = defaults.IfNotPositive(cfg.MaxInFlight, 1)
	cfg.DialTimeout = defaults.IfNotPositive(cfg.DialTimeout, 5*time.Second)
	return &Output{cfg: cfg, inflight: make(chan struct{}, cfg.MaxInFlight), insert: callsdb.WithDB(callsdb.InsertCalls, cfg.Database)}
}

// Connect opens the connection pool. It fails when ClickHouse is unreachable;
// later outages surface as WriteBatch errors and the driver reconnects.
func (o *Output) Connect(ctx context.Context) error {
	dial := o.cfg.Config
	dial.MaxConns = o.cfg.MaxInFlight + 2
	conn, err := callsdb.Open(ctx, dial)
	if err != nil {
		return err
	}
	srv, err := callsdb.DetectServer(ctx, conn)
	if err != nil {
		_ = conn.Close()
		return err
	}
	o.conn, o.server = conn, srv
	return nil
}

// Server is the server version seen at Connect.
func (o *Output) Server() callsdb.Server { return o.server }

// Conn is the output's connection (for queries sharing its pool).
func (o *Output) Conn() driver.Conn { return o.conn }

// nextVersion is a per-process increasing row version: wall-clock
// microseconds, bumped when the clock stalls or steps back.
func (o *Output) nextVersion() uint64 { return o.versions.Next(uint64(time.Now().UnixMicro())) }

// WriteBatch inserts calls as one INSERT. It blocks while MaxInFlight inserts
// are running. When it returns nil every call is stored; on an error, any
// subset may be stored (ClickHouse inserts are atomic per block, not per
// batch), which is safe because reads deduplicate by id.
//
// The optional dedupToken (at most one) names the batch's content (the sink uses its messages' stream
// sequences): on modern servers it is sent as insert_deduplication_token, so
// an identical batch redelivered within the table's dedup window is not
// stored again (nor are its rollup rows). This only saves space; exactness
// never depends on it. "" or an 18.16 server: no token.
func (o *Output) WriteBatch(ctx context.Context, calls []schema.Call, dedupToken ...string) error {
	if len(dedupToken) > 1 {
		return errors.New("clickhouse output: at most one dedup token per batch")
	}
	if o.conn == nil {
		return errors.New("clickhouse output: not connected")
	}
	if len(calls) == 0 {
		return nil
	}
	select {
	case o.inflight <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-o.inflight }()

	// A late call's hour is marked before the INSERT (reads switch to its
	// per-call rows) and again after it (a seal that began reading during
	// the INSERT is older than that mark, so the hour is sealed again).
	if err := o.markLate(ctx, calls); err != nil {
		return err
	}
	insertCtx := ctx
	if settings := o.insertSettings(strings.Join(dedupToken, "")); len(settings) > 0 {
		insertCtx = ch.Context(ctx, ch.WithSettings(settings))
	}
	b, err := o.conn.PrepareBatch(insertCtx, o.insert)
	if err != nil {
		return fmt.Errorf("clickhouse prepare insert: %w", err)
	}
	blockRows, blockBytes := insertBlockRows, insertBlockBytes
	if o.cfg.Topology.Clustered() {
		blockRows, blockBytes = len(calls), math.MaxInt // one block: see insertBlockRows
	}
	now, version := time.Now(), o.nextVersion()
	for lo := 0; lo < len(calls); {
		hi, size := lo, 0
		for hi < len(calls) && hi-lo < blockRows && size < blockBytes {
			size += textBytes(&calls[hi], o.cfg.MaxTextBytes)
			hi++
		}
		for j, col := range callColumns(calls[lo:hi], o.cfg.MaxTextBytes, now, version) {
			if err := b.Column(j).Append(col); err != nil {
				_ = b.Abort()
				return fmt.Errorf("clickhouse append column %s: %w", callsdb.CallColumns[j], err)
			}
		}
		if hi == len(calls) {
			break // Send writes the last block
		}
		if err := b.Flush(); err != nil {
			_ = b.Abort()
			return fmt.Errorf("clickhouse insert %d calls: block at %d: %w", len(calls), lo, err)
		}
		lo = hi
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("clickhouse insert %d calls: %w", len(calls), err)
	}
	return o.markLate(ctx, calls)
}

// insertBlockRows and insertBlockBytes bound the rows of an INSERT that the
// driver holds at once: a larger batch is sent as several blocks of one
// INSERT, so the driver's column and encoding buffers grow to one block and
// are reused for the next, instead of growing by a quarter at a time (and
// being copied each time) to the whole batch. The server squashes the
// blocks of one INSERT into one part (min_insert_block_size_rows), so the
// table sees the same parts. Not for a clustered INSERT into the
// Distributed table with insert_distributed_sync: the server does not
// squash those, and each block would become parts on every shard.
const (
	insertBlockRows  = 2048
	insertBlockBytes = 1 << 20 // of the calls' texts (textBytes)
)

// textBytes is about how many bytes of text columns c adds to a block: its
// largest fields, as stored (cut at maxText).
func textBytes(c *schema.Call, maxText int) int {
	n := 0
	for _, l := range [...]int{len(c.InputText), len(c.OutputText), len(c.Input), len(c.Output), len(c.Error)} {
		if maxText > 0 {
			l = min(l, maxText)
		}
		n += l
	}
	return n
}

// markLate marks the hours of calls that are late now.
func (o *Output) markLate(ctx context.Context, calls []schema.Call) error {
	now := time.Now()
	late := callsdb.LateHours(func(yield func(time.Time) bool) {
		for i := range calls {
			if !yield(calls[i].StartTime) {
				return
			}
		}
	}, now, o.cfg.SealAfter)
	if len(late) == 0 {
		return nil
	}
	if err := callsdb.MarkDirty(ctx, o.conn, o.cfg.Database, o.cfg.Topology, late, "late", now); err != nil {
		return fmt.Errorf("clickhouse insert %d calls: %w", len(calls), err)
	}
	return nil
}

// insertSettings are the per-query settings of one insert: none on 18.16
// (it rejects string-valued ones), where it is single-server.
func (o *Output) insertSettings(dedupToken string) ch.Settings {
	settings := ch.Settings{}
	if o.cfg.Topology.Clustered() {
		settings["insert_distributed_sync"] = 1
	}
	if dedupToken != "" && o.server.Modern() {
		for k, v := range DedupSettings(dedupToken) {
			settings[k] = v
		}
	}
	return settings
}

// DedupSettings are the per-insert settings that make a modern server drop
// a repeated batch, in calls and in the rollups its views feed.
func DedupSettings(token string) map[string]any {
	return map[string]any{
		"insert_deduplication_token":                         token,
		"deduplicate_blocks_in_dependent_materialized_views": 1,
	}
}

// Close closes the connection pool.
func (o *Output) Close() error {
	if o.conn == nil {
		return nil
	}
	return o.conn.Close()
}
