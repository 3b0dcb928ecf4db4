"""How an agent's mail looks on the wire: inbox entries and message status (SPEC.md §6).

One rendering for every face — the local API, the MCP face, ``synq inbox`` and ``synq status``
— so an envelope or a status reads the same whichever way an agent asks for it; and one for a
queued row, in ``synq queue list`` and the console (SPEC.md §9.6, §14.2). Pure functions of
store records; no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from relay.core import jsonutil
from relay.core.envelope import format_timestamp
from relay.core.jws import b64url_decode
from relay.store.base import InboxItem, MessageStatus, QueueEntry

__all__ = [
    "envelope_object",
    "envelope_payload",
    "inbox_body",
    "queue_row",
    "queued",
    "status_to_wire",
]


def envelope_payload(item: InboxItem) -> bytes:
    """The envelope JSON exactly as signed: the JWS payload (SPEC.md §6.4: inbox entries)."""
    return b64url_decode(item.token.split(".")[1])


def envelope_object(item: InboxItem) -> dict[str, Any]:
    """The envelope of an inbox entry as a JSON object."""
    decoded: dict[str, Any] = json.loads(envelope_payload(item))
    return decoded


def inbox_body(items: Sequence[InboxItem]) -> bytes:
    """``{"messages": [envelope…], "cursor": seq}`` (SPEC.md §6.4); ``cursor`` is null for none."""
    # The payloads are already compact JSON objects: splice them instead of re-encoding.
    cursor = items[-1].seq if items else None
    head = b'{"messages":[' + b",".join(envelope_payload(i) for i in items) + b"]"
    return head + b',"cursor":' + jsonutil.dumps(cursor) + b"}"


def queued(envelope_id: str) -> dict[str, Any]:
    """The answer to an accepted send (SPEC.md §6.2)."""
    return {"id": envelope_id, "status": "queued"}


def status_to_wire(status: MessageStatus) -> dict[str, Any]:
    """A message's delivery status (SPEC.md §6.3): per-recipient state and the hop log."""
    recipients: dict[str, Any] = {}
    for r in status.recipients:
        entry: dict[str, Any] = {"state": r.state, "attempts": r.attempts}
        if r.code:
            entry["code"] = r.code
        if r.reason:
            entry["reason"] = r.reason
        if r.next_attempt and r.state == "queued":
            entry["next_attempt"] = format_timestamp(r.next_attempt)
        entry["updated"] = format_timestamp(r.updated)
        recipients[r.address] = entry
    return {
        "id": status.id,
        "from": status.sender,
        "created": format_timestamp(status.created),
        "expires": format_timestamp(status.expires),
        "recipients": recipients,
        "events": [
            {
                k: v
                for k, v in {
                    "at": format_timestamp(ev.at),
                    "recipient": ev.recipient,
                    "event": ev.event,
                    "code": ev.code,
                    "reason": ev.reason,
                    "hop": ev.hop,
                }.items()
                if v is not None
            }
            for ev in status.events
        ],
    }


def queue_row(e: QueueEntry) -> dict[str, Any]:
    """A queued recipient row: what waits for which destination, and why."""
    return {
        "id": e.id,
        "from": e.sender,
        "recipient": e.recipient,
        "domain": e.domain,
        "attempts": e.attempts,
        "next_attempt": format_timestamp(e.next_attempt),
        "expires": format_timestamp(e.expires),
        "code": e.code,
        "reason": e.reason,
    }
