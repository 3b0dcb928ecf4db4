"""Submission and routing: turn a local sender's ``Draft`` into a signed envelope in custody.

This is the relay's equivalent of Postfix's cleanup + trivial-rewrite: it decides, per
recipient, "local inbox now" or "queue for the partner relay", builds and signs the envelope,
and hands it to custody (relay.delivery.custody) in one call, so the answer 202 means every
row is durable.

It also builds the relay's own delivery-status envelopes (:meth:`Router.dsn`,
:meth:`Router.report_envelope`): bounces, ``delayed`` reports and receipts (SPEC.md §9.4).
A sender that asks for ``success`` receipts (``Draft.notify``) gets one per local recipient that
reads its inbox itself, committed with the delivery; see relay/store/sql/store.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from relay.core import dsn as dsn_mod
from relay.core import envelope as env_mod
from relay.core import jws
from relay.core import status as st
from relay.core.address import MAILER_DAEMON, RESERVED_LOCALS, Address
from relay.core.clock import Clock
from relay.core.draft import Draft
from relay.core.envelope import Envelope
from relay.core.errors import (
    Forbidden,
    InvalidEnvelope,
    PayloadTooLarge,
    RateLimited,
    UnknownRecipient,
)
from relay.core.ids import uuid7
from relay.core.limits import DEFAULT_LIFETIME, MAX_ENVELOPE_BYTES, MAX_LIFETIME
from relay.core.policy import Policy
from relay.core.ratelimit import DEFAULT_AGENT_RATE, TokenBuckets
from relay.delivery.custody import Custody, new_envelope
from relay.delivery.quota import MAILBOX_FULL, MailboxQuotas
from relay.store.base import AcceptResult, AgentRecord, Hold, IdempotencyKey, NewEnvelope, Store
from relay.telemetry import Telemetry, context_of, traceparent

#: How long, in seconds, a relay process trusts what the store told it about an agent: that a
#: token hash is the agent's, that a name is a registered agent. Only these positive answers are
#: kept (an unknown token or name is asked of the store every time), so an agent added anywhere
#: is usable at once; what the cache can delay is a *removal* made by another process (``synq
#: agent remove`` runs in its own process; several ``synq serve`` may share one PostgreSQL): for
#: at most this long after it, a relay that had the agent cached still takes its token and still
#: routes to its inbox (the store then refuses the inbox row, 422 ``unknown_recipient``, and the
#: entry is dropped). A removal made through :meth:`AgentCache.remove` in the same process takes
#: effect at once. SPEC.md §6.1 names the same bound. Why a cache at all: without it every send
#: costs two store reads (token, recipients), each a hop to the database thread or server.
AGENT_CACHE_TTL: Final = 5.0

#: Entries each of the two agent maps holds at most. Only agents that exist are ever cached, so
#: no client can grow the maps with made-up tokens or names; the cap bounds the memory of a relay
#: with very many agents (past it, the cache starts afresh, costing a store read per miss).
MAX_AGENT_CACHE_ENTRIES: Final = 10_000

#: Submissions the per-agent rate limit does not meter: an adapter-backed agent's replies to a
#: message the relay delivered to it (bounded by the traffic that caused them, and refusing one
#: would make the dispatcher deliver the original again) and the operator's own ``synq send``.
UNMETERED_VIA: Final = frozenset({"adapter", "cli"})


@dataclass(frozen=True, slots=True)
class Submitted:
    """An envelope built, signed and taken into custody: durable."""

    envelope: Envelope
    token: str
    result: AcceptResult

    @property
    def id(self) -> str:
        return self.envelope.id


@dataclass(frozen=True, slots=True)
class Prepared:
    """An envelope that passed every check of a submission, built and signed, not yet stored."""

    envelope: Envelope
    token: str
    item: NewEnvelope
    #: The accept span (SPEC.md §14.3), ended when custody is taken or refused.
    span: Span | None = None


#: Name of the span that covers a local submission from its checks to the commit.
ACCEPT_SPAN: Final = "synq.accept"


class AgentCache:
    """What the store said about local agents, kept for :data:`AGENT_CACHE_TTL` seconds.

    Positive answers only: a token hash's agent, and the names that exist. Time is the injected
    clock's monotonic time, so tests move it instead of sleeping. Code in the relay process that
    removes an agent or changes its token goes through :meth:`remove` or calls :meth:`forget`,
    so that the old token stops working here at once.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        ttl: float = AGENT_CACHE_TTL,
        max_entries: int = MAX_AGENT_CACHE_ENTRIES,
    ) -> None:
        self._store = store
        self._clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        #: token hash → (valid until, agent)
        self._tokens: dict[str, tuple[float, AgentRecord]] = {}
        #: agent name → valid until
        self._names: dict[str, float] = {}
        #: Bumped by every removal: a read that began before it must not re-cache what it saw.
        self._generation = 0

    async def for_token(self, token_hash: str) -> AgentRecord | None:
        """The agent whose token hashes to ``token_hash``, or None."""
        now = self._clock.monotonic()
        hit = self._tokens.get(token_hash)
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._generation
        agent = await self._store.agent_for_token(token_hash)
        if agent is None:
            self._tokens.pop(token_hash, None)
        elif generation == self._generation:
            until = now + self.ttl
            self._put(self._tokens, token_hash, (until, agent))
            self._put(self._names, agent.name, until)
        return agent

    async def existing(self, names: Iterable[str]) -> set[str]:
        """The subset of ``names`` that are registered agents."""
        now = self._clock.monotonic()
        wanted = set(names)
        known = {n for n in wanted if self._names.get(n, 0.0) > now}
        if len(known) == len(wanted):
            return known
        generation = self._generation
        found = await self._store.existing_agents(wanted - known)
        if generation == self._generation:
            until = now + self.ttl
            for name in found:
                self._put(self._names, name, until)
        return known | found

    def forget(self, names: Iterable[str]) -> None:
        """Drop every entry about ``names`` (removed, or found stale by the store)."""
        gone = set(names)
        if not gone:
            return
        self._generation += 1
        for name in gone:
            self._names.pop(name, None)
        for key in [k for k, (_, agent) in self._tokens.items() if agent.name in gone]:
            del self._tokens[key]

    async def remove(self, name: str) -> bool:
        """Remove the agent from the store and from this cache: its token stops working here
        at once. False if there was no such agent."""
        try:
            return await self._store.remove_agent(name)
        finally:
            self.forget([name])

    def _put(self, table: dict[str, Any], key: str, value: Any) -> None:
        if len(table) >= self.max_entries and key not in table:
            now = self._clock.monotonic()
            for k in [k for k, v in table.items() if (v[0] if isinstance(v, tuple) else v) <= now]:
                del table[k]
            if len(table) >= self.max_entries:
                table.clear()
        table[key] = value


class Router:
    def __init__(
        self,
        store: Store,
        domain: str,
        signer: Callable[[datetime], jws.SigningKey],
        clock: Clock,
        custody: Custody | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self.domain = domain
        #: The relay's tracer (relay.telemetry); the no-op one records nothing.
        self.tracer: Tracer = tracer or Telemetry.off().tracer
        self._signer = signer
        self._clock = clock
        #: The partner policy local submissions obey (the relay swaps it on reload).
        self.policy = Policy.open(domain)
        #: Where envelopes enter the store; shared with inbound federation (one gate).
        self.custody = custody or Custody(store, clock)
        #: Per local agent token buckets (relay.core.ratelimit), charged on every submission an
        #: agent makes, whatever face it came through (API, A2A, MCP); see UNMETERED_VIA.
        self.agent_rates = TokenBuckets(DEFAULT_AGENT_RATE)
        #: Local agents by token and by name (:class:`AgentCache`): the API's authentication
        #: and the recipient check read them here rather than from the store on every send.
        self.agents = AgentCache(store, clock)
        #: Mailbox quotas (relay.delivery.quota): a local recipient whose mailbox is full is
        #: held, not refused (SPEC.md §9.7). The relay shares one with the inbound handler.
        self.quotas = MailboxQuotas(store)
        #: Whether a remote destination is known to be down, asked with the destination domain
        #: and the time for each envelope prepared here: a hold, and its recipients there are
        #: queued held by their accept (SPEC.md §9.3), or None. The federation sender answers
        #: (runtime.py wires it: this layer does not import federation); None asks nobody.
        self.holds: Callable[[str, datetime], Hold | None] | None = None

    def split(self, recipients: Sequence[Address]) -> tuple[list[str], list[str]]:
        """(local agent names, remote addresses)."""
        local = [a.local for a in recipients if a.domain == self.domain]
        remote = [str(a) for a in recipients if a.domain != self.domain]
        return local, remote

    async def check_local(self, names: Iterable[str]) -> None:
        """Refuse the whole submission if any local recipient does not exist (SMTP's 550 5.1.1
        at RCPT time: better to tell the sender now than to accept and bounce later)."""
        wanted = set(names)
        if not wanted:
            return
        missing = sorted(wanted - await self.agents.existing(wanted))
        if missing:
            addrs = [f"{n}@{self.domain}" for n in missing]
            raise UnknownRecipient(f"no such agent: {', '.join(addrs)}", recipients=addrs)

    def check_policy(self, sender: Address, recipients: Sequence[Address]) -> None:
        """Refuse the whole submission if the partner policy refuses any recipient, naming them
        in ``details.recipients`` as ``check_local`` does (403, 5.7.1)."""
        refused = [(a, self.policy.refusal(sender, a)) for a in recipients]
        refused = [(a, why) for a, why in refused if why is not None]
        if refused:
            raise Forbidden(
                f"refused by policy: {refused[0][1]}", recipients=[str(a) for a, _ in refused]
            )

    def build(self, draft: Draft, *, trace: str | None = None) -> tuple[Envelope, str]:
        """The envelope ``draft`` describes, dated now and signed: (envelope, compact JWS).

        The draft's fields were validated when it was made (relay.core.draft), so the envelope
        is assembled without a second validation pass; what only the clock and the encoding
        know — ``expires`` within its bounds, the size — is checked here. ``trace``: the
        ``traceparent`` of the accept span, written instead of the draft's (SPEC.md §3.1: the
        hop that created the envelope).
        """
        # Millisecond precision, as the envelope is written on the wire (SPEC.md §3), so the
        # model and the signed bytes say exactly the same time.
        now = self._clock.now()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        expires = draft.expires
        if expires is None:
            expires = now + DEFAULT_LIFETIME
        elif expires <= now:
            raise InvalidEnvelope("expires lies in the past")
        elif expires - now > MAX_LIFETIME:
            raise InvalidEnvelope(f"expires lies more than {MAX_LIFETIME.days} days ahead")
        envelope = Envelope.model_construct(
            v=1,
            id=draft.id or uuid7(now),
            from_=str(draft.sender),
            to=[str(a) for a in draft.to],
            created=now,
            expires=expires,
            thread=draft.thread,
            in_reply_to=draft.in_reply_to,
            kind=draft.kind,
            content_type=draft.content_type,
            body=draft.body,
            trace=trace or draft.trace,
        )
        payload = env_mod.encode(envelope)
        if len(payload) > MAX_ENVELOPE_BYTES:
            raise PayloadTooLarge(
                f"envelope is {len(payload)} bytes; the limit is {MAX_ENVELOPE_BYTES}"
            )
        return envelope, jws.sign(payload, self._signer(now))

    async def prepare(
        self,
        draft: Draft,
        *,
        via: str = "api",
        idempotency: IdempotencyKey | None = None,
        full: Mapping[str, str] | None = None,
    ) -> Prepared:
        """Every check of a local submission, in order — sender, rate, reserved and unknown
        local recipients, partner policy, the envelope itself — then build and sign it, and
        hold it for local recipients whose mailbox is full and for remote ones whose
        destination is known to be down (:attr:`holds`). Nothing is stored: :meth:`commit`
        takes custody, recording ``idempotency`` with the envelope. ``full``: the full
        mailboxes as the caller already read them for a whole batch (``MailboxQuotas.full``);
        None reads them for this draft.

        The accept span starts here: a child of the draft's ``trace`` when the agent gave one,
        else of the current span (the face's request, or the delivery an agent answers), and
        its ``traceparent`` becomes the envelope's ``trace``."""
        parent = context_of(draft.trace)
        span = self.tracer.start_span(
            ACCEPT_SPAN,
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={"synq.via": via, "synq.from": str(draft.sender)},
        )
        try:
            return await self._prepare(draft, span, via, idempotency, full)
        except BaseException as exc:
            _fail(span, exc)
            span.end()
            raise

    async def _prepare(
        self,
        draft: Draft,
        span: Span,
        via: str,
        idempotency: IdempotencyKey | None,
        full: Mapping[str, str] | None,
    ) -> Prepared:
        sender = draft.sender
        if sender.domain != self.domain:
            raise InvalidEnvelope(f"sender {sender} is not an address of {self.domain}")
        wait = (
            0.0
            if via in UNMETERED_VIA
            else self.agent_rates.take(sender.local, self._clock.monotonic())
        )
        if wait > 0:
            raise RateLimited(
                f"{sender} is sending faster than this relay accepts", retry_after=wait
            )
        local, remote = self.split(draft.to)
        for name in local:
            if name in RESERVED_LOCALS:
                raise UnknownRecipient(f"{name}@{self.domain} does not accept agent messages")
        await self.check_local(local)
        self.check_policy(sender, draft.to)
        envelope, token = self.build(draft, trace=traceparent(span))
        if span.is_recording():
            span.set_attribute("synq.id", envelope.id)
        held: list[tuple[str, str, str]] = []
        if local:
            # Mail for a full mailbox is held and delivered once there is room (SPEC.md §9.7):
            # the sender's status says 4.2.2 and why; the 202 is the same.
            if full is None:
                full = await self.quotas.full(local)
            if full:
                held = [(name, MAILBOX_FULL.code, full[name]) for name in local if name in full]
                local = [name for name in local if name not in full]
        item = new_envelope(
            envelope,
            token,
            local,
            remote,
            via,
            origin=self.domain,
            idempotency=idempotency,
            held=held,
        )
        if remote:
            item = self._with_holds(item, draft.to)
        if draft.notify != dsn_mod.DEFAULT_NOTIFY:
            item = self._with_notify(item, envelope, draft.notify)
        return Prepared(envelope, token, item, span)

    def _with_holds(self, item: NewEnvelope, recipients: Iterable[Address]) -> NewEnvelope:
        """``item`` with the holds of its remote destinations known to be down (:attr:`holds`);
        ``item`` itself when none is."""
        ask = self.holds
        if ask is None:
            return item
        now = self._clock.now()
        holds: dict[str, Hold] = {}
        asked: set[str] = set()
        for a in recipients:
            domain = a.domain
            if domain == self.domain or domain in asked:
                continue
            asked.add(domain)
            hold = ask(domain, now)
            if hold is not None:
                holds[domain] = hold
        return replace(item, holds=holds) if holds else item

    def _with_notify(
        self, item: NewEnvelope, envelope: Envelope, notify: dsn_mod.Notify
    ) -> NewEnvelope:
        """``item`` with what its sender asked to be told about each recipient, and, when that
        includes ``success``, a receipt per local recipient: the store keeps those of agents
        that read their inbox themselves, delivered the moment the envelope is committed
        (SPEC.md §9.4); an adapter-backed agent's receipt waits for the hand-over."""
        asked = dict.fromkeys([*item.local, *item.remote, *(h[0] for h in item.held)], notify)
        receipts: dict[str, NewEnvelope] = {}
        if dsn_mod.SUCCESS in notify:
            for name in item.local:
                receipts[name] = self.report_envelope(
                    self.receipt(envelope, name, notify, st.OK, "delivered to the agent's inbox"),
                    envelope.created,
                )
        return replace(item, notify=asked, receipts=receipts)

    def receipt(
        self,
        envelope: Envelope,
        agent: str,
        notify: dsn_mod.Notify,
        status: st.Status,
        diagnostic: str,
        attempts: int = 1,
    ) -> dsn_mod.Report:
        """The ``delivered`` report on ``envelope`` for the local ``agent``, dated now."""
        return dsn_mod.Report.about(
            envelope,
            f"{agent}@{self.domain}",
            status=status.code,
            diagnostic=diagnostic,
            attempts=attempts,
            at=self._clock.now(),
            action=dsn_mod.ACTION_DELIVERED,
            notify=notify,
        )

    async def commit(self, prepared: Sequence[Prepared]) -> list[Submitted]:
        """Take custody of prepared envelopes in one store call (:class:`Custody`): durable when
        it returns, all or none. A local recipient removed since the check (by another process,
        within :data:`AGENT_CACHE_TTL`) fails the call with ``UnknownRecipient`` naming it, as
        :meth:`check_local` would have, and leaves the cache without the stale entries. An
        envelope whose idempotency key was taken meanwhile is not stored: its ``result.prior``
        names the key's first use (relay.delivery.mailbox answers with it)."""
        if not prepared:
            return []
        items = [p.item for p in prepared]
        try:
            results = await self.custody.take(items)
        except BaseException as exc:
            for p in prepared:
                if p.span is not None:
                    _fail(p.span, exc)
                    p.span.end()
            if isinstance(exc, UnknownRecipient):
                names = {name for item in items for name in item.local}
                self.agents.forget(names)
                await self.check_local(names)  # now from the store: raises, naming them
            raise
        for p in prepared:
            if p.span is not None:
                p.span.end()
        return [Submitted(p.envelope, p.token, r) for p, r in zip(prepared, results, strict=True)]

    async def commit_each(self, prepared: Sequence[Prepared]) -> list[Submitted | UnknownRecipient]:
        """:meth:`commit` for a batch whose envelopes are independent: one store call for all,
        and should a recipient have vanished since the check, only the envelopes addressed to
        it fail (with ``UnknownRecipient``), the others are committed by a second call."""
        try:
            return list(await self.commit(prepared))
        except UnknownRecipient:
            pass
        # commit() dropped the stale entries; the names below come from the store.
        outcome: list[Submitted | UnknownRecipient | None] = []
        kept: list[Prepared] = []
        for p in prepared:
            try:
                await self.check_local(p.item.local)
            except UnknownRecipient as exc:
                outcome.append(exc)
            else:
                outcome.append(None)
                kept.append(p)
        done = iter(await self.commit(kept))
        return [next(done) if o is None else o for o in outcome]

    async def submit(self, draft: Draft, *, via: str = "api") -> Submitted:
        """Build, sign and take custody of an envelope from a local sender."""
        return (await self.commit([await self.prepare(draft, via=via)]))[0]

    async def dsn(self, report: dsn_mod.Report, arrival: datetime | None) -> NewEnvelope | None:
        """The delivery-status envelope carrying ``report`` to the original sender, from
        ``mailer-daemon@<this domain>`` (RFC 3464), ready for the store — queued for federation
        when the sender is remote. None when no DSN is due: the sender did not ask for this
        action (RFC 3461 §4.1), the original is a DSN (RFC 3464 §2), or the local sender no
        longer exists."""
        if not dsn_mod.should_report(report):
            return None
        local, _remote = self.split([Address.parse(report.original_from)])
        if local and not await self.store.existing_agents(local):
            return None
        return self.report_envelope(report, arrival)

    def report_envelope(self, report: dsn_mod.Report, arrival: datetime | None) -> NewEnvelope:
        """The signed ``dsn`` envelope for ``report``, without :meth:`dsn`'s checks: for a
        caller that has made them (a receipt to an agent that is sending right now, or one
        the store takes only with the delivery it reports). It asks for no report itself."""
        sender = Address.parse(report.original_from)
        local, remote = self.split([sender])
        envelope, token = self.build(
            Draft(
                Address(MAILER_DAEMON, self.domain),
                (sender,),
                dsn_mod.CONTENT_TYPE,
                dsn_mod.dsn_body(report, self.domain, arrival),
                kind=dsn_mod.KIND_DSN,
                thread=report.thread,
                in_reply_to=report.original_id,
            )
        )
        item = new_envelope(envelope, token, local, remote, "relay")
        return self._with_holds(item, (sender,)) if remote else item


def _fail(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed by ``exc``: its class name only (a message may quote the input)."""
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
