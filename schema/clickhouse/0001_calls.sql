-- 0001: one row per normalized call (schema.Call), read deduplicated.
--
-- Portable subset (ClickHouse 18.16 .. 26.x): no DateTime64 (times are
-- DateTime('UTC') + UInt16 milliseconds), no Map/JSON (metadata, parameters and
-- structured input/output are JSON text), no LowCardinality, no TTL, no CODEC.
-- ReplacingMergeTree(version) collapses redelivered copies of a call in
-- background merges; reads never rely on that: they deduplicate by id
-- (GROUP BY id with argMax(..., version)), see README.md.
CREATE TABLE IF NOT EXISTS {db}.calls
(
    id               String,
    trace_id         String,
    session_id       String,
    start_time       DateTime('UTC'),
    start_ms         UInt16,
    end_time         DateTime('UTC'),
    end_ms           UInt16,
    first_token_time Nullable(DateTime('UTC')),
    first_token_ms   Nullable(UInt16),
    latency_ms       Int64,
    ttft_ms          Nullable(Int64),
    endpoint         String,
    kind             String,
    model            String,
    instance         String,
    user_id          String,
    user_source      String,
    api_key_hash     String,
    api_key_prefix   String,
    stream           UInt8,
    status           Int32,
    error            String,
    finish_reason    String,
    input_text       String,
    output_text      String,
    input            String,
    output           String,
    model_parameters String,
    input_tokens     Int64,
    output_tokens    Int64,
    total_tokens     Int64,
    usage_source     String,
    cost_usd         Nullable(Float64),
    metadata         String,
    tags             Array(String),
    source           String,
    batch_id         String,
    truncated        UInt8,
    inserted_at      DateTime('UTC'),
    version          UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMMDD(start_time)
ORDER BY (toStartOfHour(start_time), id);
