"""The SQLite dialect of :class:`relay.store.base.Store`, through aiosqlite (DESIGN §9).

Connections
    Two connections to one database file in WAL mode. The *writer* is used by one task only, the
    group-commit writer below, so no other coroutine's statement can ever land inside its
    transaction. The *reader* is opened with ``query_only``; WAL lets it read while the writer
    writes (https://www.sqlite.org/wal.html §2.2). Every read method is **one** SQL statement in
    autocommit mode, so reads need no lock: each statement is its own read transaction over the
    latest committed state, and no read transaction is ever left open between two awaits.

Group commit
    Every write (``accept_many``, ``settle``, agents, ack, leases, queue commands) becomes an
    operation on an asyncio queue. The writer task takes the first operation, drains whatever
    else is already waiting (up to :data:`MAX_GROUP_OPS`) and runs them all in one
    ``BEGIN IMMEDIATE … COMMIT``: one fsync for the whole group. Each operation runs under its own
    ``SAVEPOINT``; one that fails is rolled back to its savepoint and gets its own exception while
    the others commit. No timer: while one group commits (the fsync is the slow part), the next
    callers queue up and form the next group, so batching grows with load and costs no latency
    when idle. A group of one skips the savepoint (the transaction already isolates it).

    aiosqlite runs each call on its own thread, so each statement is a thread round trip
    (≈40 µs here). Operations therefore touch many rows per statement: ``executemany``, or a
    JSON array expanded by ``json_each`` when the statement must also say which rows it inserted
    (``RETURNING``, https://www.sqlite.org/lang_returning.html). For the same reason consecutive
    accepts in a group (concurrent API submissions) run as one batch under one savepoint, four
    statements for the lot; only if that batch fails are they replayed one savepoint each, so
    the failing one alone fails. Measured here: 1,000 concurrent ``accept`` calls commit in
    4 transactions and about 0.13 s.

Recipients
    ``NewEnvelope.local`` carries agent names. Given the relay's ``domain``, a local recipient
    row is keyed and reported by its address, like remote and refused rows; without it, by the
    bare agent name.

Other processes
    The ``synq`` CLI writes the same file while ``synq serve`` runs. The writer task notices
    their commits (``PRAGMA data_version``, at most :data:`OTHER_PROCESS_POLL_INTERVAL` late)
    and wakes every listener, as base.py asks of a multi-process dialect.

Errors
    ``sqlite3`` exceptions never leave this module. Constraint failures belong to the operation
    that hit them (``Conflict``, or ``UnknownRecipient`` for a local agent that vanished between
    the caller's check and the write); operational failures (disk full, I/O error, database
    locked past the busy timeout) fail the whole group with ``StoreUnavailable``. Messages say what
    went wrong in words, never the SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

import aiosqlite
import orjson

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
    "DEFAULT_BUSY_TIMEOUT",
    "MAX_GROUP_OPS",
    "MIN_SQLITE_VERSION",
    "OTHER_PROCESS_POLL_INTERVAL",
    "SQLiteStore",
]

_log = logging.getLogger(__name__)

#: ``->>`` (3.38) and ``STRICT`` tables (3.37) are used by the schema and the queries.
MIN_SQLITE_VERSION: Final = (3, 38, 0)

#: Most operations committed in one transaction. Bounds how long one group holds SQLite's write
#: lock (another process such as the ``synq`` CLI waits that long at most) and how much work a
#: failing COMMIT throws back at its callers. Postfix's cleanup and Synapse's event persister
#: batch in the same order of magnitude.
MAX_GROUP_OPS: Final = 256

#: Seconds a connection waits for another process's lock before failing with SQLITE_BUSY
#: (https://www.sqlite.org/pragma.html#pragma_busy_timeout). Only another process can hold the
#: write lock (this process has one writer): ``synq agent add`` while ``synq serve`` runs.
DEFAULT_BUSY_TIMEOUT: Final = 5.0

#: Seconds between two looks for commits made by another process (``synq send``, ``synq agent
#: add`` beside ``synq serve``), which then wake every listener. SQLite has no cross-process
#: notification, so this bounds how late a long poll learns of such a commit; each look is one
#: ``PRAGMA data_version``, nothing when idle otherwise. Postfix's pickup polls its maildrop
#: for the same reason (its default is 60 s, but it is also poked through a FIFO).
OTHER_PROCESS_POLL_INTERVAL: Final = 0.5

#: ``PRAGMA synchronous`` values we accept (https://www.sqlite.org/pragma.html#pragma_synchronous).
#: In WAL mode FULL syncs the WAL on every commit, so a commit survives power loss; NORMAL
#: survives a process crash but may lose the last commits on power loss (benchmarks use it).
#: OFF is refused: the relay acknowledges only what is durable (base.py, Postfix's rule).
_SYNCHRONOUS: Final = frozenset({"FULL", "EXTRA", "NORMAL"})

_MIGRATION_RE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

#: SQLite primary result codes (https://www.sqlite.org/rescode.html) that mean "the store cannot
#: work right now", in words an operator can act on.
_UNAVAILABLE: Final = {
    "SQLITE_BUSY": "the database is locked by another process",
    "SQLITE_LOCKED": "the database is locked",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "the disk reported an I/O error",
    "SQLITE_READONLY": "the database file is read-only",
    "SQLITE_CANTOPEN": "the database file cannot be opened",
    "SQLITE_PERM": "permission denied on the database file",
    "SQLITE_CORRUPT": "the database file is damaged",
    "SQLITE_NOTADB": "the file is not an SQLite database",
    "SQLITE_NOMEM": "out of memory",
    "SQLITE_PROTOCOL": "the database lock protocol failed",
}

#: Driver errors that mean a wrong statement or parameter (a bug), not a failing database.
_USAGE_ERRORS: Final = (
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    sqlite3.NotSupportedError,
    sqlite3.DataError,
)

# SQL ------------------------------------------------------------------------------------------
# Constant texts only: values are always bound, and sqlite3's statement cache reuses them.

_CREATE_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name    TEXT NOT NULL,
    applied TEXT NOT NULL
) STRICT
"""
_SELECT_MIGRATIONS = "SELECT version FROM schema_migrations"
_INSERT_MIGRATION = """
INSERT INTO schema_migrations (version, name, applied)
VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
"""

_INSERT_AGENT = """
INSERT INTO agents (name, kind, endpoint, token_hash, created) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (name) DO NOTHING
"""
_SELECT_AGENT = "SELECT name, kind, endpoint, created FROM agents WHERE name = ?"
_SELECT_AGENT_BY_HASH = "SELECT name, kind, endpoint, created FROM agents WHERE token_hash = ?"
_SELECT_AGENTS = "SELECT name, kind, endpoint, created FROM agents ORDER BY name"
_DELETE_AGENT = "DELETE FROM agents WHERE name = ?"
_SET_AGENT_HASH = "UPDATE agents SET token_hash = ? WHERE name = ?"
_SELECT_EXISTING_AGENTS = "SELECT name FROM agents WHERE name IN (SELECT value FROM json_each(?))"

# The SELECT of an INSERT … SELECT … ON CONFLICT needs a WHERE clause so the parser does not read
# ON CONFLICT as a join constraint (https://www.sqlite.org/lang_upsert.html §2.2): hence
# ``WHERE true``. CROSS JOIN keeps json_each as the outer loop (it has no index), so envelopes is
# probed through its (origin, id) index (https://www.sqlite.org/optoverview.html §8).
_INSERT_ENVELOPES = """
INSERT INTO envelopes (origin, id, sender, token, created, expires, thread, kind, via, accepted)
SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4,
       j.value ->> 5, j.value ->> 6, j.value ->> 7, j.value ->> 8, j.value ->> 9
FROM json_each(?) AS j
WHERE true
ON CONFLICT (origin, id) DO NOTHING
RETURNING origin, id
"""

# The idempotent union: a missing row is inserted; an existing row changes only when it was
# refused at acceptance and this accept takes the recipient. RETURNING reports exactly the rows
# inserted or changed (not those left alone), which is what decides ``duplicate``; its order is
# unspecified, so each row names its envelope and refusedness.
_INSERT_RECIPIENTS = """
INSERT INTO recipients
    (envelope, recipient, domain, state, refused, code, reason, next_attempt, updated)
SELECT e.pk, j.value ->> 2, j.value ->> 3, j.value ->> 4, j.value ->> 5, j.value ->> 6,
       j.value ->> 7, j.value ->> 8, j.value ->> 9
FROM json_each(?) AS j CROSS JOIN envelopes AS e
WHERE e.origin = j.value ->> 0 AND e.id = j.value ->> 1
ON CONFLICT (envelope, recipient) DO UPDATE SET
    domain = excluded.domain, state = excluded.state, refused = 0, code = excluded.code,
    reason = excluded.reason, next_attempt = excluded.next_attempt, lease_until = NULL,
    updated = excluded.updated
WHERE recipients.refused = 1 AND excluded.refused = 0
RETURNING envelope,
          (SELECT x.origin FROM envelopes AS x WHERE x.pk = recipients.envelope),
          (SELECT x.id FROM envelopes AS x WHERE x.pk = recipients.envelope),
          recipient, refused
"""
_INSERT_INBOX = """
INSERT INTO inbox (agent, envelope, delivered_at) VALUES (?, ?, ?)
ON CONFLICT (agent, envelope) DO NOTHING
"""
#: Settle events that record no delivery attempt (Store.settle).
_NOT_ATTEMPTS: Final = frozenset({"expired", "held"})

_INSERT_DELIVERY = """
INSERT INTO deliveries (seq, agent, next_attempt)
SELECT i.seq, i.agent, ?3 FROM inbox AS i JOIN agents AS a ON a.name = i.agent
WHERE i.agent = ?1 AND i.envelope = ?2 AND a.kind <> 'inbox'
ON CONFLICT (seq) DO NOTHING
"""
_DELIVERY_SELECT = """
SELECT d.agent, d.seq, e.origin, e.id, e.sender, e.token, e.expires, d.attempts, d.code, d.reason
FROM deliveries AS d JOIN inbox AS i ON i.seq = d.seq JOIN envelopes AS e ON e.pk = i.envelope
WHERE d.next_attempt <= ?1 AND (d.lease_until IS NULL OR d.lease_until <= ?1)
ORDER BY d.next_attempt, d.seq LIMIT ?2
"""
_DELIVERY_LEASE = "UPDATE deliveries SET lease_until = ? WHERE seq = ?"
_DELIVERY_DEFER = """
UPDATE deliveries SET attempts = attempts + 1, next_attempt = ?2, lease_until = NULL,
    code = ?3, reason = ?4
WHERE seq = ?1
"""
_DELIVERY_DONE = "DELETE FROM deliveries WHERE seq = ?"
_DELIVERY_ACK = "UPDATE inbox SET acked_at = coalesce(acked_at, ?2) WHERE seq = ?1"
_DELIVERY_EVENT = """
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT i.envelope, ?2, ?3, ?4, ?5, ?6, ?7 FROM inbox AS i WHERE i.seq = ?1
"""
_DELIVERY_BOUNCE = """
UPDATE recipients SET state = 'bounced', code = ?3, reason = ?4, updated = ?2
WHERE recipient = ?5 AND envelope = (SELECT i.envelope FROM inbox AS i WHERE i.seq = ?1)
"""
_NEXT_DELIVERY_DUE = "SELECT min(next_attempt) FROM deliveries"

# The A2A face's tasks (0003) -------------------------------------------------------------------
_A2A_COLUMNS = """
SELECT id, owner, address, context, state, remote_id, snapshot, push, version, status_at,
       created, updated
FROM a2a_tasks
"""
_A2A_INSERT_TASK = """
INSERT INTO a2a_tasks (id, owner, address, context, state, remote_id, snapshot, push, version,
                       status_at, created, updated)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_A2A_LINK = "INSERT INTO a2a_task_envelopes (envelope, task) VALUES (?, ?)"
_A2A_GET_TASK = _A2A_COLUMNS + "WHERE id = ?"
# One text with optional filters: the (owner, address, status_at, id) index serves every form.
_A2A_FILTER = """
WHERE owner = ?1 AND address = ?2
  AND (?3 IS NULL OR context = ?3)
  AND (?4 IS NULL OR state = ?4)
  AND (?5 IS NULL OR status_at >= ?5)
"""
_A2A_LIST_TASKS = (
    _A2A_COLUMNS
    + _A2A_FILTER
    + """
  AND (?6 IS NULL OR status_at < ?6 OR (status_at = ?6 AND id < ?7))
ORDER BY status_at DESC, id DESC LIMIT ?8
"""
)
_A2A_COUNT_TASKS = """
SELECT count(*) FROM a2a_tasks
WHERE owner = ?1 AND address = ?2
  AND (?3 IS NULL OR context = ?3)
  AND (?4 IS NULL OR state = ?4)
  AND (?5 IS NULL OR status_at >= ?5)
"""
_A2A_UPDATE_TASK = """
UPDATE a2a_tasks
SET state = ?3, remote_id = ?4, snapshot = ?5, push = ?6, status_at = ?7, updated = ?8,
    version = ?9
WHERE id = ?1 AND version = ?2
"""
_A2A_SOURCE_SEEN = "SELECT 1 FROM a2a_task_events WHERE task = ? AND source = ?"
_A2A_INSERT_EVENT = "INSERT INTO a2a_task_events (task, version, source, event) VALUES (?, ?, ?, ?)"
_A2A_EVENTS = """
SELECT version, event FROM a2a_task_events WHERE task = ?1 AND version > ?2
ORDER BY version LIMIT ?3
"""
_A2A_TASKS_FOR_ENVELOPES = """
SELECT envelope, task FROM a2a_task_envelopes WHERE envelope IN (SELECT value FROM json_each(?))
"""
# Rows of agents that owned a task by the time the row arrived: a reply always arrives after
# the task that asked for it, and older mail of the same agent is none of the tracker's business.
_A2A_FEED = """
SELECT i.seq, i.agent, e.token
FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
WHERE i.seq > ?1
  AND EXISTS (SELECT 1 FROM a2a_tasks AS t WHERE t.owner = i.agent AND t.created <= i.delivered_at)
ORDER BY i.seq LIMIT ?2
"""
_A2A_OWNERS = "SELECT DISTINCT owner FROM a2a_tasks"
_A2A_FEED_CURSOR = "SELECT cursor FROM a2a_feed WHERE id = 1"
_A2A_SET_FEED_CURSOR = "UPDATE a2a_feed SET cursor = max(cursor, ?) WHERE id = 1"

_INSERT_EVENT = """
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""

_MESSAGE_STATUS = """
SELECT 0, e.origin, e.id, e.sender, e.created, e.expires, NULL, NULL, 0
FROM envelopes AS e WHERE e.origin = ?1 AND e.id = ?2
UNION ALL
SELECT 1, r.recipient, r.state, r.code, r.reason, r.attempts, r.next_attempt, r.updated, r.pk
FROM envelopes AS e JOIN recipients AS r ON r.envelope = e.pk
WHERE e.origin = ?1 AND e.id = ?2
UNION ALL
SELECT 2, v.recipient, v.event, v.code, v.reason, v.hop, v.at, NULL, v.pk
FROM envelopes AS e JOIN events AS v ON v.envelope = e.pk
WHERE e.origin = ?1 AND e.id = ?2
ORDER BY 1, 9
"""

# Four texts rather than ``(? OR acked_at IS NULL)``: the planner can use a partial index only
# when the query's WHERE clause implies the index's at prepare time
# (https://www.sqlite.org/partialindex.html §2), and can use envelopes_thread only for a real
# ``thread = ?`` term.
_INBOX_UNACKED = """
SELECT i.seq, e.origin, e.id, e.token, i.delivered_at, i.acked_at
FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
WHERE i.agent = ?1 AND i.seq > ?2 AND i.acked_at IS NULL
ORDER BY i.seq LIMIT ?3
"""
_INBOX_ALL = """
SELECT i.seq, e.origin, e.id, e.token, i.delivered_at, i.acked_at
FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
WHERE i.agent = ?1 AND i.seq > ?2
ORDER BY i.seq LIMIT ?3
"""
_INBOX_UNACKED_THREAD = """
SELECT i.seq, e.origin, e.id, e.token, i.delivered_at, i.acked_at
FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
WHERE i.agent = ?1 AND i.seq > ?2 AND i.acked_at IS NULL AND e.thread = ?4
ORDER BY i.seq LIMIT ?3
"""
_INBOX_ALL_THREAD = """
SELECT i.seq, e.origin, e.id, e.token, i.delivered_at, i.acked_at
FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
WHERE i.agent = ?1 AND i.seq > ?2 AND e.thread = ?4
ORDER BY i.seq LIMIT ?3
"""
_ACK = """
UPDATE inbox SET acked_at = coalesce(acked_at, ?1)
WHERE agent = ?2 AND envelope IN (SELECT pk FROM envelopes WHERE id = ?3)
"""

_QUEUE_COLUMNS = """
SELECT r.pk, e.origin, e.id, e.sender, r.recipient, r.domain, e.token, e.expires, r.attempts,
       r.next_attempt, r.code, r.reason
FROM recipients AS r JOIN envelopes AS e ON e.pk = r.envelope
"""
_LEASE_SELECT = (
    _QUEUE_COLUMNS
    + """
WHERE r.state = 'queued' AND r.next_attempt <= ?1 AND (r.lease_until IS NULL OR r.lease_until <= ?1)
ORDER BY r.next_attempt, r.pk LIMIT ?2
"""
)
_LEASE_SELECT_DOMAIN = (
    _QUEUE_COLUMNS
    + """
WHERE r.state = 'queued' AND r.domain = ?3 AND r.next_attempt <= ?1
  AND (r.lease_until IS NULL OR r.lease_until <= ?1)
ORDER BY r.next_attempt, r.pk LIMIT ?2
"""
)
_LEASE_UPDATE = "UPDATE recipients SET lease_until = ? WHERE pk = ?"
_LIST_QUEUE = _QUEUE_COLUMNS + "WHERE r.state = 'queued' ORDER BY r.next_attempt, r.pk"
_LIST_QUEUE_DOMAIN = (
    _QUEUE_COLUMNS + "WHERE r.state = 'queued' AND r.domain = ?1 ORDER BY r.next_attempt, r.pk"
)
_NEXT_DUE = "SELECT min(next_attempt) FROM recipients WHERE state = 'queued'"

# settle: the event first, while the row is still 'queued' (a row that left the queue meanwhile,
# e.g. deleted by the operator, keeps its final state and gets no event).
_SETTLE_EVENT = """
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, ?1, r.recipient, ?2, ?3, ?4, ?5
FROM envelopes AS e JOIN recipients AS r ON r.envelope = e.pk
WHERE e.origin = ?6 AND e.id = ?7 AND r.recipient = ?8 AND r.state = 'queued'
"""
_SETTLE_UPDATE = """
UPDATE recipients
SET state = ?1, code = ?2, reason = ?3, next_attempt = ?4, attempts = attempts + ?5,
    lease_until = NULL, updated = ?6
WHERE envelope = (SELECT pk FROM envelopes WHERE origin = ?7 AND id = ?8)
  AND recipient = ?9 AND state = 'queued'
"""

# Operator commands (rare): one text with optional filters is good enough for their plans.
_QUEUE_FILTER = """
r.state = 'queued'
  AND (?2 IS NULL OR r.domain = ?2)
  AND (?3 IS NULL OR r.envelope IN (SELECT pk FROM envelopes WHERE id = ?3))
"""
_FLUSH_EVENTS = (
    """
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, ?1, r.recipient, 'flushed', NULL, NULL, NULL
FROM recipients AS r
WHERE """
    + _QUEUE_FILTER
)
_FLUSH_UPDATE = (
    """
UPDATE recipients AS r SET next_attempt = min(r.next_attempt, ?1), updated = ?1
WHERE """
    + _QUEUE_FILTER
)
_DELETE_EVENTS = (
    """
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, ?1, r.recipient, 'deleted', ?4, ?5, NULL
FROM recipients AS r
WHERE """
    + _QUEUE_FILTER
)
_DELETE_UPDATE = (
    """
UPDATE recipients AS r
SET state = 'bounced', code = ?4, reason = ?5, next_attempt = NULL, lease_until = NULL,
    updated = ?1
WHERE """
    + _QUEUE_FILTER
)

#: What ``delete_queued`` records (postsuper -d): permanent, no DSN.
DELETED_CODE: Final = "5.0.0"
DELETED_REASON: Final = "deleted from the queue by the operator"

_DEFAULT_EVENT: Final = {"sent": "sent", "queued": "deferred", "bounced": "bounced"}


# time -----------------------------------------------------------------------------------------


def _ts(value: datetime) -> str:
    """An aware datetime as the schema's fixed-width UTC text."""
    if value.tzinfo is not UTC:  # UTC already: the usual case, and the cheap one
        if value.tzinfo is None or value.utcoffset() is None:
            raise InternalError("the store takes timezone-aware datetimes")
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _dt_or_none(text: str | None) -> datetime | None:
    return None if text is None else _dt(text)


# errors ---------------------------------------------------------------------------------------


def _translate(exc: BaseException) -> SynqError:
    """The relay error for a driver exception. The SQL and the driver's text stay out of it."""
    if isinstance(exc, SynqError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        return Conflict("the change conflicts with what the store holds")
    if isinstance(exc, _USAGE_ERRORS):
        # Our statement or its parameters were wrong: a bug here, not the caller's fault.
        return InternalError("the store failed unexpectedly")
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None) or ""
        for code, words in _UNAVAILABLE.items():
            if name == code or name.startswith(code + "_"):
                return StoreUnavailable(f"the relay's database is unavailable: {words}")
        return StoreUnavailable("the relay's database is unavailable")
    return InternalError("the store failed unexpectedly")


def _is_group_fatal(exc: BaseException) -> bool:
    """Errors after which the transaction itself cannot be trusted.

    SQLite may roll back the whole transaction on its own after SQLITE_FULL, SQLITE_IOERR,
    SQLITE_BUSY or SQLITE_NOMEM (https://www.sqlite.org/lang_transaction.html, "Response To
    Errors Within A Transaction"); going on with the next operation could then commit half a
    group. Constraint and usage errors only abort the one statement.
    """
    return isinstance(exc, sqlite3.Error) and not isinstance(
        exc, (sqlite3.IntegrityError, *_USAGE_ERRORS)
    )


class _GroupFailed(Exception):
    """Raised inside the writer when the whole group must be rolled back."""

    def __init__(self, error: SynqError) -> None:
        super().__init__(error.message)
        self.error = error


# migrations -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def _split_statements(sql: str) -> tuple[str, ...]:
    """One migration file as separate statements.

    ``executescript`` would do it in one call but commits any open transaction first, so a
    migration could not be applied atomically with its ``schema_migrations`` row.
    ``sqlite3.complete_statement`` knows SQL's quoting, comments and trigger bodies.
    """
    statements: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    rest = [ln for ln in buffer.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    if rest:
        raise InternalError("a migration file ends inside a statement")
    return tuple(statements)


@functools.cache
def _migrations() -> tuple[_Migration, ...]:
    """The packaged migrations (``migrations/sqlite/NNNN_name.sql``), in order."""
    folder = resources.files("relay.store").joinpath("migrations").joinpath("sqlite")
    found: list[_Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match is None:
            continue
        found.append(
            _Migration(
                int(match.group(1)),
                match.group(2),
                _split_statements(entry.read_text(encoding="utf-8")),
            )
        )
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise InternalError("the packaged SQLite migrations are not numbered 0001, 0002, …")
    return tuple(found)


# write operations -----------------------------------------------------------------------------

#: A write operation: runs its statements on the writer connection inside the group's
#: transaction and returns its result and the notifier channels to wake after COMMIT.
_Run = Callable[[aiosqlite.Connection], Awaitable[tuple[Any, Collection[str]]]]


@dataclass(slots=True)
class _Op:
    run: _Run
    future: asyncio.Future[Any]
    #: For accepts: the (item, accepted-at) pairs, so that consecutive accepts of one group can
    #: be merged into one batch (see ``_commit_group``).
    accepts: tuple[tuple[NewEnvelope, str], ...] | None = None
    #: False for leases: a group of such operations commits without fsync (``_commit_group``).
    durable: bool = True


def _json_param(rows: list[list[Any]]) -> str:
    """A batch as one JSON text for ``json_each`` (one statement per batch, not per row).
    Text, not bytes: SQLite 3.45+ would read a BLOB argument as its binary JSONB format."""
    return orjson.dumps(rows).decode("utf-8")


def _domain_of(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidAddress(f"not an address: {address[:80]!r} (expected local@domain)")
    return domain


@dataclass(frozen=True, slots=True)
class _Recipient:
    key: str  # the recipients row's key: an address, or a bare agent name (see SQLiteStore)
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


async def _accept_rows(
    conn: aiosqlite.Connection,
    batch: Sequence[tuple[NewEnvelope, str]],
    local_domain: str | None,
) -> tuple[list[AcceptResult], set[str]]:
    """Take custody of ``(item, accepted-at)`` pairs on ``conn``, inside the caller's
    transaction: four statements however many envelopes and recipients there are.

    The outcome is the one a sequence of single accepts would have: a row is credited to the
    first item that named it, so an envelope repeated in the batch reports ``duplicate``.
    """
    envelope_json = [
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
            ts,
        ]
        for it, ts in batch
    ]
    new_envelopes = {
        (row[0], row[1])
        for row in await conn.execute_fetchall(_INSERT_ENVELOPES, (_json_param(envelope_json),))
    }

    per_item = [_recipients_of(it, local_domain) for it, _ts_ in batch]
    refusals = [{addr: (code, reason) for addr, code, reason in it.refused} for it, _ts_ in batch]
    recipient_json: list[list[Any]] = []
    for (it, ts), rows, refused in zip(batch, per_item, refusals, strict=True):
        for r in rows:
            if r.klass == "local":
                row = [r.key, None, "delivered", 0, None, None, None]
            elif r.klass == "remote":
                row = [r.key, r.domain, "queued", 0, None, None, ts]
            else:
                code, reason = refused[r.key]
                row = [r.key, r.domain, "bounced", 1, code, reason, None]
            recipient_json.append([it.origin, it.id, *row, ts])
    # (origin, id, recipient, refused) → envelope pk. A recipient refused by one item and
    # taken by a later one in the same batch changes twice (insert, then upgrade): once per
    # refusedness, so each of the two items gets its own change.
    changed: dict[tuple[str, str, str, int], int] = {}
    if recipient_json:
        for pk, origin, id_, recipient, refused_flag in await conn.execute_fetchall(
            _INSERT_RECIPIENTS, (_json_param(recipient_json),)
        ):
            changed[(origin, id_, recipient, refused_flag)] = pk

    results: list[AcceptResult] = []
    inbox_rows: list[tuple[str, int, str]] = []
    event_rows: list[tuple[int, str, str, str, str | None, str | None, str]] = []
    channels: set[str] = set()
    for (it, ts), rows, refused in zip(batch, per_item, refusals, strict=True):
        key = (it.origin, it.id)
        fresh = key in new_envelopes
        new_envelopes.discard(key)
        for r in rows:
            pk = changed.pop((it.origin, it.id, r.key, int(r.klass == "refused")), None)
            if pk is None:
                continue
            fresh = True
            if r.agent is not None:
                inbox_rows.append((r.agent, pk, ts))
                event_rows.append((pk, ts, r.key, "delivered", None, None, it.via))
                channels.add(inbox_channel(r.agent))
            elif r.klass == "remote":
                event_rows.append((pk, ts, r.key, "accepted", None, None, it.via))
                channels.add(QUEUE_CHANNEL)
            else:
                code, reason = refused[r.key]
                event_rows.append((pk, ts, r.key, "bounced", code, reason, it.via))
        results.append(AcceptResult(origin=it.origin, id=it.id, duplicate=not fresh))

    if inbox_rows:
        try:
            await conn.executemany(_INSERT_INBOX, inbox_rows)
        except sqlite3.IntegrityError as exc:
            # The only foreign key an inbox row can miss is its agent: removed after the
            # caller's existence check. Say which one.
            names = sorted({row[0] for row in inbox_rows})
            found = await conn.execute_fetchall(_SELECT_EXISTING_AGENTS, (json.dumps(names),))
            missing = sorted(set(names) - {row[0] for row in found})
            if missing:
                raise UnknownRecipient(f"no local agent named {', '.join(missing)}") from exc
            raise
        # Adapter-backed agents (A2A, MCP) get their new rows handed over by the dispatcher.
        cursor = await conn.executemany(_INSERT_DELIVERY, inbox_rows)
        if cursor.rowcount > 0:
            channels.add(DELIVERY_CHANNEL)
    if event_rows:
        await conn.executemany(_INSERT_EVENT, event_rows)
    return results, channels


def _agent(row: Any) -> AgentRecord:
    return AgentRecord(name=row[0], kind=row[1], endpoint=row[2], created=_dt(row[3]))


def _a2a_task(row: Any) -> A2ATask:
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


def _queue_entry(row: Any) -> QueueEntry:
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


# the store ------------------------------------------------------------------------------------


class _PollingNotifier(Notifier):
    """In-process wake-ups, plus :meth:`wake_all` for a commit made by another process (the
    ``synq`` CLI): SQLite can tell that another connection committed, not what it changed, so
    every listener re-reads. A spurious wake-up costs a listener one read."""

    def wake_all(self) -> None:
        for channel in list(self._listeners):
            self._deliver(channel)


class SQLiteStore(Store):
    """The embedded store: one SQLite file, one writer task, one reader connection.

    ``path`` is a file path (``:memory:`` is refused: durability is the point).
    ``domain``: the relay's own domain. With it, local recipient rows are keyed and reported by
    address (``bob@acme.test``), like remote and refused ones, so a retry that takes a local
    recipient the first try refused upgrades that row; without it, by bare agent name.
    ``synchronous``: ``FULL`` (default) or ``NORMAL``/``EXTRA``, see :data:`_SYNCHRONOUS`.
    ``busy_timeout``: seconds to wait for another process's lock, see :data:`DEFAULT_BUSY_TIMEOUT`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        domain: str | None = None,
        synchronous: str = "FULL",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        super().__init__()
        self._notifier = _PollingNotifier()
        self.notifier = self._notifier
        if domain is None:
            self.domain: str | None = None
        else:
            try:
                self.domain = normalize_domain(domain)
            except SynqError:
                raise ConfigError(f"the store's domain {domain[:80]!r} is not a domain") from None
        text = os.fspath(path)
        if not text or text == ":memory:" or text.startswith("file:"):
            raise ConfigError(
                "the SQLite store needs a file path (an in-memory database would lose every "
                "message on restart)"
            )
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS:
            raise ConfigError(
                f"SQLite synchronous must be one of {', '.join(sorted(_SYNCHRONOUS))}, "
                f"got {synchronous!r}"
            )
        if not 0 <= busy_timeout <= 600:
            raise ConfigError("SQLite busy_timeout must be between 0 and 600 seconds")
        self.path = Path(text)
        self.synchronous = mode
        self._busy_ms = int(busy_timeout * 1000)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Op | None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._data_version: int | None = None
        self._closed = False
        self._synced = True  # the writer's PRAGMA synchronous is self.synchronous, not NORMAL

    # lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None or self._closed:
            raise InternalError("a store is opened once")
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise ConfigError(
                f"SQLite {sqlite3.sqlite_version} is too old; the relay needs "
                f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or later"
            )
        if not self.path.parent.is_dir():
            raise ConfigError(
                f"cannot open the store at {self.path}: directory {self.path.parent} does not exist"
            )
        try:
            self._writer = await aiosqlite.connect(self.path, isolation_level=None)
            await self._configure_writer(self._writer)
            await self._migrate(self._writer)
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await self._configure_reader(self._reader)
            self._data_version = await self._read_data_version(self._writer)
        except BaseException as exc:
            await self._close_connections()
            if isinstance(exc, sqlite3.Error):
                error = _translate(exc)
                raise type(error)(f"cannot open the store at {self.path}: {error.message}") from exc
            raise
        self._queue = asyncio.Queue()
        self._writer_task = asyncio.create_task(self._write_loop(), name="synq-sqlite-writer")

    async def _configure_writer(self, conn: aiosqlite.Connection) -> None:
        # First, so that even switching the journal mode waits for another process's lock.
        await conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        # WAL: readers never block the writer nor the writer them, and a commit appends to one
        # file (https://www.sqlite.org/wal.html). The mode is stored in the file; setting it
        # again is a no-op. It cannot change inside a transaction, so it comes first.
        rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
        if not rows or str(rows[0][0]).lower() != "wal":
            raise ConfigError(
                f"cannot put {self.path} in WAL mode (is it on a network file system?)"
            )
        # Durability of each COMMIT; see _SYNCHRONOUS. Per connection, not stored in the file.
        await conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        # Foreign keys are off by default and per connection
        # (https://www.sqlite.org/foreignkeys.html §2).
        await conn.execute("PRAGMA foreign_keys = ON")

    async def _configure_reader(self, conn: aiosqlite.Connection) -> None:
        # query_only (https://www.sqlite.org/pragma.html#pragma_query_only): a write slipped
        # onto the reader by mistake fails instead of racing the writer for the lock.
        await conn.execute("PRAGMA query_only = ON")
        await conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        """Apply pending migrations in one IMMEDIATE transaction: two processes opening the
        same file at once serialise here, and a failing migration leaves no trace."""
        migrations = _migrations()
        await conn.execute("BEGIN IMMEDIATE")
        try:
            await conn.execute(_CREATE_MIGRATIONS)
            applied = {row[0] for row in await conn.execute_fetchall(_SELECT_MIGRATIONS)}
            self._check_not_newer(applied, len(migrations))
            for migration in migrations:
                if migration.version in applied:
                    continue
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(_INSERT_MIGRATION, (migration.version, migration.name))
                _log.info("applied SQLite migration %04d_%s", migration.version, migration.name)
            await conn.execute("COMMIT")
        except BaseException:
            await self._rollback_quietly(conn)
            raise

    @staticmethod
    async def _read_data_version(conn: aiosqlite.Connection) -> int:
        rows = list(await conn.execute_fetchall("PRAGMA data_version"))
        return int(rows[0][0])

    async def _poll_other_processes(self) -> None:
        """Wake every listener if another process committed since the last look.

        ``PRAGMA data_version`` on a connection changes when *another* connection commits,
        never for its own commits (https://www.sqlite.org/pragma.html#pragma_data_version). On
        the writer connection, whose own commits were already announced, it therefore means
        exactly "someone else wrote". Runs in the writer task, between transactions.
        """
        assert self._writer is not None
        try:
            version = await self._read_data_version(self._writer)
        except sqlite3.Error:
            _log.warning("cannot read the SQLite data version", exc_info=True)
            return
        if version != self._data_version:
            self._data_version = version
            self._notifier.wake_all()

    def _check_not_newer(self, applied: set[int], newest: int) -> None:
        if applied and max(applied) > newest:
            raise ConfigError(
                f"{self.path} has schema version {max(applied)}, newer than this relay "
                f"knows ({newest}); run a newer synq"
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        task = self._writer_task
        if task is not None and self._queue is not None:
            # Operations queued before close still run; the sentinel comes after them.
            self._queue.put_nowait(None)
            await asyncio.wait([task])
        await self._close_connections()

    async def _close_connections(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is None:
                continue
            try:
                await conn.close()
            except (sqlite3.Error, ValueError):
                _log.warning("closing an SQLite connection failed", exc_info=True)
        self._reader = None
        self._writer = None

    async def ping(self) -> None:
        if self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable("the store is not running")
        await self._read_one("SELECT 1", ())

    # reads -------------------------------------------------------------------------------------

    def _reader_conn(self) -> aiosqlite.Connection:
        if self._reader is None or self._closed:
            raise StoreUnavailable("the store is closed")
        return self._reader

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """One statement on the reader: its own read transaction, nothing held afterwards."""
        conn = self._reader_conn()
        try:
            return list(await conn.execute_fetchall(sql, params))
        except (sqlite3.Error, ValueError) as exc:
            raise self._read_error(exc) from exc

    async def _read_one(self, sql: str, params: Sequence[Any]) -> Any:
        rows = await self._read(sql, params)
        return rows[0] if rows else None

    def _read_error(self, exc: BaseException) -> SynqError:
        if isinstance(exc, ValueError):  # aiosqlite: the connection closed under us
            return StoreUnavailable("the store is closed")
        return _translate(exc)

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
        rows = await self._read(_SELECT_EXISTING_AGENTS, (json.dumps(wanted),))
        return {row[0] for row in rows}

    async def message_status(self, origin: str, id: str) -> MessageStatus | None:
        # One statement (a UNION ALL of the envelope, its recipients and its events), so the
        # three parts come from one snapshot: never a 'sent' state without its 'sent' event.
        rows = await self._read(_MESSAGE_STATUS, (origin, id))
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
                        attempts=row[5],
                        next_attempt=_dt_or_none(row[6]),
                        updated=_dt(row[7]),
                    )
                )
            else:
                events.append(
                    DeliveryEvent(
                        at=_dt(row[6]),
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
            created=_dt(head[4]),
            expires=_dt(head[5]),
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
        if limit <= 0:  # SQLite reads a negative LIMIT as "no limit"
            return []
        if thread is None:
            sql = _INBOX_ALL if include_acked else _INBOX_UNACKED
            params: tuple[Any, ...] = (agent, after_seq or 0, limit)
        else:
            sql = _INBOX_ALL_THREAD if include_acked else _INBOX_UNACKED_THREAD
            params = (agent, after_seq or 0, limit, thread)
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
        accepts: tuple[tuple[NewEnvelope, str], ...] | None = None,
        *,
        durable: bool = True,
    ) -> Any:
        """Queue one operation for the writer and wait for its own result or exception."""
        if self._closed or self._queue is None:
            raise StoreUnavailable("the store is closed")
        if self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable("the store is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Op(run, future, accepts, durable))
        # If the caller is cancelled the future is cancelled too, and the writer skips the
        # operation if it has not started it yet (or drops its result if it has).
        return await future

    async def create_agent(
        self, name: str, kind: AgentKind, token_hash: str, endpoint: str | None, now: datetime
    ) -> AgentRecord:
        created = _ts(now)

        async def run(conn: aiosqlite.Connection) -> tuple[AgentRecord, Collection[str]]:
            try:
                cursor = await conn.execute(
                    _INSERT_AGENT, (name, kind, endpoint, token_hash, created)
                )
            except sqlite3.IntegrityError as exc:
                # The name is free (ON CONFLICT (name) did not fire), so the token hash is not.
                raise Conflict("that token is already registered to another agent") from exc
            if cursor.rowcount == 0:
                raise Conflict(f"an agent named {name!r} already exists")
            return AgentRecord(name=name, kind=kind, endpoint=endpoint, created=_dt(created)), ()

        record: AgentRecord = await self._write(run)
        return record

    async def remove_agent(self, name: str) -> bool:
        async def run(conn: aiosqlite.Connection) -> tuple[bool, Collection[str]]:
            # The inbox rows go with it: ON DELETE CASCADE.
            cursor = await conn.execute(_DELETE_AGENT, (name,))
            return cursor.rowcount > 0, ()

        removed: bool = await self._write(run)
        return removed

    async def set_agent_token(self, name: str, token_hash: str) -> bool:
        async def run(conn: aiosqlite.Connection) -> tuple[bool, Collection[str]]:
            try:
                cursor = await conn.execute(_SET_AGENT_HASH, (token_hash, name))
            except sqlite3.IntegrityError as exc:
                raise Conflict("that token is already registered to another agent") from exc
            return cursor.rowcount > 0, ()

        changed: bool = await self._write(run)
        return changed

    async def accept_many(self, items: Sequence[NewEnvelope], now: datetime) -> list[AcceptResult]:
        if not items:
            return []
        at = _ts(now)
        batch = tuple((item, at) for item in items)

        async def run(conn: aiosqlite.Connection) -> tuple[list[AcceptResult], Collection[str]]:
            return await _accept_rows(conn, batch, self.domain)

        results: list[AcceptResult] = await self._write(run, accepts=batch)
        return results

    async def ack(self, agent: str, id: str, now: datetime) -> bool:
        at = _ts(now)

        async def run(conn: aiosqlite.Connection) -> tuple[bool, Collection[str]]:
            # coalesce keeps the first ack time, and the row still counts: acking twice is True.
            cursor = await conn.execute(_ACK, (at, agent, id))
            return cursor.rowcount > 0, ()

        acked: bool = await self._write(run)
        return acked

    async def lease_due(
        self, now: datetime, *, lease_until: datetime, limit: int, domain: str | None = None
    ) -> list[QueueEntry]:
        if limit <= 0:
            return []
        at, until = _ts(now), _ts(lease_until)

        async def run(conn: aiosqlite.Connection) -> tuple[list[QueueEntry], Collection[str]]:
            # Select and mark in the writer's transaction: two lease_due calls in one group run
            # one after the other, so the second never sees the first's rows as free.
            if domain is None:
                rows = list(await conn.execute_fetchall(_LEASE_SELECT, (at, limit)))
            else:
                rows = list(await conn.execute_fetchall(_LEASE_SELECT_DOMAIN, (at, limit, domain)))
            if rows:
                await conn.executemany(_LEASE_UPDATE, [(until, row[0]) for row in rows])
            return [_queue_entry(row) for row in rows], ()

        entries: list[QueueEntry] = await self._write(run, durable=False)
        return entries

    async def lease_deliveries(
        self, now: datetime, *, lease_until: datetime, limit: int
    ) -> list[LocalDelivery]:
        if limit <= 0:
            return []
        at, until = _ts(now), _ts(lease_until)

        async def run(conn: aiosqlite.Connection) -> tuple[list[LocalDelivery], Collection[str]]:
            rows = list(await conn.execute_fetchall(_DELIVERY_SELECT, (at, limit)))
            if rows:
                await conn.executemany(_DELIVERY_LEASE, [(until, row[1]) for row in rows])
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

        leased: list[LocalDelivery] = await self._write(run, durable=False)
        return leased

    async def settle_deliveries(
        self, outcomes: Sequence[DeliveryOutcome], new: Sequence[NewEnvelope], now: datetime
    ) -> None:
        at = _ts(now)
        new = list(new)
        if not outcomes and not new:
            return
        for o in outcomes:
            if o.state == "queued" and o.next_attempt is None:
                raise InternalError("a deferred delivery needs next_attempt")

        async def run(conn: aiosqlite.Connection) -> tuple[None, Collection[str]]:
            for o in outcomes:
                address = f"{o.agent}@{self.domain}"
                event = {"delivered": "delivered", "queued": "deferred", "bounced": "bounced"}[
                    o.state
                ]
                await conn.execute(
                    _DELIVERY_EVENT, (o.seq, at, address, event, o.code, o.reason, o.hop)
                )
                if o.state == "queued":
                    assert o.next_attempt is not None
                    await conn.execute(
                        _DELIVERY_DEFER, (o.seq, _ts(o.next_attempt), o.code, o.reason)
                    )
                    continue
                await conn.execute(_DELIVERY_DONE, (o.seq,))
                await conn.execute(_DELIVERY_ACK, (o.seq, at))
                if o.state == "bounced":
                    await conn.execute(_DELIVERY_BOUNCE, (o.seq, at, o.code, o.reason, address))
            channels: Collection[str] = ()
            if new:
                _results, channels = await _accept_rows(conn, [(i, at) for i in new], self.domain)
            return None, channels

        await self._write(run)

    async def next_delivery_due(self) -> datetime | None:
        row = await self._read_one(_NEXT_DELIVERY_DUE, ())
        return _dt_or_none(row[0] if row else None)

    async def release_leases(self) -> int:
        async def run(conn: aiosqlite.Connection) -> tuple[int, Collection[str]]:
            cursor = await conn.execute(
                "UPDATE recipients SET lease_until = NULL "
                "WHERE state = 'queued' AND lease_until IS NOT NULL"
            )
            released = cursor.rowcount
            cursor = await conn.execute(
                "UPDATE deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL"
            )
            return released + cursor.rowcount, (QUEUE_CHANNEL, DELIVERY_CHANNEL)

        released: int = await self._write(run)
        return released

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
            # Every outcome is one delivery attempt, except a row that expired in the queue
            # without being tried, or one held back because its destination is known down.
            tried = 0 if event in _NOT_ATTEMPTS else 1
            event_rows.append((at, event, o.code, o.reason, o.hop, o.origin, o.id, o.recipient))
            update_rows.append(
                (o.state, o.code, o.reason, next_attempt, tried, at, o.origin, o.id, o.recipient)
            )
        new = list(new)
        if not outcomes and not new:
            return

        async def run(conn: aiosqlite.Connection) -> tuple[None, Collection[str]]:
            if event_rows:
                await conn.executemany(_SETTLE_EVENT, event_rows)
                await conn.executemany(_SETTLE_UPDATE, update_rows)
            channels: Collection[str] = ()
            if new:
                batch = [(item, at) for item in new]
                _results, channels = await _accept_rows(conn, batch, self.domain)
            return None, channels

        await self._write(run)

    async def flush(self, now: datetime, domain: str | None = None, id: str | None = None) -> int:
        at = _ts(now)

        async def run(conn: aiosqlite.Connection) -> tuple[int, Collection[str]]:
            await conn.execute(_FLUSH_EVENTS, (at, domain, id))
            cursor = await conn.execute(_FLUSH_UPDATE, (at, domain, id))
            count = cursor.rowcount
            return count, (QUEUE_CHANNEL,) if count else ()

        count: int = await self._write(run)
        return count

    async def delete_queued(
        self, now: datetime, id: str | None = None, domain: str | None = None
    ) -> int:
        at = _ts(now)
        params = (at, domain, id, DELETED_CODE, DELETED_REASON)

        async def run(conn: aiosqlite.Connection) -> tuple[int, Collection[str]]:
            await conn.execute(_DELETE_EVENTS, params)
            cursor = await conn.execute(_DELETE_UPDATE, params)
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

        async def run(conn: aiosqlite.Connection) -> tuple[None, Collection[str]]:
            try:
                await conn.execute(_A2A_INSERT_TASK, row)
                await conn.execute(_A2A_LINK, (envelope, task.id))
            except sqlite3.IntegrityError as exc:
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
        after = _ts(status_after) if status_after is not None else None
        head = (owner, address, context, state, after)
        cursor = (_ts(before[0]), before[1]) if before is not None else (None, None)
        rows = await self._read(_A2A_LIST_TASKS, (*head, *cursor, max(limit, 0)))
        total = await self._read_one(_A2A_COUNT_TASKS, head)
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
            task.id,
            expected_version,
            task.state,
            task.remote_id,
            task.snapshot,
            task.push,
            _ts(task.status_at),
            _ts(task.updated),
            version,
        )
        # The source is recorded with the first event of the change only: one reply, one
        # entry in the (task, source) index.
        event_rows = [
            (task.id, expected_version + n, source if n == 1 else None, event)
            for n, event in enumerate(events, 1)
        ]

        async def run(conn: aiosqlite.Connection) -> tuple[A2AUpdate, Collection[str]]:
            if source is not None and await conn.execute_fetchall(
                _A2A_SOURCE_SEEN, (task.id, source)
            ):
                return "duplicate", ()
            cursor = await conn.execute(_A2A_UPDATE_TASK, params)
            if cursor.rowcount == 0:
                return "conflict", ()
            if event_rows:
                await conn.executemany(_A2A_INSERT_EVENT, event_rows)
            if link is not None:
                try:
                    await conn.execute(_A2A_LINK, (link, task.id))
                except sqlite3.IntegrityError as exc:
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
        rows = await self._read(_A2A_TASKS_FOR_ENVELOPES, (json.dumps(wanted),))
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
        async def run(conn: aiosqlite.Connection) -> tuple[None, Collection[str]]:
            await conn.execute(_A2A_SET_FEED_CURSOR, (seq,))
            return None, ()

        await self._write(run)

    # the writer --------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + OTHER_PROCESS_POLL_INTERVAL
        pending: list[_Op] = []
        try:
            while True:
                if loop.time() >= next_poll:
                    await self._poll_other_processes()
                    next_poll = loop.time() + OTHER_PROCESS_POLL_INTERVAL
                try:
                    async with asyncio.timeout_at(next_poll):
                        first = await queue.get()
                except TimeoutError:
                    continue
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

    async def _commit_group(self, group: list[_Op]) -> None:
        """Run ``group`` in one transaction; settle every future; notify after COMMIT."""
        conn = self._writer
        assert conn is not None
        ops = [op for op in group if not op.future.done()]  # callers that gave up need no write
        if not ops:
            return
        isolated = len(ops) > 1
        done: list[tuple[_Op, Any]] = []
        failed: list[tuple[_Op, SynqError]] = []
        channels: set[str] = set()
        # A group of leases only commits without fsync (synchronous NORMAL): a lease lost to a
        # power cut is harmless, as every lease is released at the next start (release_leases;
        # one process owns an SQLite store), and the next durable COMMIT syncs the WAL with
        # these frames in it (https://www.sqlite.org/pragma.html#pragma_synchronous).
        durable = any(op.durable for op in ops)
        try:
            if durable != self._synced:
                mode = self.synchronous if durable else "NORMAL"
                await self._exec(conn, f"PRAGMA synchronous = {mode}")
                self._synced = durable
            await self._exec(conn, "BEGIN IMMEDIATE")
            for run in _runs(ops):
                if len(run) > 1 and await self._merged_accepts(conn, run, done, channels):
                    continue
                for op in run:
                    await self._one(conn, op, isolated, done, failed, channels)
            await self._exec(conn, "COMMIT" if done else "ROLLBACK")
        except _GroupFailed as exc:
            _log.error("store group of %d operations failed: %s", len(ops), exc.error.message)
            await self._rollback_quietly(conn)
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

    async def _one(
        self,
        conn: aiosqlite.Connection,
        op: _Op,
        isolated: bool,
        done: list[tuple[_Op, Any]],
        failed: list[tuple[_Op, SynqError]],
        channels: set[str],
    ) -> None:
        """One operation under its own savepoint (none needed when it is alone in the group:
        the transaction is its savepoint)."""
        if isolated:
            await self._exec(conn, "SAVEPOINT op")
        try:
            result, op_channels = await op.run(conn)
        except Exception as exc:
            if _is_group_fatal(exc):
                raise _GroupFailed(_translate(exc)) from exc
            if not isinstance(exc, SynqError | sqlite3.IntegrityError):
                _log.exception("store operation failed")
            if isolated:
                await self._exec(conn, "ROLLBACK TO op")
                await self._exec(conn, "RELEASE op")
            failed.append((op, _translate(exc)))
            return
        if isolated:
            await self._exec(conn, "RELEASE op")
        done.append((op, result))
        channels.update(op_channels)

    async def _merged_accepts(
        self,
        conn: aiosqlite.Connection,
        run: list[_Op],
        done: list[tuple[_Op, Any]],
        channels: set[str],
    ) -> bool:
        """Consecutive accepts as one batch under one savepoint: four statements instead of
        six per accept. False (and nothing written) if the batch failed; the caller then runs
        them one by one, so only the failing accept fails."""
        batch = [pair for op in run for pair in op.accepts or ()]
        await self._exec(conn, "SAVEPOINT batch")
        try:
            results, batch_channels = await _accept_rows(conn, batch, self.domain)
        except Exception as exc:
            if _is_group_fatal(exc):
                raise _GroupFailed(_translate(exc)) from exc
            await self._exec(conn, "ROLLBACK TO batch")
            await self._exec(conn, "RELEASE batch")
            return False
        await self._exec(conn, "RELEASE batch")
        start = 0
        for op in run:
            count = len(op.accepts or ())
            done.append((op, results[start : start + count]))
            start += count
        channels.update(batch_channels)
        return True

    @staticmethod
    async def _exec(conn: aiosqlite.Connection, sql: str) -> None:
        try:
            await conn.execute(sql)
        except sqlite3.Error as exc:
            raise _GroupFailed(_translate(exc)) from exc

    @staticmethod
    async def _rollback_quietly(conn: aiosqlite.Connection) -> None:
        # Fails with "no transaction is active" when SQLite already rolled back on its own.
        with contextlib.suppress(sqlite3.Error):
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


def _copy_error(error: SynqError) -> SynqError:
    """A fresh exception per caller: one exception object raised in many tasks would share
    (and keep growing) one traceback."""
    return type(error)(error.message, **error.details)
