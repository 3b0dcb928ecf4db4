-- 0004: idempotency keys of local submissions (SPEC.md §6.2).
--
-- A client that lost the answer to a send retries it under the same key and gets the first
-- answer rather than a second envelope. One row per (agent, key): the fingerprint of the request
-- that first used the key, and the envelope the key answers with, by its dedup key (origin, id).
-- The row is written in the transaction that takes custody of that envelope (the A2A face: that
-- writes the call's task or turn), never on its own.
--
-- No foreign key to envelopes: an envelope may be purged before its key, and the key must go on
-- answering with its id for the whole retention. The agent's keys go with the agent.

CREATE TABLE idempotency_keys (
    agent       TEXT NOT NULL REFERENCES agents (name) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    origin      TEXT NOT NULL,
    envelope    TEXT NOT NULL,
    created     TEXT NOT NULL,
    PRIMARY KEY (agent, key)                                       -- idempotency_records, accept
) STRICT;

-- purge_idempotency_keys: the oldest first.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created);
