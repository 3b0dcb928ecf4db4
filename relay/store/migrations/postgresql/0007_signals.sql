-- 0007: signals (SPEC.md §13); the same tables as
-- relay/store/migrations/sqlite/0007_signals.sql, which explains them, with PostgreSQL's types.

CREATE TABLE signals (
    id           text PRIMARY KEY,
    owner        text NOT NULL,
    emitter      text NOT NULL,
    topic        text NOT NULL,
    text         text NOT NULL,
    urgency      double precision NOT NULL,
    half_life    double precision NOT NULL,
    lease        double precision NOT NULL,
    scope        text NOT NULL,
    created      timestamptz NOT NULL,
    expires      timestamptz NOT NULL,
    content_type text,
    body         text,
    state        text NOT NULL,
    generation   bigint NOT NULL DEFAULT 0,
    holder       text,
    token_hash   text,
    lease_until  timestamptz,
    version      bigint NOT NULL DEFAULT 0,
    updated      timestamptz NOT NULL,
    result_id    text,
    result_type  text,
    result_body  text,
    result_sent  integer NOT NULL DEFAULT 0
);

CREATE INDEX signals_state ON signals (state, created);
CREATE INDEX signals_emitter ON signals (emitter, state);

CREATE TABLE signal_claims (
    signal     text NOT NULL REFERENCES signals (id) ON DELETE CASCADE,
    generation bigint NOT NULL,
    holder     text NOT NULL,
    claimed    timestamptz NOT NULL,
    until      timestamptz NOT NULL,
    ended      timestamptz,
    outcome    text,
    PRIMARY KEY (signal, generation)
);

CREATE TABLE signal_reinforcements (
    signal text NOT NULL REFERENCES signals (id) ON DELETE CASCADE,
    source text NOT NULL,
    amount double precision NOT NULL,
    at     timestamptz NOT NULL,
    PRIMARY KEY (signal, source)
);

CREATE TABLE signal_subscriptions (
    agent        text PRIMARY KEY REFERENCES agents (name) ON DELETE CASCADE,
    topics       text NOT NULL,
    threshold    double precision NOT NULL,
    capabilities integer NOT NULL DEFAULT 0,
    updated      timestamptz NOT NULL
);
