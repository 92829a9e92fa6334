-- 0003: pre-aggregated usage rollups sealed per hour, the seal and dirty-hour
-- records that say which rollup rows a read may use, and calls_by_user (the
-- call list's user look-up). Replaces 0002's per-call ledgers: their views
-- are dropped so inserts into calls stop feeding them, then the ledgers.
-- See README.md ("Sealed rollups").
DROP TABLE IF EXISTS {db}.usage_day_model_user_mv;

DROP TABLE IF EXISTS {db}.usage_hour_model_mv;

DROP TABLE IF EXISTS {db}.usage_day_model_user;

DROP TABLE IF EXISTS {db}.usage_hour_model;

-- One row per (grain, period, key, seal version). grain 1 = UTC hour,
-- 2 = UTC day; by_user 1 = keyed by model, user, source and batch,
-- by_user 0 = the same summed over users and batches (user_id = batch_id = '').
-- Rows of a seal version are only read once its usage_seals record exists;
-- superseded versions are deleted later. Latency and TTFT are sparse
-- log-linear histograms: bucket indexes and counts (sinks/clickhouse/histogram.go).
CREATE TABLE IF NOT EXISTS {db}.usage_rollup
(
    grain           UInt8,
    by_user         UInt8,
    period          DateTime('UTC'),
    model           String,
    user_id         String,
    source          String,
    batch_id        String,
    version         UInt64,
    calls           UInt64,
    errors          UInt64,
    input_tokens    Int64,
    output_tokens   Int64,
    total_tokens    Int64,
    cost            Float64,
    latency_buckets Array(UInt16),
    latency_counts  Array(UInt64),
    ttft_calls      UInt64,
    ttft_buckets    Array(UInt16),
    ttft_counts     Array(UInt64)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(period)
ORDER BY (by_user, grain, period, model, user_id, source, batch_id, version);

-- A seal: period is sealed at version. Written after every usage_rollup row
-- of that version, so a reader that finds the record finds all its rows.
-- Day seals list the 24 hour versions they were summed from.
CREATE TABLE IF NOT EXISTS {db}.usage_seals
(
    grain         UInt8,
    period        DateTime('UTC'),
    version       UInt64,
    calls         UInt64,
    hour_versions Array(UInt64),
    sealed_at     DateTime('UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(period)
ORDER BY (grain, period);

-- Late data: an hour marked at marked_at (Unix nanoseconds) is read from the
-- per-call rows until a seal that started after the mark replaces it.
CREATE TABLE IF NOT EXISTS {db}.usage_dirty_hours
(
    hour      DateTime('UTC'),
    marked_at UInt64,
    reason    String
)
ENGINE = ReplacingMergeTree(marked_at)
PARTITION BY toYYYYMM(hour)
ORDER BY hour;

-- The call list's look-up by user: a user's calls in start order, narrow.
CREATE TABLE IF NOT EXISTS {db}.calls_by_user
(
    user_id    String,
    start_time DateTime('UTC'),
    start_ms   UInt16,
    id         String,
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMMDD(start_time)
ORDER BY (user_id, start_time, start_ms, id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.calls_by_user_mv TO {db}.calls_by_user AS
SELECT user_id, start_time, start_ms, id, version
FROM {db}.calls;

INSERT INTO {db}.calls_by_user (user_id, start_time, start_ms, id, version)
SELECT user_id, start_time, start_ms, id, version
FROM {db}.calls;
