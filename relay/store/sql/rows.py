"""Rows to records: one mapper per record type, for both dialects.

Column layouts are those named in relay/store/sql/statements.py; where a layout is a plain
column list, the ``SELECT … FROM`` that produces it is here too, and a dialect adds its WHERE
clause to it. Timestamps arrive in the dialect's own form and ``dt`` (``SqlStore._dt``) turns
them into aware UTC datetimes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final

from relay.core import jsonutil
from relay.core.catalog import CatalogRecord, Profile
from relay.core.dsn import decode_notify
from relay.core.envelope import format_timestamp
from relay.core.limits import MAX_API_BODY_BYTES
from relay.core.signals import ClaimRecord, Reinforcement, Signal, Subscription
from relay.store.base import (
    A2ATask,
    AgentRecord,
    DeliveryEvent,
    EnvelopeSummary,
    IdempotencyRecord,
    InboxItem,
    LocalDelivery,
    MessageStatus,
    QueueEntry,
    RecipientState,
    RecipientStatus,
)

#: A dialect's timestamp column value → aware UTC datetime.
ToDatetime = Callable[[Any], datetime]
Row = Sequence[Any]

#: The rows ``agent`` maps.
AGENT_SELECT: Final = "SELECT name, kind, endpoint, created FROM agents "
#: The rows ``catalog_record`` maps.
CATALOG_SELECT: Final = """
SELECT c.agent, a.kind, c.visibility, c.description, c.tags, c.queries, c.profile, c.updated
FROM catalog AS c JOIN agents AS a ON a.name = c.agent
"""
#: The same, with the entry's key last.
CATALOG_KEYED_SELECT: Final = """
SELECT c.agent, a.kind, c.visibility, c.description, c.tags, c.queries, c.profile, c.updated,
       c.pk
FROM catalog AS c JOIN agents AS a ON a.name = c.agent
"""
#: The rows ``inbox_item`` maps.
INBOX_SELECT: Final = """
SELECT i.seq, e.origin, e.id, e.token, i.delivered_at, i.acked_at
FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
"""
#: The rows ``queue_entry`` maps.
QUEUE_SELECT: Final = """
SELECT r.pk, e.origin, e.id, e.sender, r.recipient, r.domain, e.token, e.expires, r.attempts,
       r.next_attempt, r.code, r.reason, r.notify, r.delay_reported, e.accepted
FROM recipients AS r JOIN envelopes AS e ON e.pk = r.envelope
"""
#: The rows ``idempotency_record`` maps.
IDEMPOTENCY_SELECT: Final = """
SELECT agent, key, fingerprint, origin, envelope, created FROM idempotency_keys
"""
#: The rows ``a2a_task`` maps.
#: The columns ``signal`` maps, in order (also the insert's).
SIGNAL_COLUMNS: Final = (
    "id, owner, emitter, topic, text, urgency, half_life, lease, scope, created, expires, "
    "content_type, body, state, generation, holder, token_hash, lease_until, version, updated, "
    "result_id, result_type, result_body, result_sent"
)
SIGNAL_SELECT: Final = f"SELECT {SIGNAL_COLUMNS} FROM signals "  # noqa: S608 — constants only
A2A_TASK_SELECT: Final = """
SELECT id, owner, address, context, state, remote_id, snapshot, push, version, status_at,
       created, updated, status_by
FROM a2a_tasks
"""
#: An envelope id that belongs to a task, then the task's columns as A2A_TASK_SELECT's; the
#: dialect adds the test on ``l.envelope``.
A2A_REPLY_TASK_SELECT: Final = """
SELECT l.envelope, t.id, t.owner, t.address, t.context, t.state, t.remote_id, t.snapshot, t.push,
       t.version, t.status_at, t.created, t.updated, t.status_by
FROM a2a_task_envelopes AS l JOIN a2a_tasks AS t ON t.id = l.task
"""


def agent(row: Row, dt: ToDatetime) -> AgentRecord:
    """(name, kind, endpoint, created)"""
    return AgentRecord(name=row[0], kind=row[1], endpoint=row[2], created=dt(row[3]))


def catalog_record(row: Row, dt: ToDatetime) -> CatalogRecord:
    """(agent, kind, visibility, description, tags, queries, profile, updated); the JSON columns
    are the store's own writing."""
    profile = None if row[6] is None else Profile.from_json(json.loads(row[6]))
    return CatalogRecord(
        agent=row[0],
        kind=row[1],
        visibility=row[2],
        description=row[3],
        tags=tuple(json.loads(row[4])),
        queries=tuple(json.loads(row[5])),
        profile=profile,
        updated=format_timestamp(dt(row[7])),
    )


def idempotency_record(row: Row, dt: ToDatetime) -> IdempotencyRecord:
    """(agent, key, fingerprint, origin, envelope, created)"""
    return IdempotencyRecord(
        agent=row[0], key=row[1], fingerprint=row[2], origin=row[3], id=row[4], created=dt(row[5])
    )


def inbox_item(row: Row, dt: ToDatetime) -> InboxItem:
    """(seq, origin, id, token, delivered_at, acked_at)"""
    return InboxItem(
        seq=row[0],
        origin=row[1],
        id=row[2],
        token=row[3],
        delivered_at=dt(row[4]),
        acked_at=None if row[5] is None else dt(row[5]),
    )


#: The rows ``envelope_summaries`` maps: the envelopes ``{pick}`` chooses (a subquery of pks),
#: one row per recipient, newest envelope first.
SUMMARY_SELECT: Final = """
SELECT e.pk, e.origin, e.id, e.sender, e.thread, e.kind, e.accepted,
       r.recipient, r.state, r.code, r.reason, r.attempts, r.next_attempt, r.updated
FROM ({pick}) AS x
JOIN envelopes AS e ON e.pk = x.pk
LEFT JOIN recipients AS r ON r.envelope = e.pk
ORDER BY e.pk DESC, r.pk
"""


def envelope_summaries(found: Sequence[Row], dt: ToDatetime) -> list[EnvelopeSummary]:
    """(pk, origin, id, sender, thread, kind, accepted, recipient, state, code, reason,
    attempts, next_attempt, updated) rows, grouped by envelope."""
    out: list[EnvelopeSummary] = []
    last = None
    for row in found:
        if row[0] != last:
            last = row[0]
            out.append(EnvelopeSummary(row[1], row[2], row[3], row[4], row[5], dt(row[6]), []))
        if row[7] is not None:
            out[-1].recipients.append(
                RecipientStatus(
                    address=row[7],
                    state=row[8],
                    code=row[9],
                    reason=row[10],
                    attempts=row[11],
                    next_attempt=dt(row[12]) if row[12] is not None else None,
                    updated=dt(row[13]),
                )
            )
    return out


def queue_entry(row: Row, dt: ToDatetime) -> QueueEntry:
    """(pk, origin, id, sender, recipient, domain, token, expires, attempts, next_attempt,
    code, reason, notify, delay_reported, accepted)"""
    return QueueEntry(
        origin=row[1],
        id=row[2],
        sender=row[3],
        recipient=row[4],
        domain=row[5],
        token=row[6],
        expires=dt(row[7]),
        attempts=row[8],
        next_attempt=dt(row[9]),
        code=row[10],
        reason=row[11],
        notify=decode_notify(row[12]),
        delay_reported=bool(row[13]),
        accepted=dt(row[14]),
    )


def local_delivery(row: Row, dt: ToDatetime) -> LocalDelivery:
    """(agent, seq, origin, id, sender, token, expires, attempts, code, reason, next_attempt,
    notify, delay_reported, accepted): the recipient row's ``notify`` and ``delay_reported``
    (NULL when the store has no domain to name the row by)."""
    return LocalDelivery(
        agent=row[0],
        seq=row[1],
        origin=row[2],
        id=row[3],
        sender=row[4],
        token=row[5],
        expires=dt(row[6]),
        attempts=row[7],
        code=row[8],
        reason=row[9],
        notify=decode_notify(row[11]),
        delay_reported=bool(row[12]),
        accepted=dt(row[13]),
    )


def a2a_task(row: Row, dt: ToDatetime) -> A2ATask:
    """(id, owner, address, context, state, remote_id, snapshot, push, version, status_at,
    created, updated, status_by)"""
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
        status_at=dt(row[9]),
        created=dt(row[10]),
        updated=dt(row[11]),
        status_by=row[12],
    )


def message_status(rows: Sequence[Row], dt: ToDatetime) -> MessageStatus | None:
    """One statement's rows, eleven columns each (the last one only orders them), kind first
    and in kind order:

    * 0, origin, id, sender, -, -, -, created, expires, - — the envelope;
    * 1, recipient, state, code, reason, -, attempts, next_attempt, updated, pk — per recipient;
    * 2, recipient, event, code, reason, hop, -, at, -, pk — per event: first the events implied
      by recipient rows (relay/store/sql/accept.py), by recipient row, then the event rows in
      the order they were written. An implied event comes from the accept that created the
      envelope, which wrote its taken rows' events before any other: the order is the one event
      rows alone gave.

    One statement, so the three parts come from one snapshot: never a 'sent' state without its
    'sent' event.
    """
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
                    next_attempt=None if row[7] is None else dt(row[7]),
                    updated=dt(row[8]),
                )
            )
        else:
            events.append(
                DeliveryEvent(
                    at=dt(row[7]),
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
        created=dt(head[7]),
        expires=dt(head[8]),
        recipients=recipients,
        events=events,
    )


def _json(text: str | None) -> Any:
    # The store wrote these values itself (relay/store/sql/store.py, signals): they were
    # checked when they came in; the bound only keeps a damaged row from costing more.
    return None if text is None else jsonutil.loads(text, max_bytes=MAX_API_BODY_BYTES)


def signal(row: Row, dt: ToDatetime, reinforcements: Sequence[Reinforcement] = ()) -> Signal:
    """(SIGNAL_COLUMNS) → Signal; ``reinforcements`` read with it."""
    scope = _json(row[8])
    return Signal(
        id=row[0],
        owner=row[1],
        emitter=row[2],
        topic=row[3],
        text=row[4],
        urgency=float(row[5]),
        half_life=float(row[6]),
        lease=float(row[7]),
        scope=tuple(scope) if isinstance(scope, list) else scope,
        created=dt(row[9]),
        expires=dt(row[10]),
        content_type=row[11],
        body=_json(row[12]),
        state=row[13],
        generation=int(row[14]),
        holder=row[15],
        token_hash=row[16],
        lease_until=None if row[17] is None else dt(row[17]),
        version=int(row[18]),
        updated=dt(row[19]),
        reinforcements=tuple(reinforcements),
        result_id=row[20],
        result_type=row[21],
        result_body=_json(row[22]),
        result_sent=bool(row[23]),
    )


def reinforcement(row: Row, dt: ToDatetime) -> Reinforcement:
    """(source, amount, at)"""
    return Reinforcement(row[0], float(row[1]), dt(row[2]))


def claim_record(row: Row, dt: ToDatetime) -> ClaimRecord:
    """(generation, holder, claimed, until, ended, outcome)"""
    return ClaimRecord(
        generation=int(row[0]),
        holder=row[1],
        claimed=dt(row[2]),
        until=dt(row[3]),
        ended=None if row[4] is None else dt(row[4]),
        outcome=row[5],
    )


def subscription(row: Row) -> Subscription:
    """(agent, topics, threshold, capabilities)"""
    return Subscription(row[0], tuple(_json(row[1]) or ()), float(row[2]), bool(row[3]))
