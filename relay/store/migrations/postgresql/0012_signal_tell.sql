-- 0012: what partners are still to be told of a signal; the same column and index as
-- relay/store/migrations/sqlite/0012_signal_tell.sql, which explains them.
--
-- ADD COLUMN with a constant default rewrites no table (PostgreSQL 11+).

ALTER TABLE signals ADD COLUMN tell integer NOT NULL DEFAULT 0;
CREATE INDEX signals_tell ON signals (id) WHERE tell <> 0;
