-- 0002: local delivery to adapter-backed agents (A2A agents, MCP servers).
--
-- Such an agent does not read its inbox: the relay delivers each inbox row to it through its
-- adapter, retrying with backoff until the envelope expires. ``deliveries`` holds that retry
-- state, one row per inbox row still to be handed over; the row goes when the agent took the
-- envelope (the inbox row is then acked) or when it bounced. Inbox-only agents never get rows
-- here, so their unread mail costs the dispatcher nothing.
CREATE TABLE deliveries (
    seq          INTEGER PRIMARY KEY REFERENCES inbox (seq) ON DELETE CASCADE,
    agent        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt TEXT NOT NULL,
    lease_until  TEXT,
    code         TEXT,
    reason       TEXT
) STRICT;

-- lease_deliveries and next_delivery_due.
CREATE INDEX deliveries_due ON deliveries (next_attempt);
