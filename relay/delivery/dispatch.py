"""Local delivery to adapter-backed agents: how an A2A agent or an MCP server gains an inbox.

Every envelope for such an agent is first committed to its inbox like any other. The
dispatcher then leases due inbox rows (``Store.lease_deliveries``), hands each to the agent's
adapter, and settles the outcome:

* the agent took it → the inbox row is acked, the event log says ``delivered``, and a sender
  that asked for ``success`` gets its receipt (a ``delivered`` DSN, SPEC.md §9.4);
* a transient failure (agent down, timeout, 5xx) → retry with backoff, the row stays in the
  inbox, so an agent that is down for an hour receives its mail when it is back; a sender that
  asked for ``delay`` is told once, when the row has waited ``DELAY_NOTICE_AFTER``;
* a permanent refusal, or expiry of the envelope → ``bounced``, and a DSN from
  ``mailer-daemon@<our domain>`` goes to the sender — across federation when the sender is a
  partner's agent (a delivery that the receiver accepted and later fails locally is bounced by
  the receiver, SPEC.md §9.4) — unless the sender asked not to hear of failures.

Every report is committed with the outcome it reports (``Store.settle_deliveries``): no receipt
for a hand-over the store did not record, none lost for one it did.

An adapter may keep something running for the agents it serves (the MCP adapter supervises a
server process per stdio endpoint). Such an adapter is a :class:`Holder`: after every pass the
dispatcher asks the store which of the agents it holds for still exist, and lets go of the rest.
``synq agent remove`` runs in another process and only writes the store; the store's wake-up for
that commit (SQLite: within ``OTHER_PROCESS_POLL_INTERVAL``; otherwise at the latest after
``MAX_IDLE_WAIT``) wakes the dispatcher, so a removed agent's server stops instead of being
restarted for ever.

Deliveries run concurrently up to ``MAX_CONCURRENT_DELIVERIES``, each bounded by
``DELIVERY_TIMEOUT``. A crash mid-delivery leaves the lease to lapse (or, on SQLite, to be
released at the next start) and the envelope is delivered again: adapters pass the envelope id
to the agent (A2A ``messageId``) so the agent can recognise the repeat.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Final, Literal, Protocol, runtime_checkable

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from relay.core import dsn as dsn_mod
from relay.core import envelope as env_mod
from relay.core import status as st
from relay.core.address import Address
from relay.core.clock import Clock
from relay.core.draft import Draft
from relay.core.envelope import KIND_DSN, Envelope
from relay.core.errors import AttemptFailed, SynqError
from relay.core.jws import b64url_decode
from relay.core.retry import RetryPolicy
from relay.delivery.adapters import AgentAdapter, Reply
from relay.delivery.router import Router
from relay.logs import event
from relay.store.base import DELIVERY_CHANNEL, DeliveryOutcome, LocalDelivery, NewEnvelope, Store
from relay.telemetry import Telemetry, context_of

log = logging.getLogger("synq.delivery")

#: Inbox rows leased per pass.
LEASE_BATCH: Final = 200
#: Deliveries in flight at once. Bounds the connections and memory a burst of mail for
#: adapter-backed agents can take.
MAX_CONCURRENT_DELIVERIES: Final = 32
#: Longest one delivery may take, including streaming every update of the task it starts.
#: A hung agent costs one slot for this long, then the envelope is retried later.
DELIVERY_TIMEOUT: Final = 600.0
#: Lease longer than a delivery can take, so a live dispatcher never loses its rows.
LEASE_DURATION: Final = timedelta(seconds=DELIVERY_TIMEOUT + 60)
#: Local agents restart faster than partner relays: retry sooner, cap lower.
LOCAL_RETRY: Final = RetryPolicy(initial=timedelta(seconds=2), maximum=timedelta(minutes=5))
#: Longest idle wait between passes (a safety net for lost wake-ups).
MAX_IDLE_WAIT: Final = 30.0
#: Span names (SPEC.md §14.3): the wait in the inbox from custody to this attempt, and the
#: attempt itself (the adapter's calls to the agent are its children).
QUEUE_WAIT_SPAN: Final = "synq.queue.wait"
DELIVER_SPAN: Final = "synq.deliver"


@runtime_checkable
class Holder(Protocol):
    """An adapter that keeps resources (processes, sessions) for the agents it served."""

    def agents_held(self) -> Collection[str]:
        """Names of the agents something is kept running for."""
        ...

    async def release(self, agents: Collection[str]) -> None:
        """These agents are gone: stop what was kept for them alone."""
        ...


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        router: Router,
        clock: Clock,
        adapters: Mapping[str, AgentAdapter],
        policy: RetryPolicy = LOCAL_RETRY,
        rng: random.Random | None = None,
        timeout: float = DELIVERY_TIMEOUT,
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self.tracer: Tracer = tracer or Telemetry.off().tracer
        self.router = router
        self.clock = clock
        self.adapters = dict(adapters)
        self.policy = policy
        self.rng = rng or random.Random()  # noqa: S311 — jitter, not secrecy
        self.timeout = timeout
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)

    async def run_once(self) -> int:
        """Hand over every due inbox row once; return how many were settled."""
        total = 0
        while True:
            now = self.clock.now()
            rows = await self.store.lease_deliveries(
                now, lease_until=now + LEASE_DURATION, limit=LEASE_BATCH
            )
            if not rows:
                return total
            if len(rows) == 1:
                # One row (an idle inbox's delivery): no task to spawn and wait for.
                results = [await self._one(rows[0])]
            else:
                results = await asyncio.gather(*(self._one(row) for row in rows))
            outcomes = [o for o, _ in results]
            dsns = [d for _, d in results if d is not None]
            settled = self.clock.now()
            await self.store.settle_deliveries(outcomes, dsns, settled)
            for row, outcome in zip(rows, outcomes, strict=True):
                self._log(row, outcome, settled)
            total += len(rows)
            if len(rows) < LEASE_BATCH:
                return total

    async def _one(self, row: LocalDelivery) -> tuple[DeliveryOutcome, NewEnvelope | None]:
        """Hand ``row`` to its agent: the outcome, and the report it owes the sender, if any."""
        now = self.clock.now()
        envelope = env_mod.decode(b64url_decode(row.token.split(".")[1]))
        if row.expires <= now:
            last = f"; last error: {row.code} {row.reason}" if row.code else ""
            reason = f"not delivered to the agent before it expired{last}"
            return await self._bounce(row, envelope, st.EXPIRED, reason, counted=False)
        if envelope.kind == KIND_DSN:
            # Delivery reports stay in the inbox for the operator (``synq inbox``); an A2A or
            # MCP agent has no notion of them, and answering one could start a loop.
            return self._settled(row, "delivered", st.OK, "kept in the inbox", "inbox"), None
        agent = await self.store.get_agent(row.agent)
        adapter = self.adapters.get(agent.kind) if agent is not None else None
        if agent is None or adapter is None:
            kind = agent.kind if agent else "?"
            return await self._defer(
                row, envelope, st.TRANSIENT, f"no adapter for {kind} agents here"
            )
        parent = context_of(envelope.trace)
        attributes: dict[str, str | int] = {
            "synq.id": envelope.id,
            "synq.to": f"{row.agent}@{self.router.domain}",
            "synq.agent.kind": agent.kind,
            "synq.attempt": row.attempts + 1,
        }
        if row.accepted is not None:
            # The wait as a span of its own, with its real start: custody of the envelope.
            wait = self.tracer.start_span(
                QUEUE_WAIT_SPAN,
                context=parent,
                attributes=attributes,
                start_time=_nanos(row.accepted),
            )
            wait.end(_nanos(now))
        try:
            with self.tracer.start_as_current_span(
                DELIVER_SPAN, context=parent, kind=SpanKind.INTERNAL, attributes=attributes
            ) as span:
                try:
                    async with self._slots, asyncio.timeout(self.timeout):
                        await adapter.deliver(agent, envelope, self._replier(row.agent, envelope))
                except AttemptFailed as exc:
                    span.set_status(Status(StatusCode.ERROR, exc.status.code))
                    raise
        except AttemptFailed as exc:
            if exc.permanent:
                return await self._bounce(row, envelope, exc.status, exc.reason, counted=True)
            return await self._defer(row, envelope, exc.status, exc.reason)
        except TimeoutError:
            reason = f"the agent did not finish within {self.timeout:g} s"
            return await self._defer(row, envelope, st.NO_ANSWER, reason)
        except SynqError as exc:
            status = exc.status if exc.status.is_transient else st.TRANSIENT
            return await self._defer(row, envelope, status, exc.message)
        except Exception:
            log.exception("delivery of %s to %s failed", row.id, row.agent)
            return await self._defer(row, envelope, st.TRANSIENT, "delivery failed")
        reason = "the agent took it"
        receipt = None
        if dsn_mod.SUCCESS in row.notify:
            report = self.router.receipt(
                envelope, row.agent, row.notify, st.DELIVERED, reason, row.attempts + 1
            )
            receipt = await self.router.dsn(report, envelope.created)
        return self._settled(row, "delivered", st.DELIVERED, reason, agent.endpoint), receipt

    def _log(self, row: LocalDelivery, outcome: DeliveryOutcome, at: datetime) -> None:
        """One line per settled attempt (SPEC.md §14.4)."""
        delay = None
        if outcome.next_attempt is not None:
            delay = round(max((outcome.next_attempt - at).total_seconds(), 0.0), 3)
        attempt = row.attempts + (0 if outcome.code == st.EXPIRED.code else 1)
        name = "deferred" if outcome.state == "queued" else outcome.state
        event(
            log,
            name,
            event=name,
            id=row.id,
            to=f"{row.agent}@{self.router.domain}",
            destination=f"local:{row.agent}",
            relay=outcome.hop,
            code=outcome.code,
            attempt=attempt,
            delay=delay,
            **{"from": row.sender},
        )

    def _replier(self, agent: str, original: Envelope) -> _Replier:
        return _Replier(self.router, Address(agent, self.router.domain), original)

    def _settled(
        self,
        row: LocalDelivery,
        state: Literal["delivered", "bounced"],
        status: st.Status,
        reason: str,
        hop: str | None,
    ) -> DeliveryOutcome:
        return DeliveryOutcome(
            agent=row.agent,
            seq=row.seq,
            state=state,
            code=status.code,
            reason=reason,
            hop=hop,
        )

    async def _defer(
        self, row: LocalDelivery, envelope: Envelope, status: st.Status, reason: str
    ) -> tuple[DeliveryOutcome, NewEnvelope | None]:
        """Retry later; and the one ``delayed`` report, when the sender asked for it and the
        row has waited long enough (relay.core.dsn.delay_due)."""
        now = self.clock.now()
        retry_at = min(self.policy.next_attempt(now, row.attempts + 1, self.rng), row.expires)
        delayed = dsn_mod.delay_due(row.notify, row.delay_reported, row.accepted, now)
        report = None
        if delayed:
            attempts = row.attempts + 1
            delay = self._report(row, envelope, status, reason, attempts, dsn_mod.ACTION_DELAYED)
            report = await self.router.dsn(delay, envelope.created)
        outcome = DeliveryOutcome(
            agent=row.agent,
            seq=row.seq,
            state="queued",
            code=status.code,
            reason=reason,
            next_attempt=retry_at,
            delay_reported=delayed,
        )
        return outcome, report

    def _report(
        self,
        row: LocalDelivery,
        envelope: Envelope,
        status: st.Status,
        reason: str,
        attempts: int,
        action: str,
    ) -> dsn_mod.Report:
        return dsn_mod.Report.about(
            envelope,
            f"{row.agent}@{self.router.domain}",
            status=status.code,
            diagnostic=reason,
            attempts=attempts,
            at=self.clock.now(),
            action=action,
            notify=row.notify,
        )

    async def _bounce(
        self,
        row: LocalDelivery,
        envelope: Envelope,
        status: st.Status,
        reason: str,
        *,
        counted: bool,
    ) -> tuple[DeliveryOutcome, NewEnvelope | None]:
        attempts = row.attempts + (1 if counted else 0)
        failure = self._report(row, envelope, status, reason, attempts, dsn_mod.ACTION_FAILED)
        dsn = await self.router.dsn(failure, envelope.created)
        return self._settled(row, "bounced", status, reason, None), dsn

    async def release_removed(self) -> int:
        """Let adapters stop what they keep for agents that no longer exist; return how many
        agents were released. One store read per holding adapter, none when nothing is held."""
        released = 0
        for adapter in self.adapters.values():
            if not isinstance(adapter, Holder):
                continue
            held = set(adapter.agents_held())
            if not held:
                continue
            gone = held - await self.store.existing_agents(held)
            if gone:
                await adapter.release(gone)
                released += len(gone)
        return released

    async def run(self) -> None:
        """Run passes forever (cancel to stop)."""
        async with self.store.notifier.listen(DELIVERY_CHANNEL) as listener:
            while True:
                try:
                    await self.run_once()
                    await self.release_removed()
                except SynqError as exc:
                    log.warning("delivery pass failed: %s", exc.message)
                except Exception:
                    log.exception("delivery pass failed")
                wait = MAX_IDLE_WAIT
                try:
                    due = await self.store.next_delivery_due()
                except SynqError:
                    due = None
                if due is not None:
                    wait = min(wait, max((due - self.clock.now()).total_seconds(), 0.05))
                await listener.wait(wait)

    async def close(self) -> None:
        for adapter in self.adapters.values():
            await adapter.close()


def _nanos(at: datetime) -> int:
    """An OpenTelemetry timestamp: nanoseconds since the epoch."""
    return int(at.timestamp() * 1_000_000_000)


class _Replier:
    """Sends an agent's answers back to the original sender, as the agent."""

    def __init__(self, router: Router, agent: Address, original: Envelope) -> None:
        self.router = router
        self.agent = agent
        self.original = original

    async def __call__(self, reply: Reply) -> str:
        draft = Draft(
            self.agent,
            (self.original.sender,),
            reply.content_type,
            reply.body,
            kind=reply.kind,
            thread=reply.thread if reply.thread is not None else self.original.thread,
            in_reply_to=reply.in_reply_to if reply.in_reply_to is not None else self.original.id,
        )
        submitted = await self.router.submit(draft, via="adapter")
        return submitted.envelope.id
