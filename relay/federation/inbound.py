"""The receiving side of federation: one transaction in, per-envelope results out (SPEC.md §8.3).

A source address whose envelopes keep failing to prove authentic is refused first (step 0):
``429`` for the whole transaction, before any key look-up or signature check.

For every envelope, in this order (the first failing step decides its result):

1. structure of the JWS (``parse_compact``) and of the envelope (``decode``);
2. the envelope's ``from`` domain is the transaction's ``origin`` — a relay speaks only for its
   own domain, so nobody can use a partner as an open relay, and a key lookup for the origin
   is the only one a transaction can trigger;
3. the domain gate of the partner policy (relay.core.policy): a domain this relay does not
   exchange messages with is refused 5.7.1 before any DNS look-up is spent on it;
4. the key ``<kid>._synqkey.<origin>`` (cached; DNS or well-known), then the signature;
5. time: not expired, not dated in the future beyond the skew, lifetime within the maximum;
6. rate limits (relay.core.ratelimit): one token from the ``from`` domain's bucket and one from
   the ``from`` address's, or 4.7.0 and the partner's queue retries later. Charged only for
   authentic envelopes, so forgeries cannot spend a real partner's allowance;
7. recipients: those of this domain that exist, whose agent rules accept the sender and whose
   mailbox has room get it; unknown ones are refused 5.1.1, ones the rules refuse 5.7.1 and
   ones whose mailbox is full 4.2.2 (SPEC.md §9.7: the partner keeps them queued and retries),
   in the per-recipient map; an envelope with no recipient here is refused 5.1.2, one with
   none left is refused with the refusal its recipients share (or, when they differ, the
   first, plus the map). A partner's signal offers and updates (kind ``signal`` with the
   signal content type, kind ``signal.update``) have no recipient here: they go to
   ``on_signal`` instead, which keeps them as replicas (SPEC.md §13.6).
8. receipts (SPEC.md §9.4): what the transaction's ``notify`` asks for each recipient taken is
   kept with its row, and a recipient whose sender asked for ``success`` gets its receipt
   built now, for the store to commit with the delivery (never for a ``dsn``: RFC 3464 §2).
   A ``delivered`` DSN from the origin's ``mailer-daemon`` about an envelope this relay sent
   marks that recipient ``delivered`` when it is committed.

Envelopes refused at step 2 or 4 — not from the origin, no key, a bad signature — are then
charged to the source address's ``unverified`` bucket (relay.core.ratelimit, SPEC.md §10.3),
the debt that step 0 of its next transactions reads. Nothing else is charged: a structure
failure costs neither I/O nor cryptography, and a domain the policy refuses is answered 5.7.1.

Every accepted envelope of the transaction is then taken into custody in one store transaction
(group commit), through the same custody path as a local submission (relay.delivery.custody),
before the answer is sent: "accepted" means durable.
A store that cannot take it — failing, too busy, or slower than FEDERATION_WRITE_TIMEOUT —
makes every envelope of the transaction 4.3.0: the partner keeps them and retries.

Replay window. A replayed envelope (same ``from`` domain and ``id``) is answered "duplicate"
and delivered nothing, for as long as the store holds its deduplication key; once it has
expired, step 5 refuses it 5.4.7 whatever the store holds. A store may therefore forget the
key once ``expires`` + MAX_CLOCK_SKEW has passed (the skew covers this relay's own clock being
stepped back), and not before; Synq's stores keep it as long as the envelope itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Protocol

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from relay.core import dsn as dsn_mod
from relay.core import envelope as env_mod
from relay.core import jws
from relay.core import status as st
from relay.core.address import MAILER_DAEMON, Address
from relay.core.clock import Clock
from relay.core.envelope import KIND_DSN, Envelope
from relay.core.errors import (
    Forbidden,
    RateLimited,
    StoreUnavailable,
    SynqError,
    UnknownRecipient,
    WrongDomain,
)
from relay.core.jws import PublicKey
from relay.core.policy import Policy
from relay.core.ratelimit import RateLimits, TokenBuckets, take_all
from relay.core.signals import is_relay_signal
from relay.core.txn import INDEX_PREFIX, EnvelopeResult, RecipientResult, TxnNotify, TxnRequest
from relay.delivery.custody import Custody, new_envelope
from relay.delivery.quota import MAILBOX_FULL, MailboxQuotas
from relay.delivery.router import Router
from relay.store.backpressure import FEDERATION_WRITE_TIMEOUT
from relay.store.base import NewEnvelope, ReceiptMark, Store
from relay.telemetry import Telemetry, context_of

log = logging.getLogger("synq.federation.inbound")

#: The span of one envelope received in a transaction, a child of the envelope's ``trace``
#: (SPEC.md §14.3): the receiving relay continues the sender's trace.
RECEIVE_SPAN: Final = "synq.federation.receive"


class KeySource(Protocol):
    async def public_key(self, domain: str, selector: str) -> PublicKey: ...


@dataclass(frozen=True, slots=True)
class _Checked:
    key: str
    envelope: Envelope | None
    item: NewEnvelope | None
    result: EnvelopeResult | None
    #: Refused for not proving authentic (steps 2 and 4): charged to the source address.
    unverified: bool = False


@dataclass(frozen=True, slots=True)
class _Parsed:
    """An envelope through steps 1–3, waiting for its key."""

    key: str
    token: str
    parsed: jws.ParsedJWS
    envelope: Envelope


#: Signatures of one transaction from which they are checked in a worker thread rather than on
#: the event loop. libsodium releases the GIL while it verifies (measured here: two threads
#: verify 1.5–1.7 times as fast as one), so a large transaction's checks run on the other core
#: while the loop reads and parses the next request; below this, the thread hand-off costs
#: more than it saves, and a single envelope (the latency path) stays on the loop.
VERIFY_IN_THREAD_MIN: Final = 16


def _signatures(pairs: list[tuple[jws.ParsedJWS, PublicKey]]) -> list[SynqError | None]:
    """Step 5 for each (token, key): None where the signature verifies, else the refusal."""
    failures: list[SynqError | None] = []
    for parsed, key in pairs:
        try:
            jws.verify(parsed, key)
        except SynqError as exc:
            failures.append(exc)
        else:
            failures.append(None)
    return failures


def _refusal(exc: SynqError) -> EnvelopeResult:
    return EnvelopeResult("rejected", exc.status.code, exc.message)


class _NoRecipientLeft(Exception):
    """Every recipient at this domain was refused; carries the per-recipient refusals."""

    def __init__(self, refused: list[tuple[str, str, str]]) -> None:
        super().__init__("every recipient was refused")
        self.refused = refused

    def result(self) -> EnvelopeResult:
        codes = {code for _, code, _ in self.refused}
        _, code, reason = self.refused[0]
        if len(codes) == 1:
            joined = "; ".join(f"{addr}: {why}" for addr, _, why in self.refused)
            return EnvelopeResult("rejected", code, joined[:300])
        recipients = {addr: RecipientResult(c, r) for addr, c, r in self.refused}
        return EnvelopeResult("rejected", code, reason, recipients)


class InboundHandler:
    def __init__(
        self,
        store: Store,
        keys: KeySource,
        domain: str,
        clock: Clock,
        *,
        policy: Policy | None = None,
        rates: RateLimits | None = None,
        custody: Custody | None = None,
        quotas: MailboxQuotas | None = None,
        write_timeout: float = FEDERATION_WRITE_TIMEOUT,
        unverified: TokenBuckets | None = None,
        router: Router | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.tracer: Tracer = tracer or Telemetry.off().tracer
        self.domain = domain
        self.clock = clock
        #: The partner policy (the relay swaps it on reload).
        self.policy = policy or Policy.open(domain)
        self.rates = rates or RateLimits.build()
        self.custody = custody or Custody(store, clock)
        #: Mailbox quotas (relay.delivery.quota), shared with the router by the relay.
        self.quotas = quotas or MailboxQuotas(store)
        self.write_timeout = write_timeout
        #: Per source address, envelopes that failed to prove authentic (SourceLimits.unverified);
        #: None: not limited.
        self.unverified = unverified
        #: Builds and signs the receipts senders ask for; without one, none are sent.
        self.router = router
        #: Told the origin of every transaction that carried an authentic envelope: that
        #: partner is up, whatever our own sender last saw (the runtime wires the sender's
        #: ``contacted``, which releases a backlog held for it; SPEC.md §9.3).
        self.on_contact: Callable[[str], Awaitable[None]] | None = None
        #: Handles partners' signal offers and updates once authentic (the runtime wires
        #: relay/federation/signals.py's ``receive``).
        self.on_signal: Callable[[Envelope], Awaitable[EnvelopeResult]] | None = None

    def _structure(self, index: int, origin: str, token: str) -> _Checked | _Parsed:
        """Steps 1–3, no I/O: structure, the ``from`` domain, the policy's domain gate."""
        key = f"{INDEX_PREFIX}{index}"
        try:
            parsed = jws.parse_compact(token)
            envelope = env_mod.decode(parsed.payload)
        except SynqError as exc:
            return _Checked(key, None, None, _refusal(exc))
        if envelope.sender.domain != origin:
            wrong = Forbidden(
                f"envelope is from {envelope.sender.domain}, but the transaction's origin is {origin}"
            )
            return _Checked(envelope.id, envelope, None, _refusal(wrong), unverified=True)
        try:
            if not self.policy.domain_permitted(origin):
                raise Forbidden(f"this relay does not exchange messages with {origin}")
        except SynqError as exc:
            return _Checked(envelope.id, envelope, None, _refusal(exc))
        return _Parsed(envelope.id, token, parsed, envelope)

    async def _key(self, origin: str, selector: str) -> PublicKey | SynqError:
        try:
            return await self.keys.public_key(origin, selector)
        except SynqError as exc:
            return exc

    def _authentic(
        self, p: _Parsed, key: PublicKey | SynqError, signature: SynqError | None, now: datetime
    ) -> _Checked | None:
        """Steps 4–6: the key, the signature (``signature``: its check's failure, see
        :func:`_signatures`), the times, the rate limits. None if all pass."""
        unproven = key if isinstance(key, SynqError) else signature
        if unproven is not None:
            return _Checked(p.key, p.envelope, None, _refusal(unproven), unverified=True)
        try:
            env_mod.check_times(p.envelope, now)
            self._charge(p.envelope.sender)
        except SynqError as exc:
            return _Checked(p.key, p.envelope, None, _refusal(exc))
        return None

    async def _check_all(
        self, origin: str, tokens: list[str], now: datetime, notify: TxnNotify
    ) -> list[_Checked]:
        """Every envelope of a transaction through steps 1–8, each in the order of the module
        docstring. The I/O is done once per transaction, not once per envelope: one key look-up
        per selector named, one existence query for every local recipient named."""
        staged = [self._structure(i, origin, t) for i, t in enumerate(tokens)]
        selectors = sorted({s.parsed.kid for s in staged if isinstance(s, _Parsed)})
        if len(selectors) == 1:
            # One key (the usual transaction): no task to spawn and wait for.
            found = [await self._key(origin, selectors[0])]
        else:
            found = await asyncio.gather(*(self._key(origin, kid) for kid in selectors))
        keys = dict(zip(selectors, found, strict=True))
        to_verify = [
            (s.parsed, key)
            for s in staged
            if isinstance(s, _Parsed) and not isinstance(key := keys[s.parsed.kid], SynqError)
        ]
        if len(to_verify) >= VERIFY_IN_THREAD_MIN:
            failures = iter(await asyncio.to_thread(_signatures, to_verify))
        else:
            failures = iter(_signatures(to_verify))
        out: list[_Checked | _Parsed] = []
        for s in staged:
            if isinstance(s, _Checked):
                out.append(s)
                continue
            key = keys[s.parsed.kid]
            failure = None if isinstance(key, SynqError) else next(failures)
            out.append(self._authentic(s, key, failure, now) or s)
        names = {
            a.local
            for s in out
            if isinstance(s, _Parsed)
            for a in s.envelope.recipients
            if a.domain == self.domain
        }
        existing: set[str] = set()
        full: Mapping[str, str] = {}
        if names:
            # Both reads at once: one round trip to the store's reader instead of two. A name
            # that is no agent has no mailbox, so asking for every name changes nothing.
            existing, full = await asyncio.gather(
                self.store.existing_agents(names), self.quotas.full(names)
            )
        checked: list[_Checked] = []
        for s in out:
            if isinstance(s, _Checked):
                checked.append(s)
                continue
            envelope = s.envelope
            if is_relay_signal(envelope.kind, envelope.content_type) and self.on_signal:
                # A partner's signal or its update (SPEC.md §13.6): kept as a replica by the
                # relay itself, not delivered to an inbox.
                result = await self.on_signal(s.envelope)
                checked.append(_Checked(s.key, s.envelope, None, result))
                continue
            try:
                local, refused = await self._recipients(s.envelope, existing, full)
            except _NoRecipientLeft as exc:
                checked.append(_Checked(s.key, s.envelope, None, exc.result()))
                continue
            except SynqError as exc:
                checked.append(_Checked(s.key, s.envelope, None, _refusal(exc)))
                continue
            item = new_envelope(s.envelope, s.token, local, (), f"federation:{origin}", refused)
            if s.envelope.kind == KIND_DSN:
                item = self._receipt_of(item, s.envelope, local, origin)
            elif s.envelope.id in notify:
                item = self._asked(item, s.envelope, local, notify[s.envelope.id])
            checked.append(_Checked(s.key, s.envelope, item, None))
        return checked

    def _asked(
        self,
        item: NewEnvelope,
        envelope: Envelope,
        local: list[str],
        asked: Mapping[str, dsn_mod.Notify],
    ) -> NewEnvelope:
        """Step 8 for an envelope whose sender asked for reports: ``item`` with what was asked
        for each of its recipients here, and a receipt for each that asked for ``success``."""
        notify: dict[str, dsn_mod.Notify] = {}
        receipts: dict[str, NewEnvelope] = {}
        for name in local:
            words = asked.get(f"{name}@{self.domain}")
            if words is None or words == dsn_mod.DEFAULT_NOTIFY:
                continue
            notify[name] = words
            if dsn_mod.SUCCESS in words and self.router is not None:
                report = self.router.receipt(
                    envelope, name, words, st.OK, "delivered to the agent's inbox"
                )
                receipts[name] = self.router.report_envelope(report, envelope.created)
        return replace(item, notify=notify, receipts=receipts) if notify else item

    def _receipt_of(
        self, item: NewEnvelope, envelope: Envelope, local: list[str], origin: str
    ) -> NewEnvelope:
        """Step 8 for a ``dsn``: when it is a receipt (relay.core.dsn.read_receipt) from the
        origin's ``mailer-daemon`` (step 2: signed by the origin) to the one local sender of
        the envelope it reports on, ``item`` marks that recipient ``delivered``; the store
        checks that this sender sent that envelope to that recipient."""
        receipt = dsn_mod.read_receipt(envelope)
        if receipt is None or len(envelope.to) != 1 or len(local) != 1:
            return item
        mark = ReceiptMark(
            origin=self.domain,
            id=receipt.original_id,
            sender=f"{local[0]}@{self.domain}",
            recipient=receipt.recipient,
            code=receipt.status,
            reason=receipt.diagnostic,
            hop=f"federation:{origin}",
        )
        return replace(item, receipt_of=mark)

    def _charge(self, sender: Address) -> None:
        rates = self.rates
        wait = take_all(
            [(rates.sender_domain, sender.domain), (rates.sender, str(sender))],
            self.clock.monotonic(),
        )
        if wait > 0:
            raise RateLimited(
                f"{sender} is sending faster than this relay accepts; retry in {wait:.0f} s",
                retry_after=wait,
            )

    async def _recipients(
        self, envelope: Envelope, existing: AbstractSet[str], full: Mapping[str, str]
    ) -> tuple[list[str], list[tuple[str, str, str]]]:
        """Step 7; ``existing``: the local agents among every recipient of the transaction;
        ``full``: those whose mailbox is full, with the reason."""
        ours = [a for a in envelope.recipients if a.domain == self.domain]
        if not ours:
            raise WrongDomain(f"no recipient of this envelope is at {self.domain}")
        local: list[str] = []
        refused: list[tuple[str, str, str]] = []
        for a in ours:
            if a.local not in existing:
                refused.append((str(a), st.UNKNOWN_RECIPIENT.code, "no such agent"))
                continue
            why = self.policy.refusal(
                envelope.sender, a, bounce_of_own=await self._bounce_of_own(envelope, a)
            )
            if why is not None:
                refused.append((str(a), st.NOT_AUTHORIZED.code, why))
            elif a.local in full:
                # Transient: recorded as refused, so the partner's retry upgrades the row
                # (the idempotent union) once the mailbox has room.
                refused.append((str(a), MAILBOX_FULL.code, full[a.local]))
            else:
                local.append(a.local)
        if not local:
            if all(code == st.UNKNOWN_RECIPIENT.code for _, code, _ in refused):
                raise UnknownRecipient("no such agent: " + ", ".join(r[0] for r in refused))
            raise _NoRecipientLeft(refused)
        return local, refused

    async def _bounce_of_own(self, envelope: Envelope, recipient: Address) -> bool:
        """Whether ``envelope`` is a delivery-status envelope about one that ``recipient`` sent
        to the DSN's domain — which agent rules must let through (relay.core.policy). Asked of
        the store, not of the envelope: a sender cannot make itself a bounce by saying so."""
        if (
            envelope.kind != KIND_DSN
            or envelope.sender.local != MAILER_DAEMON
            or envelope.in_reply_to is None
            or self.policy.agents.get(recipient.local) is None
        ):
            return False
        original = await self.store.message_status(self.domain, envelope.in_reply_to)
        return (
            original is not None
            and original.sender == str(recipient)
            and any(
                r.address.rpartition("@")[2] == envelope.sender.domain for r in original.recipients
            )
        )

    def admit(self, source: str | None) -> None:
        """Step 0: refuse a transaction from ``source`` (a SourceLimits key; None: not limited)
        while its envelopes that failed verification are unpaid for — RateLimited, ``429``
        with ``Retry-After``, which the partner's queue retries (SPEC.md §8.7)."""
        if source is None or self.unverified is None:
            return
        wait = self.unverified.wait(source, self.clock.monotonic())
        if wait > 0:
            raise RateLimited(
                f"too many envelopes from this address failed verification; retry in {wait:.0f} s",
                retry_after=wait,
            )

    def _spans(
        self,
        txn_id: str,
        origin: str,
        checked: list[_Checked],
        results: Mapping[str, EnvelopeResult],
        started: int,
    ) -> None:
        """One receive span per envelope that names a trace, from the transaction's arrival
        to now (the envelopes of a transaction are judged and committed together)."""
        for c in checked:
            if c.envelope is None or c.envelope.trace is None:
                continue
            result = results.get(c.key)
            span = self.tracer.start_span(
                RECEIVE_SPAN,
                context=context_of(c.envelope.trace),
                kind=SpanKind.SERVER,
                start_time=started,
                attributes={
                    "synq.id": c.envelope.id,
                    "synq.origin": origin,
                    "synq.txn": txn_id,
                    "synq.result": result.status if result is not None else "",
                },
            )
            if result is not None and result.status == "rejected":
                span.set_status(Status(StatusCode.ERROR, result.code))
            span.end()

    async def handle(
        self, txn_id: str, request: TxnRequest, *, source: str | None = None
    ) -> dict[str, EnvelopeResult]:
        """Check and keep one transaction; ``source``: the key of the address it came from
        (SourceLimits.key), charged for each envelope that failed to prove authentic."""
        self.admit(source)
        started = time.time_ns()
        now = self.clock.now()
        checked = await self._check_all(
            request.origin, list(request.envelopes), now, request.notify
        )
        unverified = sum(1 for c in checked if c.unverified)
        if unverified and source is not None and self.unverified is not None:
            self.unverified.charge(source, self.clock.monotonic(), unverified)
        results: dict[str, EnvelopeResult] = {}
        to_store: list[_Checked] = []
        storing: set[str] = set()
        for c in checked:
            if c.result is not None:
                results[c.key] = c.result
            elif c.key in results or c.key in storing:
                # The same envelope twice in one transaction: the first copy counts.
                results.setdefault(c.key, EnvelopeResult("duplicate", st.OK.code))
            else:
                to_store.append(c)
                storing.add(c.key)
        if to_store:
            items = [c.item for c in to_store if c.item is not None]
            try:
                accepted = await self.custody.take(items, timeout=self.write_timeout)
            except StoreUnavailable as exc:
                # Refuse what we cannot keep (4.3.0): the partner still holds every envelope
                # and retries; a write that lands late makes the retry a "duplicate".
                log.warning("txn %s from %s: %s", txn_id, request.origin, exc.message)
                for c in to_store:
                    results[c.key] = _refusal(exc)
                accepted = []
            for c, res in zip(to_store if accepted else [], accepted, strict=True):
                assert c.item is not None
                recipients = {
                    addr: RecipientResult(code, reason) for addr, code, reason in c.item.refused
                }
                results[c.key] = EnvelopeResult(
                    "duplicate" if res.duplicate else "accepted", st.OK.code, "", recipients
                )
        if to_store and self.on_contact is not None:
            await self.on_contact(request.origin)
        self._spans(txn_id, request.origin, checked, results, started)
        rejected = sum(1 for r in results.values() if r.status == "rejected")
        log.info(
            "txn %s from %s: %d envelopes, %d rejected",
            txn_id,
            request.origin,
            len(request.envelopes),
            rejected,
        )
        return results
