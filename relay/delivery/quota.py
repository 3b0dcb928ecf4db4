"""Mailbox quotas at delivery time, and the service that delivers held mail (SPEC.md §9.7).

:class:`MailboxQuotas` answers one question for the router (local submission) and the inbound
handler (mail from partner relays): which of these local agents' mailboxes are full? It reads
the agents' usage and own quotas in one store read (``Store.mailbox_usage``, counters the store
keeps in step with every inbox row and ack) and applies the arithmetic of relay/core/quota.py.
The check comes before custody, so two submissions racing for the last place may both get in:
a quota is exceeded by at most the deliveries in flight at that moment.

What becomes of mail for a full mailbox depends on who holds it:

* **from a partner relay** — the inbound handler refuses that recipient with 4.2.2 in the
  per-recipient result (SPEC.md §8.4); the partner keeps it queued and retries with its backoff
  (SPEC.md §9.3), so the waiting mail stays on the sender's disk, not ours;
* **from a local agent** — the relay already holds the envelope, so it keeps it: the recipient
  row is *held* (queued, code 4.2.2, the reason in the sender's status) and :class:`HeldMail`
  delivers it into the inbox as soon as the agent has made room, oldest first.

:class:`HeldMail` runs passes:

1. the agents with held mail, their usage and quotas (two reads);
2. for each that exists and has room, ``Store.deliver_held`` moves as many of its held
   envelopes as the room takes (at most :data:`RELEASE_BATCH`) into its inbox, in one write;
3. held envelopes that expired meanwhile are bounced (5.4.7, the last error 4.2.2), each with a
   delivery-status envelope to its sender (SPEC.md §9.4), in one ``settle``.

A pass runs when an ack or a quota change made room anywhere (``HELD_CHANNEL``), and at least
every :data:`MAX_IDLE_WAIT` for expiry. Passes that find nothing cost two index reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from relay.core import dsn as dsn_mod
from relay.core import envelope as env_mod
from relay.core import status as st
from relay.core.clock import Clock
from relay.core.errors import SynqError
from relay.core.jws import b64url_decode
from relay.core.quota import MAILBOX_FULL, Quota, Room, full_reason, room
from relay.store.base import HELD_CHANNEL, NewEnvelope, Outcome, QueueEntry, Store

if TYPE_CHECKING:
    # The router asks MailboxQuotas; HeldMail uses the router's DSNs.
    from relay.delivery.router import Router

__all__ = [
    "MAILBOX_FULL",
    "MAX_IDLE_WAIT",
    "MIN_PASS_INTERVAL",
    "RELEASE_BATCH",
    "HeldMail",
    "MailboxQuotas",
]

log = logging.getLogger("synq.delivery.quota")

#: Held envelopes one write moves into one inbox, and expired ones one settle bounces: a short
#: write of the group-commit writer (as the retention purge's batches), however much is held.
RELEASE_BATCH: Final = 250
#: Longest wait between two passes: the bound on how late a held envelope bounces after it
#: expired, and a safety net for a lost wake-up.
MAX_IDLE_WAIT: Final = 30.0
#: Shortest time between two passes. Every ack wakes the service; under thousands of acks a
#: second, passes would otherwise follow each other back to back.
MIN_PASS_INTERVAL: Final = 0.5


class MailboxQuotas:
    """The relay's ``[quotas]`` defaults, applied to the agents' usage (module docstring)."""

    def __init__(self, store: Store, default: Quota | None = None) -> None:
        self.store = store
        #: The relay's default quotas; ``Relay.reload`` swaps them.
        self.default = default or Quota()

    async def rooms(self, names: Iterable[str]) -> dict[str, Room]:
        """The room in each named agent's mailbox (an agent without usage is empty)."""
        wanted = set(names)
        usage = await self.store.mailbox_usage(wanted)
        out: dict[str, Room] = {}
        for name in wanted:
            u = usage.get(name)
            if u is None:
                out[name] = room(0, 0, self.default)
            else:
                out[name] = room(u.unacked, u.bytes, self.default.own(u.max_unacked, u.max_bytes))
        return out

    async def full(self, names: Iterable[str]) -> dict[str, str]:
        """The named agents whose mailbox is full, each with the reason for its sender."""
        wanted = set(names)
        if not wanted:
            return {}
        usage = await self.store.mailbox_usage(wanted)
        out: dict[str, str] = {}
        for name, u in usage.items():
            why = full_reason(u.unacked, u.bytes, self.default.own(u.max_unacked, u.max_bytes))
            if why is not None:
                out[name] = why
        return out


class HeldMail:
    """Delivers mail held for full mailboxes once they have room; bounces it at expiry."""

    def __init__(self, store: Store, router: Router, clock: Clock, quotas: MailboxQuotas) -> None:
        self.store = store
        self.router = router
        self.clock = clock
        self.quotas = quotas

    async def run_once(self) -> tuple[int, int]:
        """One pass (module docstring); returns (delivered, bounced)."""
        delivered = 0
        held = await self.store.held_agents()
        if held:
            present = await self.store.existing_agents(held)
            # A removed agent's held mail waits for its expiry, and bounces then.
            rooms = await self.quotas.rooms(present)
            for agent in sorted(present):
                space = rooms[agent]
                if not space.any:
                    continue
                limit = min(held[agent], RELEASE_BATCH, space.messages or RELEASE_BATCH)
                now = self.clock.now()
                delivered += await self.store.deliver_held(
                    agent, now, limit=limit, max_bytes=space.bytes
                )
        return delivered, await self._expire()

    async def _expire(self) -> int:
        now = self.clock.now()
        expired = await self.store.expired_held(now, RELEASE_BATCH)
        if not expired:
            return 0
        outcomes: list[Outcome] = []
        dsns: list[NewEnvelope] = []
        for entry in expired:
            outcome, dsn = await self._bounce(entry)
            outcomes.append(outcome)
            if dsn is not None:
                dsns.append(dsn)
        await self.store.settle(outcomes, dsns, self.clock.now())
        return len(outcomes)

    async def _bounce(self, entry: QueueEntry) -> tuple[Outcome, NewEnvelope | None]:
        envelope = env_mod.decode(b64url_decode(entry.token.split(".")[1]))
        last = f"; last error: {entry.code} {entry.reason}" if entry.code else ""
        expires = env_mod.format_timestamp(entry.expires)
        reason = f"not delivered before it expired at {expires}{last}"
        failure = dsn_mod.Failure(
            original_id=envelope.id,
            original_from=envelope.from_,
            original_kind=envelope.kind,
            thread=envelope.thread,
            recipient=entry.recipient,
            status=st.EXPIRED.code,
            diagnostic=reason,
            attempts=entry.attempts,
            last_attempt=self.clock.now(),
        )
        outcome = Outcome(
            origin=entry.origin,
            id=entry.id,
            recipient=entry.recipient,
            state="bounced",
            code=st.EXPIRED.code,
            reason=reason,
            hop=None,
            event="expired",
        )
        return outcome, await self.router.dsn(failure, envelope.created)

    async def run(self) -> None:
        """Run passes for ever (cancel to stop)."""
        async with self.store.notifier.listen(HELD_CHANNEL) as listener:
            while True:
                try:
                    delivered, bounced = await self.run_once()
                    if delivered or bounced:
                        log.info("held mail: %d delivered, %d bounced", delivered, bounced)
                except SynqError as exc:
                    log.warning("held mail pass failed: %s", exc.message)
                except Exception:
                    log.exception("held mail pass failed")
                await listener.wait(MAX_IDLE_WAIT)
                # Pacing, not waiting for a condition: acks that arrive meanwhile are one
                # wake-up, served by the next pass.
                await asyncio.sleep(MIN_PASS_INTERVAL)
