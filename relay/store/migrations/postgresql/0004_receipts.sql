-- 0004: delivery receipts; the same columns as relay/store/migrations/sqlite/0004_receipts.sql,
-- which explains them (``delay_reported`` is a boolean here, as ``refused`` is).
--
-- ADD COLUMN with a constant default rewrites no rows (PostgreSQL 11 and later): the migration
-- takes a moment however long the history is.
ALTER TABLE recipients ADD COLUMN notify text;
ALTER TABLE recipients ADD COLUMN delay_reported boolean NOT NULL DEFAULT false;
