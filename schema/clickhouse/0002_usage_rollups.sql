-- 0002: usage rollups behind the usage overview: day x model x user and
-- hour x model. Each is a narrow per-call ledger, sorted by its rollup key and
-- fed synchronously by a materialized view on every insert into calls (the
-- INSERT fails if the view's insert fails, so the sink retries both together).
-- Per-call rows are what makes the rollups exact under redelivery on 18.16
-- (which cannot deduplicate an insert): queries collapse them by id before
-- aggregating, see README.md.
CREATE TABLE IF NOT EXISTS {db}.usage_day_model_user
(
    day           Date,
    model         String,
    user_id       String,
    id            String,
    start_time    DateTime('UTC'),
    is_error      UInt8,
    input_tokens  Int64,
    output_tokens Int64,
    total_tokens  Int64,
    cost          Float64,
    latency_ms    Int64,
    ttft_ms       Nullable(Int64),
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (day, model, user_id, id);

CREATE TABLE IF NOT EXISTS {db}.usage_hour_model
(
    hour          DateTime('UTC'),
    model         String,
    id            String,
    start_time    DateTime('UTC'),
    user_id       String,
    is_error      UInt8,
    input_tokens  Int64,
    output_tokens Int64,
    total_tokens  Int64,
    cost          Float64,
    latency_ms    Int64,
    ttft_ms       Nullable(Int64),
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, model, id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_day_model_user_mv TO {db}.usage_day_model_user AS
SELECT
    toDate(start_time) AS day,
    model,
    user_id,
    id,
    start_time,
    toUInt8((status >= 400) OR (error != '')) AS is_error,
    input_tokens,
    output_tokens,
    total_tokens,
    ifNull(cost_usd, 0.) AS cost,
    latency_ms,
    ttft_ms,
    version
FROM {db}.calls;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_hour_model_mv TO {db}.usage_hour_model AS
SELECT
    toStartOfHour(start_time) AS hour,
    model,
    id,
    start_time,
    user_id,
    toUInt8((status >= 400) OR (error != '')) AS is_error,
    input_tokens,
    output_tokens,
    total_tokens,
    ifNull(cost_usd, 0.) AS cost,
    latency_ms,
    ttft_ms,
    version
FROM {db}.calls;
