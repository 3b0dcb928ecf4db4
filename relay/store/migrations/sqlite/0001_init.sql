-- 0001: the relay's first schema. The data model is described in relay/store/base.py.
--
-- Conventions:
-- * STRICT tables (https://www.sqlite.org/stricttables.html): a value of the wrong type is an
--   error, not a silent conversion.
-- * Timestamps are UTC text 'YYYY-MM-DDTHH:MM:SS.ffffffZ'. The width is fixed, so text order is
--   time order and range comparisons use the indexes.
-- * Every query of the SQLite dialect (relay/store/sqlite.py, and relay/store/sql/statements.py
--   for the texts both dialects share) has an index here; the comment beside each index names
--   the method it serves.

CREATE TABLE agents (
    name       TEXT PRIMARY KEY,                                -- get_agent, existing_agents
    kind       TEXT NOT NULL CHECK (kind IN ('inbox', 'a2a', 'mcp')),
    endpoint   TEXT,
    token_hash TEXT NOT NULL UNIQUE,                            -- agent_for_token
    created    TEXT NOT NULL
) STRICT;

CREATE TABLE envelopes (
    pk       INTEGER PRIMARY KEY,
    origin   TEXT NOT NULL,
    id       TEXT NOT NULL,
    sender   TEXT NOT NULL,
    token    TEXT NOT NULL,          -- the signed JWS exactly as received or created
    created  TEXT NOT NULL,
    expires  TEXT NOT NULL,
    thread   TEXT,
    kind     TEXT NOT NULL,
    via      TEXT NOT NULL,
    accepted TEXT NOT NULL,
    UNIQUE (origin, id)                                         -- the dedup key (SPEC.md §8.5)
) STRICT;

-- ack, flush and delete_queued name an envelope by id alone.
CREATE INDEX envelopes_id ON envelopes (id);
-- inbox(thread=...): lets the planner start from the thread's few envelopes.
CREATE INDEX envelopes_thread ON envelopes (thread) WHERE thread IS NOT NULL;

-- One row per (envelope, recipient). ``recipient`` is the agent name for local rows (``domain``
-- NULL) and the address for remote and refused rows. Remote rows in state 'queued' are the
-- federation queue. ``refused`` marks rows bounced at acceptance, which a later accept of the
-- same envelope may turn into an accepted row (the idempotent union of base.py).
CREATE TABLE recipients (
    pk           INTEGER PRIMARY KEY,
    envelope     INTEGER NOT NULL REFERENCES envelopes (pk) ON DELETE CASCADE,
    recipient    TEXT NOT NULL,
    domain       TEXT,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'bounced')),
    refused      INTEGER NOT NULL DEFAULT 0 CHECK (refused IN (0, 1)),
    code         TEXT,
    reason       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt TEXT,
    lease_until  TEXT,
    updated      TEXT NOT NULL,
    -- accept's union, settle's updates, message_status (and the child-key index that
    -- https://www.sqlite.org/foreignkeys.html §3 asks for).
    UNIQUE (envelope, recipient),
    CHECK (state <> 'queued' OR (domain IS NOT NULL AND next_attempt IS NOT NULL))
) STRICT;

-- lease_due, next_due and list_queue without a domain. Partial: only queued rows are indexed,
-- so the index stays as small as the queue however long the history grows.
CREATE INDEX recipients_due ON recipients (next_attempt) WHERE state = 'queued';
-- lease_due, list_queue and flush for one destination domain.
CREATE INDEX recipients_due_domain ON recipients (domain, next_attempt) WHERE state = 'queued';

-- AUTOINCREMENT (https://www.sqlite.org/autoinc.html) so a sequence number is never reused,
-- even after the highest rows were deleted with their agent: SSE clients resume from it.
CREATE TABLE inbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    agent        TEXT NOT NULL REFERENCES agents (name) ON DELETE CASCADE,
    envelope     INTEGER NOT NULL REFERENCES envelopes (pk) ON DELETE CASCADE,
    delivered_at TEXT NOT NULL,
    acked_at     TEXT,
    UNIQUE (agent, envelope)                                    -- one delivery per agent; ack
) STRICT;
-- No index on inbox (envelope): this schema never deletes envelopes, so the foreign key's
-- child lookup never runs. A migration that purges old envelopes must add one.

-- inbox(include_acked=True): history by agent, oldest first.
CREATE INDEX inbox_agent_seq ON inbox (agent, seq);
-- inbox(): unacked rows only, so a long history of acked rows is never scanned by a poll.
CREATE INDEX inbox_unacked ON inbox (agent, seq) WHERE acked_at IS NULL;

CREATE TABLE events (
    pk        INTEGER PRIMARY KEY,
    envelope  INTEGER NOT NULL REFERENCES envelopes (pk) ON DELETE CASCADE,
    at        TEXT NOT NULL,
    recipient TEXT NOT NULL,
    event     TEXT NOT NULL,
    code      TEXT,
    reason    TEXT,
    hop       TEXT
) STRICT;

-- message_status: the hop log of one envelope in order.
CREATE INDEX events_envelope ON events (envelope, pk);
