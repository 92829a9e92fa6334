-- 0008: usage_rollup's rows summed over users (by_user = 0, every seal) and
-- per model (by_user = 3, hours) once more, in a table of their own with
-- small granules. They are a few dozen rows an hour among thousands keyed by
-- user, and in usage_rollup every read of them decompressed whole
-- 8,192-row granules of histograms, mostly other rows' (18.16 has no
-- adaptive granularity): the overviews without users (per model, per day,
-- day x model, hour x model) read 50 times fewer rows here. Same columns as
-- usage_rollup. A seal writes its copy after its usage_rollup rows and
-- before its usage_seals record, and records model_copy = 1; seals recorded
-- before this migration have no copy and are read from usage_rollup until
-- they are sealed again (`callpipe rollup rebuild`). See README.md ("Reads
-- without users").
CREATE TABLE IF NOT EXISTS {db}.usage_rollup_by_model AS {db}.usage_rollup
ENGINE = MergeTree
PARTITION BY toYYYYMM(period)
ORDER BY (by_user, grain, period, model, source, version)
SETTINGS index_granularity = 64;

ALTER TABLE {db}.usage_seals ADD COLUMN model_copy UInt8 DEFAULT 0;
