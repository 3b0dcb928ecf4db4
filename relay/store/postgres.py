"""The PostgreSQL dialect of :class:`relay.store.base.Store`: several relay processes, one
database (DESIGN §9).

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
    * one *writer* connection, used only by the group-commit writer task below;
    * a pool of *reader* connections in autocommit mode, between :data:`POOL_MIN_SIZE` and
      :data:`POOL_MAX_SIZE`; every read is **one** statement, hence one snapshot;
    * one *listener* connection for LISTEN/NOTIFY, which also holds this store's instance lock
      (see Leases).

    At most ``POOL_MAX_SIZE + 2`` connections per process, so N processes stay well under
    PostgreSQL's default ``max_connections`` of 100.

Group commit
    As in the SQLite dialect: every write becomes an operation on an asyncio queue; one writer
    task takes what is waiting (up to :data:`MAX_GROUP_OPS`) and runs it in one transaction,
    each operation under its own savepoint, consecutive accepts merged into one batch. One
    commit (one WAL flush) then serves the whole group, and the group grows with the load.
    Several processes each run their own writer; PostgreSQL's row locks order them.

Inbox order
    ``inbox.seq`` comes from a sequence, and with several writers a transaction that took a
    lower number can commit after one that took a higher: a reader paging with ``after=seq``
    (an SSE client resuming, the A2A reply tracker) would then skip the late row for good.
    Every transaction that inserts inbox rows therefore starts by taking the transaction-level
    advisory lock :data:`INBOX_ORDER_LOCK_KEY` and keeps it until COMMIT: sequence numbers are
    handed out in commit order, as with SQLite's single writer. Group commit is what keeps this
    cheap: one lock turn serves a whole group of accepts. The transaction then locks the rows of
    the agents it delivers to (``FOR NO KEY UPDATE``, in name order), so no agent is removed
    between the caller's existence check and the insert; an agent already gone fails that
    operation with ``UnknownRecipient``. Both locks come first in the transaction, before any
    row is written, so they cannot close a deadlock cycle with the rows.

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
    ``settle`` only changes rows still queued. ``release_leases`` is therefore a
    no-op: it exists for single-process stores whose next start is the only one that could take
    the rows, whereas here the other live processes must keep their leases, and a dead
    process's leases are already free.

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
import functools
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final, Literal

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from relay.core.address import normalize_domain
from relay.core.errors import (
    ConfigError,
    Conflict,
    InternalError,
    InvalidAddress,
    StoreUnavailable,
    SynqError,
    UnknownRecipient,
)
from relay.store.base import (
    DELIVERY_CHANNEL,
    QUEUE_CHANNEL,
    A2AFeedItem,
    A2ATask,
    A2AUpdate,
    AcceptResult,
    AgentKind,
    AgentRecord,
    DeliveryEvent,
    DeliveryOutcome,
    InboxItem,
    LocalDelivery,
    MessageStatus,
    NewEnvelope,
    Notifier,
    Outcome,
    QueueEntry,
    RecipientState,
    RecipientStatus,
    Store,
    a2a_task_channel,
    inbox_channel,
)

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

#: Most operations committed in one transaction: bounds how long one group holds its agents'
#: row locks (another process delivering to the same agent waits that long at most) and how
#: much work a failing COMMIT throws back at its callers. Same value as the SQLite dialect.
MAX_GROUP_OPS: Final = 256

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

_MIGRATION_RE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

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
# Constant texts only: values are always bound, and psycopg prepares the ones run repeatedly.

_CREATE_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name    text NOT NULL,
    applied timestamptz NOT NULL DEFAULT now()
)
"""
_SELECT_MIGRATIONS = "SELECT version FROM schema_migrations"
_INSERT_MIGRATION = "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)"
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(%s)"
_INBOX_ORDER_LOCK = "SELECT pg_advisory_xact_lock(%s)"

_INSERT_AGENT = """
INSERT INTO agents (name, kind, endpoint, token_hash, created)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (name) DO NOTHING
"""
_SELECT_AGENT = "SELECT name, kind, endpoint, created FROM agents WHERE name = %s"
_SELECT_AGENT_BY_HASH = "SELECT name, kind, endpoint, created FROM agents WHERE token_hash = %s"
_SELECT_AGENTS = "SELECT name, kind, endpoint, created FROM agents ORDER BY name"
_DELETE_AGENT = "DELETE FROM agents WHERE name = %s"
_SET_AGENT_HASH = "UPDATE agents SET token_hash = %s WHERE name = %s"
_SELECT_EXISTING_AGENTS = "SELECT name FROM agents WHERE name = ANY(%s::text[])"
# The inbox order lock (module docstring): rows locked in name order, so two writers taking
# overlapping sets never wait on each other in a cycle.
_LOCK_AGENTS = """
SELECT name FROM agents WHERE name = ANY(%s::text[]) ORDER BY name FOR NO KEY UPDATE
"""

# Arrays in, one row per element: one statement per batch however many envelopes it holds.
_INSERT_ENVELOPES = """
INSERT INTO envelopes (origin, id, sender, token, created, expires, thread, kind, via, accepted)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[],
                     %s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])
ON CONFLICT (origin, id) DO NOTHING
RETURNING origin, id
"""

# The idempotent union (base.py): a missing row is inserted; an existing row changes only when
# it was refused at acceptance and this accept takes the recipient. RETURNING reports exactly
# the rows inserted or changed. PostgreSQL refuses to change one row twice in one statement,
# so the caller sends each (envelope, recipient) at most once per statement.
_INSERT_RECIPIENTS = """
WITH changed AS (
    INSERT INTO recipients
        (envelope, recipient, domain, state, refused, code, reason, next_attempt, updated)
    SELECT e.pk, j.recipient, j.domain, j.state, j.refused, j.code, j.reason, j.next_attempt,
           j.updated
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::boolean[],
                %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[])
         WITH ORDINALITY
         AS j (origin, id, recipient, domain, state, refused, code, reason, next_attempt,
               updated, ord)
    JOIN envelopes AS e ON e.origin = j.origin AND e.id = j.id
    ORDER BY j.ord  -- a join may reorder; row numbers (pk) follow the caller's order
    ON CONFLICT (envelope, recipient) DO UPDATE SET
        domain = excluded.domain, state = excluded.state, refused = false,
        code = excluded.code, reason = excluded.reason, next_attempt = excluded.next_attempt,
        lease_until = NULL, lease_owner = NULL, updated = excluded.updated
    WHERE recipients.refused AND NOT excluded.refused
    RETURNING envelope, recipient, refused
)
SELECT c.envelope, e.origin, e.id, c.recipient, c.refused
FROM changed AS c JOIN envelopes AS e ON e.pk = c.envelope
"""
# New inbox rows of adapter-backed agents (A2A, MCP) also get a delivery row, due at once: the
# dispatcher hands them over. RETURNING says whether any did (to wake the dispatchers).
_INSERT_INBOX = """
WITH added AS (
    INSERT INTO inbox (agent, envelope, delivered_at)
    SELECT * FROM unnest(%s::text[], %s::bigint[], %s::timestamptz[])
    ON CONFLICT (agent, envelope) DO NOTHING
    RETURNING seq, agent, delivered_at
)
INSERT INTO deliveries (seq, agent, next_attempt)
SELECT added.seq, added.agent, added.delivered_at
FROM added JOIN agents AS a ON a.name = added.agent
WHERE a.kind <> 'inbox'
RETURNING seq
"""
_INSERT_EVENTS = """
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT * FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[], %s::text[], %s::text[],
                     %s::text[], %s::text[])
"""
_NOTIFY = "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload"

# One statement, so the envelope, its recipients and its events come from one snapshot: never
# a 'sent' state without its 'sent' event.
_MESSAGE_STATUS = """
SELECT 0, e.origin, e.id, e.sender, NULL::text, NULL::text, 0, e.created, e.expires, 0::bigint
FROM envelopes AS e WHERE e.origin = %(origin)s AND e.id = %(id)s
UNION ALL
SELECT 1, r.recipient, r.state, r.code, r.reason, NULL, r.attempts, r.next_attempt, r.updated,
       r.pk
FROM envelopes AS e JOIN recipients AS r ON r.envelope = e.pk
WHERE e.origin = %(origin)s AND e.id = %(id)s
UNION ALL
SELECT 2, v.recipient, v.event, v.code, v.reason, v.hop, 0, v.at, NULL, v.pk
FROM envelopes AS e JOIN events AS v ON v.envelope = e.pk
WHERE e.origin = %(origin)s AND e.id = %(id)s
ORDER BY 1, 10
"""

# Four texts rather than ``(%s OR acked_at IS NULL)``: a prepared statement's generic plan can
# use the partial index inbox_unacked only when the WHERE clause itself says
# ``acked_at IS NULL``, and envelopes_thread only for a real ``thread = …`` term.
_INBOX_SELECT = """
SELECT i.seq, e.origin, e.id, e.token, i.delivered_at, i.acked_at
FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
WHERE i.agent = %(agent)s AND i.seq > %(after)s
"""
_INBOX_UNACKED = _INBOX_SELECT + "AND i.acked_at IS NULL ORDER BY i.seq LIMIT %(limit)s"
_INBOX_ALL = _INBOX_SELECT + "ORDER BY i.seq LIMIT %(limit)s"
_INBOX_UNACKED_THREAD = (
    _INBOX_SELECT + "AND i.acked_at IS NULL AND e.thread = %(thread)s ORDER BY i.seq "
    "LIMIT %(limit)s"
)
_INBOX_ALL_THREAD = _INBOX_SELECT + "AND e.thread = %(thread)s ORDER BY i.seq LIMIT %(limit)s"
_ACK = """
UPDATE inbox SET acked_at = coalesce(acked_at, %s)
WHERE agent = %s AND envelope IN (SELECT pk FROM envelopes WHERE id = %s)
"""

_QUEUE_COLUMNS = """
SELECT r.pk, e.origin, e.id, e.sender, r.recipient, r.domain, e.token, e.expires, r.attempts,
       r.next_attempt, r.code, r.reason
FROM recipients AS r JOIN envelopes AS e ON e.pk = r.envelope
"""
_LIST_QUEUE = _QUEUE_COLUMNS + "WHERE r.state = 'queued' ORDER BY r.next_attempt, r.pk"
_LIST_QUEUE_DOMAIN = (
    _QUEUE_COLUMNS + "WHERE r.state = 'queued' AND r.domain = %s ORDER BY r.next_attempt, r.pk"
)
_NEXT_DUE = "SELECT min(next_attempt) FROM recipients WHERE state = 'queued'"

# Leasing (module docstring, "Leases"). ``live`` is the set of store instances whose listener
# session still holds its lease lock in this database; a lease whose owner is not among them
# belongs to a dead process. SKIP LOCKED: rows another process is leasing right now are
# skipped, not waited for.
_LEASE_TEMPLATE = """
WITH live AS (
    SELECT l.objid::bigint AS owner FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.classid = %(class)s::bigint::oid AND l.objsubid = 2
      AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
),
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
          r.attempts, r.next_attempt, r.code, r.reason
"""
_LEASE = _LEASE_TEMPLATE.format(domain="")
_LEASE_DOMAIN = _LEASE_TEMPLATE.format(domain="AND r.domain = %(domain)s")
_LEASE_DELIVERIES = """
WITH live AS (
    SELECT l.objid::bigint AS owner FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.classid = %(class)s::bigint::oid AND l.objsubid = 2
      AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
),
due AS (
    SELECT d.seq FROM deliveries AS d
    WHERE d.next_attempt <= %(now)s
      AND (d.lease_until IS NULL OR d.lease_until <= %(now)s
           OR (d.lease_owner IS NOT NULL AND d.lease_owner NOT IN (SELECT owner FROM live)))
    ORDER BY d.next_attempt, d.seq
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE deliveries AS d SET lease_until = %(until)s, lease_owner = %(owner)s
FROM due, inbox AS i, envelopes AS e
WHERE d.seq = due.seq AND i.seq = d.seq AND e.pk = i.envelope
RETURNING d.agent, d.seq, e.origin, e.id, e.sender, e.token, e.expires, d.attempts, d.code,
          d.reason, d.next_attempt
"""
# At close: this instance's leases go back to the clock (they lapse at lease_until).
_DISOWN_LEASES = """
UPDATE recipients SET lease_owner = NULL WHERE state = 'queued' AND lease_owner = %s
"""
_DISOWN_DELIVERIES = "UPDATE deliveries SET lease_owner = NULL WHERE lease_owner = %s"

# settle_deliveries (the same statements as the SQLite dialect's, one executemany each).
_DELIVERY_EVENT = """
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT i.envelope, %s::timestamptz, %s::text, %s::text, %s::text, %s::text, %s::text
FROM inbox AS i WHERE i.seq = %s
"""
_DELIVERY_DEFER = """
UPDATE deliveries SET attempts = attempts + 1, next_attempt = %s, lease_until = NULL,
    lease_owner = NULL, code = %s, reason = %s
WHERE seq = %s
"""
_DELIVERY_DONE = "DELETE FROM deliveries WHERE seq = %s"
_DELIVERY_ACK = "UPDATE inbox SET acked_at = coalesce(acked_at, %s) WHERE seq = %s"
_DELIVERY_BOUNCE = """
UPDATE recipients SET state = 'bounced', code = %s, reason = %s, updated = %s
WHERE recipient = %s AND envelope = (SELECT i.envelope FROM inbox AS i WHERE i.seq = %s)
"""
_NEXT_DELIVERY_DUE = "SELECT min(next_attempt) FROM deliveries"
_DELIVERY_EVENTS: Final = {"delivered": "delivered", "queued": "deferred", "bounced": "bounced"}
_INSTANCE_LOCK = "SELECT pg_try_advisory_lock(%s, %s)"

# settle: the event first, while the row is still 'queued' (a row that left the queue meanwhile,
# e.g. deleted by the operator, keeps its final state and gets no event).
_SETTLE_EVENT = """
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, %s::timestamptz, r.recipient, %s::text, %s::text, %s::text, %s::text
FROM envelopes AS e JOIN recipients AS r ON r.envelope = e.pk
WHERE e.origin = %s AND e.id = %s AND r.recipient = %s AND r.state = 'queued'
"""
_SETTLE_UPDATE = """
UPDATE recipients
SET state = %s, code = %s, reason = %s, next_attempt = %s, attempts = attempts + %s,
    lease_until = NULL, lease_owner = NULL, updated = %s
WHERE envelope = (SELECT pk FROM envelopes WHERE origin = %s AND id = %s)
  AND recipient = %s AND state = 'queued'
"""

# The A2A face's tasks (0003); the same statements as the SQLite dialect's.
_A2A_COLUMNS = """
SELECT id, owner, address, context, state, remote_id, snapshot, push, version, status_at,
       created, updated
FROM a2a_tasks
"""
_A2A_INSERT_TASK = """
INSERT INTO a2a_tasks (id, owner, address, context, state, remote_id, snapshot, push, version,
                       status_at, created, updated)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
_A2A_LINK = "INSERT INTO a2a_task_envelopes (envelope, task) VALUES (%s, %s)"
_A2A_GET_TASK = _A2A_COLUMNS + "WHERE id = %s"
_A2A_FILTER = """
WHERE owner = %(owner)s AND address = %(address)s
  AND (%(context)s::text IS NULL OR context = %(context)s::text)
  AND (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(after)s::timestamptz IS NULL OR status_at >= %(after)s::timestamptz)
"""
_A2A_LIST_TASKS = (
    _A2A_COLUMNS
    + _A2A_FILTER
    + """
  AND (%(before_at)s::timestamptz IS NULL OR status_at < %(before_at)s::timestamptz
       OR (status_at = %(before_at)s::timestamptz AND id < %(before_id)s::text))
ORDER BY status_at DESC, id DESC LIMIT %(limit)s
"""
)
_A2A_COUNT_TASKS = (
    """
SELECT count(*) FROM a2a_tasks
"""
    + _A2A_FILTER
)
_A2A_UPDATE_TASK = """
UPDATE a2a_tasks
SET state = %s, remote_id = %s, snapshot = %s, push = %s, status_at = %s, updated = %s,
    version = %s
WHERE id = %s AND version = %s
"""
_A2A_SOURCE_SEEN = "SELECT 1 FROM a2a_task_events WHERE task = %s AND source = %s"
_A2A_INSERT_EVENT = (
    "INSERT INTO a2a_task_events (task, version, source, event) VALUES (%s, %s, %s, %s)"
)
_A2A_EVENTS = """
SELECT version, event FROM a2a_task_events WHERE task = %s AND version > %s
ORDER BY version LIMIT %s
"""
_A2A_TASKS_FOR_ENVELOPES = (
    "SELECT envelope, task FROM a2a_task_envelopes WHERE envelope = ANY(%s::text[])"
)
# Rows of agents that owned a task by the time the row arrived (see the SQLite dialect).
_A2A_FEED = """
SELECT i.seq, i.agent, e.token
FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
WHERE i.seq > %s
  AND EXISTS (SELECT 1 FROM a2a_tasks AS t WHERE t.owner = i.agent AND t.created <= i.delivered_at)
ORDER BY i.seq LIMIT %s
"""
_A2A_OWNERS = "SELECT DISTINCT owner FROM a2a_tasks ORDER BY owner"
_A2A_FEED_CURSOR = "SELECT cursor FROM a2a_feed WHERE id = 1"
_A2A_SET_FEED_CURSOR = "UPDATE a2a_feed SET cursor = greatest(cursor, %s) WHERE id = 1"

# Operator commands (rare): one text with optional filters is good enough for their plans.
_QUEUE_FILTER = """
r.state = 'queued'
  AND (%(domain)s::text IS NULL OR r.domain = %(domain)s::text)
  AND (%(id)s::text IS NULL OR r.envelope IN (SELECT pk FROM envelopes WHERE id = %(id)s::text))
"""
_FLUSH_EVENTS = (
    """
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, %(at)s::timestamptz, r.recipient, 'flushed', NULL, NULL, NULL
FROM recipients AS r
WHERE """
    + _QUEUE_FILTER
)
_FLUSH_UPDATE = (
    """
UPDATE recipients AS r
SET next_attempt = least(r.next_attempt, %(at)s::timestamptz), updated = %(at)s::timestamptz
WHERE """
    + _QUEUE_FILTER
)
_DELETE_EVENTS = (
    """
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, %(at)s::timestamptz, r.recipient, 'deleted', %(code)s::text,
       %(reason)s::text, NULL
FROM recipients AS r
WHERE """
    + _QUEUE_FILTER
)
_DELETE_UPDATE = (
    """
UPDATE recipients AS r
SET state = 'bounced', code = %(code)s::text, reason = %(reason)s::text, next_attempt = NULL,
    lease_until = NULL, lease_owner = NULL, updated = %(at)s::timestamptz
WHERE """
    + _QUEUE_FILTER
)

#: What ``delete_queued`` records (postsuper -d): permanent, no DSN. Same as SQLite.
DELETED_CODE: Final = "5.0.0"
DELETED_REASON: Final = "deleted from the queue by the operator"

_DEFAULT_EVENT: Final = {"sent": "sent", "queued": "deferred", "bounced": "bounced"}
#: Settle events that record no delivery attempt (Store.settle): a row that expired in the
#: queue, or one held back because its destination is known to be down.
_NOT_ATTEMPTS: Final = frozenset({"expired", "held"})


# time -----------------------------------------------------------------------------------------


def _ts(value: datetime) -> datetime:
    """An aware datetime for a timestamptz parameter; naive ones are a caller's bug."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InternalError("the store takes timezone-aware datetimes")
    return value


def _dt(value: datetime) -> datetime:
    """A timestamptz from the driver (in the session's time zone) as UTC."""
    return value.astimezone(UTC)


def _dt_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _dt(value)


# errors ---------------------------------------------------------------------------------------


def _sqlstate(exc: BaseException) -> str:
    return getattr(exc, "sqlstate", None) or ""


def _translate(exc: BaseException) -> SynqError:
    """The relay error for a driver exception. The SQL and the driver's text stay out of it."""
    if isinstance(exc, SynqError):
        return exc
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
    if isinstance(exc, SynqError):
        return False
    if not isinstance(exc, psycopg.Error):
        return False
    return _sqlstate(exc)[:2] not in _OPERATION_CLASSES


class _GroupFailed(Exception):
    """Raised inside the writer when the whole group must be rolled back."""

    def __init__(self, error: SynqError, *, retry: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry = retry


def _group_failed(exc: BaseException) -> _GroupFailed:
    return _GroupFailed(_translate(exc), retry=_sqlstate(exc) in _RETRYABLE)


def _copy_error(error: SynqError) -> SynqError:
    """A fresh exception per caller: one exception object raised in many tasks would share
    (and keep growing) one traceback."""
    return type(error)(error.message, **error.details)


# migrations -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Migration:
    version: int
    name: str
    sql: str


@functools.cache
def _migrations() -> tuple[_Migration, ...]:
    """The packaged migrations (``migrations/postgresql/NNNN_name.sql``), in order. Each file is
    sent as one simple-protocol script inside the migration's transaction: PostgreSQL's DDL is
    transactional, so a failing migration leaves no trace."""
    folder = resources.files("relay.store").joinpath("migrations").joinpath("postgresql")
    found: list[_Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match is None:
            continue
        found.append(
            _Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"))
        )
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise InternalError("the packaged PostgreSQL migrations are not numbered 0001, 0002, …")
    return tuple(found)


# write operations -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Tx:
    """What a write operation runs on: the writer connection inside the group's transaction,
    and which of the agents the group delivers to exist (their rows are locked till COMMIT)."""

    conn: Conn
    agents: set[str] = field(default_factory=set)


#: A write operation: runs its statements inside the group's transaction and returns its result
#: and the notifier channels to wake after COMMIT.
_Run = Callable[[_Tx], Awaitable[tuple[Any, Collection[str]]]]


@dataclass(slots=True)
class _Op:
    run: _Run
    future: asyncio.Future[Any]
    #: Local agents whose inbox this operation may write: locked at the start of the group.
    agents: frozenset[str] = frozenset()
    #: For accepts: the (item, accepted-at) pairs, so that consecutive accepts of one group can
    #: be merged into one batch (see ``_run_group``).
    accepts: tuple[tuple[NewEnvelope, datetime], ...] | None = None


def _domain_of(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidAddress(f"not an address: {address[:80]!r} (expected local@domain)")
    return domain


@dataclass(frozen=True, slots=True)
class _Recipient:
    key: str  # the recipients row's key: an address, or a bare agent name (see PostgresStore)
    domain: str | None  # NULL for local rows
    klass: Literal["local", "remote", "refused"]
    agent: str | None = None  # the inbox owner, for local rows


def _recipients_of(item: NewEnvelope, local_domain: str | None) -> list[_Recipient]:
    """The recipient rows of one envelope, each once. An address both taken and refused counts
    as taken."""
    rows: list[_Recipient] = []
    seen: set[str] = set()
    for name in item.local:
        key = f"{name}@{local_domain}" if local_domain else name
        if key not in seen:
            seen.add(key)
            rows.append(_Recipient(key, None, "local", name))
    for address in item.remote:
        if address not in seen:
            seen.add(address)
            rows.append(_Recipient(address, _domain_of(address), "remote"))
    for address, _code, _reason in item.refused:
        if address not in seen:
            seen.add(address)
            rows.append(_Recipient(address, address.rpartition("@")[2] or None, "refused"))
    return rows


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column: the arrays ``unnest`` turns back into rows."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def _agents_of(items: Iterable[NewEnvelope]) -> frozenset[str]:
    return frozenset(name for item in items for name in item.local)


async def _accept_rows(
    tx: _Tx, batch: Sequence[tuple[NewEnvelope, datetime]], local_domain: str | None
) -> tuple[list[AcceptResult], set[str]]:
    """Take custody of ``(item, accepted-at)`` pairs inside the caller's transaction: four or
    five statements however many envelopes and recipients there are.

    The outcome is the one a sequence of single accepts would have: a row is credited to the
    first item that named it, so an envelope repeated in the batch reports ``duplicate``.
    """
    conn = tx.conn
    missing = sorted({name for item, _at in batch for name in item.local} - tx.agents)
    if missing:
        # Removed after the caller's existence check (the group locked the rest).
        raise UnknownRecipient(f"no local agent named {', '.join(missing)}")

    envelope_rows: dict[tuple[str, str], list[Any]] = {}
    for it, at in batch:
        envelope_rows.setdefault(
            (it.origin, it.id),
            [
                it.origin,
                it.id,
                it.sender,
                it.token,
                _ts(it.created),
                _ts(it.expires),
                it.thread,
                it.kind,
                it.via,
                at,
            ],
        )
    cursor = await conn.execute(_INSERT_ENVELOPES, _columns(list(envelope_rows.values()), 10))
    new_envelopes = {(row[0], row[1]) for row in await cursor.fetchall()}

    per_item = [_recipients_of(it, local_domain) for it, _at in batch]
    refusals = [{addr: (code, reason) for addr, code, reason in it.refused} for it, _at in batch]
    # Each (envelope, recipient) at most once per statement (see _INSERT_RECIPIENTS). The first
    # mention of a row decides it; a later mention changes it only when the first refused the
    # recipient and the later one takes it, and that upgrade goes in a second statement.
    first: dict[tuple[str, str, str], list[Any]] = {}
    upgrades: dict[tuple[str, str, str], list[Any]] = {}
    for (it, at), rows, refused in zip(batch, per_item, refusals, strict=True):
        for r in rows:
            row: list[Any]
            if r.klass == "local":
                row = [r.key, None, "delivered", False, None, None, None]
            elif r.klass == "remote":
                row = [r.key, r.domain, "queued", False, None, None, at]
            else:
                code, reason = refused[r.key]
                row = [r.key, r.domain, "bounced", True, code, reason, None]
            row_key = (it.origin, it.id, r.key)
            full = [it.origin, it.id, *row, at]
            if row_key not in first:
                first[row_key] = full
            elif first[row_key][5] and not row[3] and row_key not in upgrades:
                upgrades[row_key] = full
    # (origin, id, recipient, refused) → envelope pk. A recipient refused by one item and taken
    # by a later one changes twice (insert, then upgrade): once per refusedness, so each of the
    # two items gets its own change.
    changed: dict[tuple[str, str, str, bool], int] = {}
    for rows_ in (first, upgrades):
        if rows_:
            cursor = await conn.execute(_INSERT_RECIPIENTS, _columns(list(rows_.values()), 10))
            for pk, origin, id_, recipient, refused_flag in await cursor.fetchall():
                changed[(origin, id_, recipient, refused_flag)] = pk

    results: list[AcceptResult] = []
    inbox_rows: list[tuple[str, int, datetime]] = []
    event_rows: list[tuple[int, datetime, str, str, str | None, str | None, str]] = []
    channels: set[str] = set()
    for (it, at), rows, refused in zip(batch, per_item, refusals, strict=True):
        key = (it.origin, it.id)
        fresh = key in new_envelopes
        new_envelopes.discard(key)
        for r in rows:
            pk = changed.pop((it.origin, it.id, r.key, r.klass == "refused"), None)
            if pk is None:
                continue
            fresh = True
            if r.agent is not None:
                inbox_rows.append((r.agent, pk, at))
                event_rows.append((pk, at, r.key, "delivered", None, None, it.via))
                channels.add(inbox_channel(r.agent))
            elif r.klass == "remote":
                event_rows.append((pk, at, r.key, "accepted", None, None, it.via))
                channels.add(QUEUE_CHANNEL)
            else:
                code, reason = refused[r.key]
                event_rows.append((pk, at, r.key, "bounced", code, reason, it.via))
        results.append(AcceptResult(origin=it.origin, id=it.id, duplicate=not fresh))

    if inbox_rows:
        try:
            cursor = await conn.execute(_INSERT_INBOX, _columns(inbox_rows, 3))
            if await cursor.fetchall():
                channels.add(DELIVERY_CHANNEL)
        except psycopg.errors.ForeignKeyViolation as exc:
            # Only an agent can be missing, and the group locked the ones that exist: this
            # means an agent vanished in a way the lock did not see. Say so all the same.
            names = ", ".join(sorted({row[0] for row in inbox_rows}))
            raise UnknownRecipient(f"no local agent named {names}") from exc
    if event_rows:
        await conn.execute(_INSERT_EVENTS, _columns(event_rows, 7))
    return results, channels


def _agent(row: Sequence[Any]) -> AgentRecord:
    return AgentRecord(name=row[0], kind=row[1], endpoint=row[2], created=_dt(row[3]))


def _a2a_task(row: Sequence[Any]) -> A2ATask:
    return A2ATask(
        id=row[0],
        owner=row[1],
        address=row[2],
        context=row[3],
        state=row[4],
        remote_id=row[5],
        snapshot=row[6],
        push=row[7],
        version=row[8],
        status_at=_dt(row[9]),
        created=_dt(row[10]),
        updated=_dt(row[11]),
    )


def _queue_entry(row: Sequence[Any]) -> QueueEntry:
    return QueueEntry(
        origin=row[1],
        id=row[2],
        sender=row[3],
        recipient=row[4],
        domain=row[5],
        token=row[6],
        expires=_dt(row[7]),
        attempts=row[8],
        next_attempt=_dt(row[9]),
        code=row[10],
        reason=row[11],
    )


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


# the store ------------------------------------------------------------------------------------


class _ListeningNotifier(Notifier):
    """In-process wake-ups, plus what other processes announce through LISTEN/NOTIFY."""

    def deliver_remote(self, channels: Iterable[str]) -> None:
        for channel in channels:
            if channel == _WAKE_ALL:
                self.wake_all()
            else:
                self._deliver(channel)

    def wake_all(self) -> None:
        """Wake every listener: after the listener connection was lost, any notification may
        have been missed. A spurious wake-up costs a listener one read."""
        for channel in list(self._listeners):
            self._deliver(channel)


class PostgresStore(Store):
    """The scale-out store: one PostgreSQL database shared by every relay process of a domain.

    ``url`` is a libpq URL (``postgresql://user:password@host:port/dbname?sslmode=…``); libpq's
    environment variables (``PGPASSWORD``…) apply as usual. ``domain``: the relay's own domain,
    as for SQLite (local recipient rows keyed by address). ``synchronous``: ``FULL`` (default)
    or ``NORMAL``, see :data:`_SYNCHRONOUS`.
    """

    shared_by_processes = True

    def __init__(self, url: str, *, domain: str | None = None, synchronous: str = "FULL") -> None:
        super().__init__()
        self._notifier = _ListeningNotifier()
        self.notifier = self._notifier
        if domain is None:
            self.domain: str | None = None
        else:
            try:
                self.domain = normalize_domain(domain)
            except SynqError:
                raise ConfigError(f"the store's domain {domain[:80]!r} is not a domain") from None
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
        #: This store's instance number: owner of its leases, key of its lease lock.
        self.instance = 0
        #: The schema version after ``open`` (what ``synq migrate`` reports).
        self.schema_version = 0
        #: Migrations this ``open`` applied.
        self.applied_migrations: list[int] = []
        self._writer: Conn | None = None
        self._listener: Conn | None = None
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._queue: asyncio.Queue[_Op | None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._opened = False
        self._closed = False

    # lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._opened or self._closed:
            raise InternalError("a store is opened once")
        self._opened = True
        try:
            self._writer = await self._connect_writer()
            await self._migrate(self._writer)
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
        except BaseException as exc:
            await self._close_connections()
            if isinstance(exc, psycopg.Error):
                error = _translate(exc)
                raise type(error)(f"cannot open the PostgreSQL store: {error.message}") from exc
            raise
        self._queue = asyncio.Queue()
        self._writer_task = asyncio.create_task(self._write_loop(), name="synq-postgres-writer")
        self._listener_task = asyncio.create_task(
            self._listen_loop(), name="synq-postgres-listener"
        )

    async def _connect(self) -> Conn:
        return await AsyncConnection.connect(self._conninfo, autocommit=True)

    async def _connect_writer(self) -> Conn:
        conn = await self._connect()
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
        conn = await self._connect()
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

    async def _migrate(self, conn: Conn) -> None:
        """Apply pending migrations in one transaction under an advisory lock: replicas starting
        together serialise here, and a failing migration leaves no trace."""
        migrations = _migrations()
        async with conn.transaction():
            await conn.execute(_MIGRATION_LOCK, (MIGRATION_LOCK_KEY,))
            await conn.execute(_CREATE_MIGRATIONS)
            cursor = await conn.execute(_SELECT_MIGRATIONS)
            applied = {row[0] for row in await cursor.fetchall()}
            if applied and max(applied) > len(migrations):
                raise ConfigError(
                    f"the PostgreSQL database has schema version {max(applied)}, newer than "
                    f"this relay knows ({len(migrations)}); run a newer synq"
                )
            for migration in migrations:
                if migration.version in applied:
                    continue
                await conn.execute(migration.sql.encode())
                await conn.execute(_INSERT_MIGRATION, (migration.version, migration.name))
                self.applied_migrations.append(migration.version)
                _log.info("applied PostgreSQL migration %04d_%s", migration.version, migration.name)
        self.schema_version = len(migrations)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        task = self._writer_task
        if task is not None and self._queue is not None:
            # Operations queued before close still run; then this instance's leases go back to
            # the clock (so they stay durable, base.py), then the sentinel.
            if self.instance:
                self._queue.put_nowait(self._disown_op())
            self._queue.put_nowait(None)
            await asyncio.wait([task])
        listening = self._listener_task
        if listening is not None:
            listening.cancel()
            await asyncio.wait([listening])
        await self._close_connections()

    def _disown_op(self) -> _Op:
        instance = self.instance

        async def run(tx: _Tx) -> tuple[None, Collection[str]]:
            await tx.conn.execute(_DISOWN_LEASES, (instance,))
            await tx.conn.execute(_DISOWN_DELIVERIES, (instance,))
            return None, ()

        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Nobody awaits it: mark a failure as retrieved so it is not reported as lost.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return _Op(run, future)

    async def _close_connections(self) -> None:
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

    async def ping(self) -> None:
        if self._closed or self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable("the store is not running")
        await self._read("SELECT 1", ())

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
                    _log.info("store listener reconnected; waking every listener")
                    self._notifier.wake_all()
                async for note in conn.notifies():
                    self._on_notify(note.payload)
                raise StoreUnavailable("the listener connection stopped")  # notifies() ended
            except (psycopg.Error, OSError, SynqError) as exc:
                message = exc.message if isinstance(exc, SynqError) else _translate(exc).message
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
        self._notifier.deliver_remote(rest.split("\n") if rest else (_WAKE_ALL,))

    # reads -------------------------------------------------------------------------------------

    async def _read(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[TupleRow]:
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
                raise _translate(exc) from exc
        raise AssertionError("unreachable")

    async def _read_one(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> Any:
        rows = await self._read(sql, params)
        return rows[0] if rows else None

    async def get_agent(self, name: str) -> AgentRecord | None:
        row = await self._read_one(_SELECT_AGENT, (name,))
        return None if row is None else _agent(row)

    async def agent_for_token(self, token_hash: str) -> AgentRecord | None:
        row = await self._read_one(_SELECT_AGENT_BY_HASH, (token_hash,))
        return None if row is None else _agent(row)

    async def list_agents(self) -> list[AgentRecord]:
        return [_agent(row) for row in await self._read(_SELECT_AGENTS, ())]

    async def existing_agents(self, names: Iterable[str]) -> set[str]:
        wanted = sorted(set(names))
        if not wanted:
            return set()
        rows = await self._read(_SELECT_EXISTING_AGENTS, (wanted,))
        return {row[0] for row in rows}

    async def message_status(self, origin: str, id: str) -> MessageStatus | None:
        rows = await self._read(_MESSAGE_STATUS, {"origin": origin, "id": id})
        if not rows or rows[0][0] != 0:
            return None
        head = rows[0]
        recipients: list[RecipientStatus] = []
        events: list[DeliveryEvent] = []
        for row in rows[1:]:
            if row[0] == 1:
                state: RecipientState = row[2]
                recipients.append(
                    RecipientStatus(
                        address=row[1],
                        state=state,
                        code=row[3],
                        reason=row[4],
                        attempts=row[6],
                        next_attempt=_dt_or_none(row[7]),
                        updated=_dt(row[8]),
                    )
                )
            else:
                events.append(
                    DeliveryEvent(
                        at=_dt(row[7]),
                        recipient=row[1],
                        event=row[2],
                        code=row[3],
                        reason=row[4],
                        hop=row[5],
                    )
                )
        return MessageStatus(
            origin=head[1],
            id=head[2],
            sender=head[3],
            created=_dt(head[7]),
            expires=_dt(head[8]),
            recipients=recipients,
            events=events,
        )

    async def inbox(
        self,
        agent: str,
        *,
        limit: int,
        include_acked: bool = False,
        thread: str | None = None,
        after_seq: int | None = None,
    ) -> list[InboxItem]:
        if limit <= 0:  # PostgreSQL refuses a negative LIMIT
            return []
        params: dict[str, Any] = {"agent": agent, "after": after_seq or 0, "limit": limit}
        if thread is None:
            sql = _INBOX_ALL if include_acked else _INBOX_UNACKED
        else:
            sql = _INBOX_ALL_THREAD if include_acked else _INBOX_UNACKED_THREAD
            params["thread"] = thread
        return [
            InboxItem(
                seq=row[0],
                origin=row[1],
                id=row[2],
                token=row[3],
                delivered_at=_dt(row[4]),
                acked_at=_dt_or_none(row[5]),
            )
            for row in await self._read(sql, params)
        ]

    async def next_due(self) -> datetime | None:
        row = await self._read_one(_NEXT_DUE, ())
        return None if row is None else _dt_or_none(row[0])

    async def list_queue(self, domain: str | None = None) -> list[QueueEntry]:
        if domain is None:
            rows = await self._read(_LIST_QUEUE, ())
        else:
            rows = await self._read(_LIST_QUEUE_DOMAIN, (domain,))
        return [_queue_entry(row) for row in rows]

    # writes ------------------------------------------------------------------------------------

    async def _write(
        self,
        run: _Run,
        *,
        agents: frozenset[str] = frozenset(),
        accepts: tuple[tuple[NewEnvelope, datetime], ...] | None = None,
    ) -> Any:
        """Queue one operation for the writer and wait for its own result or exception."""
        if self._closed or self._queue is None:
            raise StoreUnavailable("the store is closed")
        if self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable("the store is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Op(run, future, agents, accepts))
        # If the caller is cancelled the future is cancelled too, and the writer skips the
        # operation if it has not started it yet (or drops its result if it has).
        return await future

    async def create_agent(
        self, name: str, kind: AgentKind, token_hash: str, endpoint: str | None, now: datetime
    ) -> AgentRecord:
        created = _ts(now)

        async def run(tx: _Tx) -> tuple[AgentRecord, Collection[str]]:
            try:
                cursor = await tx.conn.execute(
                    _INSERT_AGENT, (name, kind, endpoint, token_hash, created)
                )
            except psycopg.errors.UniqueViolation as exc:
                # The name is free (ON CONFLICT (name) did not fire), so the token hash is not.
                raise Conflict("that token is already registered to another agent") from exc
            if cursor.rowcount == 0:
                raise Conflict(f"an agent named {name!r} already exists")
            return AgentRecord(name=name, kind=kind, endpoint=endpoint, created=_dt(created)), ()

        record: AgentRecord = await self._write(run)
        return record

    async def remove_agent(self, name: str) -> bool:
        async def run(tx: _Tx) -> tuple[bool, Collection[str]]:
            # The inbox rows go with it: ON DELETE CASCADE.
            cursor = await tx.conn.execute(_DELETE_AGENT, (name,))
            return cursor.rowcount > 0, ()

        removed: bool = await self._write(run)
        return removed

    async def set_agent_token(self, name: str, token_hash: str) -> bool:
        async def run(tx: _Tx) -> tuple[bool, Collection[str]]:
            try:
                cursor = await tx.conn.execute(_SET_AGENT_HASH, (token_hash, name))
            except psycopg.errors.UniqueViolation as exc:
                raise Conflict("that token is already registered to another agent") from exc
            return cursor.rowcount > 0, ()

        changed: bool = await self._write(run)
        return changed

    async def accept_many(self, items: Sequence[NewEnvelope], now: datetime) -> list[AcceptResult]:
        if not items:
            return []
        at = _ts(now)
        batch = tuple((item, at) for item in items)

        async def run(tx: _Tx) -> tuple[list[AcceptResult], Collection[str]]:
            return await _accept_rows(tx, batch, self.domain)

        results: list[AcceptResult] = await self._write(
            run, agents=_agents_of(items), accepts=batch
        )
        return results

    async def ack(self, agent: str, id: str, now: datetime) -> bool:
        at = _ts(now)

        async def run(tx: _Tx) -> tuple[bool, Collection[str]]:
            # coalesce keeps the first ack time, and the row still counts: acking twice is True.
            cursor = await tx.conn.execute(_ACK, (at, agent, id))
            return cursor.rowcount > 0, ()

        acked: bool = await self._write(run)
        return acked

    async def lease_due(
        self, now: datetime, *, lease_until: datetime, limit: int, domain: str | None = None
    ) -> list[QueueEntry]:
        if limit <= 0:
            return []
        params: dict[str, Any] = {
            "class": LEASE_LOCK_CLASS,
            "now": _ts(now),
            "until": _ts(lease_until),
            "limit": limit,
            "owner": self.instance,
        }
        sql = _LEASE
        if domain is not None:
            sql = _LEASE_DOMAIN
            params["domain"] = domain

        async def run(tx: _Tx) -> tuple[list[QueueEntry], Collection[str]]:
            cursor = await tx.conn.execute(sql, params)
            rows = await cursor.fetchall()
            # RETURNING has no order; the contract's is oldest first.
            rows.sort(key=lambda row: (row[9], row[0]))
            return [_queue_entry(row) for row in rows], ()

        entries: list[QueueEntry] = await self._write(run)
        return entries

    async def lease_deliveries(
        self, now: datetime, *, lease_until: datetime, limit: int
    ) -> list[LocalDelivery]:
        if limit <= 0:
            return []
        params: dict[str, Any] = {
            "class": LEASE_LOCK_CLASS,
            "now": _ts(now),
            "until": _ts(lease_until),
            "limit": limit,
            "owner": self.instance,
        }

        async def run(tx: _Tx) -> tuple[list[LocalDelivery], Collection[str]]:
            cursor = await tx.conn.execute(_LEASE_DELIVERIES, params)
            rows = await cursor.fetchall()
            rows.sort(key=lambda row: (row[10], row[1]))  # oldest first, as the contract says
            return [
                LocalDelivery(
                    agent=r[0],
                    seq=r[1],
                    origin=r[2],
                    id=r[3],
                    sender=r[4],
                    token=r[5],
                    expires=_dt(r[6]),
                    attempts=r[7],
                    code=r[8],
                    reason=r[9],
                )
                for r in rows
            ], ()

        leased: list[LocalDelivery] = await self._write(run)
        return leased

    async def settle_deliveries(
        self, outcomes: Sequence[DeliveryOutcome], new: Sequence[NewEnvelope], now: datetime
    ) -> None:
        at = _ts(now)
        new = list(new)
        if not outcomes and not new:
            return
        events: list[tuple[Any, ...]] = []
        defers: list[tuple[Any, ...]] = []
        finished: list[tuple[Any, ...]] = []
        acks: list[tuple[Any, ...]] = []
        bounces: list[tuple[Any, ...]] = []
        for o in outcomes:
            address = f"{o.agent}@{self.domain}"
            events.append((at, address, _DELIVERY_EVENTS[o.state], o.code, o.reason, o.hop, o.seq))
            if o.state == "queued":
                if o.next_attempt is None:
                    raise InternalError("a deferred delivery needs next_attempt")
                defers.append((_ts(o.next_attempt), o.code, o.reason, o.seq))
                continue
            finished.append((o.seq,))
            acks.append((at, o.seq))
            if o.state == "bounced":
                bounces.append((o.code, o.reason, at, address, o.seq))

        async def run(tx: _Tx) -> tuple[None, Collection[str]]:
            # Each outcome names its own inbox row, so running the statements kind by kind (one
            # pipelined executemany each) equals running them outcome by outcome.
            async with tx.conn.cursor() as cursor:
                for sql, rows in (
                    (_DELIVERY_EVENT, events),
                    (_DELIVERY_DEFER, defers),
                    (_DELIVERY_DONE, finished),
                    (_DELIVERY_ACK, acks),
                    (_DELIVERY_BOUNCE, bounces),
                ):
                    if rows:
                        await cursor.executemany(sql, rows)
            channels: Collection[str] = ()
            if new:
                _results, channels = await _accept_rows(
                    tx, [(item, at) for item in new], self.domain
                )
            return None, channels

        await self._write(run, agents=_agents_of(new))

    async def next_delivery_due(self) -> datetime | None:
        row = await self._read_one(_NEXT_DELIVERY_DUE, ())
        return None if row is None else _dt_or_none(row[0])

    async def release_leases(self) -> int:
        """Nothing to do (module docstring, "Leases"): leases of dead processes are free
        already, and those of live ones must stay theirs."""
        return 0

    async def settle(
        self, outcomes: Sequence[Outcome], new: Sequence[NewEnvelope], now: datetime
    ) -> None:
        at = _ts(now)
        event_rows: list[tuple[Any, ...]] = []
        update_rows: list[tuple[Any, ...]] = []
        for o in outcomes:
            if o.state == "queued" and o.next_attempt is None:
                raise InternalError("a deferred outcome needs next_attempt")
            event = o.event or _DEFAULT_EVENT[o.state]
            next_attempt = _ts(o.next_attempt) if o.state == "queued" and o.next_attempt else None
            tried = 0 if event in _NOT_ATTEMPTS else 1
            event_rows.append((at, event, o.code, o.reason, o.hop, o.origin, o.id, o.recipient))
            update_rows.append(
                (o.state, o.code, o.reason, next_attempt, tried, at, o.origin, o.id, o.recipient)
            )
        new = list(new)
        if not outcomes and not new:
            return

        async def run(tx: _Tx) -> tuple[None, Collection[str]]:
            if event_rows:
                # executemany runs in pipeline mode: one round trip for the lot, and each
                # outcome applied in order exactly as the SQLite dialect applies them.
                async with tx.conn.cursor() as cursor:
                    await cursor.executemany(_SETTLE_EVENT, event_rows)
                    await cursor.executemany(_SETTLE_UPDATE, update_rows)
            channels: Collection[str] = ()
            if new:
                batch = [(item, at) for item in new]
                _results, channels = await _accept_rows(tx, batch, self.domain)
            return None, channels

        await self._write(run, agents=_agents_of(new))

    async def flush(self, now: datetime, domain: str | None = None, id: str | None = None) -> int:
        params = {"at": _ts(now), "domain": domain, "id": id}

        async def run(tx: _Tx) -> tuple[int, Collection[str]]:
            await tx.conn.execute(_FLUSH_EVENTS, params)
            cursor = await tx.conn.execute(_FLUSH_UPDATE, params)
            count = cursor.rowcount
            return count, (QUEUE_CHANNEL,) if count else ()

        count: int = await self._write(run)
        return count

    async def delete_queued(
        self, now: datetime, id: str | None = None, domain: str | None = None
    ) -> int:
        params = {
            "at": _ts(now),
            "domain": domain,
            "id": id,
            "code": DELETED_CODE,
            "reason": DELETED_REASON,
        }

        async def run(tx: _Tx) -> tuple[int, Collection[str]]:
            await tx.conn.execute(_DELETE_EVENTS, params)
            cursor = await tx.conn.execute(_DELETE_UPDATE, params)
            return cursor.rowcount, ()

        count: int = await self._write(run)
        return count

    # the A2A face's tasks -----------------------------------------------------------------------

    async def a2a_create_task(self, task: A2ATask, envelope: str) -> None:
        row = (
            task.id,
            task.owner,
            task.address,
            task.context,
            task.state,
            task.remote_id,
            task.snapshot,
            task.push,
            task.version,
            _ts(task.status_at),
            _ts(task.created),
            _ts(task.updated),
        )

        async def run(tx: _Tx) -> tuple[None, Collection[str]]:
            try:
                await tx.conn.execute(_A2A_INSERT_TASK, row)
                await tx.conn.execute(_A2A_LINK, (envelope, task.id))
            except psycopg.errors.UniqueViolation as exc:
                raise Conflict(f"task {task.id!r} already exists") from exc
            return None, (a2a_task_channel(task.id),)

        await self._write(run)

    async def a2a_get_task(self, id: str) -> A2ATask | None:
        row = await self._read_one(_A2A_GET_TASK, (id,))
        return None if row is None else _a2a_task(row)

    async def a2a_list_tasks(
        self,
        owner: str,
        address: str,
        *,
        context: str | None,
        state: str | None,
        status_after: datetime | None,
        before: tuple[datetime, str] | None,
        limit: int,
    ) -> tuple[list[A2ATask], int]:
        params: dict[str, Any] = {
            "owner": owner,
            "address": address,
            "context": context,
            "state": state,
            "after": _ts(status_after) if status_after is not None else None,
            "before_at": _ts(before[0]) if before is not None else None,
            "before_id": before[1] if before is not None else None,
            "limit": max(limit, 0),
        }
        rows = await self._read(_A2A_LIST_TASKS, params)
        total = await self._read_one(_A2A_COUNT_TASKS, params)
        return [_a2a_task(row) for row in rows], int(total[0]) if total else 0

    async def a2a_update_task(
        self,
        task: A2ATask,
        expected_version: int,
        events: Sequence[str] = (),
        *,
        source: str | None = None,
        link: str | None = None,
    ) -> A2AUpdate:
        version = expected_version + max(1, len(events))
        params = (
            task.state,
            task.remote_id,
            task.snapshot,
            task.push,
            _ts(task.status_at),
            _ts(task.updated),
            version,
            task.id,
            expected_version,
        )
        # The source is recorded with the first event of the change only: one reply, one entry
        # in the (task, source) index (as the SQLite dialect does).
        event_rows = [
            (task.id, expected_version + n, source if n == 1 else None, event)
            for n, event in enumerate(events, 1)
        ]

        async def run(tx: _Tx) -> tuple[A2AUpdate, Collection[str]]:
            conn = tx.conn
            if source is not None:
                cursor = await conn.execute(_A2A_SOURCE_SEEN, (task.id, source))
                if await cursor.fetchone() is not None:
                    return "duplicate", ()
            # The compare-and-set: in READ COMMITTED an UPDATE that waited for another
            # writer's row lock re-checks ``version`` on the row as committed, so exactly one of
            # two concurrent updates from the same version wins.
            cursor = await conn.execute(_A2A_UPDATE_TASK, params)
            if cursor.rowcount == 0:
                return "conflict", ()
            if event_rows:
                async with conn.cursor() as many:
                    await many.executemany(_A2A_INSERT_EVENT, event_rows)
            if link is not None:
                try:
                    await conn.execute(_A2A_LINK, (link, task.id))
                except psycopg.errors.UniqueViolation as exc:
                    raise Conflict(f"envelope {link!r} already belongs to a task") from exc
            return "updated", (a2a_task_channel(task.id),)

        outcome: A2AUpdate = await self._write(run)
        return outcome

    async def a2a_task_events(self, id: str, after: int, limit: int) -> list[tuple[int, str]]:
        if limit <= 0:
            return []
        return [(row[0], row[1]) for row in await self._read(_A2A_EVENTS, (id, after, limit))]

    async def a2a_tasks_for_envelopes(self, ids: Sequence[str]) -> dict[str, str]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        rows = await self._read(_A2A_TASKS_FOR_ENVELOPES, (wanted,))
        return {row[0]: row[1] for row in rows}

    async def a2a_feed(self, after_seq: int, limit: int) -> list[A2AFeedItem]:
        if limit <= 0:
            return []
        rows = await self._read(_A2A_FEED, (after_seq, limit))
        return [A2AFeedItem(seq=row[0], agent=row[1], token=row[2]) for row in rows]

    async def a2a_owners(self) -> list[str]:
        return [row[0] for row in await self._read(_A2A_OWNERS, ())]

    async def a2a_feed_cursor(self) -> int:
        row = await self._read_one(_A2A_FEED_CURSOR, ())
        return int(row[0]) if row else 0

    async def a2a_set_feed_cursor(self, seq: int) -> None:
        async def run(tx: _Tx) -> tuple[None, Collection[str]]:
            await tx.conn.execute(_A2A_SET_FEED_CURSOR, (seq,))
            return None, ()

        await self._write(run)

    # the writer --------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        pending: list[_Op] = []
        try:
            while True:
                first = await queue.get()
                if first is None:
                    return
                pending = [first]
                stop = False
                while len(pending) < MAX_GROUP_OPS:
                    try:
                        op = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if op is None:
                        stop = True
                        break
                    pending.append(op)
                await self._commit_group(pending)
                pending = []
                if stop:
                    return
        finally:
            # Only reached with work left when the task itself is cancelled (event loop torn
            # down without close()): nobody may wait forever on a future.
            while not queue.empty():
                leftover = queue.get_nowait()
                if leftover is not None:
                    pending.append(leftover)
            for op in pending:
                if not op.future.done():
                    op.future.set_exception(StoreUnavailable("the store is shutting down"))

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
            raise _group_failed(exc) from exc
        return self._writer

    async def _commit_group(self, group: list[_Op]) -> None:
        """Run ``group`` in one transaction (again, after a deadlock); settle every future;
        notify after COMMIT."""
        ops = [op for op in group if not op.future.done()]  # callers that gave up need no write
        if not ops:
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                done, failed, channels = await self._run_group(ops)
                break
            except _GroupFailed as exc:
                if exc.retry and attempt <= GROUP_RETRIES:
                    _log.info("store group hit a deadlock; running it again (%d)", attempt)
                    continue
                _log.error("store group of %d operations failed: %s", len(ops), exc.error.message)
                for op in ops:
                    if not op.future.done():
                        op.future.set_exception(_copy_error(exc.error))
                return
            except BaseException:
                # Cancelled mid-transaction: the connection is closed next, which rolls back.
                for op in ops:
                    if not op.future.done():
                        op.future.set_exception(StoreUnavailable("the store is shutting down"))
                raise
        for op, result in done:
            if not op.future.done():
                op.future.set_result(result)
        for op, error in failed:
            if not op.future.done():
                op.future.set_exception(error)
        # After COMMIT, never before: a woken reader must find the rows.
        if channels:
            self.notifier.notify(sorted(channels))

    async def _run_group(
        self, ops: list[_Op]
    ) -> tuple[list[tuple[_Op, Any]], list[tuple[_Op, SynqError]], set[str]]:
        conn = await self._writer_connection()
        done: list[tuple[_Op, Any]] = []
        failed: list[tuple[_Op, SynqError]] = []
        channels: set[str] = set()
        try:
            await self._exec(conn, "BEGIN")
            tx = _Tx(conn)
            names = sorted(set().union(*(op.agents for op in ops)))
            if names:
                await self._exec(conn, _INBOX_ORDER_LOCK, (INBOX_ORDER_LOCK_KEY,))
                rows = await self._fetch(conn, _LOCK_AGENTS, (names,))
                tx.agents = {row[0] for row in rows}
            isolated = len(ops) > 1
            for run in _runs(ops):
                if len(run) > 1 and await self._merged_accepts(tx, run, done, channels):
                    continue
                for op in run:
                    await self._one(tx, op, isolated, done, failed, channels)
            if channels and done:
                payloads = _notify_payloads(self.instance, channels)
                await self._exec(conn, _NOTIFY, (NOTIFY_CHANNEL, payloads))
            await self._exec(conn, "COMMIT" if done else "ROLLBACK")
        except _GroupFailed:
            await self._rollback_quietly(conn)
            raise
        except BaseException:
            await self._rollback_quietly(conn)
            raise
        return done, failed, channels

    async def _one(
        self,
        tx: _Tx,
        op: _Op,
        isolated: bool,
        done: list[tuple[_Op, Any]],
        failed: list[tuple[_Op, SynqError]],
        channels: set[str],
    ) -> None:
        """One operation under its own savepoint (none needed when it is alone in the group:
        the transaction is its savepoint)."""
        if isolated:
            await self._exec(tx.conn, "SAVEPOINT op")
        try:
            result, op_channels = await op.run(tx)
        except Exception as exc:
            if _is_group_fatal(exc):
                raise _group_failed(exc) from exc
            if not isinstance(exc, SynqError | psycopg.IntegrityError):
                _log.exception("store operation failed")
            if isolated:
                await self._exec(tx.conn, "ROLLBACK TO SAVEPOINT op")
                await self._exec(tx.conn, "RELEASE SAVEPOINT op")
            failed.append((op, _translate(exc)))
            return
        if isolated:
            await self._exec(tx.conn, "RELEASE SAVEPOINT op")
        done.append((op, result))
        channels.update(op_channels)

    async def _merged_accepts(
        self,
        tx: _Tx,
        run: list[_Op],
        done: list[tuple[_Op, Any]],
        channels: set[str],
    ) -> bool:
        """Consecutive accepts as one batch under one savepoint. False (and nothing written) if
        the batch failed; the caller then runs them one by one, so only the failing accept
        fails."""
        batch = [pair for op in run for pair in op.accepts or ()]
        await self._exec(tx.conn, "SAVEPOINT batch")
        try:
            results, batch_channels = await _accept_rows(tx, batch, self.domain)
        except Exception as exc:
            if _is_group_fatal(exc):
                raise _group_failed(exc) from exc
            await self._exec(tx.conn, "ROLLBACK TO SAVEPOINT batch")
            await self._exec(tx.conn, "RELEASE SAVEPOINT batch")
            return False
        await self._exec(tx.conn, "RELEASE SAVEPOINT batch")
        start = 0
        for op in run:
            count = len(op.accepts or ())
            done.append((op, results[start : start + count]))
            start += count
        channels.update(batch_channels)
        return True

    @staticmethod
    async def _exec(conn: Conn, sql: str, params: Sequence[Any] | None = None) -> None:
        try:
            await conn.execute(sql, params)
        except psycopg.Error as exc:
            raise _group_failed(exc) from exc

    @staticmethod
    async def _fetch(conn: Conn, sql: str, params: Sequence[Any]) -> list[TupleRow]:
        try:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()
        except psycopg.Error as exc:
            raise _group_failed(exc) from exc

    @staticmethod
    async def _rollback_quietly(conn: Conn) -> None:
        # Fails harmlessly when there is no transaction or the connection is gone.
        if conn.closed or conn.broken:
            return
        with contextlib.suppress(psycopg.Error, OSError):
            await conn.execute("ROLLBACK")


def _runs(ops: list[_Op]) -> list[list[_Op]]:
    """``ops`` in order, consecutive accepts grouped into one run, every other op alone.
    Only consecutive ones: merging across another op would reorder writes."""
    runs: list[list[_Op]] = []
    for op in ops:
        if op.accepts is not None and runs and runs[-1][-1].accepts is not None:
            runs[-1].append(op)
        else:
            runs.append([op])
    return runs
