-- 0010: the reply that ended an A2A face task; the same column as
-- relay/store/migrations/sqlite/0010_a2a_ended_by.sql, which explains it.
--
-- ADD COLUMN without a default rewrites no table.

ALTER TABLE a2a_tasks ADD COLUMN ended_by text;
