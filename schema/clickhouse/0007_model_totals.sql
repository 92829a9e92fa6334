-- 0007: a fourth level of hour rows in usage_rollup, by_user = 3: the rows
-- summed over users (by_user = 0) of an hour summed over sources too, one
-- row per model, with the p50/p95/p99 buckets of its latency and TTFT
-- histograms weighed once when the hour is sealed (latency_q, ttft_q). A
-- read bucketed by hour and keyed by model (hour x model, or hours of one
-- model) has one such row per group and reads its percentiles instead of
-- weighing every group's histograms again. An hour seal writes them after
-- its other rows and before its record, which says model_totals = 1; hours
-- recorded before this migration are read at by_user = 0 until they are
-- sealed again (`callpipe rollup rebuild`). Days have no such rows.
-- See README.md ("Percentiles per hour and model").
ALTER TABLE {db}.usage_rollup ADD COLUMN latency_q Array(UInt16);

ALTER TABLE {db}.usage_rollup ADD COLUMN ttft_q Array(UInt16);

ALTER TABLE {db}.usage_seals ADD COLUMN model_totals UInt8 DEFAULT 0;
