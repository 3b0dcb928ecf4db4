"""Custody: the one way an envelope enters the store, whoever hands it over.

A local agent's submission (relay.delivery.router) and a partner relay's transaction
(relay.federation.inbound) both end here: the envelopes, as ``NewEnvelope`` rows, go through
the custody gate (relay.store.backpressure: refuse what cannot be kept rather than queue it) into
one ``Store.accept_many`` call, one store transaction. When it returns they are durable, and the
store has woken every inbox and queue that got a row (after the commit, never before); only
then does the relay answer "queued" or "accepted" (SPEC.md §6.2, §8.6).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from relay.core.clock import Clock
from relay.core.envelope import Envelope
from relay.logs import event
from relay.store.backpressure import CustodyGate
from relay.store.base import AcceptResult, IdempotencyKey, NewEnvelope, Store

__all__ = ["Custody", "new_envelope"]

#: The logger of every recipient event (accepted here; delivered, deferred, bounced by the
#: dispatcher and the federation sender): one structured line each (relay.logs).
log = logging.getLogger("synq.delivery")


class Custody:
    """Takes envelopes into the store through one bounded gate, shared by every source."""

    def __init__(
        self, store: Store, clock: Clock, gate: CustodyGate | None = None, *, domain: str = ""
    ) -> None:
        self.store = store
        self.clock = clock
        #: This relay's domain: local recipients are logged as ``<agent>@<domain>``.
        self.domain = domain
        #: Bounds the custody writes in flight (relay.store.backpressure).
        self.gate = gate or CustodyGate()
        #: Told how many remote recipients each custody write held by its accept (SPEC.md
        #: §9.3): the metrics count them as deferred, as they count the rows the federation
        #: sender holds itself.
        self.on_held: Callable[[int], None] | None = None

    def take(
        self, items: Sequence[NewEnvelope], *, timeout: float | None = None
    ) -> Coroutine[Any, Any, list[AcceptResult]]:
        """The write that takes custody of ``items``, all or none, to be awaited.

        Raises ``StoreUnavailable`` when the gate is full or, given a ``timeout``, when the
        commit does not end in time (the commit itself is not cancelled: see CustodyGate).
        ``UnknownRecipient`` when a local recipient no longer exists. A plain function returning
        the gate's coroutine, so that the hot path of a send pays no extra frame for it.
        """
        write = self.gate.write(
            self.store.accept_many(items, self.clock.now()),
            size=sum(len(i.token) for i in items),
            timeout=timeout,
        )
        if not log.isEnabledFor(logging.INFO) and (
            self.on_held is None or not any(item.holds for item in items)
        ):
            return write
        return self._logged(items, write)

    async def _logged(
        self, items: Sequence[NewEnvelope], write: Coroutine[Any, Any, list[AcceptResult]]
    ) -> list[AcceptResult]:
        results = await write
        logged = log.isEnabledFor(logging.INFO)
        held = 0
        for item, result in zip(items, results, strict=True):
            if result.duplicate:
                continue
            if logged:
                self._log(item)
            if item.holds:
                held += sum(1 for a in item.remote if a.rpartition("@")[2] in item.holds)
        if held and self.on_held is not None:
            self.on_held(held)
        return results

    def _log(self, item: NewEnvelope) -> None:
        """One line per recipient taken into custody (SPEC.md §14.4): ``accepted``, or
        ``deferred`` for a local agent whose mailbox is full (4.2.2); and for a remote one
        held by its accept (SPEC.md §9.3) a ``held`` line after it, as the federation sender
        logs the rows it holds itself."""
        common = {"id": item.id, "from": item.sender, "via": item.via}
        for name in item.local:
            to = f"{name}@{self.domain}"
            event(log, "accepted", event="accepted", to=to, destination=f"local:{name}", **common)
        for name, code, _reason in item.held:
            to = f"{name}@{self.domain}"
            dest = f"local:{name}"
            event(log, "deferred", event="deferred", to=to, destination=dest, code=code, **common)
        holds = item.holds
        for address in item.remote:
            destination = address.rpartition("@")[2]
            event(log, "accepted", event="accepted", to=address, destination=destination, **common)
            hold = holds.get(destination) if holds else None
            if hold is not None:
                delay = max((hold.until - self.clock.now()).total_seconds(), 0.0)
                event(
                    log,
                    "held",
                    event="held",
                    to=address,
                    destination=destination,
                    code=hold.code,
                    attempt=0,
                    delay=round(delay, 3),
                    **common,
                )


def new_envelope(
    envelope: Envelope,
    token: str,
    local: Sequence[str],
    remote: Sequence[str],
    via: str,
    refused: Sequence[tuple[str, str, str]] = (),
    *,
    origin: str | None = None,
    idempotency: IdempotencyKey | None = None,
    held: Sequence[tuple[str, str, str]] = (),
) -> NewEnvelope:
    """The store row for a signed envelope: ``local`` agent names whose inbox gets it now,
    ``remote`` addresses queued for federation, ``via`` for the hop log, ``refused`` recipients
    with their code and reason, ``held`` local agents whose mailbox is full (name, code,
    reason: relay.delivery.quota). ``origin``: the sender's domain when the caller knows it
    (saves parsing ``from`` again). ``idempotency``: the sender's key, recorded in the same
    store transaction as the envelope (SPEC.md §6.2)."""
    return NewEnvelope(
        origin=origin or envelope.sender.domain,
        id=envelope.id,
        sender=envelope.from_,
        token=token,
        created=envelope.created,
        expires=envelope.expires,
        thread=envelope.thread,
        kind=envelope.kind,
        local=list(local),
        remote=list(remote),
        via=via,
        refused=list(refused),
        idempotency=idempotency,
        held=list(held),
    )
