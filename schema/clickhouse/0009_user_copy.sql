-- 0009: the rows keyed by user (usage_rollup's by_user = 1 rows, sorted by
-- user first) in a table of small granules. A read filtered by one user
-- needs a few hundred of them; in usage_rollup_by_user (0004) every part of
-- the range cost at least one 8,192-row granule, mostly other users'
-- histograms (18.16 has no adaptive granularity): at 10 M calls a read of
-- one user's 30 days by day and model decompressed 33,000-74,000 rows there
-- and 1,300-1,600 here. Same columns as usage_rollup_by_user. A seal writes
-- this copy instead, after its usage_rollup rows and before its usage_seals
-- record, and records user_copy = 2; seals recorded with user_copy = 1 are
-- read from usage_rollup_by_user, which keeps their copies until they are
-- sealed again (`callpipe rollup rebuild`) or retention drops them. See
-- README.md ("Reads filtered by user").
CREATE TABLE IF NOT EXISTS {db}.usage_rollup_user_copy AS {db}.usage_rollup_by_user
ENGINE = MergeTree
PARTITION BY toYYYYMM(period)
ORDER BY (user_id, grain, period, model, source, batch_id, version)
SETTINGS index_granularity = 256;
