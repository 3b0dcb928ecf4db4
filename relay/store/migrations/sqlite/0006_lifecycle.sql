-- 0004: a relay that runs for months — retention, mailbox quotas (SPEC.md §8.5, §9.7).
--
-- * inbox_envelope — the purge deletes old envelopes (relay/store/sql/store.py, "retention"),
--   and every envelope deleted makes SQLite look for inbox rows that still point at it (the
--   foreign key's child lookup, https://www.sqlite.org/foreignkeys.html §3). Without this
--   index each of those lookups would scan the whole inbox.
-- * a2a_tasks_state — the purge of A2A face tasks that ended long ago: by state, oldest
--   status first.
-- * mailboxes — one row per local agent that ever had mail: how many inbox rows it has not
--   acknowledged and their size in bytes (the signed envelopes as stored), kept up to date in
--   the same transaction as every inbox insert and every ack, so that a quota check reads one
--   row instead of counting the inbox. ``max_unacked`` and ``max_bytes`` are the agent's own
--   quotas (``synq agent set``); NULL takes the relay's ``[quotas]`` default, 0 means none.
--
-- Filled from the inbox as it stands, so a relay upgraded with mail waiting counts it.

CREATE INDEX inbox_envelope ON inbox (envelope);

CREATE INDEX a2a_tasks_state ON a2a_tasks (state, status_at);

CREATE TABLE mailboxes (
    agent       TEXT PRIMARY KEY REFERENCES agents (name) ON DELETE CASCADE,
    unacked     INTEGER NOT NULL DEFAULT 0,
    bytes       INTEGER NOT NULL DEFAULT 0,
    max_unacked INTEGER CHECK (max_unacked >= 0),
    max_bytes   INTEGER CHECK (max_bytes >= 0)
) STRICT;

INSERT INTO mailboxes (agent, unacked, bytes)
SELECT i.agent, count(*), sum(length(e.token))
FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
WHERE i.acked_at IS NULL
GROUP BY i.agent;
