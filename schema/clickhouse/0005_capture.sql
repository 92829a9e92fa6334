-- 0005: the capture policy that produced each stored call's payload
-- (schema.Capture): its mode (full, truncated, none; '' for calls stored
-- before it was recorded) and the version of its mask set.
--
-- 18.16 has no ADD COLUMN IF NOT EXISTS: the migrator counts "already
-- exists" as done, so a second migrator (or a re-run) succeeds.
ALTER TABLE {db}.calls ADD COLUMN capture_mode String DEFAULT '';
ALTER TABLE {db}.calls ADD COLUMN capture_mask_set String DEFAULT '';
