-- 0007: signals — work offered by urgency, heard by threshold, taken by lease (SPEC.md §13).
--
-- * signals — one row per signal this relay owns (``owner`` = our domain) or keeps as a
--   partner's replica. The claim state is in the row: ``state``, the fencing ``generation``
--   (moved by every claim), the current holder, the SHA-256 of its token's secret and the
--   lease's end. ``version`` moves with every change; every change is a compare-and-set on it
--   (relay/store/sql/store.py, ``signal_write``), so of two claims, or a complete and a lapse,
--   exactly one is written. A completion keeps its result here (``result_*``) with the id of
--   the envelope that carries it to the emitter, and ``result_sent`` until that envelope is in
--   custody: a crash between the two sends the same envelope again, never a second one.
-- * signal_claims — the claim history: one row per generation, its holder, the lease's end as
--   heartbeats moved it, and how it ended (done, released, lapsed, withdrawn, expired).
-- * signal_reinforcements — one row per reinforcing agent (the key makes it once per agent),
--   and one per lapsed lease (``lapse:<generation>``), the relay's boost.
-- * signal_subscriptions — what each local agent hears: topic patterns (JSON array) and its
--   threshold.
--
-- Portable SQL; timestamps as in 0001; JSON values (scope, body, result_body, topics) as text.

CREATE TABLE signals (
    id           TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    emitter      TEXT NOT NULL,
    topic        TEXT NOT NULL,
    text         TEXT NOT NULL,
    urgency      REAL NOT NULL,
    half_life    REAL NOT NULL,
    lease        REAL NOT NULL,
    scope        TEXT NOT NULL,
    created      TEXT NOT NULL,
    expires      TEXT NOT NULL,
    content_type TEXT,
    body         TEXT,
    state        TEXT NOT NULL,
    generation   INTEGER NOT NULL DEFAULT 0,
    holder       TEXT,
    token_hash   TEXT,
    lease_until  TEXT,
    version      INTEGER NOT NULL DEFAULT 0,
    updated      TEXT NOT NULL,
    result_id    TEXT,
    result_type  TEXT,
    result_body  TEXT,
    result_sent  INTEGER NOT NULL DEFAULT 0
) STRICT;

-- signals_active (the feeds), signals_due (the sweep).
CREATE INDEX signals_state ON signals (state, created);
-- signal_open_count: the cap on open signals per emitter.
CREATE INDEX signals_emitter ON signals (emitter, state);

CREATE TABLE signal_claims (
    signal     TEXT NOT NULL REFERENCES signals (id) ON DELETE CASCADE,
    generation INTEGER NOT NULL,
    holder     TEXT NOT NULL,
    claimed    TEXT NOT NULL,
    until      TEXT NOT NULL,
    ended      TEXT,
    outcome    TEXT,
    PRIMARY KEY (signal, generation)
) STRICT;

CREATE TABLE signal_reinforcements (
    signal TEXT NOT NULL REFERENCES signals (id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    amount REAL NOT NULL,
    at     TEXT NOT NULL,
    PRIMARY KEY (signal, source)
) STRICT;

CREATE TABLE signal_subscriptions (
    agent        TEXT PRIMARY KEY REFERENCES agents (name) ON DELETE CASCADE,
    topics       TEXT NOT NULL,
    threshold    REAL NOT NULL,
    capabilities INTEGER NOT NULL DEFAULT 0,
    updated      TEXT NOT NULL
) STRICT;
