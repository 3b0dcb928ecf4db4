-- 0001: the relay's first schema, PostgreSQL dialect. The data model is described in
-- relay/store/base.py; relay/store/migrations/sqlite/0001_init.sql is the same model for SQLite.
--
-- Differences from the SQLite schema, each for a reason:
-- * timestamptz rather than fixed-width text: PostgreSQL compares and indexes real timestamps,
--   with the microsecond precision of Python's datetime.
-- * boolean ``refused`` and identity columns (SQL standard) rather than INTEGER PRIMARY KEY.
-- * recipients.lease_owner: the store instance holding a row's lease, so that the rows of a
--   relay process that died are taken over at once rather than when the lease lapses
--   (relay/store/postgres.py, "Leases").
-- * fillfactor on recipients: leases and deliveries update its rows in place; free room on
--   each page lets PostgreSQL keep those updates on the page (heap-only tuples) instead of
--   touching every index.
--
-- Every query of the PostgreSQL dialect (relay/store/postgres.py, and
-- relay/store/sql/statements.py for the texts both dialects share) has an index here; the
-- comment beside each index names the method it serves.

CREATE TABLE agents (
    name       text PRIMARY KEY,                                -- get_agent, existing_agents
    kind       text NOT NULL CHECK (kind IN ('inbox', 'a2a', 'mcp')),
    endpoint   text,
    token_hash text NOT NULL UNIQUE,                            -- agent_for_token
    created    timestamptz NOT NULL
);

CREATE TABLE envelopes (
    pk       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    origin   text NOT NULL,
    id       text NOT NULL,
    sender   text NOT NULL,
    token    text NOT NULL,          -- the signed JWS exactly as received or created
    created  timestamptz NOT NULL,
    expires  timestamptz NOT NULL,
    thread   text,
    kind     text NOT NULL,
    via      text NOT NULL,
    accepted timestamptz NOT NULL,
    UNIQUE (origin, id)                                         -- the dedup key (SPEC.md §8.5)
);

-- ack, flush and delete_queued name an envelope by id alone.
CREATE INDEX envelopes_id ON envelopes (id);
-- inbox(thread=...): lets the planner start from the thread's few envelopes.
CREATE INDEX envelopes_thread ON envelopes (thread) WHERE thread IS NOT NULL;

-- One row per (envelope, recipient), keyed by address (see the SQLite schema). Remote rows in
-- state 'queued' are the federation queue.
CREATE TABLE recipients (
    pk           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    envelope     bigint NOT NULL REFERENCES envelopes (pk) ON DELETE CASCADE,
    recipient    text NOT NULL,
    domain       text,
    state        text NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'bounced')),
    refused      boolean NOT NULL DEFAULT false,
    code         text,
    reason       text,
    attempts     integer NOT NULL DEFAULT 0,
    next_attempt timestamptz,
    lease_until  timestamptz,
    lease_owner  bigint,
    updated      timestamptz NOT NULL,
    -- accept's union, settle's updates, message_status; also the index the foreign key's
    -- child lookups use.
    UNIQUE (envelope, recipient),
    CHECK (state <> 'queued' OR (domain IS NOT NULL AND next_attempt IS NOT NULL))
) WITH (fillfactor = 80);

-- lease_due, next_due and list_queue without a domain, in lease order. Partial: only queued
-- rows are indexed, so the index stays as small as the queue however long the history grows.
CREATE INDEX recipients_due ON recipients (next_attempt, pk) WHERE state = 'queued';
-- lease_due, list_queue and flush for one destination domain.
CREATE INDEX recipients_due_domain ON recipients (domain, next_attempt, pk)
    WHERE state = 'queued';

-- An identity sequence never hands out a number twice, so SSE clients can resume from a
-- sequence number even after rows were deleted with their agent. Numbers are handed out in
-- commit order per agent: the writer locks the agent's row first (relay/store/postgres.py,
-- "Inbox order").
CREATE TABLE inbox (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent        text NOT NULL REFERENCES agents (name) ON DELETE CASCADE,
    envelope     bigint NOT NULL REFERENCES envelopes (pk) ON DELETE CASCADE,
    delivered_at timestamptz NOT NULL,
    acked_at     timestamptz,
    UNIQUE (agent, envelope)                                    -- one delivery per agent; ack
);
-- No index on inbox (envelope): this schema never deletes envelopes, so the foreign key's
-- child lookup never runs. A migration that purges old envelopes must add one.

-- inbox(include_acked=True): history by agent, oldest first; remove_agent's cascade.
CREATE INDEX inbox_agent_seq ON inbox (agent, seq);
-- inbox(): unacked rows only, so a long history of acked rows is never scanned by a poll.
CREATE INDEX inbox_unacked ON inbox (agent, seq) WHERE acked_at IS NULL;

CREATE TABLE events (
    pk        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    envelope  bigint NOT NULL REFERENCES envelopes (pk) ON DELETE CASCADE,
    at        timestamptz NOT NULL,
    recipient text NOT NULL,
    event     text NOT NULL,
    code      text,
    reason    text,
    hop       text
);

-- message_status: the hop log of one envelope in order.
CREATE INDEX events_envelope ON events (envelope, pk);
