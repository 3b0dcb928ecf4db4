-- 0011: a2a_tasks.ended_by renamed status_by; the same change as
-- relay/store/migrations/sqlite/0011_a2a_status_by.sql, which explains it.
--
-- RENAME COLUMN changes the catalog only.

ALTER TABLE a2a_tasks RENAME COLUMN ended_by TO status_by;
