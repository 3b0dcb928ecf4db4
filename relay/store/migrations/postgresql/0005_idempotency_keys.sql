-- 0004: idempotency keys of local submissions (SPEC.md §6.2); the same table as
-- relay/store/migrations/sqlite/0004_idempotency_keys.sql, which explains it, with PostgreSQL's
-- types (timestamptz for times).

CREATE TABLE idempotency_keys (
    agent       text NOT NULL REFERENCES agents (name) ON DELETE CASCADE,
    key         text NOT NULL,
    fingerprint text NOT NULL,
    origin      text NOT NULL,
    envelope    text NOT NULL,
    created     timestamptz NOT NULL,
    PRIMARY KEY (agent, key)                                       -- idempotency_records, accept
);

-- purge_idempotency_keys: the oldest first.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created);
