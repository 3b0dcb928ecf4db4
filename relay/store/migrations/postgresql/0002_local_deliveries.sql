-- 0002: local delivery to adapter-backed agents (A2A agents, MCP servers); the same table as
-- relay/store/migrations/sqlite/0002_local_deliveries.sql, which explains it.
--
-- Such an agent does not read its inbox: the relay delivers each inbox row to it through its
-- adapter, retrying with backoff until the envelope expires. ``deliveries`` holds that retry
-- state, one row per inbox row still to be handed over. ``lease_owner``: as in recipients
-- (0001), the store instance holding the lease, so a dead process's rows are taken over at once.
CREATE TABLE deliveries (
    seq          bigint PRIMARY KEY REFERENCES inbox (seq) ON DELETE CASCADE,
    agent        text NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    next_attempt timestamptz NOT NULL,
    lease_until  timestamptz,
    lease_owner  bigint,
    code         text,
    reason       text
) WITH (fillfactor = 80);

-- lease_deliveries and next_delivery_due, in lease order.
CREATE INDEX deliveries_due ON deliveries (next_attempt, seq);
