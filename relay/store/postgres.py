"""The PostgreSQL dialect of :class:`relay.store.base.Store`: several relay processes, one
database.

The store's methods, its group-commit writer and accept's plan are shared with SQLite
(relay/store/sql/); this module holds PostgreSQL's statements, its connections, the translation
of psycopg errors, and LISTEN/NOTIFY.

Driver
    psycopg 3 (``psycopg[binary,pool]``) rather than asyncpg. Both speak the binary protocol
    and prepare repeated statements automatically. What decided it: psycopg ships its own
    type annotations (this package is checked with ``mypy --strict``; asyncpg needs third-party
    stubs), its ``executemany`` runs in libpq's pipeline mode (one network round trip for a
    batch, as fast as asyncpg's), LISTEN/NOTIFY is a plain async generator on a connection
    (``notifies()``), its connection pool (psycopg-pool) comes from the same maintainers and
    release train, the ``binary`` extra installs wheels that bundle libpq for Linux, macOS and
    Windows, and it is the driver most of the Python ecosystem (Django, SQLAlchemy, the test
    tools) already uses. asyncpg's per-row speed advantage matters little here: every hot
    statement below moves whole batches as arrays (``unnest``), so rows do not cost round trips.

Connections (each limit names what it stops)
    * one *writer* connection, used only by the group-commit writer task
      (relay/store/sql/writer.py), reconnected by the next group after it broke;
    * a pool of *reader* connections in autocommit mode, between :data:`POOL_MIN_SIZE` and
      :data:`POOL_MAX_SIZE`; every read is **one** statement, hence one snapshot;
    * one *listener* connection for LISTEN/NOTIFY, which also holds this store's instance lock
      (see Leases).

    At most ``POOL_MAX_SIZE + 2`` connections per process, so N processes stay well under
    PostgreSQL's default ``max_connections`` of 100. Several processes each run their own
    writer; PostgreSQL's row locks order them.

Inbox order
    ``inbox.seq`` comes from a sequence, and with several writers a transaction that took a
    lower number can commit after one that took a higher: a reader paging with ``after=seq``
    (an SSE client resuming, the A2A reply tracker) would then skip the late row for good.
    Every transaction that inserts inbox rows therefore starts by taking the transaction-level
    advisory lock :data:`INBOX_ORDER_LOCK_KEY` and keeps it until COMMIT: sequence numbers are
    handed out in commit order, as with SQLite's single writer. Group commit is what keeps this
    cheap: one lock turn serves a whole group of accepts. The transaction then locks the rows of
    the agents it delivers to (``FOR NO KEY UPDATE``, in name order), so no agent is removed
    between the caller's existence check and the insert; an agent already gone fails the
    operation that would give it an inbox row with ``UnknownRecipient``. Both locks come first
    in the transaction, before any row is written, so they cannot close a deadlock cycle with
    the rows.

Leases
    ``lease_due`` picks due rows with ``FOR UPDATE SKIP LOCKED`` — two processes leasing at once
    never wait for nor take each other's rows — and stamps ``lease_until`` and ``lease_owner``.
    The owner is this store instance, whose listener connection holds the session advisory lock
    ``(LEASE_LOCK_CLASS, instance)``. When a relay process dies, PostgreSQL ends its sessions
    and drops that lock, and its leases count as lapsed at once: another process retries those
    rows within one pass instead of waiting out ``lease_until`` (two minutes in the sender). A
    graceful ``close`` hands its leases back to the clock (``lease_owner = NULL``), so a lease
    stays durable across a restart, as base.py promises. The price of the shortcut: while a
    live process's listener connection is down (until it reconnects), its leases look free
    too, and a row may be sent by two processes; the receiver deduplicates by envelope id, and
    ``settle`` only changes rows still queued. ``release_leases`` therefore releases nothing:
    it exists for single-process stores whose next start is the only one that could take the
    rows, whereas here the other live processes must keep their leases, and a dead process's
    leases are already free.

Wake-ups
    Every transaction that adds inbox rows or queues remote rows calls ``pg_notify`` on one
    PostgreSQL channel, :data:`NOTIFY_CHANNEL`, with the store's own channel names
    (``inbox:<agent>``, ``queue``) as the payload: PostgreSQL channel names are identifiers,
    agent names are data, so they never become SQL. Notifications travel only on COMMIT, after
    the rows are visible. Payloads carry the sending instance, so a process skips its own (it
    already woke its listeners in memory) and are cut at :data:`MAX_NOTIFY_PAYLOAD` bytes. If
    the listener connection drops, the store reconnects and wakes every listener: a wake-up
    lost meanwhile costs each one a read, never a stranded message.

Errors
    No psycopg exception leaves this module. Constraint violations belong to the operation that
    hit them (``Conflict``; ``UnknownRecipient`` for an agent that vanished); a deadlock or
    serialization failure rolls the group back and runs it again (at most
    :data:`GROUP_RETRIES` times); a lost connection, a timeout or a server out of resources
    fails the group with ``StoreUnavailable``, and the next group reconnects. Messages say what
    went wrong in words, never the SQL, never the URL (it may carry a password).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from relay.core.errors import (
    ConfigError,
    Conflict,
    InternalError,
    StoreUnavailable,
    SynqError,
)
from relay.store.sql import MAX_GROUP_OPS, Op, SqlStore, Statements, Tx, portable, rows

__all__ = [
    "CONNECT_TIMEOUT",
    "GROUP_RETRIES",
    "INBOX_ORDER_LOCK_KEY",
    "LEASE_LOCK_CLASS",
    "MAX_GROUP_OPS",
    "MAX_NOTIFY_PAYLOAD",
    "MIGRATION_LOCK_KEY",
    "MIN_SERVER_VERSION",
    "NOTIFY_CHANNEL",
    "POOL_MAX_SIZE",
    "POOL_MIN_SIZE",
    "POOL_TIMEOUT",
    "PostgresStore",
]

_log = logging.getLogger(__name__)

Conn = AsyncConnection[TupleRow]
#: ``idle_session_timeout`` (14) is set on the listener; 13 and older are out of support.
MIN_SERVER_VERSION: Final = 14

#: Reader connections kept open, and the most opened at once. Reads are single statements of a
#: few milliseconds and long polls hold no connection while they wait, so a handful serves
#: hundreds of concurrent clients; the cap keeps N processes × (pool + writer + listener)
#: far below PostgreSQL's default ``max_connections`` (100).
POOL_MIN_SIZE: Final = 1
POOL_MAX_SIZE: Final = 8

#: Seconds a read waits for a free pooled connection (or for the pool to reconnect after the
#: server went away) before failing with StoreUnavailable: a request must not hang forever on
#: a database that is down; /healthz then reports it.
POOL_TIMEOUT: Final = 10.0

#: Seconds to establish one connection (libpq ``connect_timeout``) when the URL names none.
CONNECT_TIMEOUT: Final = 10

#: Times a group that hit a deadlock or a serialization failure is run again before its
#: callers get StoreUnavailable. Such failures are transient by nature (PostgreSQL aborted one
#: side of a cycle); a small bound stops a pathological workload from looping forever.
GROUP_RETRIES: Final = 3

#: The writer's ``lock_timeout``: a process stopped while holding an agent's row lock (say,
#: SIGSTOP) stalls other processes' writes for that agent this long at most, then they fail
#: with StoreUnavailable and their senders retry, instead of hanging with it.
LOCK_TIMEOUT: Final = "30s"

#: The writer's ``idle_in_transaction_session_timeout``: the server ends a writer session
#: left inside a transaction this long (its process frozen mid-group), freeing its locks.
#: Groups never wait on anything but the database, so a live writer never comes near it.
IDLE_IN_TRANSACTION_TIMEOUT: Final = "60s"

#: The one PostgreSQL channel every Synq notification travels on (an identifier: fixed here,
#: never built from data). The store's channel names travel in the payload.
NOTIFY_CHANNEL: Final = "synq_wakeup"

#: Largest payload of one notification, in bytes. PostgreSQL refuses 8000 and more (its
#: ``NOTIFY`` documentation); a commit that wakes many agents sends several notifications.
MAX_NOTIFY_PAYLOAD: Final = 7900

#: Payload meaning "wake every listener": sent for a channel name too long for a payload.
_WAKE_ALL: Final = "*"

#: Reconnect backoff of the listener connection, seconds: first and longest wait. Short at
#: first (a restarted server is back in a moment), capped so a long outage costs one attempt
#: every few seconds.
LISTENER_BACKOFF: Final = (0.05, 5.0)

#: Advisory lock key (``pg_advisory_xact_lock(bigint)``) that serialises migrations: replicas
#: starting together apply each migration once. The bytes "synqmigr".
MIGRATION_LOCK_KEY: Final = int.from_bytes(b"synqmigr", "big")

#: Advisory lock key (``pg_advisory_xact_lock(bigint)``) taken by every transaction that adds
#: inbox rows, so that inbox sequence numbers are handed out in commit order (module docstring,
#: "Inbox order"). The bytes "synqinbx".
INBOX_ORDER_LOCK_KEY: Final = int.from_bytes(b"synqinbx", "big")

#: First key of the per-instance lease lock ``pg_advisory_lock(int, int)`` (the bytes "synq");
#: the second key is the instance number. The two-key form lives in its own key space
#: (``objsubid = 2`` in ``pg_locks``), apart from the migration lock.
LEASE_LOCK_CLASS: Final = int.from_bytes(b"synq", "big")

#: ``synchronous`` option → the writer's ``synchronous_commit``. FULL keeps the server's
#: setting (``on`` by default: COMMIT returns once the WAL is flushed). NORMAL turns it off for
#: this relay's writes: a crash of the *database server* may lose the last fraction of a second
#: of accepted messages (https://www.postgresql.org/docs/current/wal-async-commit.html);
#: benchmarks use it, as they use NORMAL with SQLite.
_SYNCHRONOUS: Final = {"FULL": None, "EXTRA": None, "NORMAL": "off"}

#: SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html) after which the
#: group is simply run again.
_RETRYABLE: Final = frozenset({"40001", "40P01"})

#: SQLSTATE classes and codes that mean "the store cannot work right now", in words an
#: operator can act on. Looked up by full code first, then by class.
_UNAVAILABLE: Final = {
    "08": "the connection to the database failed",
    "28": "the database refused the relay's credentials",
    "3D": "the database does not exist",
    "53100": "the database server's disk is full",
    "53200": "the database server is out of memory",
    "53300": "the database server has too many connections",
    "53": "the database server is out of resources",
    "55P03": "a lock was held too long by another relay process",
    "57014": "a statement was cancelled",
    "57P01": "the database server ended the session (shut down, or terminated by an operator)",
    "57P02": "the database server is restarting",
    "57P03": "the database server is not accepting connections yet",
    "57": "the database server stopped the relay's session",
    "58": "the database server reported an I/O error",
    "25006": "the database is read-only (a standby?)",
    "40": "the database is busy; try again",
}

#: SQLSTATE classes that fail only the operation that hit them (the transaction goes on from
#: its savepoint): data exceptions and integrity constraints (22, 23), and our own statement
#: errors (42, a bug reported as InternalError).
_OPERATION_CLASSES: Final = frozenset({"22", "23", "42"})


# SQL ------------------------------------------------------------------------------------------
# Parameters as relay/store/sql/statements.py names them: ``%s`` positional, ``%(name)s`` from a
# mapping, and batches as one array per column (``unnest``) or ``executemany`` (pipelined).

_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(%s)"
_INBOX_ORDER_LOCK = "SELECT pg_advisory_xact_lock(%s)"
# The inbox order lock (module docstring): rows locked in name order, so two writers taking
# overlapping sets never wait on each other in a cycle.
_LOCK_AGENTS = """
SELECT name FROM agents WHERE name = ANY(%s::text[]) ORDER BY name FOR NO KEY UPDATE
"""
_NOTIFY = "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload"
_INSTANCE_LOCK = "SELECT pg_try_advisory_lock(%s, %s)"
# At close: this instance's leases go back to the clock (they lapse at lease_until).
_DISOWN_LEASES = """
UPDATE recipients SET lease_owner = NULL WHERE state = 'queued' AND lease_owner = %s
"""
_DISOWN_DELIVERIES = "UPDATE deliveries SET lease_owner = NULL WHERE lease_owner = %s"

# Four texts rather than ``(%s OR acked_at IS NULL)``: a prepared statement's generic plan can
# use the partial index inbox_unacked only when the WHERE clause itself says
# ``acked_at IS NULL``, and envelopes_thread only for a real ``thread = …`` term.
_INBOX_PAGE = rows.INBOX_SELECT + "WHERE i.agent = %(agent)s AND i.seq > %(after)s "
# A thread's page starts from the thread's envelopes (envelopes_thread), then looks each up in
# the agent's inbox by its unique (agent, envelope) key. Left to its estimates the planner walks
# the agent's whole inbox past the cursor, acknowledged rows too, checking each envelope's
# thread (or hashes all of it): a caller waiting for the one answer of a new thread (the MCP
# gateway, SPEC.md "MCP mapping") paid a step per message the agent had ever received. The
# LATERAL subquery with OFFSET 0 is not pulled up into the join, so it runs once per envelope of
# the thread ("LATERAL Subqueries"); the cursor is checked outside it, or the (agent, seq) index
# looks as good as the key to the estimates of a young table. A thread's rows are few, sorted
# afterwards.
_INBOX_THREAD_PAGE = """
SELECT i.seq, e.origin, e.id, e.token, i.delivered_at, i.acked_at
FROM envelopes AS e CROSS JOIN LATERAL (
  SELECT seq, delivered_at, acked_at FROM inbox
  WHERE inbox.envelope = e.pk AND inbox.agent = %(agent)s
  OFFSET 0
) AS i
WHERE e.thread = %(thread)s AND i.seq > %(after)s
"""
# Leasing (module docstring, "Leases"). ``live`` is the set of store instances whose listener
# session still holds its lease lock in this database; a lease whose owner is not among them
# belongs to a dead process. SKIP LOCKED: rows another process is leasing right now are
# skipped, not waited for. Built from this module's constants only, never from data.
_LIVE_OWNERS = f"""
WITH live AS (
    SELECT l.objid::bigint AS owner FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.classid = {LEASE_LOCK_CLASS}::bigint::oid
      AND l.objsubid = 2 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
)"""  # noqa: S608
_LEASE_TEMPLATE = (
    _LIVE_OWNERS  # noqa: S608
    + """,
due AS (
    SELECT r.pk FROM recipients AS r
    WHERE r.state = 'queued' {domain} AND r.next_attempt <= %(now)s
      AND (r.lease_until IS NULL OR r.lease_until <= %(now)s
           OR (r.lease_owner IS NOT NULL AND r.lease_owner NOT IN (SELECT owner FROM live)))
    ORDER BY r.next_attempt, r.pk
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE recipients AS r SET lease_until = %(until)s, lease_owner = %(owner)s
FROM due, envelopes AS e
WHERE r.pk = due.pk AND e.pk = r.envelope
RETURNING r.pk, e.origin, e.id, e.sender, r.recipient, r.domain, e.token, e.expires,
          r.attempts, r.next_attempt, r.code, r.reason, r.notify, r.delay_reported, e.accepted
"""
)
_A2A_FILTER = """
WHERE owner = %(owner)s AND address = %(address)s
  AND (%(context)s::text IS NULL OR context = %(context)s::text)
  AND (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(after)s::timestamptz IS NULL OR status_at >= %(after)s::timestamptz)
"""
# Operator commands (rare): one text with optional filters is good enough for their plans.
_QUEUE_FILTER = """
r.state = 'queued'
  AND (%(domain)s::text IS NULL OR r.domain = %(domain)s::text)
  AND (%(id)s::text IS NULL OR r.envelope IN (SELECT pk FROM envelopes WHERE id = %(id)s::text))
"""
#: The rows of one chunk of a queue command (SqlStore._queue_chunks).
_QUEUE_CHUNK = _QUEUE_FILTER + "  AND r.pk > %(after)s::bigint AND r.pk <= %(upto)s::bigint\n"

#: The inbox rows still to be handed to adapter-backed agents that a flush names: every one, one
#: agent's (``local:<agent>``), or one envelope's.
_DELIVERY_FILTER = """
(%(agent)s::text IS NULL OR d.agent = %(agent)s::text)
  AND (%(id)s::text IS NULL
       OR i.envelope IN (SELECT pk FROM envelopes WHERE id = %(id)s::text))
"""

_SQL: Final = Statements(
    **portable("%s"),
    create_migrations="""
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name    text NOT NULL,
    applied timestamptz NOT NULL DEFAULT now()
)
""",
    insert_migration="INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
    select_existing_agents="SELECT name FROM agents WHERE name = ANY(%s::text[])",
    select_catalog_scope=rows.CATALOG_SELECT
    + """
WHERE c.visibility = ANY(%(vis)s::text[]) AND NOT (c.agent = ANY(%(hidden)s::text[]))
ORDER BY c.agent
""",
    select_catalog_keys=rows.CATALOG_KEYED_SELECT + "WHERE c.pk = ANY(%s::bigint[])",
    # to_tsquery applies the 'english' configuration's stemming and stop words to each word.
    # Per term, its keys in scope in key order, the first %(scan)s, joined into one string
    # (relay/store/sql/store.py, ``_term_groups``, groups them by bit set). A join, not a
    # subquery per term with its own ORDER BY … LIMIT: before the table's statistics exist
    # (a catalog just filled), the planner gives such a subquery the visibility index alone
    # and tests every entry's tsvector, several times slower than the GIN index it uses here.
    catalog_term="""
SELECT t.i - 1, array_to_string((array_agg(c.pk ORDER BY c.pk))[:%(scan)s], ',')
FROM unnest(%(terms)s::text[]) WITH ORDINALITY AS t (w, i)
JOIN catalog AS c ON c.tsv @@ to_tsquery('english', t.w)
WHERE c.visibility = ANY(%(vis)s::text[]) AND NOT (c.agent = ANY(%(hidden)s::text[]))
GROUP BY t.i
""",
    count_catalog="""
SELECT count(*) FROM catalog
WHERE visibility = ANY(%(vis)s::text[]) AND NOT (agent = ANY(%(hidden)s::text[]))
""",
    # Arrays in, one row per element: one statement per batch however many envelopes it holds.
    insert_envelopes="""
INSERT INTO envelopes (origin, id, sender, token, created, expires, thread, kind, via, accepted)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[],
                     %s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])
ON CONFLICT (origin, id) DO NOTHING
RETURNING origin, id
""",
    # PostgreSQL refuses to change one row twice in one statement: the plan sends each
    # (envelope, recipient) at most once per statement (relay/store/sql/accept.py).
    insert_recipients="""
WITH changed AS (
    INSERT INTO recipients
        (envelope, recipient, domain, state, refused, code, reason, next_attempt, updated,
         notify, implied)
    SELECT e.pk, j.recipient, j.domain, j.state, j.refused, j.code, j.reason, j.next_attempt,
           j.updated, j.notify, j.implied
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::boolean[],
                %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::text[],
                %s::boolean[])
         WITH ORDINALITY
         AS j (origin, id, recipient, domain, state, refused, code, reason, next_attempt,
               updated, notify, implied, ord)
    JOIN envelopes AS e ON e.origin = j.origin AND e.id = j.id
    ORDER BY j.ord  -- a join may reorder; row numbers (pk) follow the caller's order
    ON CONFLICT (envelope, recipient) DO UPDATE SET
        domain = excluded.domain, state = excluded.state, refused = false,
        code = excluded.code, reason = excluded.reason, next_attempt = excluded.next_attempt,
        lease_until = NULL, lease_owner = NULL, updated = excluded.updated,
        notify = excluded.notify, implied = false
    WHERE recipients.refused AND NOT excluded.refused
    RETURNING envelope, recipient, refused
)
SELECT c.envelope, e.origin, e.id, c.recipient, c.refused
FROM changed AS c JOIN envelopes AS e ON e.pk = c.envelope
""",
    # With the delivery rows of the new inbox rows and their agents' mailbox usage, in one
    # statement (a data-modifying WITH runs to completion whether or not the rest reads it).
    insert_inbox="""
WITH added AS (
    INSERT INTO inbox (agent, envelope, delivered_at)
    SELECT * FROM unnest(%s::text[], %s::bigint[], %s::timestamptz[])
    ON CONFLICT (agent, envelope) DO NOTHING
    RETURNING seq, agent, envelope, delivered_at
), usage AS (
    INSERT INTO mailboxes AS m (agent, unacked, bytes)
    SELECT added.agent, count(*), sum(length(e.token))
    FROM added JOIN envelopes AS e ON e.pk = added.envelope
    GROUP BY added.agent
    ON CONFLICT (agent) DO UPDATE SET
        unacked = m.unacked + excluded.unacked, bytes = m.bytes + excluded.bytes
)
INSERT INTO deliveries (seq, agent, next_attempt)
SELECT added.seq, added.agent, added.delivered_at
FROM added JOIN agents AS a ON a.name = added.agent
WHERE a.kind <> 'inbox'
RETURNING seq, agent
""",
    insert_deliveries=None,
    mailbox_add=None,
    insert_events="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT * FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[], %s::text[], %s::text[],
                     %s::text[], %s::text[])
""",
    receipt_event="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, %s::timestamptz, r.recipient, 'delivered', %s::text, %s::text, %s::text
FROM envelopes AS e JOIN recipients AS r ON r.envelope = e.pk
WHERE e.origin = %s AND e.id = %s AND e.sender = %s AND r.recipient = %s
  AND r.state IN ('sent', 'queued')
""",
    receipt_update="""
UPDATE recipients
SET state = 'delivered', code = %s, reason = %s, next_attempt = NULL, lease_until = NULL,
    lease_owner = NULL, updated = %s
WHERE envelope = (SELECT pk FROM envelopes WHERE origin = %s AND id = %s AND sender = %s)
  AND recipient = %s AND state IN ('sent', 'queued')
""",
    # A key another transaction inserted and has not committed yet makes this one wait for its
    # COMMIT (or ROLLBACK), then skip the row (or insert it): two processes never both take a key.
    insert_idempotency_keys="""
INSERT INTO idempotency_keys (agent, key, fingerprint, origin, envelope, created)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                     %s::timestamptz[])
ON CONFLICT (agent, key) DO NOTHING
RETURNING agent, key
""",
    select_idempotency_keys=rows.IDEMPOTENCY_SELECT + "WHERE agent = %s AND key = ANY(%s::text[])",
    # Typed NULLs and zeros: UNION ALL resolves each column's type from its first branch.
    message_status="""
SELECT 0, e.origin, e.id, e.sender, NULL::text, NULL::text, 0, e.created, e.expires, 0::bigint, 0
FROM envelopes AS e WHERE e.origin = %(origin)s AND e.id = %(id)s
UNION ALL
SELECT 1, r.recipient, CASE WHEN d.seq IS NULL THEN r.state ELSE 'queued' END,
       CASE WHEN d.seq IS NULL THEN r.code ELSE d.code END,
       CASE WHEN d.seq IS NULL THEN r.reason ELSE d.reason END, NULL,
       CASE WHEN d.seq IS NULL THEN r.attempts ELSE d.attempts END,
       CASE WHEN d.seq IS NULL THEN r.next_attempt ELSE d.next_attempt END, r.updated, r.pk, 0
FROM envelopes AS e JOIN recipients AS r ON r.envelope = e.pk
LEFT JOIN inbox AS i ON i.envelope = e.pk AND r.domain IS NULL AND r.state = 'delivered'
  AND r.recipient = i.agent || '@' || %(own)s::text
LEFT JOIN deliveries AS d ON d.seq = i.seq
WHERE e.origin = %(origin)s AND e.id = %(id)s
UNION ALL
SELECT 2, v.recipient, v.event, v.code, v.reason, v.hop, 0, v.at, NULL, v.pk, 1
FROM envelopes AS e JOIN events AS v ON v.envelope = e.pk
WHERE e.origin = %(origin)s AND e.id = %(id)s
UNION ALL
SELECT 2, r.recipient, CASE WHEN r.domain IS NULL THEN 'delivered' ELSE 'accepted' END, NULL,
       NULL, e.via, 0, e.accepted, NULL, r.pk, 0
FROM envelopes AS e JOIN recipients AS r ON r.envelope = e.pk
WHERE e.origin = %(origin)s AND e.id = %(id)s AND r.implied
  AND e.accepted > coalesce((SELECT purged_before FROM event_horizon WHERE id = 1),
                            '-infinity'::timestamptz)
ORDER BY 1, 11, 10
""",
    inbox_unacked=_INBOX_PAGE + "AND i.acked_at IS NULL ORDER BY i.seq LIMIT %(limit)s",
    inbox_all=_INBOX_PAGE + "ORDER BY i.seq LIMIT %(limit)s",
    inbox_unacked_thread=(
        _INBOX_THREAD_PAGE + "AND i.acked_at IS NULL ORDER BY i.seq LIMIT %(limit)s"
    ),
    inbox_all_thread=_INBOX_THREAD_PAGE + "ORDER BY i.seq LIMIT %(limit)s",
    lease_due=_LEASE_TEMPLATE.format(domain="AND r.domain <> %(own)s"),
    lease_due_domain=_LEASE_TEMPLATE.format(domain="AND r.domain = %(domain)s"),
    lease_mark=None,
    delivery_lease=_LIVE_OWNERS  # noqa: S608
    + """,
due AS (
    SELECT d.seq, d.agent FROM deliveries AS d
    WHERE d.next_attempt <= %(now)s
      AND (d.lease_until IS NULL OR d.lease_until <= %(now)s
           OR (d.lease_owner IS NOT NULL AND d.lease_owner NOT IN (SELECT owner FROM live)))
    ORDER BY d.next_attempt, d.seq
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE deliveries AS d SET lease_until = %(until)s, lease_owner = %(owner)s
FROM due
JOIN inbox AS i ON i.seq = due.seq
JOIN envelopes AS e ON e.pk = i.envelope
LEFT JOIN recipients AS r
    ON r.envelope = i.envelope AND r.recipient = due.agent || '@' || %(domain)s::text
WHERE d.seq = due.seq
RETURNING d.agent, d.seq, e.origin, e.id, e.sender, e.token, e.expires, d.attempts, d.code,
          d.reason, d.next_attempt, r.notify, r.delay_reported, e.accepted
""",
    delivery_lease_mark=None,
    settle_event="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, %s::timestamptz, r.recipient, %s::text, %s::text, %s::text, %s::text
FROM envelopes AS e JOIN recipients AS r ON r.envelope = e.pk
WHERE e.origin = %s AND e.id = %s AND r.recipient = %s AND r.state = 'queued'
""",
    settle_update="""
UPDATE recipients
SET state = %s, code = %s, reason = %s, next_attempt = %s, attempts = attempts + %s,
    delay_reported = delay_reported OR %s, lease_until = NULL, lease_owner = NULL, updated = %s
WHERE envelope = (SELECT pk FROM envelopes WHERE origin = %s AND id = %s)
  AND recipient = %s AND state = 'queued'
""",
    delivery_event="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT i.envelope, %s::timestamptz, %s::text, %s::text, %s::text, %s::text, %s::text
FROM inbox AS i WHERE i.seq = %s
""",
    delivery_defer="""
UPDATE deliveries SET attempts = attempts + 1, next_attempt = %s, lease_until = NULL,
    lease_owner = NULL, code = %s, reason = %s
WHERE seq = %s
""",
    delivery_delay="""
UPDATE recipients SET delay_reported = true
WHERE recipient = %s AND envelope = (SELECT i.envelope FROM inbox AS i WHERE i.seq = %s)
""",
    queue_chunk="""
SELECT r.pk FROM recipients AS r
WHERE """
    + _QUEUE_FILTER
    + "  AND r.pk > %(after)s::bigint ORDER BY r.pk LIMIT %(limit)s::bigint",
    flush_events="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, %(at)s::timestamptz, r.recipient, 'flushed', NULL, NULL, NULL
FROM recipients AS r
WHERE """
    + _QUEUE_CHUNK,
    flush_update="""
UPDATE recipients AS r
SET next_attempt = least(r.next_attempt, %(at)s::timestamptz), updated = %(at)s::timestamptz
WHERE """
    + _QUEUE_CHUNK,
    flush_delivery_events="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT i.envelope, %(at)s::timestamptz, d.agent || '@' || %(own)s::text, 'flushed', NULL, NULL,
       NULL
FROM deliveries AS d JOIN inbox AS i ON i.seq = d.seq
WHERE """
    + _DELIVERY_FILTER,
    select_delivery_rows="""
SELECT d.seq, d.agent FROM deliveries AS d JOIN inbox AS i ON i.seq = d.seq
WHERE """
    + _DELIVERY_FILTER
    + "ORDER BY d.seq",
    flush_delivery_update="""
UPDATE deliveries AS d SET next_attempt = least(d.next_attempt, %(at)s::timestamptz)
FROM inbox AS i
WHERE i.seq = d.seq AND """
    + _DELIVERY_FILTER,
    delete_events="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, %(at)s::timestamptz, r.recipient, 'deleted', %(code)s::text,
       %(reason)s::text, NULL
FROM recipients AS r
WHERE """
    + _QUEUE_CHUNK,
    delete_update="""
UPDATE recipients AS r
SET state = 'bounced', code = %(code)s::text, reason = %(reason)s::text, next_attempt = NULL,
    lease_until = NULL, lease_owner = NULL, updated = %(at)s::timestamptz
WHERE """
    + _QUEUE_CHUNK,
    mailbox_usage="""
SELECT agent, unacked, bytes, max_unacked, max_bytes FROM mailboxes
WHERE agent = ANY(%s::text[])
""",
    held_deliver="""
UPDATE recipients
SET state = 'delivered', code = NULL, reason = NULL, next_attempt = NULL, lease_until = NULL,
    lease_owner = NULL, updated = %(at)s
WHERE pk = ANY(%(pks)s::bigint[]) AND state = 'queued'
RETURNING envelope
""",
    a2a_list_tasks=rows.A2A_TASK_SELECT
    + _A2A_FILTER
    + """
  AND (%(before_at)s::timestamptz IS NULL OR status_at < %(before_at)s::timestamptz
       OR (status_at = %(before_at)s::timestamptz AND id < %(before_id)s::text))
ORDER BY status_at DESC, id DESC LIMIT %(limit)s
""",
    a2a_count_tasks="SELECT count(*) FROM a2a_tasks" + _A2A_FILTER,  # noqa: S608 (constants)
    a2a_tasks_for_envelopes=(
        "SELECT envelope, task FROM a2a_task_envelopes WHERE envelope = ANY(%s::text[])"
    ),
    a2a_reply_tasks=rows.A2A_REPLY_TASK_SELECT + "WHERE l.envelope = ANY(%s::text[])",
    a2a_set_feed_cursor="UPDATE a2a_feed SET cursor = greatest(cursor, %s) WHERE id = 1",
)


# errors ---------------------------------------------------------------------------------------


def _sqlstate(exc: BaseException) -> str:
    return getattr(exc, "sqlstate", None) or ""


def _driver_error(exc: BaseException) -> SynqError:
    """The relay error for a driver exception, in words: the SQL and the driver's text stay
    out of it."""
    if isinstance(exc, PoolClosed):
        return StoreUnavailable("the store is closed")
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(
            "the relay's database is unavailable: no connection became free in time"
        )
    if isinstance(exc, psycopg.IntegrityError):
        return Conflict("the change conflicts with what the store holds")
    state = _sqlstate(exc)
    words = _UNAVAILABLE.get(state) or _UNAVAILABLE.get(state[:2])
    if words is not None:
        return StoreUnavailable(f"the relay's database is unavailable: {words}")
    if isinstance(exc, psycopg.OperationalError) and not state:
        # libpq's own failures (refused, unreachable, timed out, closed) carry no SQLSTATE.
        return StoreUnavailable("the relay's database is unavailable: cannot reach the server")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return StoreUnavailable("the relay's database is unavailable")
    # Our statement or its parameters were wrong, or the server failed in a way we do not
    # know: a bug here, not the caller's fault.
    return InternalError("the store failed unexpectedly")


def _is_group_fatal(exc: BaseException) -> bool:
    """Errors after which the group's transaction cannot go on from a savepoint: the connection
    is gone, or PostgreSQL aborted us to break a deadlock. Constraint and data errors only abort
    the operation's statement."""
    if not isinstance(exc, psycopg.Error):
        return False
    return _sqlstate(exc)[:2] not in _OPERATION_CLASSES


def _is_retryable(exc: BaseException) -> bool:
    return _sqlstate(exc) in _RETRYABLE


# batches and notifications --------------------------------------------------------------------


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column: the arrays ``unnest`` turns back into rows."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def _notify_payloads(instance: int, channels: Iterable[str]) -> list[str]:
    """``channels`` packed into payloads of at most :data:`MAX_NOTIFY_PAYLOAD` bytes: the
    sending instance on the first line, one channel per line after it."""
    head = f"{instance}"
    payloads: list[str] = []
    lines: list[str] = []
    size = len(head)
    for channel in sorted(set(channels)):
        if "\n" in channel or len(head) + 1 + len(channel.encode()) > MAX_NOTIFY_PAYLOAD:
            channel = _WAKE_ALL
        cost = 1 + len(channel.encode())
        if lines and size + cost > MAX_NOTIFY_PAYLOAD:
            payloads.append("\n".join([head, *lines]))
            lines, size = [], len(head)
        lines.append(channel)
        size += cost
    if lines:
        payloads.append("\n".join([head, *lines]))
    return payloads


class _PgTx(Tx):
    driver_errors = (psycopg.Error,)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        # Pipeline mode: one round trip for the lot, each row applied in order.
        async with self.conn.cursor() as cursor:
            await cursor.executemany(sql, rows)

    async def fetch_rows(self, sql: str, rows: Sequence[Sequence[Any]], width: int) -> list[Any]:
        return await self.fetch(sql, _columns(rows, width))

    async def insert_rows(self, sql: str, rows: Sequence[Sequence[Any]], width: int) -> None:
        await self.conn.execute(sql, _columns(rows, width))

    async def script(self, sql: str) -> None:
        # Bytes: sent with the simple query protocol, which takes several statements at once.
        await self.conn.execute(sql.encode())


# the store ------------------------------------------------------------------------------------


class PostgresStore(SqlStore):
    """The scale-out store: one PostgreSQL database shared by every relay process of a domain.

    ``url`` is a libpq URL (``postgresql://user:password@host:port/dbname?sslmode=…``); libpq's
    environment variables (``PGPASSWORD``…) apply as usual. ``domain``: the relay's own domain,
    as for SQLite (local recipient rows keyed by address). ``synchronous``: ``FULL`` (default)
    or ``NORMAL``, see :data:`_SYNCHRONOUS`.
    """

    shared_by_processes = True
    sql = _SQL
    dialect = "PostgreSQL"
    migrations_folder = "postgresql"
    driver_errors = (psycopg.Error,)
    unique_violation = psycopg.errors.UniqueViolation
    foreign_key_violation = psycopg.errors.ForeignKeyViolation
    constraint_errors = (psycopg.IntegrityError,)
    group_retries = GROUP_RETRIES
    _driver_error = staticmethod(_driver_error)
    _is_group_fatal = staticmethod(_is_group_fatal)
    _is_retryable = staticmethod(_is_retryable)

    def __init__(self, url: str, *, domain: str | None = None, synchronous: str = "FULL") -> None:
        super().__init__(domain)
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS:
            raise ConfigError(
                f"synchronous must be one of {', '.join(sorted(_SYNCHRONOUS))}, got {synchronous!r}"
            )
        self.synchronous = mode
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error:
            # The driver's message quotes the URL, which may carry a password.
            raise ConfigError("the PostgreSQL store URL cannot be parsed") from None
        defaults: dict[str, Any] = {}
        if "connect_timeout" not in given:
            defaults["connect_timeout"] = CONNECT_TIMEOUT
        if "application_name" not in given:
            # Shows which relay process holds which session in pg_stat_activity.
            defaults["application_name"] = f"synq/{os.getpid()}"
        self._conninfo = make_conninfo(url, **defaults)
        self._writer: Conn | None = None
        self._listener: Conn | None = None
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._listener_task: asyncio.Task[None] | None = None

    # time and parameters -----------------------------------------------------------------------

    @staticmethod
    def _ts(value: datetime) -> datetime:
        """An aware datetime for a timestamptz parameter; naive ones are a caller's bug."""
        if value.tzinfo is None or value.utcoffset() is None:
            raise InternalError("the store takes timezone-aware datetimes")
        return value

    @staticmethod
    def _dt(value: Any) -> datetime:
        """A timestamptz from the driver (in the session's time zone) as UTC."""
        moment: datetime = value.astimezone(UTC)
        return moment

    @staticmethod
    def _array(values: Sequence[str] | Sequence[int]) -> list[Any]:
        return list(values)

    @staticmethod
    def _split_migration(text: str) -> tuple[str, ...]:
        """The whole file, sent as one script inside the migration's transaction: PostgreSQL's
        DDL is transactional, so a failing migration leaves no trace."""
        return (text,)

    @staticmethod
    def _match(term: str, visibilities: Sequence[str]) -> str:
        return term  # the visibilities are a condition of the statement

    def _describe(self) -> str:
        return "the PostgreSQL store"

    # lifecycle ---------------------------------------------------------------------------------

    async def _open_connections(self) -> None:
        self._writer = await self._connect_writer()
        # Replicas starting together serialise on the migration lock.
        async with self._writer.transaction():
            await self._writer.execute(_MIGRATION_LOCK, (MIGRATION_LOCK_KEY,))
            await self._migrate(_PgTx(self._writer, self._group_failed))
        self._listener = await self._connect_listener(first=True)
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._conninfo,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            kwargs={"autocommit": True},
            timeout=POOL_TIMEOUT,
            name="synq-readers",
            open=False,
        )
        self._pool = pool
        await pool.open(wait=True, timeout=POOL_TIMEOUT)

    def _started(self) -> None:
        self._listener_task = asyncio.create_task(
            self._listen_loop(), name="synq-postgres-listener"
        )

    async def _session(self) -> Conn:
        return await AsyncConnection.connect(self._conninfo, autocommit=True)

    async def _connect_writer(self) -> Conn:
        conn = await self._session()
        try:
            if conn.info.server_version < MIN_SERVER_VERSION * 10000:
                raise ConfigError(
                    f"PostgreSQL {conn.info.server_version // 10000} is too old; the relay "
                    f"needs {MIN_SERVER_VERSION} or later"
                )
            await conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
            await conn.execute(
                f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}'"
            )
            setting = _SYNCHRONOUS[self.synchronous]
            if setting is not None:
                await conn.execute(f"SET synchronous_commit = '{setting}'")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _connect_listener(self, *, first: bool = False) -> Conn:
        """Connect, LISTEN, and take (or take back) this instance's lease lock."""
        conn = await self._session()
        try:
            # An idle listener is the point: never let a server-wide idle timeout end it.
            await conn.execute("SET idle_session_timeout = 0")
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            for _ in range(8):
                if first and not self.instance:
                    self.instance = secrets.randbelow(2**31 - 2) + 1
                cursor = await conn.execute(_INSTANCE_LOCK, (LEASE_LOCK_CLASS, self.instance))
                row = await cursor.fetchone()
                if row is not None and row[0]:
                    return conn
                if not first:
                    # Our previous session still holds it (the server has not noticed that
                    # connection is gone yet): try again after the backoff.
                    raise StoreUnavailable("the store's previous listener session is still open")
                self.instance = 0  # taken by another live instance: draw again
            raise StoreUnavailable("cannot take a lease lock for this store instance")
        except BaseException:
            await conn.close()
            raise

    def _last_ops(self) -> list[Op]:
        """This instance's leases go back to the clock, so they stay durable (base.py)."""
        if not self.instance:
            return []
        instance = self.instance

        async def run(tx: Tx) -> tuple[None, Collection[str]]:
            await tx.execute(_DISOWN_LEASES, (instance,))
            await tx.execute(_DISOWN_DELIVERIES, (instance,))
            return None, ()

        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Nobody awaits it: mark a failure as retrieved so it is not reported as lost.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return [Op(run, future)]

    async def _close_connections(self) -> None:
        listening, self._listener_task = self._listener_task, None
        if listening is not None:
            listening.cancel()
            await asyncio.wait([listening])
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except psycopg.Error:
                _log.warning("closing the PostgreSQL pool failed", exc_info=True)
        for conn in (self._listener, self._writer):
            if conn is None:
                continue
            try:
                await conn.close()
            except psycopg.Error:
                _log.warning("closing a PostgreSQL connection failed", exc_info=True)
        self._listener = None
        self._writer = None

    async def size(self) -> int:
        """``pg_database_size``: every table, index and TOAST of the database. Space the
        purge frees is reused by later rows once autovacuum has marked it
        (https://www.postgresql.org/docs/current/routine-vacuuming.html); the file system
        gets it back only from a VACUUM FULL, which Synq never runs."""
        row = await self._read_one("SELECT pg_database_size(current_database())", ())
        return int(row[0])

    # wake-ups ----------------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        """Deliver other processes' notifications; reconnect when the connection drops."""
        backoff = LISTENER_BACKOFF[0]
        while True:
            conn = self._listener
            try:
                if conn is None:
                    conn = await self._connect_listener()
                    self._listener = conn
                    backoff = LISTENER_BACKOFF[0]
                    # Any notification may have been missed meanwhile.
                    _log.info("store listener reconnected; waking every listener")
                    self.notifier.wake_all()
                async for note in conn.notifies():
                    self._on_notify(note.payload)
                raise StoreUnavailable("the listener connection stopped")  # notifies() ended
            except (psycopg.Error, OSError, SynqError) as exc:
                message = exc.message if isinstance(exc, SynqError) else _driver_error(exc).message
                _log.warning("store listener lost (%s); reconnecting in %.2f s", message, backoff)
                self._listener = None
                if conn is not None:
                    with contextlib.suppress(psycopg.Error, OSError):
                        await conn.close()
                # A reconnect backoff, not a wait for a condition: nothing to await but time.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, LISTENER_BACKOFF[1])

    def _on_notify(self, payload: str) -> None:
        head, _, rest = payload.partition("\n")
        if head == str(self.instance):
            return  # our own commit: its listeners were woken in memory already
        channels = rest.split("\n") if rest else [_WAKE_ALL]
        if _WAKE_ALL in channels:
            self.notifier.wake_all()
        else:
            self.notifier.notify(channels)

    async def _before_commit(self, tx: Tx, channels: Collection[str]) -> None:
        # Queued now, sent by the server on COMMIT, after the rows are visible.
        await tx.control(_NOTIFY, (NOTIFY_CHANNEL, _notify_payloads(self.instance, channels)))

    # reads and the writer ----------------------------------------------------------------------

    async def _read(self, sql: str, params: Any) -> list[Any]:
        """One statement on a pooled connection: its own snapshot, nothing held afterwards. A
        connection that broke while idle in the pool is replaced once, transparently: reads
        change nothing, so running one again is safe."""
        if self._closed or self._pool is None:
            raise StoreUnavailable("the store is closed")
        pool = self._pool
        for attempt in (1, 2):
            conn: Conn | None = None
            try:
                async with pool.connection() as conn:
                    cursor = await conn.execute(sql, params)
                    return await cursor.fetchall()
            except psycopg.Error as exc:
                # The pool discards a broken connection when it comes back; a second try
                # gets a fresh one.
                if attempt == 1 and conn is not None and conn.broken and not self._closed:
                    continue
                raise _driver_error(exc) from exc
        raise AssertionError("unreachable")

    async def _writer_connection(self) -> Conn:
        """The writer connection, reconnected if the last one broke."""
        conn = self._writer
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._writer = None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
        try:
            self._writer = await self._connect_writer()
        except (psycopg.Error, OSError) as exc:
            raise self._group_failed(exc) from exc
        return self._writer

    async def _begin(self, ops: Sequence[Op]) -> Tx:
        tx = _PgTx(await self._writer_connection(), self._group_failed)
        await tx.control("BEGIN")
        tx.agents = set()
        names = sorted({name for op in ops for item in op.new for name in item.local})
        if names:
            # The inbox order lock, then the agents' rows (module docstring, "Inbox order").
            try:
                await tx.control(_INBOX_ORDER_LOCK, (INBOX_ORDER_LOCK_KEY,))
                tx.agents = {row[0] for row in await tx.fetch(_LOCK_AGENTS, (names,))}
            except BaseException as exc:
                await tx.rollback_quietly()
                if isinstance(exc, psycopg.Error):
                    raise self._group_failed(exc) from exc
                raise
        return tx
