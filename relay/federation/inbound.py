"""The receiving side of federation: one transaction in, per-envelope results out (SPEC.md §8.3).

For every envelope, in this order (the first failing step decides its result):

1. structure of the JWS (``parse_compact``) and of the envelope (``decode``);
2. the envelope's ``from`` domain is the transaction's ``origin`` — a relay speaks only for its
   own domain, so nobody can use a partner as an open relay, and a key lookup for the origin
   is the only one a transaction can trigger;
3. the key ``<kid>._synqkey.<origin>`` (cached; DNS or well-known), then the signature;
4. time: not expired, not dated in the future beyond the skew, lifetime within the maximum;
5. recipients: those of this domain that exist get it; unknown ones are refused 5.1.1 in the
   per-recipient map; an envelope with no recipient here is refused 5.1.2.

Every accepted envelope of the transaction is then committed in one store transaction
(group commit) before the answer is sent: "accepted" means durable.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from relay.core import envelope as env_mod
from relay.core import jws
from relay.core import status as st
from relay.core.clock import Clock
from relay.core.envelope import Envelope
from relay.core.errors import Forbidden, SynqError, UnknownRecipient, WrongDomain
from relay.core.jws import PublicKey
from relay.core.txn import INDEX_PREFIX, EnvelopeResult, RecipientResult, TxnRequest
from relay.delivery.router import new_envelope
from relay.store.base import NewEnvelope, Store

log = logging.getLogger("synq.federation.inbound")


class KeySource(Protocol):
    async def public_key(self, domain: str, selector: str) -> PublicKey: ...


@dataclass(frozen=True, slots=True)
class _Checked:
    key: str
    envelope: Envelope | None
    item: NewEnvelope | None
    result: EnvelopeResult | None


def _refusal(exc: SynqError) -> EnvelopeResult:
    return EnvelopeResult("rejected", exc.status.code, exc.message)


class InboundHandler:
    def __init__(self, store: Store, keys: KeySource, domain: str, clock: Clock) -> None:
        self.store = store
        self.keys = keys
        self.domain = domain
        self.clock = clock

    async def _check(self, index: int, origin: str, token: str, now: datetime) -> _Checked:
        key = f"{INDEX_PREFIX}{index}"
        try:
            parsed = jws.parse_compact(token)
            envelope = env_mod.decode(parsed.payload)
        except SynqError as exc:
            return _Checked(key, None, None, _refusal(exc))
        key = envelope.id
        try:
            if envelope.sender.domain != origin:
                raise Forbidden(
                    f"envelope is from {envelope.sender.domain}, but the transaction's origin is {origin}"
                )
            jws.verify(parsed, await self.keys.public_key(origin, parsed.kid))
            env_mod.check_times(envelope, now)
            local, refused = await self._recipients(envelope)
        except SynqError as exc:
            return _Checked(key, envelope, None, _refusal(exc))
        item = new_envelope(envelope, token, local, (), f"federation:{origin}", refused)
        return _Checked(key, envelope, item, None)

    async def _recipients(self, envelope: Envelope) -> tuple[list[str], list[tuple[str, str, str]]]:
        ours = [a for a in envelope.recipients if a.domain == self.domain]
        if not ours:
            raise WrongDomain(f"no recipient of this envelope is at {self.domain}")
        existing = await self.store.existing_agents(a.local for a in ours)
        local = [a.local for a in ours if a.local in existing]
        refused = [
            (str(a), st.UNKNOWN_RECIPIENT.code, "no such agent")
            for a in ours
            if a.local not in existing
        ]
        if not local:
            raise UnknownRecipient("no such agent: " + ", ".join(r[0] for r in refused))
        return local, refused

    async def handle(self, txn_id: str, request: TxnRequest) -> dict[str, EnvelopeResult]:
        now = self.clock.now()
        checked = await asyncio.gather(
            *(self._check(i, request.origin, t, now) for i, t in enumerate(request.envelopes))
        )
        results: dict[str, EnvelopeResult] = {}
        to_store: list[_Checked] = []
        for c in checked:
            if c.result is not None:
                results[c.key] = c.result
            elif c.key in results or any(o.key == c.key for o in to_store):
                # The same envelope twice in one transaction: the first copy counts.
                results.setdefault(c.key, EnvelopeResult("duplicate", st.OK.code))
            else:
                to_store.append(c)
        if to_store:
            accepted = await asyncio.shield(
                self.store.accept_many([c.item for c in to_store if c.item is not None], now)
            )
            for c, res in zip(to_store, accepted, strict=True):
                assert c.item is not None
                recipients = {
                    addr: RecipientResult(code, reason) for addr, code, reason in c.item.refused
                }
                results[c.key] = EnvelopeResult(
                    "duplicate" if res.duplicate else "accepted", st.OK.code, "", recipients
                )
        rejected = sum(1 for r in results.values() if r.status == "rejected")
        log.info(
            "txn %s from %s: %d envelopes, %d rejected",
            txn_id,
            request.origin,
            len(request.envelopes),
            rejected,
        )
        return results
