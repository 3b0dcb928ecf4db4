"""Mailbox quotas as arithmetic: is there room in an agent's mailbox, and how much (SPEC.md
§9.7). No I/O: the store counts (``Store.mailbox_usage``), the delivery layer asks here.

A mailbox is an agent's unacknowledged inbox rows: their number and their size (the signed
envelopes as stored). It has room while it is under **both** of its quotas; a mailbox with room
takes one more message whatever that message's size, so no message is ever too large to be
delivered into an empty mailbox, and a full one is over its byte quota by less than one message.
Mail for a full mailbox is deferred with 4.2.2 (RFC 3463 X.2.2 "mailbox full"), never dropped.

Defaults beside what mail systems do:

=====================  =======================  ========================  ====================
                       Postfix 3.x (local)      Dovecot quota plugin      Synq
=====================  =======================  ========================  ====================
message count          none                     none by default           10,000 unacked
                                                (``*:messages=``)
size                   51,200,000 bytes         none by default           100 MiB unacked
                       (``mailbox_size_limit``)  (``*:storage=``)
over quota             bounced ("File too       5.2.2, or 4.2.2 with      4.2.2: deferred and
                       large")                  ``quota_full_tempfail``   retried until expiry
=====================  =======================  ========================  ====================

Why both: a count alone lets a few peers fill a disk with large envelopes; a size alone lets a
flood of tiny ones make a mailbox that no agent can page through. Both bound what an agent that
stopped reading costs the relay, which otherwise keeps its mail for ever (retention never purges
an unacknowledged message). 0 means no quota of that kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core import status as st
from relay.core.limits import DEFAULT_MAX_UNACKED, DEFAULT_MAX_UNACKED_BYTES

__all__ = ["MAILBOX_FULL", "Quota", "Room", "full_reason", "room"]


@dataclass(frozen=True, slots=True)
class Quota:
    """One mailbox's quotas: unacknowledged messages and their bytes; 0 means none."""

    max_unacked: int = DEFAULT_MAX_UNACKED
    max_bytes: int = DEFAULT_MAX_UNACKED_BYTES

    def __post_init__(self) -> None:
        if self.max_unacked < 0 or self.max_bytes < 0:
            raise ValueError("a quota is a count or a size, never negative")

    def own(self, max_unacked: int | None, max_bytes: int | None) -> Quota:
        """This default with an agent's own quotas where it has them (None: the default)."""
        return Quota(
            self.max_unacked if max_unacked is None else max_unacked,
            self.max_bytes if max_bytes is None else max_bytes,
        )


@dataclass(frozen=True, slots=True)
class Room:
    """How much more a mailbox takes now: messages, and bytes before the last one; None for
    no bound. A mailbox with no room has ``messages == 0`` or ``bytes == 0``."""

    messages: int | None
    bytes: int | None

    @property
    def any(self) -> bool:
        return self.messages != 0 and self.bytes != 0


def room(unacked: int, size: int, quota: Quota) -> Room:
    """The room left in a mailbox holding ``unacked`` messages of ``size`` bytes."""
    return Room(
        None if quota.max_unacked == 0 else max(0, quota.max_unacked - unacked),
        None if quota.max_bytes == 0 else max(0, quota.max_bytes - size),
    )


def full_reason(unacked: int, size: int, quota: Quota) -> str | None:
    """Why the mailbox takes nothing now, in words for the sender's status; None when it has
    room."""
    if quota.max_unacked and unacked >= quota.max_unacked:
        return (
            f"mailbox full: {unacked} unacknowledged messages "
            f"(quota {quota.max_unacked}); retried until it has room"
        )
    if quota.max_bytes and size >= quota.max_bytes:
        return (
            f"mailbox full: {size} bytes unacknowledged (quota {quota.max_bytes}); "
            "retried until it has room"
        )
    return None


#: The status of mail deferred for a full mailbox.
MAILBOX_FULL = st.MAILBOX_FULL
