"""The SQLite dialect of :class:`relay.store.base.Store`, through aiosqlite.

The store's methods, its group-commit writer and accept's plan are shared with PostgreSQL
(relay/store/sql/); this module holds SQLite's statements, its connections, the translation of
``sqlite3`` errors, and the wake-ups for other processes' commits.

Connections
    Three connections to one database file in WAL mode. The *writer* is used by one task only,
    the group-commit writer (relay/store/sql/writer.py), so no other coroutine's statement can
    ever land inside its transaction, which it opens with ``BEGIN IMMEDIATE``. The *reader* and
    the *quick* reader are opened with ``query_only``; WAL lets them read while the writer
    writes (https://www.sqlite.org/wal.html §2.2). Every read method is **one** SQL statement in
    autocommit mode, so reads need no lock: each statement is its own read transaction over the
    latest committed state, and no read transaction is ever left open between two awaits.

Round trips
    The reader is an aiosqlite connection: each read is one round trip to its thread (≈40 µs
    idle, a turn of the event loop under load), so a long read never holds up the event loop.
    The small reads of a call's hot path (``SqlStore._read_small``: key and index look-ups, short
    pages) run inline on the quick reader instead. The writer runs a small group's statements
    inline on the event loop's thread and sends only what may wait to its own thread: the COMMIT
    (the fsync), a BEGIN that must wait for another process's lock, checkpoints
    (:class:`_Writer`); such a group is one round trip however many statements it runs. A large
    group (:data:`INLINE_GROUP_WEIGHT`: load) runs its statements on that thread too, where
    SQLite works without the GIL while the loop goes on. Operations still touch
    many rows per statement: ``executemany``, or a JSON array expanded by ``json_each`` when the
    statement must also say which rows it inserted (``RETURNING``,
    https://www.sqlite.org/lang_returning.html); consecutive accepts in a group (concurrent API
    submissions) run as one batch. Measured here: 1,000 concurrent ``accept`` calls commit in 4
    transactions and about 0.13 s.

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
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Final, TypeVar

import aiosqlite
import orjson

from relay.core.catalog import VISIBILITIES
from relay.core.errors import (
    ConfigError,
    Conflict,
    InternalError,
    StoreUnavailable,
    SynqError,
)
from relay.store.sql import MAX_GROUP_OPS, Op, SqlStore, Statements, Tx, portable, rows
from relay.store.sql.writer import GroupFailed

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "MAX_GROUP_OPS",
    "MIN_MAX_SIZE",
    "MIN_SQLITE_VERSION",
    "OTHER_PROCESS_POLL_INTERVAL",
    "UNCAPPED_PAGES",
    "WAL_SIZE_LIMIT",
    "SQLiteStore",
]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: ``->>`` (3.38) and ``STRICT`` tables (3.37) are used by the schema and the queries.
MIN_SQLITE_VERSION: Final = (3, 38, 0)

#: Seconds a connection waits for another process's lock before failing with SQLITE_BUSY
#: (https://www.sqlite.org/pragma.html#pragma_busy_timeout). Only another process can hold the
#: write lock (this process has one writer): ``synq agent add`` while ``synq serve`` runs.
DEFAULT_BUSY_TIMEOUT: Final = 5.0

#: Turns at SQLite's write lock (SQLiteStore._begin). SQLite queues nobody for its lock: another
#: process (``synq queue flush`` beside ``synq serve``) takes it only between two of the relay's
#: groups, and a relay committing group after group — a backlog of a million rows released to a
#: partner that came back — left it free for well under a millisecond at a time: the operator's
#: command failed after its 5 s. After WRITER_TURN seconds of groups back to back (gaps shorter
#: than WRITER_GAP), the writer leaves the lock free for WRITER_GAP seconds: at most 2 % of its
#: time, and only under a load that never lets it rest.
WRITER_TURN: Final = 0.25
WRITER_GAP: Final = 0.005

#: Seconds between two tries of a write that finds another process's lock (``_waiting``): the
#: first pause, doubled up to the last. A thread that waits for the lock wakes at most 1,000
#: times a second, for at most the busy timeout.
BUSY_RETRY_FIRST: Final = 0.000_25
BUSY_RETRY_MAX: Final = 0.001

#: Seconds between two looks for commits made by another process (``synq send``, ``synq agent
#: add`` beside ``synq serve``), which then wake every listener. SQLite has no cross-process
#: notification, so this bounds how late a long poll learns of such a commit; each look is one
#: ``PRAGMA data_version``, nothing when idle otherwise. Postfix's pickup polls its maildrop
#: for the same reason (its default is 60 s, but it is also poked through a FIFO).
OTHER_PROCESS_POLL_INTERVAL: Final = 0.5

#: ``PRAGMA max_page_count`` without a cap: SQLite's own largest (https://www.sqlite.org/
#: limits.html, "Maximum Number Of Pages In A Database File").
UNCAPPED_PAGES: Final = 4294967294

#: Bytes of WAL kept after a checkpoint (``PRAGMA journal_size_limit``): what a long-running
#: relay's WAL settles back to after a burst. The default checkpoint, every 1,000 pages, keeps
#: it about 4 MiB under steady traffic.
WAL_SIZE_LIMIT: Final = 16 * 1024 * 1024

#: The smallest ``max_size`` taken: the schema alone fills some 40 pages of 4 KiB.
MIN_MAX_SIZE: Final = 256 * 1024

#: Groups committed inline in a row at most (SQLiteStore._begin): each appends to the WAL with
#: the automatic checkpoint off, so this bounds what one run of them can add to it.
MAX_INLINE_COMMITS: Final = 64

#: The largest group whose statements run inline on the event loop (SQLiteStore._begin),
#: counting an operation as one, an accept as its envelopes: what an idle relay's call writes
#: (one to a few operations). A larger group is load: its statements run on the writer's
#: thread, where SQLite works without the GIL while the loop parses the next requests.
INLINE_GROUP_WEIGHT: Final = 16

#: SQLite's default ``wal_autocheckpoint``, in pages
#: (https://www.sqlite.org/pragma.html#pragma_wal_autocheckpoint): what durable commits use.
_AUTO_CHECKPOINT_PAGES: Final = 1000

#: ``PRAGMA auto_vacuum`` value of INCREMENTAL.
_AUTO_VACUUM_INCREMENTAL: Final = 2

#: ``PRAGMA synchronous`` values we accept (https://www.sqlite.org/pragma.html#pragma_synchronous).
#: In WAL mode FULL syncs the WAL on every commit, so a commit survives power loss; NORMAL
#: survives a process crash but may lose the last commits on power loss (benchmarks use it).
#: OFF is refused: the relay acknowledges only what is durable (base.py, Postfix's rule).
_SYNCHRONOUS: Final = frozenset({"FULL", "EXTRA", "NORMAL"})

#: SQLite primary result codes (https://www.sqlite.org/rescode.html) that mean "the store cannot
#: work right now", in words an operator can act on.
_UNAVAILABLE: Final = {
    "SQLITE_BUSY": "the database is locked by another process",
    "SQLITE_LOCKED": "the database is locked",
    "SQLITE_FULL": "the store is full (its [store] max_size, or the disk)",
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
# Parameters as relay/store/sql/statements.py names them: ``?``/``?N`` positional, ``:name``
# from a mapping, and batches as one JSON text (``json_each``) or ``executemany``.

_INBOX_PAGE = rows.INBOX_SELECT + "WHERE i.agent = :agent AND i.seq > :after "
# A thread's page starts from the thread's envelopes (envelopes_thread), then finds each in the
# agent's inbox: started from the inbox, SQLite walks every row of the agent's inbox past the
# cursor, acknowledged ones too, and a caller that waits for one answer of a new thread (the
# MCP gateway, SPEC.md "MCP mapping") paid a step per message the agent had ever received.
# CROSS JOIN keeps this order (https://www.sqlite.org/optoverview.html, "Manual Control Of
# Query Plans Using CROSS JOIN"); the page is sorted by seq afterwards, a thread's rows being
# few.
_INBOX_THREAD_PAGE = """
SELECT i.seq, e.origin, e.id, e.token, i.delivered_at, i.acked_at
FROM envelopes AS e CROSS JOIN inbox AS i ON i.envelope = e.pk
WHERE e.thread = :thread AND i.agent = :agent AND i.seq > :after
"""
# One text with optional filters: the (owner, address, status_at, id) index serves every form.
_A2A_FILTER = """
WHERE owner = :owner AND address = :address
  AND (:context IS NULL OR context = :context)
  AND (:state IS NULL OR state = :state)
  AND (:after IS NULL OR status_at >= :after)
"""
# Operator commands (rare): one text with optional filters is good enough for their plans.
_QUEUE_FILTER = """
r.state = 'queued'
  AND (:domain IS NULL OR r.domain = :domain)
  AND (:id IS NULL OR r.envelope IN (SELECT pk FROM envelopes WHERE id = :id))
"""
#: The rows of one chunk of a queue command (SqlStore._queue_chunks).
_QUEUE_CHUNK = _QUEUE_FILTER + "  AND r.pk > :after AND r.pk <= :upto\n"

#: The inbox rows still to be handed to adapter-backed agents that a flush names: every one, one
#: agent's (``local:<agent>``), or one envelope's.
_DELIVERY_FILTER = """
(:agent IS NULL OR d.agent = :agent)
  AND (:id IS NULL OR i.envelope IN (SELECT pk FROM envelopes WHERE id = :id))
"""

_SQL: Final = Statements(
    **portable("?"),
    create_migrations="""
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name    TEXT NOT NULL,
    applied TEXT NOT NULL
) STRICT
""",
    insert_migration="""
INSERT INTO schema_migrations (version, name, applied)
VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
""",
    select_existing_agents="SELECT name FROM agents WHERE name IN (SELECT value FROM json_each(?))",
    select_catalog_scope=rows.CATALOG_SELECT  # noqa: S608 (constants)
    + """
WHERE c.visibility IN (SELECT value FROM json_each(:vis))
  AND c.agent NOT IN (SELECT value FROM json_each(:hidden))
ORDER BY c.agent
""",
    select_catalog_keys=rows.CATALOG_KEYED_SELECT  # noqa: S608 (constants)
    + "WHERE c.pk IN (SELECT value FROM json_each(?))",
    # One FTS5 match per term (json_each's key is the term's index), each leaving out the
    # visibilities the caller may not see inside the index: its posting list read in key order
    # up to :scan, joined into one string; one row per term, however many entries match. No
    # catalog row is read but those of agents hidden from the caller by their own rules, and
    # none when there are none (the usual case: the constant first test settles it). The
    # grouping by bit set is relay/store/sql/store.py's (``_term_groups``): cheaper than
    # SQLite's sort of every match by key, then of every entry by bit set.
    catalog_term="""
SELECT t.key,
       (SELECT group_concat(pk)
        FROM (SELECT catalog_fts.rowid AS pk FROM catalog_fts
              WHERE catalog_fts MATCH t.value
                AND (json_array_length(:hidden) = 0 OR catalog_fts.rowid NOT IN (
                    SELECT pk FROM catalog WHERE agent IN (SELECT value FROM json_each(:hidden))))
              ORDER BY catalog_fts.rowid
              LIMIT :scan))
FROM json_each(:terms) AS t
""",
    count_catalog="""
SELECT count(*) FROM catalog
WHERE visibility IN (SELECT value FROM json_each(:vis))
  AND agent NOT IN (SELECT value FROM json_each(:hidden))
""",
    # The SELECT of an INSERT … SELECT … ON CONFLICT needs a WHERE clause so the parser does
    # not read ON CONFLICT as a join constraint (https://www.sqlite.org/lang_upsert.html §2.2):
    # hence ``WHERE true``. CROSS JOIN keeps json_each as the outer loop (it has no index), so
    # the other table is probed through its index (https://www.sqlite.org/optoverview.html §8).
    insert_envelopes="""
INSERT INTO envelopes (origin, id, sender, token, created, expires, thread, kind, via, accepted)
SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4,
       j.value ->> 5, j.value ->> 6, j.value ->> 7, j.value ->> 8, j.value ->> 9
FROM json_each(?) AS j
WHERE true
ON CONFLICT (origin, id) DO NOTHING
RETURNING origin, id
""",
    # JSON true/false arrive as 1/0, what the STRICT INTEGER column ``refused`` holds.
    insert_recipients="""
INSERT INTO recipients
    (envelope, recipient, domain, state, refused, code, reason, next_attempt, updated, notify,
     implied)
SELECT e.pk, j.value ->> 2, j.value ->> 3, j.value ->> 4, j.value ->> 5, j.value ->> 6,
       j.value ->> 7, j.value ->> 8, j.value ->> 9, j.value ->> 10, j.value ->> 11
FROM json_each(?) AS j CROSS JOIN envelopes AS e
WHERE e.origin = j.value ->> 0 AND e.id = j.value ->> 1
ON CONFLICT (envelope, recipient) DO UPDATE SET
    domain = excluded.domain, state = excluded.state, refused = 0, code = excluded.code,
    reason = excluded.reason, next_attempt = excluded.next_attempt, lease_until = NULL,
    updated = excluded.updated, notify = excluded.notify, implied = 0
WHERE recipients.refused = 1 AND excluded.refused = 0
RETURNING envelope,
          (SELECT x.origin FROM envelopes AS x WHERE x.pk = recipients.envelope),
          (SELECT x.id FROM envelopes AS x WHERE x.pk = recipients.envelope),
          recipient, refused
""",
    insert_inbox="""
INSERT INTO inbox (agent, envelope, delivered_at)
SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2 FROM json_each(?) AS j
WHERE true
ON CONFLICT (agent, envelope) DO NOTHING
RETURNING seq, agent, delivered_at
""",
    insert_deliveries="""
INSERT INTO deliveries (seq, agent, next_attempt)
SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2
FROM json_each(?) AS j CROSS JOIN agents AS a
WHERE a.name = j.value ->> 1 AND a.kind <> 'inbox'
ON CONFLICT (seq) DO NOTHING
RETURNING seq, agent
""",
    # GROUP BY ends the SELECT, so ON CONFLICT cannot be read as a join constraint here.
    mailbox_add="""
INSERT INTO mailboxes (agent, unacked, bytes)
SELECT i.agent, count(*), sum(length(e.token))
FROM json_each(?) AS j CROSS JOIN inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
WHERE i.seq = j.value ->> 0
GROUP BY i.agent
ON CONFLICT (agent) DO UPDATE SET
    unacked = mailboxes.unacked + excluded.unacked, bytes = mailboxes.bytes + excluded.bytes
""",
    insert_events="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
VALUES (?, ?, ?, ?, ?, ?, ?)
""",
    receipt_event="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, ?1, r.recipient, 'delivered', ?2, ?3, ?4
FROM envelopes AS e JOIN recipients AS r ON r.envelope = e.pk
WHERE e.origin = ?5 AND e.id = ?6 AND e.sender = ?7 AND r.recipient = ?8
  AND r.state IN ('sent', 'queued')
""",
    receipt_update="""
UPDATE recipients
SET state = 'delivered', code = ?1, reason = ?2, next_attempt = NULL, lease_until = NULL,
    updated = ?3
WHERE envelope = (SELECT pk FROM envelopes WHERE origin = ?4 AND id = ?5 AND sender = ?6)
  AND recipient = ?7 AND state IN ('sent', 'queued')
""",
    insert_idempotency_keys="""
INSERT INTO idempotency_keys (agent, key, fingerprint, origin, envelope, created)
SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4, j.value ->> 5
FROM json_each(?) AS j
WHERE true
ON CONFLICT (agent, key) DO NOTHING
RETURNING agent, key
""",
    select_idempotency_keys=rows.IDEMPOTENCY_SELECT  # noqa: S608 (constants)
    + "WHERE agent = ? AND key IN (SELECT value FROM json_each(?))",
    message_status="""
SELECT 0, e.origin, e.id, e.sender, NULL, NULL, 0, e.created, e.expires, 0, 0
FROM envelopes AS e WHERE e.origin = :origin AND e.id = :id
UNION ALL
SELECT 1, r.recipient, CASE WHEN d.seq IS NULL THEN r.state ELSE 'queued' END,
       CASE WHEN d.seq IS NULL THEN r.code ELSE d.code END,
       CASE WHEN d.seq IS NULL THEN r.reason ELSE d.reason END, NULL,
       CASE WHEN d.seq IS NULL THEN r.attempts ELSE d.attempts END,
       CASE WHEN d.seq IS NULL THEN r.next_attempt ELSE d.next_attempt END, r.updated, r.pk, 0
FROM envelopes AS e JOIN recipients AS r ON r.envelope = e.pk
LEFT JOIN inbox AS i ON i.envelope = e.pk AND r.domain IS NULL AND r.state = 'delivered'
  AND r.recipient = i.agent || '@' || :own
LEFT JOIN deliveries AS d ON d.seq = i.seq
WHERE e.origin = :origin AND e.id = :id
UNION ALL
SELECT 2, v.recipient, v.event, v.code, v.reason, v.hop, 0, v.at, NULL, v.pk, 1
FROM envelopes AS e JOIN events AS v ON v.envelope = e.pk
WHERE e.origin = :origin AND e.id = :id
UNION ALL
SELECT 2, r.recipient, CASE WHEN r.domain IS NULL THEN 'delivered' ELSE 'accepted' END, NULL,
       NULL, e.via, 0, e.accepted, NULL, r.pk, 0
FROM envelopes AS e JOIN recipients AS r ON r.envelope = e.pk
WHERE e.origin = :origin AND e.id = :id AND r.implied = 1
  AND e.accepted > coalesce((SELECT purged_before FROM event_horizon WHERE id = 1), '')
ORDER BY 1, 11, 10
""",
    # The planner can use a partial index only when the query's WHERE clause implies the
    # index's at prepare time (https://www.sqlite.org/partialindex.html §2).
    inbox_unacked=_INBOX_PAGE + "AND i.acked_at IS NULL ORDER BY i.seq LIMIT :limit",
    inbox_all=_INBOX_PAGE + "ORDER BY i.seq LIMIT :limit",
    inbox_unacked_thread=(
        _INBOX_THREAD_PAGE + "AND i.acked_at IS NULL ORDER BY i.seq LIMIT :limit"
    ),
    inbox_all_thread=_INBOX_THREAD_PAGE + "ORDER BY i.seq LIMIT :limit",
    # Leases: select the due rows in order, then mark them (lease_mark), both in the writer's
    # transaction, so two lease_due calls in one group never take the same row.
    lease_due=rows.QUEUE_SELECT
    + """
WHERE r.state = 'queued' AND r.next_attempt <= :now AND r.domain <> :own
  AND (r.lease_until IS NULL OR r.lease_until <= :now)
ORDER BY r.next_attempt, r.pk LIMIT :limit
""",
    lease_due_domain=rows.QUEUE_SELECT
    + """
WHERE r.state = 'queued' AND r.domain = :domain AND r.next_attempt <= :now
  AND (r.lease_until IS NULL OR r.lease_until <= :now)
ORDER BY r.next_attempt, r.pk LIMIT :limit
""",
    lease_mark="UPDATE recipients SET lease_until = ? WHERE pk = ?",
    delivery_lease="""
SELECT d.agent, d.seq, e.origin, e.id, e.sender, e.token, e.expires, d.attempts, d.code,
       d.reason, d.next_attempt, r.notify, r.delay_reported, e.accepted
FROM deliveries AS d JOIN inbox AS i ON i.seq = d.seq JOIN envelopes AS e ON e.pk = i.envelope
LEFT JOIN recipients AS r ON r.envelope = i.envelope AND r.recipient = d.agent || '@' || :domain
WHERE d.next_attempt <= :now AND (d.lease_until IS NULL OR d.lease_until <= :now)
ORDER BY d.next_attempt, d.seq LIMIT :limit
""",
    delivery_lease_mark="UPDATE deliveries SET lease_until = ? WHERE seq = ?",
    release_queue_leases="""
UPDATE recipients SET lease_until = NULL WHERE state = 'queued' AND lease_until IS NOT NULL
""",
    release_delivery_leases="UPDATE deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL",
    settle_event="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, ?1, r.recipient, ?2, ?3, ?4, ?5
FROM envelopes AS e JOIN recipients AS r ON r.envelope = e.pk
WHERE e.origin = ?6 AND e.id = ?7 AND r.recipient = ?8 AND r.state = 'queued'
""",
    settle_update="""
UPDATE recipients
SET state = ?1, code = ?2, reason = ?3, next_attempt = ?4, attempts = attempts + ?5,
    delay_reported = max(delay_reported, ?6), lease_until = NULL, updated = ?7
WHERE envelope = (SELECT pk FROM envelopes WHERE origin = ?8 AND id = ?9)
  AND recipient = ?10 AND state = 'queued'
""",
    delivery_event="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT i.envelope, ?1, ?2, ?3, ?4, ?5, ?6 FROM inbox AS i WHERE i.seq = ?7
""",
    delivery_defer="""
UPDATE deliveries SET attempts = attempts + 1, next_attempt = ?1, lease_until = NULL,
    code = ?2, reason = ?3
WHERE seq = ?4
""",
    delivery_delay="""
UPDATE recipients SET delay_reported = 1
WHERE recipient = ? AND envelope = (SELECT i.envelope FROM inbox AS i WHERE i.seq = ?)
""",
    queue_chunk="""
SELECT r.pk FROM recipients AS r
WHERE """
    + _QUEUE_FILTER
    + "  AND r.pk > :after ORDER BY r.pk LIMIT :limit",
    flush_events="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, :at, r.recipient, 'flushed', NULL, NULL, NULL
FROM recipients AS r
WHERE """
    + _QUEUE_CHUNK,
    flush_update="""
UPDATE recipients AS r SET next_attempt = min(r.next_attempt, :at), updated = :at
WHERE """
    + _QUEUE_CHUNK,
    flush_delivery_events="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT i.envelope, :at, d.agent || '@' || :own, 'flushed', NULL, NULL, NULL
FROM deliveries AS d JOIN inbox AS i ON i.seq = d.seq
WHERE """
    + _DELIVERY_FILTER,
    select_delivery_rows="""
SELECT d.seq, d.agent FROM deliveries AS d JOIN inbox AS i ON i.seq = d.seq
WHERE """
    + _DELIVERY_FILTER
    + "ORDER BY d.seq",
    flush_delivery_update="""
UPDATE deliveries AS d SET next_attempt = min(d.next_attempt, :at)
WHERE EXISTS (SELECT 1 FROM inbox AS i WHERE i.seq = d.seq AND """  # noqa: S608 — constants only
    + _DELIVERY_FILTER
    + ")",
    delete_events="""
INSERT INTO events (envelope, at, recipient, event, code, reason, hop)
SELECT r.envelope, :at, r.recipient, 'deleted', :code, :reason, NULL
FROM recipients AS r
WHERE """
    + _QUEUE_CHUNK,
    delete_update="""
UPDATE recipients AS r
SET state = 'bounced', code = :code, reason = :reason, next_attempt = NULL, lease_until = NULL,
    updated = :at
WHERE """
    + _QUEUE_CHUNK,
    mailbox_usage="""
SELECT agent, unacked, bytes, max_unacked, max_bytes FROM mailboxes
WHERE agent IN (SELECT value FROM json_each(?))
""",
    held_deliver="""
UPDATE recipients
SET state = 'delivered', code = NULL, reason = NULL, next_attempt = NULL, lease_until = NULL,
    updated = :at
WHERE pk IN (SELECT value FROM json_each(:pks)) AND state = 'queued'
RETURNING envelope
""",
    a2a_list_tasks=rows.A2A_TASK_SELECT
    + _A2A_FILTER
    + """
  AND (:before_at IS NULL OR status_at < :before_at
       OR (status_at = :before_at AND id < :before_id))
ORDER BY status_at DESC, id DESC LIMIT :limit
""",
    a2a_count_tasks="SELECT count(*) FROM a2a_tasks" + _A2A_FILTER,  # noqa: S608 (constants)
    a2a_tasks_for_envelopes="""
SELECT envelope, task FROM a2a_task_envelopes WHERE envelope IN (SELECT value FROM json_each(?))
""",
    a2a_reply_tasks=rows.A2A_REPLY_TASK_SELECT  # noqa: S608 (constants)
    + "WHERE l.envelope IN (SELECT value FROM json_each(?))",
    a2a_set_feed_cursor="UPDATE a2a_feed SET cursor = max(cursor, ?) WHERE id = 1",
)


# errors ---------------------------------------------------------------------------------------


def _driver_error(exc: BaseException) -> SynqError:
    """The relay error for a driver exception, in words: the SQL and the driver's text stay
    out of it."""
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


# migrations and batches -----------------------------------------------------------------------


def _split_statements(text: str) -> tuple[str, ...]:
    """One migration file as separate statements.

    ``executescript`` would do it in one call but commits any open transaction first, so a
    migration could not be applied atomically with its ``schema_migrations`` row.
    ``sqlite3.complete_statement`` knows SQL's quoting, comments and trigger bodies.
    """
    statements: list[str] = []
    buffer = ""
    for line in text.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    rest = [ln for ln in buffer.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    if rest:
        raise InternalError("a migration file ends inside a statement")
    return tuple(statements)


def _json_param(rows: Sequence[Sequence[Any]]) -> str:
    """A batch as one JSON text for ``json_each`` (one statement per batch, not per row).
    Text, not bytes: SQLite 3.45+ would read a BLOB argument as its binary JSONB format."""
    return orjson.dumps(rows).decode("utf-8")


#: A call for the writer's thread: the loop to answer on, the future to settle, the function.
_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]


class _Writer:
    """The writer's ``sqlite3`` connection and the one thread that runs its blocking calls.

    A group's statements run on the event loop's thread, inline: under a write lock already
    held they only touch pages in memory (tens of microseconds each), while a round trip to a
    worker thread costs about 40 µs idle and a whole turn of a busy event loop under load, once
    per statement. What may wait runs on the thread instead, so the loop never stalls on it:
    COMMIT (the fsync, and the checkpoint SQLite runs after it), a ``BEGIN IMMEDIATE`` that
    must wait for another process's lock, checkpoints, VACUUM, opening and closing. One thread,
    so those calls keep their order; the writer task awaits each one before its next
    statement, so the two threads never use the connection at once.

    A plain thread with a queue, as aiosqlite's, not a ``ThreadPoolExecutor``: its ``submit``
    takes two locks and a semaphore per call, and measured here a round trip through it costs
    1.5-3x the CPU of this one.
    """

    def __init__(self) -> None:
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._thread = threading.Thread(
            target=_work, args=(self._jobs,), name="synq-sqlite-writer", daemon=True
        )
        self._thread.start()
        self.conn: sqlite3.Connection
        #: When a group last let go of the write lock (COMMIT or ROLLBACK), by the monotonic
        #: clock: SQLiteStore._take_turn.
        self.released = 0.0

    @classmethod
    async def open(cls, path: Path, busy_timeout: float) -> _Writer:
        writer = cls()
        connect = partial(
            sqlite3.connect,
            path,
            timeout=busy_timeout,
            isolation_level=None,  # transactions are the writer's own BEGIN … COMMIT
            check_same_thread=False,  # the loop's thread and this one, never at once
        )
        try:
            writer.conn = await writer.blocking(connect)
        except BaseException:
            writer._jobs.put(None)
            raise
        return writer

    async def blocking(self, fn: Callable[[], _T]) -> _T:
        """``fn`` on the writer's thread. A caller cancelled meanwhile still waits for it to
        end: the connection is not free before."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._jobs.put((loop, future, fn))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await future
            raise

    async def close(self) -> None:
        try:
            await self.blocking(self.conn.close)
        finally:
            self._jobs.put(None)


def _work(
    jobs: SimpleQueue[_Job | None],
) -> None:
    """The writer's thread: each job's function, its outcome handed back to the job's loop."""
    while (job := jobs.get()) is not None:
        loop, future, fn = job
        try:
            result, error = fn(), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(_settle, future, result, error)
        # Nothing of this job outlives it here: a cursor kept until the next job would keep
        # its statement open on the connection that job uses.
        del job, loop, future, fn, result, error


def _checkpoint(conn: sqlite3.Connection) -> None:
    """A passive checkpoint (https://www.sqlite.org/pragma.html#pragma_wal_checkpoint). The
    pragma answers with a row, read here to its end: a statement left unfinished on the writer's
    connection makes its next COMMIT fail ("SQL statements in progress")."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or one of its extended codes (https://www.sqlite.org/rescode.html#busy)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


class _SQLiteTx(Tx):
    """The writer connection inside a group: statements inline (or on the thread, for a large
    group), COMMIT on the thread (:class:`_Writer`)."""

    driver_errors = (sqlite3.Error,)

    def __init__(
        self, writer: _Writer, group_failed: Callable[[BaseException], GroupFailed]
    ) -> None:
        super().__init__(writer.conn, group_failed)
        self.writer = writer
        #: The group's statements run inline on the event loop; set by the store for a small
        #: group (SQLiteStore._begin). A large one runs them on the writer's thread, where
        #: SQLite works without the GIL while the loop goes on with the requests around it.
        self.inline = True
        #: COMMIT inline too: set by the store for a group that commits without a sync and
        #: without a checkpoint (SQLiteStore._begin), whose COMMIT only appends to the WAL.
        self.inline_commit = False

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return fn() if self.inline else await self.writer.blocking(fn)

    async def control(self, sql: str, params: Any = None) -> None:
        # The writer's own statements (SAVEPOINT, RELEASE…) cost next to nothing: inline.
        try:
            self.conn.execute(sql, () if params is None else params)
        except sqlite3.Error as exc:
            raise self._group_failed(exc) from exc

    async def execute(self, sql: str, params: Any = ()) -> int:
        count: int = (await self._run(partial(self.conn.execute, sql, params))).rowcount
        return count

    async def fetch(self, sql: str, params: Any = ()) -> list[Any]:
        rows: list[Any] = await self._run(lambda: self.conn.execute(sql, params).fetchall())
        return rows

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._run(partial(self.conn.executemany, sql, rows))

    async def fetch_rows(self, sql: str, rows: Sequence[Sequence[Any]], width: int) -> list[Any]:
        return await self.fetch(sql, (_json_param(rows),))

    async def insert_rows(self, sql: str, rows: Sequence[Sequence[Any]], width: int) -> None:
        await self._run(partial(self.conn.executemany, sql, rows))

    async def script(self, sql: str) -> None:
        self.conn.execute(sql)

    async def fetch_control(self, sql: str) -> None:
        """A statement of the writer's own that answers with rows, read to their end; a driver
        error fails the group."""
        try:
            self.conn.execute(sql).fetchall()
        except sqlite3.Error as exc:
            raise self._group_failed(exc) from exc

    async def commit(self) -> None:
        try:
            if self.inline_commit:
                self.conn.execute("COMMIT")
            else:
                await self.writer.blocking(partial(self.conn.execute, "COMMIT"))
        except sqlite3.Error as exc:
            raise self._group_failed(exc) from exc
        finally:
            self.writer.released = time.monotonic()

    async def begin(self, busy_ms: int) -> None:
        """``BEGIN IMMEDIATE``: the write lock first. Tried inline without waiting (the writer
        connection's busy timeout is 0 while the store runs); only when another process holds
        the lock is it taken again on the thread, waiting up to ``busy_ms``."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.Error as exc:
            if not _is_busy(exc):
                raise self._group_failed(exc) from exc
        try:
            await self.writer.blocking(
                partial(_waiting, self.conn, busy_ms, partial(self.conn.execute, "BEGIN IMMEDIATE"))
            )
        except sqlite3.Error as exc:
            raise self._group_failed(exc) from exc

    async def rollback_quietly(self) -> None:
        # On the thread, behind a COMMIT that a cancellation may have left running there.
        def rollback() -> None:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

        with contextlib.suppress(sqlite3.Error, OSError, ValueError, RuntimeError):
            await self.writer.blocking(rollback)
        self.writer.released = time.monotonic()


def _waiting(conn: sqlite3.Connection, busy_ms: int, work: Callable[[], _T]) -> _T:
    """``work`` (on the writer's thread), tried again while another process holds the lock,
    for up to ``busy_ms``; the connection's busy timeout is 0 afterwards.

    Not SQLite's own busy handler, which sleeps 1, 2, 5 … then 100 ms between tries
    (``sqliteDefaultBusyCallback``): against a relay that commits group after group, a process
    that looks every 100 ms rarely finds the lock free — ``synq queue flush`` beside a relay
    re-queueing a million held rows failed with "database is locked" after its 5 s. Tries
    :data:`BUSY_RETRY_FIRST` to :data:`BUSY_RETRY_MAX` apart land in the gaps between groups."""
    conn.execute("PRAGMA busy_timeout = 0")
    deadline = time.monotonic() + busy_ms / 1000
    pause = BUSY_RETRY_FIRST
    while True:
        try:
            return work()
        except sqlite3.Error as exc:
            left = deadline - time.monotonic()
            if not _is_busy(exc) or left <= 0:
                raise
        time.sleep(min(pause, left))
        pause = min(pause * 2, BUSY_RETRY_MAX)


# the store ------------------------------------------------------------------------------------


class SQLiteStore(SqlStore):
    """The embedded store: one SQLite file, one writer task, one reader connection.

    ``path`` is a file path (``:memory:`` is refused: durability is the point).
    ``domain``: the relay's own domain. With it, local recipient rows are keyed and reported by
    address (``bob@acme.test``), like remote and refused ones, so a retry that takes a local
    recipient the first try refused upgrades that row; without it, by bare agent name.
    ``synchronous``: ``FULL`` (default) or ``NORMAL``/``EXTRA``, see :data:`_SYNCHRONOUS`.
    ``busy_timeout``: seconds to wait for another process's lock, see :data:`DEFAULT_BUSY_TIMEOUT`.
    ``max_size``: a cap on the file's size in bytes (``set_max_size``), or None.
    """

    sql = _SQL
    dialect = "SQLite"
    migrations_folder = "sqlite"
    driver_errors = (sqlite3.Error,)
    unique_violation = sqlite3.IntegrityError
    foreign_key_violation = sqlite3.IntegrityError
    constraint_errors = (sqlite3.IntegrityError,)
    idle_interval = OTHER_PROCESS_POLL_INTERVAL
    _driver_error = staticmethod(_driver_error)
    _is_group_fatal = staticmethod(_is_group_fatal)
    _split_migration = staticmethod(_split_statements)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        domain: str | None = None,
        synchronous: str = "FULL",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        max_size: int | None = None,
    ) -> None:
        super().__init__(domain)
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
        self._writer: _Writer | None = None
        self._reader: aiosqlite.Connection | None = None
        #: The third connection: small reads (SqlStore._read_small) inline on the event loop.
        self._quick: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._synced = True  # the writer's PRAGMA synchronous is self.synchronous, not NORMAL
        self._checkpoint_off = False  # the writer's PRAGMA wal_autocheckpoint is 0
        self._inline_commits = 0  # groups committed inline in a row (_begin)
        #: The cap on the file's size (``set_max_size``), applied by the writer before its next
        #: group as a number of pages; ``_page_cap_applied`` is what its connection has now.
        self._max_size: int | None = None
        self._page_cap_applied: int | None = None
        self._page_size = 4096
        #: Set by ``reclaim_space`` when it freed pages: the idle writer checkpoints.
        self._checkpoint_due = False
        #: When the writer's current turn at the lock began (WRITER_TURN).
        self._turn_began = 0.0
        self.set_max_size(max_size)

    # time and parameters -----------------------------------------------------------------------

    @staticmethod
    def _ts(value: datetime) -> str:
        """An aware datetime as the schema's fixed-width UTC text."""
        if value.tzinfo is not UTC:  # UTC already: the usual case, and the cheap one
            if value.tzinfo is None or value.utcoffset() is None:
                raise InternalError("the store takes timezone-aware datetimes")
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

    @staticmethod
    def _dt(value: Any) -> datetime:
        return datetime.fromisoformat(value).astimezone(UTC)

    @staticmethod
    def _array(values: Sequence[str] | Sequence[int]) -> str:
        return json.dumps(list(values))

    @staticmethod
    def _match(term: str, visibilities: Sequence[str]) -> str:
        # Strings in double quotes: one token each to the tokenizer (and its stemmer), never
        # FTS5 query syntax (https://www.sqlite.org/fts5.html#fts5_strings): the word in the
        # name or the document, NOT in an entry of a visibility the caller may not see — the
        # short posting list of what is hidden, rather than the long one of what is shown.
        query = f'{{name document}} : "{term}"'
        hidden = [v for v in VISIBILITIES if v not in visibilities]
        if hidden:
            query += " NOT visibility : (" + " OR ".join(f'"{v}"' for v in hidden) + ")"
        return query

    def _describe(self) -> str:
        return f"the store at {self.path}"

    # lifecycle ---------------------------------------------------------------------------------

    async def _open_connections(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise ConfigError(
                f"SQLite {sqlite3.sqlite_version} is too old; the relay needs "
                f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or later"
            )
        if not self.path.parent.is_dir():
            raise ConfigError(
                f"cannot open the store at {self.path}: directory {self.path.parent} does not exist"
            )
        self._writer = await _Writer.open(self.path, self._busy_ms / 1000)
        writer = self._writer
        configure = partial(self._configure_writer, writer.conn)
        await writer.blocking(partial(_waiting, writer.conn, self._busy_ms, configure))
        await self._migrate_file(writer)
        await writer.blocking(partial(self._incremental_vacuum_mode, writer.conn))
        self._page_size = int(writer.conn.execute("PRAGMA page_size").fetchone()[0])
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._configure_reader(self._reader)
        self._quick = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        # As the reader, and never waiting for a lock: a read that would wait goes to the
        # reader's thread instead (_read_small).
        self._quick.execute("PRAGMA query_only = ON")
        self._data_version = self._read_data_version(writer.conn)
        # From here on the writer never waits inline: a BEGIN that finds another process's
        # lock is taken again on the writer's thread (_SQLiteTx.begin).
        writer.conn.execute("PRAGMA busy_timeout = 0")

    def _configure_writer(self, conn: sqlite3.Connection) -> None:
        # Run by _waiting: tried again while another process holds a lock it needs (switching
        # the journal mode does). Every statement here may run twice.
        # Space freed by the retention purge goes back to the file system a bounded step at a
        # time (``reclaim_space``), never by a full VACUUM that would stop every write. The mode
        # takes effect only in a database with no table yet, hence before the migrations; an
        # older file is converted once, below (_incremental_vacuum_mode).
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        # WAL: readers never block the writer nor the writer them, and a commit appends to one
        # file (https://www.sqlite.org/wal.html). The mode is stored in the file; setting it
        # again is a no-op. It cannot change inside a transaction, so it comes first.
        rows = conn.execute("PRAGMA journal_mode = WAL").fetchall()
        if not rows or str(rows[0][0]).lower() != "wal":
            raise ConfigError(
                f"cannot put {self.path} in WAL mode (is it on a network file system?)"
            )
        # After a burst the WAL would keep its largest size for ever; past this it is cut back
        # at the next checkpoint (https://www.sqlite.org/pragma.html#pragma_journal_size_limit).
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        # Durability of each COMMIT; see _SYNCHRONOUS. Per connection, not stored in the file.
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        # Foreign keys are off by default and per connection
        # (https://www.sqlite.org/foreignkeys.html §2).
        conn.execute("PRAGMA foreign_keys = ON")

    def _incremental_vacuum_mode(self, conn: sqlite3.Connection) -> None:
        """Convert a database created before incremental vacuum (auto_vacuum NONE) with one
        VACUUM, at open, before the relay takes any traffic: SQLite changes that mode only in
        a new database or by a VACUUM (https://www.sqlite.org/pragma.html#pragma_auto_vacuum).
        The VACUUM rewrites the file and needs as much free disk again: when it fails (a full
        disk, another process reading), the relay runs on without it, the freed pages still
        reused inside the file, and tries again at the next start."""
        rows = conn.execute("PRAGMA auto_vacuum").fetchall()
        if rows and int(rows[0][0]) == _AUTO_VACUUM_INCREMENTAL:
            return
        size = self.path.stat().st_size if self.path.exists() else 0
        _log.info("converting %s to incremental vacuum: one VACUUM of %d bytes", self.path, size)
        try:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
        except sqlite3.Error as exc:
            _log.warning(
                "cannot convert %s to incremental vacuum now (%s); freed space stays in the file",
                self.path,
                _driver_error(exc).message,
            )

    async def _configure_reader(self, conn: aiosqlite.Connection) -> None:
        # query_only (https://www.sqlite.org/pragma.html#pragma_query_only): a write slipped
        # onto the reader by mistake fails instead of racing the writer for the lock.
        await conn.execute("PRAGMA query_only = ON")
        await conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")

    async def _migrate_file(self, writer: _Writer) -> None:
        """Migrate in one IMMEDIATE transaction: two processes opening the same file at once
        serialise here (the BEGIN waits on the thread, the busy timeout still set)."""
        tx = _SQLiteTx(writer, self._group_failed)
        begin = partial(writer.conn.execute, "BEGIN IMMEDIATE")
        await writer.blocking(partial(_waiting, writer.conn, self._busy_ms, begin))
        # The rest of opening waits for another process's lock as configured (the busy timeout
        # is 0 only once the store runs).
        writer.conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        try:
            await self._migrate(tx)
            await tx.commit()
        except BaseException:
            await tx.rollback_quietly()
            raise

    async def _close_connections(self) -> None:
        quick, self._quick = self._quick, None
        if quick is not None:
            quick.close()
        reader, writer = self._reader, self._writer
        self._reader = None
        self._writer = None
        for close in (
            reader.close if reader is not None else None,
            writer.close if writer is not None else None,
        ):
            if close is None:
                continue
            try:
                await close()
            except (sqlite3.Error, ValueError):
                _log.warning("closing an SQLite connection failed", exc_info=True)

    # size ----------------------------------------------------------------------------------------

    async def size(self) -> int:
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreUnavailable("cannot read the size of the store's files") from exc
        return total

    def set_max_size(self, size: int | None) -> None:
        """``PRAGMA max_page_count`` on the writer connection
        (https://www.sqlite.org/pragma.html#pragma_max_page_count), from its next group: a
        write that needs a page past it fails with SQLITE_FULL, which fails that group with
        StoreUnavailable (503, 4.3.0) as a full disk would, and nothing else. Pages the purge
        frees are reused inside the cap, and a larger cap (SIGHUP) applies to the next group:
        the relay recovers without a restart. SQLite never shrinks the file below its current
        size this way; the WAL beside it is not counted (a checkpoint keeps it to a few MB)."""
        if size is not None and size < MIN_MAX_SIZE:
            raise ConfigError(f"[store] max_size must be at least {MIN_MAX_SIZE} bytes")
        self._max_size = size

    async def reclaim_space(self, max_pages: int) -> int:
        """Up to ``max_pages`` free pages handed back to the file system by ``PRAGMA
        incremental_vacuum`` (https://www.sqlite.org/pragma.html#pragma_incremental_vacuum), in
        one write of the writer task, between two groups (``Op.outside``)."""
        if max_pages <= 0:
            return 0

        async def run(tx: Tx) -> tuple[int, Collection[str]]:
            before = int((await tx.fetch("PRAGMA freelist_count"))[0][0])
            if before == 0:
                return 0, ()
            # A script, outside any transaction: Python's sqlite3 steps an ordinary statement
            # without result columns once, and this pragma frees one page per step; a script
            # runs each statement to its end. It commits on its own, a write like any other:
            # on the writer's thread, waiting for another process's lock as a BEGIN would.
            assert isinstance(tx, _SQLiteTx)
            script = partial(tx.conn.executescript, f"PRAGMA incremental_vacuum({int(max_pages)});")
            await tx.writer.blocking(partial(_waiting, tx.conn, self._busy_ms, script))
            after = int((await tx.fetch("PRAGMA freelist_count"))[0][0])
            self._checkpoint_due = self._checkpoint_due or after < before
            return before - after, ()

        freed: int = await self._write(run, outside=True)
        return freed

    # other processes ---------------------------------------------------------------------------

    @staticmethod
    def _read_data_version(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    async def _on_idle(self) -> None:
        """Wake every listener if another process committed since the last look.

        ``PRAGMA data_version`` on a connection changes when *another* connection commits,
        never for its own commits (https://www.sqlite.org/pragma.html#pragma_data_version). On
        the writer connection, whose own commits were already announced, it therefore means
        exactly "someone else wrote". Runs in the writer task, between transactions.
        """
        writer = self._writer
        assert writer is not None
        try:
            version = self._read_data_version(writer.conn)
        except sqlite3.Error:
            _log.warning("cannot read the SQLite data version", exc_info=True)
            return
        if version != self._data_version:
            self._data_version = version
            self.notifier.wake_all()
        if self._checkpoint_due:
            # Pages incremental vacuum gave back leave the file at a checkpoint (in WAL mode the
            # truncation waits for one); a passive one, between groups, waits for no reader.
            self._checkpoint_due = False
            try:
                await writer.blocking(partial(_checkpoint, writer.conn))
            except sqlite3.Error:
                _log.warning("cannot checkpoint the SQLite WAL", exc_info=True)

    # reads and the writer ----------------------------------------------------------------------

    async def _read(self, sql: str, params: Any) -> list[Any]:
        """One statement on the reader: its own read transaction, nothing held afterwards."""
        conn = self._reader
        if conn is None or self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            return list(await conn.execute_fetchall(sql, params))
        except ValueError as exc:  # aiosqlite: the connection closed under us
            raise StoreUnavailable("the store is closed") from exc
        except sqlite3.Error as exc:
            raise _driver_error(exc) from exc

    async def _read_small(self, sql: str, params: Any) -> list[Any]:
        """A small read inline, on the event loop's own connection: an indexed look-up costs
        tens of microseconds, less than the round trip to the reader's thread it saves. In WAL
        mode a reader waits for no writer (https://www.sqlite.org/wal.html §2.2); the rare
        SQLITE_BUSY (another connection recovering the WAL) sends it to the reader's thread,
        which waits up to the busy timeout."""
        conn = self._quick
        if conn is None or self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            rows: list[Any] = conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            if _is_busy(exc):
                return await self._read(sql, params)
            raise _driver_error(exc) from exc
        return rows

    def _outside(self) -> Tx:
        writer = self._writer
        assert writer is not None
        return _SQLiteTx(writer, self._group_failed)

    async def _take_turn(self) -> None:
        """Before a group's BEGIN: after WRITER_TURN seconds of groups back to back, leave the
        lock to another process for WRITER_GAP seconds (see WRITER_TURN)."""
        writer = self._writer
        assert writer is not None
        now = time.monotonic()
        if now - writer.released >= WRITER_GAP:
            self._turn_began = now  # the lock was free a while: a new turn
        elif now - self._turn_began >= WRITER_TURN:
            await asyncio.sleep(WRITER_GAP)
            self._turn_began = time.monotonic()

    async def _begin(self, ops: Sequence[Op]) -> Tx:
        writer = self._writer
        assert writer is not None
        tx = _SQLiteTx(writer, self._group_failed)
        cap = UNCAPPED_PAGES if self._max_size is None else self._max_size // self._page_size
        if cap != self._page_cap_applied:
            # Outside any transaction, like the sync level: a connection setting. The pragma
            # answers with a row: read to its end, or the unfinished statement would keep a read
            # snapshot open, and BEGIN IMMEDIATE on an old snapshot fails at once with
            # SQLITE_BUSY (SQLITE_BUSY_SNAPSHOT, https://www.sqlite.org/rescode.html#busy_snapshot)
            # when another process has committed since.
            await tx.fetch_control(f"PRAGMA max_page_count = {max(1, cap)}")
            self._page_cap_applied = cap
        # A group of leases only commits without fsync (synchronous NORMAL): a lease lost to a
        # power cut is harmless, as every lease is released at the next start (release_leases;
        # one process owns an SQLite store), and the next durable COMMIT syncs the WAL with
        # these frames in it (https://www.sqlite.org/pragma.html#pragma_synchronous). Such a
        # COMMIT only appends the group's pages to the WAL — unless it crosses the automatic
        # checkpoint's threshold, which would copy the WAL into the database and sync it there.
        # With the automatic checkpoint off for it, it runs inline (no round trip to the
        # writer's thread); the next durable COMMIT, on the thread, checkpoints as usual. At
        # most MAX_INLINE_COMMITS in a row, so that the WAL stays bounded even if only leases
        # were written for a while (a lease is always followed by a durable settle or ack).
        durable = any(op.durable for op in ops)
        inline = not durable and self._inline_commits < MAX_INLINE_COMMITS
        if durable != self._synced:
            await tx.control(f"PRAGMA synchronous = {self.synchronous if durable else 'NORMAL'}")
            self._synced = durable
        if inline != self._checkpoint_off:
            pages = 0 if inline else _AUTO_CHECKPOINT_PAGES
            await tx.fetch_control(f"PRAGMA wal_autocheckpoint = {pages}")
            self._checkpoint_off = inline
        self._inline_commits = self._inline_commits + 1 if inline else 0
        tx.inline_commit = inline
        await self._take_turn()
        tx.inline = sum(len(op.accepts or ()) or 1 for op in ops) <= INLINE_GROUP_WEIGHT
        await tx.begin(self._busy_ms)
        return tx
