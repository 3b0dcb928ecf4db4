"""The sending side of federation: the per-destination queue runner (SPEC.md §8.2, §9).

Like Postfix's qmgr + smtp, without a queue directory: the queue is the set of ``queued``
remote recipient rows in the store. One pass (``run_once``):

1. lease the due rows (a lease hides them from other relay processes on the same store);
2. bounce rows whose envelope has expired (5.4.7) — lifetime is the envelope's ``expires``;
3. per destination domain, unless its breaker is open: resolve the relay URL, send the
   envelopes in transactions of at most ``MAX_TXN_ENVELOPES`` / ``MAX_TXN_BYTES``. The
   transport holds the URL to the SSRF rules (SPEC.md §7.6) before it connects. What each
   sender asked to be told (``notify``, RFC 3461) goes with the envelopes when it is not the
   default and the partner's relay advertises ``receipts`` (SPEC.md §7.3, §8.1); a partner
   that does not is sent plain transactions, and its recipients stay ``sent``;
4. map each result onto each row: ``sent`` on 2.x.x, deferred with backoff on 4.x.x or on any
   transport failure, bounced on 5.x.x;
5. commit all outcomes together with the DSN envelopes they owe — one per bounce whose sender
   wants failures, one ``delayed`` report per row that has waited ``DELAY_NOTICE_AFTER`` whose
   sender wants delays — in one store transaction (``Store.settle``), so a bounce without its
   DSN — or a DSN twice — cannot happen.

``run`` keeps up to ``PIPELINE_PASSES`` such passes in flight, sleeping until the next row is
due or the store says something new was queued. Tests drive ``run_once`` (one pass after the
other) with a fake clock: nothing waits for a real retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final, Protocol

import orjson
from opentelemetry.trace import NoOpTracer, Span, SpanKind, Status, StatusCode, Tracer

from relay.core import dsn as dsn_mod
from relay.core import envelope as env_mod
from relay.core import jsonutil
from relay.core import status as st
from relay.core import txn as txn_mod
from relay.core.clock import Clock
from relay.core.errors import AttemptFailed, DiscoveryError, SynqError
from relay.core.ids import uuid7
from relay.core.jws import b64url_decode
from relay.core.limits import MAX_TXN_BYTES, MAX_TXN_ENVELOPES
from relay.core.retry import MAX_BACKOFF, Breaker, RetryPolicy
from relay.delivery.router import Router
from relay.discovery.wellknown import CAPABILITY_RECEIPTS, WellKnown
from relay.logs import event as log_event
from relay.store.base import (
    QUEUE_CHANNEL,
    Hold,
    Listener,
    NewEnvelope,
    Outcome,
    QueueEntry,
    Store,
)
from relay.telemetry import Telemetry, context_of

log = logging.getLogger("synq.federation.outbound")
#: Recipient events (SPEC.md §14.4), one logger for every path (relay.delivery.custody).
events_log = logging.getLogger("synq.delivery")

#: Span names (SPEC.md §14.3): an envelope's wait in the queue, from custody to the attempt that
#: picked it up, and its part in one transaction to the partner.
QUEUE_WAIT_SPAN: Final = "synq.queue.wait"
SEND_SPAN: Final = "synq.federation.send"

#: Rows leased per pass. Bounds the memory of one pass; a larger queue takes several passes.
LEASE_BATCH: Final = 2000
#: How long a lease hides rows from other processes. Longer than one transaction can take
#: (connect + send + the partner's commit, bounded by TRANSACTION_TIMEOUT), so a live sender
#: never loses its rows to another, short enough that a dead sender's rows return soon.
LEASE_DURATION: Final = timedelta(seconds=120)
#: Transactions in flight at once across all destinations.
MAX_CONCURRENT_TRANSACTIONS: Final = 8
#: Transactions in flight at once to one destination. More than one keeps the partner busy
#: while the answer to the previous one travels back (pipelining, as SMTP's RFC 2920 does for
#: commands); the bound keeps one sender from taking every worker of a partner, whose own
#: limits (4.7.0, 429) have the last word. No order is lost: Synq promises none (SPEC.md §9).
MAX_TRANSACTIONS_PER_DESTINATION: Final = 4
#: Passes in flight at once in ``run``: while one pass waits for its partners, the next lease
#: is read and sent, so neither relay idles while the other commits. Each pass holds at most
#: ``LEASE_BATCH`` rows: this bounds the rows in memory at PIPELINE_PASSES × LEASE_BATCH.
PIPELINE_PASSES: Final = 3
#: Longest idle wait between passes when nothing is due: a safety net for wake-ups lost to
#: another process's crash (PostgreSQL NOTIFY is not delivered across a connection loss).
MAX_IDLE_WAIT: Final = 30.0
#: Whole-request timeout for one transaction.
TRANSACTION_TIMEOUT: Final = 60.0
#: The status of a recipient held while its destination is down (SPEC.md §9.3): no answer,
#: whether held by its accept (hold_for) or by a pass.
HELD_STATUS: Final = st.NO_ANSWER


class TransactionTooLarge(AttemptFailed):
    """The partner refused the whole transaction for its size (413). Smaller transactions may
    pass (its well-known ``policy`` may say how small, SPEC.md §7.3), so the sender halves the
    transaction before it records any failure."""


class Transport(Protocol):
    async def put_transaction(self, relay_url: str, txn_id: str, body: bytes) -> bytes:
        """PUT the transaction; return the 200 body, or raise ``AttemptFailed`` when the
        transaction got no usable answer (connection refused, timeout, 5xx, garbage, or a
        refusal of the relay host itself) with the status to record, or
        ``TransactionTooLarge``."""
        ...


class RelayResolver(Protocol):
    async def relay_url(self, domain: str) -> str: ...

    async def relay_document(self, domain: str) -> WellKnown:
        """The document the domain's relay serves for it, with its capabilities (cached)."""
        ...


@dataclass(frozen=True, slots=True)
class _Envelope:
    """One envelope to send to one destination, with its rows there."""

    origin: str
    id: str
    token: str
    rows: list[QueueEntry]
    #: What each recipient's sender asked to be told, when not the default and the partner
    #: takes ``notify``: recipient → keywords.
    notify: dict[str, dsn_mod.Notify]


class FederationSender:
    def __init__(
        self,
        *,
        store: Store,
        resolver: RelayResolver,
        transport: Transport,
        router: Router,
        clock: Clock,
        policy: RetryPolicy | None = None,
        breaker: Breaker | None = None,
        rng: random.Random | None = None,
        lease_batch: int = LEASE_BATCH,
        max_txn_envelopes: int = MAX_TXN_ENVELOPES,
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self.tracer: Tracer = tracer or Telemetry.off().tracer
        # Nothing a send span would carry leaves the relay (the envelope names its own trace):
        # without a recording tracer the spans, and reading each envelope's trace, are skipped.
        self._tracing = not isinstance(self.tracer, NoOpTracer)
        self.resolver = resolver
        self.transport = transport
        self.router = router
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.breaker = breaker or Breaker()
        self.rng = rng or random.Random()  # noqa: S311 — jitter, not secrecy
        self.lease_batch = lease_batch
        self.max_txn_envelopes = max_txn_envelopes
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_TRANSACTIONS)
        #: destination → (its gate, transactions holding or waiting for it). An entry lives
        #: only while used: a local agent naming ever new domains cannot grow the map.
        self._per_destination: dict[str, tuple[asyncio.Semaphore, int]] = {}
        #: Told every outcome once it is committed (the relay counts them in its metrics).
        self.on_settled: Callable[[Sequence[Outcome]], None] | None = None
        #: destination → the breaker opening (its ``open_until``) whose holds at accept were
        #: logged: one line per opening, not one per envelope. Emptied as the breaker closes.
        self._holds_logged: dict[str, datetime] = {}

    @property
    def domain(self) -> str:
        return self.router.domain

    # --- one pass -------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Process every row due now; return how many rows were settled."""
        total = 0
        while True:
            now = self.clock.now()
            rows = await self.store.lease_due(
                now, lease_until=now + LEASE_DURATION, limit=self.lease_batch
            )
            if not rows:
                return total
            await self._process(rows, now)
            total += len(rows)
            if len(rows) < self.lease_batch:
                return total

    async def _process(self, rows: Sequence[QueueEntry], now: datetime) -> None:
        outcomes: list[Outcome] = []
        live: dict[str, list[QueueEntry]] = defaultdict(list)
        for row in rows:
            if row.expires <= now:
                outcomes.append(
                    self._outcome(
                        row, "bounced", st.EXPIRED, _expiry_reason(row), None, event="expired"
                    )
                )
            else:
                live[row.domain].append(row)
        if len(live) == 1:
            # One destination (an idle queue's pass): no task to spawn and wait for.
            [(domain, some)] = live.items()
            outcomes.extend(await self._destination(domain, some, now))
        else:
            results = await asyncio.gather(
                *(self._destination(d, rs, now) for d, rs in live.items())
            )
            for chunk in results:
                outcomes.extend(chunk)
        dsns = await self._dsns(outcomes, rows, now)
        settled = self.clock.now()
        await self.store.settle(outcomes, dsns, settled)
        if self.on_settled is not None:
            self.on_settled(outcomes)
        if events_log.isEnabledFor(logging.INFO):
            by_key = {(r.origin, r.id, r.recipient): r for r in rows}
            for o in outcomes:
                _log_outcome(by_key[(o.origin, o.id, o.recipient)], o, settled)

    async def _destination(
        self, domain: str, rows: list[QueueEntry], now: datetime
    ) -> list[Outcome]:
        if not self.breaker.allows(domain, now):
            # The destination is known to be down (SPEC.md §9.3). Envelopes never tried wait for
            # the breaker's next probe instead of each costing a connection attempt: a hold,
            # which is not an attempt. Rows tried or held before are due because their own
            # schedule says so or because the operator flushed them: those are sent, and are a
            # probe of their own.
            # Rows accepted while the breaker was open were held by their accept (hold_for);
            # these were accepted before it opened.
            until = self.breaker.open_until(domain)
            held = [r for r in rows if r.code is None]
            rows = [r for r in rows if r.code is not None]
            reason = _held_reason(domain)
            outcomes = [
                self._outcome(r, "queued", HELD_STATUS, reason, None, until, event="held")
                for r in held
            ]
            if held:
                log.info("%s is down: %d new recipients held until %s", domain, len(held), until)
            if rows:
                outcomes += await self._attempt(domain, rows, now)
            return outcomes
        return await self._attempt(domain, rows, now)

    async def _attempt(self, domain: str, rows: list[QueueEntry], now: datetime) -> list[Outcome]:
        try:
            relay_url = await self.resolver.relay_url(domain)
        except DiscoveryError as exc:
            if exc.status.is_permanent:
                return [self._outcome(r, "bounced", exc.status, exc.message, None) for r in rows]
            self._failed(domain, now)
            return [self._defer(r, exc.status, exc.message, None, now) for r in rows]

        # The partner's capabilities are asked for only when some row has a use for them.
        asking = any(r.notify != dsn_mod.DEFAULT_NOTIFY for r in rows)
        receipts = asking and await self._receipts(domain)
        by_envelope: dict[tuple[str, str], _Envelope] = {}
        for r in rows:
            key = (r.origin, r.id)
            if key not in by_envelope:
                by_envelope[key] = _Envelope(r.origin, r.id, r.token, [], {})
            e = by_envelope[key]
            e.rows.append(r)
            if receipts and r.notify != dsn_mod.DEFAULT_NOTIFY:
                e.notify[r.recipient] = r.notify
        batches = _batches(list(by_envelope.values()), self.max_txn_envelopes)
        if len(batches) == 1:
            return await self._transaction(domain, relay_url, batches[0], now)
        results = await asyncio.gather(
            *(self._transaction(domain, relay_url, batch, now) for batch in batches)
        )
        return [outcome for chunk in results for outcome in chunk]

    async def _transaction(
        self, domain: str, relay_url: str, batch: list[_Envelope], now: datetime
    ) -> list[Outcome]:
        txn_id = uuid7(now)
        notify = {e.id: e.notify for e in batch if e.notify}
        body = txn_mod.encode_request(self.domain, [e.token for e in batch], notify)
        started = now
        try:
            async with self._destination_gate(domain), self._slots:
                started = self.clock.now()
                answer = await self._put(domain, relay_url, txn_id, body, batch, now)
            results = txn_mod.parse_results(answer)
        except AttemptFailed as exc:
            if isinstance(exc, TransactionTooLarge) and len(batch) > 1:
                # The partner takes smaller transactions than we send (its policy hint may
                # say so too): halve and try again, down to one envelope per transaction.
                half = len(batch) // 2
                return await self._transaction(
                    domain, relay_url, batch[:half], now
                ) + await self._transaction(domain, relay_url, batch[half:], now)
            log.info("txn %s to %s failed: %s", txn_id, domain, exc.reason)
            if exc.permanent:
                # Discovery-level refusals surfacing at connect time: a relay URL our SSRF
                # policy refuses (scheme, IP literal), a relay host with no address, or only
                # addresses the policy refuses. Retrying cannot help.
                return [
                    self._outcome(r, "bounced", exc.status, exc.reason, relay_url)
                    for e in batch
                    for r in e.rows
                ]
            self._failed(domain, started)
            # A partner that says when to come back (Retry-After on 429/503, RFC 9110 §10.2.3)
            # is not tried before then, whatever the backoff would allow.
            not_before = (
                now + timedelta(seconds=exc.retry_after) if exc.retry_after is not None else None
            )
            return [
                self._defer(r, exc.status, exc.reason, relay_url, now, not_before)
                for e in batch
                for r in e.rows
            ]
        except SynqError as exc:
            self._failed(domain, started)
            reason = f"unusable answer from {domain}: {exc.message}"
            return [
                self._defer(r, st.REMOTE_PROTOCOL, reason, relay_url, now)
                for e in batch
                for r in e.rows
            ]
        if self.breaker.success(domain):
            await self._release(domain)
        outcomes = []
        for index, e in enumerate(batch):
            # An envelope the receiver could not read an id from is answered by its index.
            result = results.get(e.id) or results.get(f"{txn_mod.INDEX_PREFIX}{index}")
            for r in e.rows:
                outcomes.append(self._apply(r, result, relay_url, now))
        return outcomes

    async def _put(
        self,
        domain: str,
        relay_url: str,
        txn_id: str,
        body: bytes,
        batch: list[_Envelope],
        now: datetime,
    ) -> bytes:
        """The transport's PUT, inside each envelope's send span when tracing."""
        if not self._tracing:
            return await self.transport.put_transaction(relay_url, txn_id, body)
        spans = self._send_spans(batch, domain, relay_url, txn_id, now)
        try:
            return await self.transport.put_transaction(relay_url, txn_id, body)
        except BaseException as exc:
            for span in spans:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            for span in spans:
                span.end()

    def _send_spans(
        self, batch: list[_Envelope], domain: str, relay_url: str, txn_id: str, now: datetime
    ) -> list[Span]:
        """For each envelope of a transaction: its queue wait, from custody to ``now`` (the
        pass that picked it up), and its send span, ended with the transaction; both children
        of the envelope's ``trace``."""
        spans = []
        for e in batch:
            parent = context_of(_trace_of(e.token))
            attributes: dict[str, str | int] = {
                "synq.id": e.id,
                "synq.destination": domain,
                "synq.txn": txn_id,
            }
            accepted = min((r.accepted for r in e.rows if r.accepted is not None), default=None)
            if accepted is not None:
                wait = self.tracer.start_span(
                    QUEUE_WAIT_SPAN,
                    context=parent,
                    attributes=attributes,
                    start_time=_nanos(accepted),
                )
                wait.end(_nanos(now))
            attributes["server.address"] = relay_url
            attributes["synq.attempt"] = max(r.attempts for r in e.rows) + 1
            spans.append(
                self.tracer.start_span(
                    SEND_SPAN, context=parent, kind=SpanKind.CLIENT, attributes=attributes
                )
            )
        return spans

    @contextlib.asynccontextmanager
    async def _destination_gate(self, domain: str) -> AsyncIterator[None]:
        """Hold one of the ``MAX_TRANSACTIONS_PER_DESTINATION`` slots of ``domain``."""
        gate, users = self._per_destination.get(domain) or (
            asyncio.Semaphore(MAX_TRANSACTIONS_PER_DESTINATION),
            0,
        )
        self._per_destination[domain] = (gate, users + 1)
        try:
            async with gate:
                yield
        finally:
            gate, users = self._per_destination[domain]
            if users == 1:
                del self._per_destination[domain]
            else:
                self._per_destination[domain] = (gate, users - 1)

    def _apply(
        self, row: QueueEntry, result: txn_mod.EnvelopeResult | None, hop: str, now: datetime
    ) -> Outcome:
        if result is None:
            return self._defer(
                row, st.REMOTE_PROTOCOL, "the partner relay returned no result for it", hop, now
            )
        per = result.recipients.get(row.recipient)
        code, reason = (per.code, per.reason) if per else (result.code, result.reason)
        klass = int(code[0])
        accepted = result.status in ("accepted", "duplicate")
        if per is None and accepted != (klass == 2):
            # "rejected" with a 2.x code, or "accepted" with a failure code: the partner
            # contradicts itself (SPEC.md §8.4). Neither reading is safe; keep it and retry.
            reason = f"inconsistent result ({result.status} {code})"
            return self._defer(row, st.REMOTE_PROTOCOL, reason, hop, now)
        if klass == 2:
            return self._outcome(row, "sent", st.Status(code, ""), result.status, hop)
        if klass == 4:
            hint = _retry_hint(code, reason)
            if hint is not None:
                # The partner paces us (SPEC.md §9.3): its "retry in N s" replaces the backoff,
                # which after an outage could hold a released backlog for minutes.
                return self._defer(row, st.Status(code, ""), reason, hop, now, retry_at=now + hint)
            return self._defer(row, st.Status(code, ""), reason, hop, now)
        return self._outcome(
            row, "bounced", st.Status(code, ""), reason or "refused by the partner relay", hop
        )

    async def _receipts(self, domain: str) -> bool:
        """Whether ``domain``'s relay advertises ``receipts`` (SPEC.md §7.3), from the document
        it serves, cached with discovery's documents. A relay that does not say so refuses a
        transaction carrying ``notify``; one whose document cannot be read now is sent none
        either: the envelope must not wait for a capability, and its recipients stay ``sent``."""
        try:
            return (await self.resolver.relay_document(domain)).supports(CAPABILITY_RECEIPTS)
        except SynqError as exc:
            log.info("%s: capabilities unknown (%s); sending without notify", domain, exc.message)
            return False

    # --- the breaker ----------------------------------------------------------------------------

    def hold_for(self, domain: str, now: datetime) -> Hold | None:
        """The hold for new mail to ``domain`` accepted at ``now``: while its breaker is open,
        its recipients are queued held by their accept until the next probe (SPEC.md §9.3),
        with what :meth:`_destination` would settle them with, instead of being queued due at
        once and held by a pass of this sender (a lease and a settle on the store's writer per
        envelope). None while the breaker allows attempts. The router asks it (runtime.py)."""
        if self.breaker.allows(domain, now):
            return None
        until = self.breaker.open_until(domain)
        if until is None:  # allows() is False only while open_until lies ahead
            return None
        if self._holds_logged.get(domain) != until:
            self._holds_logged[domain] = until
            log.info("%s is down: new recipients held at accept until %s", domain, until)
        return Hold(until, HELD_STATUS.code, _held_reason(domain))

    def _failed(self, domain: str, started: datetime) -> None:
        """Count a failed attempt begun at ``started`` against ``domain``'s breaker."""
        until = self.breaker.failure(domain, started, self.clock.now(), self.rng)
        if until is not None:
            log.warning("%s is down: breaker open, next probe at %s", domain, until)

    async def _release(self, domain: str) -> None:
        """``domain`` answers again: everything queued for it — held back by the breaker or
        waiting out a backoff grown during the outage — is due now (SPEC.md §9.3), as Synapse
        sends a destination's whole backlog on the first success. The partner's own limits
        (4.7.0, 429 with Retry-After) pace what follows."""
        self._holds_logged.pop(domain, None)
        try:
            count = await self.store.flush(self.clock.now(), domain=domain)
        except SynqError as exc:
            # Nothing is lost: the rows come due on their own schedule.
            log.warning("%s answers again, but its queue was not released: %s", domain, exc.message)
            return
        log.info("%s answers again: breaker closed, %d queued recipients released", domain, count)

    async def contacted(self, domain: str) -> None:
        """``domain``'s relay sent us a transaction we could verify: it is up. A breaker open
        for it is closed and its backlog released (Synapse resets a destination's backoff when
        the destination contacts it)."""
        if self.breaker.failing(domain):
            self.breaker.reset(domain)
            await self._release(domain)

    # --- outcomes and DSNs ----------------------------------------------------------------------

    def _outcome(
        self,
        row: QueueEntry,
        state: str,
        status: st.Status,
        reason: str,
        hop: str | None,
        next_attempt: datetime | None = None,
        event: str | None = None,
    ) -> Outcome:
        return Outcome(
            origin=row.origin,
            id=row.id,
            recipient=row.recipient,
            state=state,  # type: ignore[arg-type]
            code=status.code,
            reason=reason,
            hop=hop,
            next_attempt=next_attempt,
            event=event,
        )

    def _defer(
        self,
        row: QueueEntry,
        status: st.Status,
        reason: str,
        hop: str | None,
        now: datetime,
        not_before: datetime | None = None,
        retry_at: datetime | None = None,
    ) -> Outcome:
        """``retry_at``: when the partner said to come back, instead of the backoff;
        ``not_before``: a time the backoff may not come before."""
        if retry_at is None:
            retry_at = self.policy.next_attempt(now, row.attempts + 1, self.rng)
        if not_before is not None and retry_at < not_before:
            retry_at = not_before
        if retry_at >= row.expires:
            # Another try could only happen after expiry: come back at expiry to bounce it then
            # (with this failure as the DSN's diagnostic) rather than a backoff later.
            retry_at = row.expires
        outcome = self._outcome(row, "queued", status, reason, hop, retry_at)
        if dsn_mod.delay_due(row.notify, row.delay_reported, row.accepted, now):
            # The one "delayed" report (built in _dsns, committed with this outcome).
            outcome = replace(outcome, delay_reported=True)
        return outcome

    async def _dsns(
        self, outcomes: list[Outcome], rows: Sequence[QueueEntry], now: datetime
    ) -> list[NewEnvelope]:
        """The reports ``outcomes`` owe: a ``failed`` one per bounce, a ``delayed`` one per
        deferral marked for it, each only if its sender asked (Router.dsn decides)."""
        by_key = {(r.origin, r.id, r.recipient): r for r in rows}
        out: list[NewEnvelope] = []
        for o in outcomes:
            if o.state == "bounced":
                action = dsn_mod.ACTION_FAILED
            elif o.delay_reported:
                action = dsn_mod.ACTION_DELAYED
            else:
                continue
            row = by_key[(o.origin, o.id, o.recipient)]
            original = env_mod.decode(txn_payload(row.token))
            report = dsn_mod.Report.about(
                original,
                row.recipient,
                status=o.code,
                diagnostic=o.reason,
                attempts=row.attempts + (0 if o.event == "expired" else 1),
                at=now,
                action=action,
                notify=row.notify,
            )
            dsn = await self.router.dsn(report, original.created)
            if dsn is not None:
                out.append(dsn)
        return out

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run passes forever (cancel to stop). A failing pass is logged; its rows come back
        when their lease runs out.

        Up to ``PIPELINE_PASSES`` passes run at once: a full lease is followed at once by the
        next; a partial one means the queue is drained, and the loop waits for a wake-up (a
        new row committed), for the next row due, or for a pass slot to free. Under load the
        rows that arrive while every slot is busy make the next lease larger, so transactions
        grow with the load and stay small (one envelope, no waiting) when the queue is idle.
        """
        inflight: set[asyncio.Task[None]] = set()
        async with self.store.notifier.listen(QUEUE_CHANNEL) as listener:
            try:
                while True:
                    if len(inflight) >= PIPELINE_PASSES:
                        await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    full = await self._start_pass(inflight)
                    if full:
                        continue
                    next_due = await _next_due(self.store)
                    wait = MAX_IDLE_WAIT
                    if next_due is not None:
                        due_in = (next_due - self.clock.now()).total_seconds()
                        if due_in > 0:
                            wait = min(wait, due_in)
                        elif not inflight:
                            # Due rows that another process holds leased: look again in a few
                            # milliseconds rather than spin.
                            wait = min(wait, 0.05)
                        # else they are (most likely) the leases of this process's own passes:
                        # the end of a pass wakes the loop, not a timer.
                    # Rows held by their accept (hold_for) are due at their breaker's next
                    # probe and woke nobody: look again then. The breaker opens only in a
                    # pass, whose end wakes the loop, so this wait knows every opening.
                    probe = self.breaker.next_probe(self.clock.now())
                    if probe is not None:
                        wait = min(wait, (probe - self.clock.now()).total_seconds())
                    await self._wait(listener, inflight, wait)
            finally:
                for task in inflight:
                    task.cancel()
                await asyncio.gather(*inflight, return_exceptions=True)

    @staticmethod
    async def _wait(listener: Listener, inflight: set[asyncio.Task[None]], timeout: float) -> None:
        """Until a wake-up, the end of a pass in flight, or ``timeout``."""
        if not inflight:
            await listener.wait(timeout)
            return
        woken = asyncio.ensure_future(listener.wait(timeout))
        try:
            await asyncio.wait({woken, *inflight}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()

    async def _start_pass(self, inflight: set[asyncio.Task[None]]) -> bool:
        """Lease the next due rows and start a pass on them; True if the lease came back full
        (more rows may be due right now)."""
        now = self.clock.now()
        try:
            rows = await self.store.lease_due(
                now, lease_until=now + LEASE_DURATION, limit=self.lease_batch
            )
        except SynqError as exc:
            log.warning("queue lease failed: %s", exc.message)
            return False
        if not rows:
            return False
        task = asyncio.create_task(self._pass(rows, now))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        return len(rows) >= self.lease_batch

    async def _pass(self, rows: Sequence[QueueEntry], now: datetime) -> None:
        try:
            await self._process(rows, now)
        except SynqError as exc:
            log.warning("queue pass failed: %s", exc.message)
        except Exception:
            log.exception("queue pass failed")


async def _next_due(store: Store) -> datetime | None:
    try:
        return await store.next_due()
    except SynqError:
        return None


def _trace_of(token: str) -> str | None:
    """The ``trace`` member of a signed envelope (SPEC.md §3.1), read without the full decode:
    the envelope was validated when it was accepted."""
    value = orjson.loads(txn_payload(token)).get("trace")
    return value if isinstance(value, str) else None


def _nanos(at: datetime) -> int:
    """An OpenTelemetry timestamp: nanoseconds since the epoch."""
    return int(at.timestamp() * 1_000_000_000)


def _log_outcome(row: QueueEntry, o: Outcome, at: datetime) -> None:
    """One line per settled row (SPEC.md §14.4): sent, deferred (or held), bounced, expired."""
    name = o.event or {"queued": "deferred", "sent": "sent", "bounced": "bounced"}[o.state]
    delay = None
    if o.next_attempt is not None:
        delay = round(max((o.next_attempt - at).total_seconds(), 0.0), 3)
    counted = o.event not in ("expired", "held")
    log_event(
        events_log,
        name,
        event=name,
        id=row.id,
        to=row.recipient,
        destination=row.domain,
        relay=o.hop,
        code=o.code,
        attempt=row.attempts + 1 if counted else row.attempts,
        delay=delay,
        **{"from": row.sender},
    )


def txn_payload(token: str) -> bytes:
    """The envelope bytes inside a compact JWS we stored ourselves (already verified)."""
    return b64url_decode(token.split(".")[1])


#: A partner's rate-limit answer for one envelope (4.7.0) names when to come back, as Synq's
#: inbound handler words it: "… retry in N s" (SPEC.md §9.3).
_RETRY_HINT: Final = re.compile(r"retry in (\d{1,6}) s\b")
#: The shortest wait a hint buys: "retry in 0 s" must not turn into a tight loop.
MIN_RETRY_HINT: Final = timedelta(seconds=1)


def _retry_hint(code: str, reason: str) -> timedelta | None:
    """The wait a partner's 4.7.0 result asks for, within [MIN_RETRY_HINT, MAX_BACKOFF]."""
    if code != st.RATE_LIMITED.code or (match := _RETRY_HINT.search(reason)) is None:
        return None
    return min(max(timedelta(seconds=int(match.group(1))), MIN_RETRY_HINT), MAX_BACKOFF)


def _held_reason(domain: str) -> str:
    """The reason of a recipient held because ``domain`` is down (SPEC.md §9.3)."""
    return f"{domain} is down; held until its next probe"


def _expiry_reason(row: QueueEntry) -> str:
    last = f"; last error: {row.code} {row.reason}" if row.code else ""
    return f"not delivered before it expired at {env_mod.format_timestamp(row.expires)}{last}"


def _batches(envelopes: list[_Envelope], max_count: int) -> list[list[_Envelope]]:
    """Split into transactions within the count and byte limits (SPEC.md §10)."""
    batches: list[list[_Envelope]] = []
    current: list[_Envelope] = []
    size = 64
    for e in envelopes:
        cost = len(e.token) + 3
        if e.notify:
            # Its entry in the transaction's "notify" member, with room for the member's own
            # name and braces (counted for every entry, to stay on the safe side).
            cost += len(jsonutil.dumps(txn_mod.notify_to_json({e.id: e.notify}))) + 16
        if current and (len(current) >= max_count or size + cost > MAX_TXN_BYTES):
            batches.append(current)
            current, size = [], 64
        current.append(e)
        size += cost
    if current:
        batches.append(current)
    return batches
