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
