-- 0009: fewer rows per envelope — the hop-log events a recipient row implies.
--
-- * recipients.implied — 1 on a row taken (delivered to a local inbox, or queued for
--   federation) by the accept that created its envelope. Such a row gets no event row: its
--   ``delivered`` or ``accepted`` event is read back from the envelope row (``accepted`` its
--   time, ``via`` its hop) by message_status (relay/store/sql/accept.py, "Implied events").
--   Existing rows keep 0 and the event rows they have, so nothing is backfilled.
-- * event_horizon — one row: the newest cutoff of the hop-log retention (``purge_events``).
--   An implied event is as old as its envelope's ``accepted``; message_status shows none at or
--   before the horizon, so implied events are forgotten on the same schedule as event rows
--   without a write per row.

ALTER TABLE recipients ADD COLUMN implied INTEGER NOT NULL DEFAULT 0 CHECK (implied IN (0, 1));

CREATE TABLE event_horizon (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    purged_before TEXT
) STRICT;

INSERT INTO event_horizon (id, purged_before) VALUES (1, NULL);
