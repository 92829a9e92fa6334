-- 0006: a third level of day rows in usage_rollup, by_user = 2: the rows
-- keyed by user (by_user = 1) of a UTC or local day summed over sources and
-- batches, one row per (model, user). Overviews grouped by user without
-- source (user, model x user) read about half the rows of by_user = 1, where
-- each user's calls of a day split over sources. A day seal writes them
-- after its other rows and before its record, which says user_totals = 1;
-- days recorded before this migration have none, are read from by_user = 1,
-- and are sealed again by the sealer's first pass. Hours have no such rows.
-- See README.md ("Reads grouped by user").
ALTER TABLE {db}.usage_seals ADD COLUMN user_totals UInt8 DEFAULT 0;
