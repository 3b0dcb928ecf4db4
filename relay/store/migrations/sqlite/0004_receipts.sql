-- 0004: delivery receipts (SPEC.md §6.2 ``notify``, §9.4; RFC 3461 NOTIFY).
--
-- Per recipient row, what the envelope's sender asked to be told about that recipient, and
-- whether the one ``delayed`` report for it has gone:
-- * notify — NULL for the default (a report on failure only, what every row meant before this
--   migration); otherwise the keywords joined by commas (``success,delay,failure``), or
--   ``never``. On a queued remote row the federation sender passes it to the partner relay with
--   every attempt; on a local row the relay that delivers reads it (relay/core/dsn.py).
-- * delay_reported — 1 once the ``delayed`` report was committed (with the deferral that
--   caused it), so it is sent at most once per row.
--
-- Additive, with defaults: rows written before read as "default, nothing reported". No new
-- index: both columns are read with the row they belong to.
ALTER TABLE recipients ADD COLUMN notify TEXT;
ALTER TABLE recipients ADD COLUMN delay_reported INTEGER NOT NULL DEFAULT 0
    CHECK (delay_reported IN (0, 1));
