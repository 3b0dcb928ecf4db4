-- 0004: a relay that runs for months — retention, mailbox quotas (SPEC.md §8.5, §9.7); the
-- same indexes and table as relay/store/migrations/sqlite/0004_lifecycle.sql, which explains
-- them, with PostgreSQL's types.

CREATE INDEX inbox_envelope ON inbox (envelope);

CREATE INDEX a2a_tasks_state ON a2a_tasks (state, status_at);

CREATE TABLE mailboxes (
    agent       text PRIMARY KEY REFERENCES agents (name) ON DELETE CASCADE,
    unacked     bigint NOT NULL DEFAULT 0,
    bytes       bigint NOT NULL DEFAULT 0,
    max_unacked bigint CHECK (max_unacked >= 0),
    max_bytes   bigint CHECK (max_bytes >= 0)
);

INSERT INTO mailboxes (agent, unacked, bytes)
SELECT i.agent, count(*), sum(length(e.token))
FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
WHERE i.acked_at IS NULL
GROUP BY i.agent;

-- The purge deletes rows as fast as traffic inserts them; their space is reused once
-- autovacuum has marked it (https://www.postgresql.org/docs/current/routine-vacuuming.html).
-- By default a table is vacuumed when a fifth of it is dead, so a table with steady churn
-- carries that much bloat and more before its size levels off. These tables are vacuumed at
-- a twentieth instead: smaller, more frequent passes, the usual setting for queue tables.
ALTER TABLE envelopes SET (autovacuum_vacuum_scale_factor = 0.05);
ALTER TABLE recipients SET (autovacuum_vacuum_scale_factor = 0.05);
ALTER TABLE inbox SET (autovacuum_vacuum_scale_factor = 0.05);
ALTER TABLE events SET (autovacuum_vacuum_scale_factor = 0.05);
ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0.05);
