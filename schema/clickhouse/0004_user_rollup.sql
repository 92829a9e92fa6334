-- 0004: usage_rollup's rows keyed by user (by_user = 1) once more, sorted by
-- user first, so that a read filtered by one user reads that user's rows and
-- no other's (usage_rollup's key leads with the period, so a user filter
-- there reads every user's rows of the range). A seal writes its copy after
-- its usage_rollup rows and before its usage_seals record, and records
-- user_copy = 1; seals recorded before this migration have no copy and are
-- read from usage_rollup until they are sealed again (`callpipe rollup
-- rebuild`). See README.md ("Reads filtered by user").
CREATE TABLE IF NOT EXISTS {db}.usage_rollup_by_user
(
    grain           UInt8,
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
ORDER BY (user_id, grain, period, model, source, batch_id, version);

ALTER TABLE {db}.usage_seals ADD COLUMN user_copy UInt8 DEFAULT 0;
