package callsdb

import (
	"fmt"
	"strings"
	"time"
)

// SyntheticLoad describes synthetic calls generated inside ClickHouse with
// INSERT ... SELECT (no client round trip per row): what `callpipe bench
// usage` and the scale tests load. Call n (0 <= n < Calls) starts at
// From + n*Span/Calls; its model, user (skewed: a few heavy users, a long
// tail of rare ones), source, status, tokens, cost and latency come from
// hashes of n and Seed, so a load is reproducible. DuplicatePercent of the
// calls are stored twice (a second identical copy with a higher version),
// as redelivery does.
type SyntheticLoad struct {
	Calls            uint64
	From             time.Time
	Span             time.Duration
	Models, Users    int
	DuplicatePercent int
	Seed             uint64
}

// syntheticColumns are the calls columns a synthetic row sets (the rest
// take their defaults).
var syntheticColumns = []string{
	"id", "trace_id", "start_time", "start_ms", "end_time", "end_ms", "latency_ms", "ttft_ms",
	"endpoint", "kind", "model", "instance", "user_id", "user_source", "stream", "status", "error",
	"input_text", "input_tokens", "output_tokens", "total_tokens", "usage_source", "cost_usd",
	"source", "batch_id", "inserted_at", "version",
}

// Statements returns the INSERT ... SELECT statements of calls [from, to)
// and of their duplicate copies, for chunked loading with progress.
func (l SyntheticLoad) Statements(from, to uint64) []string {
	h := func(k int) string { return fmt.Sprintf("cityHash64(n, %d)", l.Seed*16+uint64(k)) }
	span := int64(l.Span / time.Second)
	lat := fmt.Sprintf("toInt64(if(%s %% 10 = 0, %s %% 120, exp(6.2 + (%s %% 1000000) / 1000000. * 3.5)))", h(1), h(2), h(3))
	user := fmt.Sprintf("toUInt64(pow((%s %% 1000000) / 1000000., 3) * %d)", h(4), max(l.Users, 1))
	batch := h(5) + " % 10 = 0"
	status := fmt.Sprintf("if(%s %% 50 = 0, 500, 200)", h(6))
	in, out := fmt.Sprintf("toInt64(20 + %s %% 2000)", h(7)), fmt.Sprintf("toInt64(5 + %s %% 600)", h(8))
	selectRows := func(version int, where string) string {
		return fmt.Sprintf(`INSERT INTO {db}.calls (%s)
SELECT
    concat('syn-', toString(n)), concat('syn-', toString(n)),
    toDateTime(%d + intDiv(n * %d, %d), 'UTC') AS st, toUInt16(n %% 1000),
    toDateTime(toUInt32(st) + intDiv(lat, 1000), 'UTC'), toUInt16(lat %% 1000), %s AS lat,
    if(n %% 2 = 0, toNullable(intDiv(lat, 5)), CAST(NULL AS Nullable(Int64))),
    '/v1/chat/completions', 'chat', concat('model-', toString(%s %% %d)) AS model, 'xinference-1',
    concat('user-', toString(%s)), 'api_key', toUInt8(n %% 2 = 0), toInt32(%s) AS status,
    if(status >= 400, 'upstream error', ''),
    concat('synthetic prompt ', toString(n)), %s AS in_tok, %s AS out_tok, in_tok + out_tok, 'reported',
    toNullable(in_tok * 0.000001 + out_tok * 0.000002),
    if(%s, 'batch', 'online'), if(%s, concat('batch-', toString(intDiv(toUInt32(st), 86400))), ''),
    now(), toUInt64(%d)
FROM (SELECT number + %d AS n FROM system.numbers LIMIT %d)%s`,
			strings.Join(syntheticColumns, ", "), l.From.Unix(), span, max(l.Calls, 1), lat,
			h(9), max(l.Models, 1), user, status, in, out, batch, batch, version, from, to-from, where)
	}
	stmts := []string{selectRows(1, "")}
	if l.DuplicatePercent > 0 {
		stmts = append(stmts, selectRows(2, fmt.Sprintf("\nWHERE %s %% 100 < %d", h(10), l.DuplicatePercent)))
	}
	return stmts
}
