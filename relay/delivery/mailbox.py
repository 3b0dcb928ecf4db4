"""The mailbox: what a local agent does with the relay, whichever face it comes through.

An agent sends (one message or a batch), reads its inbox (waiting for mail to arrive), acks what
it has handled, asks after a message it sent, and looks up an agent card. The local API
(SPEC.md §6), the MCP face (SPEC.md "MCP mapping"), the A2A face (SPEC.md "A2A mapping") and
the ``synq`` command each translate their protocol's request into one of these calls and its
answer back (relay.delivery.views renders the answers); none of them holds a rule of its own.

Sending under an idempotency key (SPEC.md §6.2; the IETF HTTPAPI Idempotency-Key draft): a
client that lost the answer to a send retries it under the same key and gets the first answer —
the same envelope id — never a second envelope. Keys are scoped by agent. :meth:`Mailbox.send_many`

1. claims each key in this process while its request runs: a second request under a key still
   claimed is ``Conflict`` (409), however it came in (the API, a batch, the MCP face);
2. looks the keys up in the store: a key used before answers with its first envelope
   (:class:`Replayed`) when the request asks for the same envelope (``Draft.fingerprint``), and
   with ``IdempotencyKeyReused`` (422) when it asks for another — before any rate-limit charge
   or signing, so a retry after a crash is never refused for what its first request cost;
3. sends the rest, each key recorded in the store transaction that takes custody of its
   envelope (relay.store.base). A key another process recorded meanwhile (a shared PostgreSQL
   store) makes the store skip that envelope, and the answer is the first use's after all.

A request the relay refuses records nothing: its key is free for the corrected request.

Waiting for mail is :class:`InboxReader`: the wake-up registration on the store's notifier
channel ``inbox_channel(agent)`` is made before the first read, so a message committed between a
read and the wait still wakes it, and kept between reads, so a caller that reads again and again
(a server-sent event stream, the MCP gateway waiting for a tool's answer) misses nothing either.
Deadlines are event-loop time: they bound how long a client is kept waiting, not relay time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Final, Protocol, overload

from relay.core.address import Address
from relay.core.cards import inbox_agent_card
from relay.core.clock import Clock
from relay.core.draft import Draft
from relay.core.envelope import KIND_DSN
from relay.core.errors import Conflict, Forbidden, IdempotencyKeyReused, NotFound, PeerError
from relay.core.limits import DEFAULT_INBOX_PAGE
from relay.core.signals import is_relay_signal
from relay.delivery.adapters import AgentAdapter
from relay.delivery.router import Prepared, Router, Submitted
from relay.store.base import (
    IdempotencyKey,
    IdempotencyRecord,
    InboxItem,
    Listener,
    MessageStatus,
    Store,
    inbox_channel,
)

__all__ = ["BATCH_YIELD_EVERY", "CardSource", "InboxReader", "Mailbox", "Replayed"]

#: Messages of a batch built and signed between two yields to the event loop. Signing one
#: takes ~0.1 ms, so a full batch (MAX_BATCH_MESSAGES) would otherwise hold the loop for tens of
#: milliseconds, stalling every other request, heartbeat and delivery meanwhile.
BATCH_YIELD_EVERY: Final = 50


@dataclass(frozen=True, slots=True)
class Replayed:
    """The answer to a send whose idempotency key was used before for the same request: the
    envelope that first request stored. Nothing new was stored."""

    origin: str
    id: str


def _replay(record: IdempotencyRecord, claim: IdempotencyKey) -> Replayed | IdempotencyKeyReused:
    """A request under a key used before: the first answer if it asks for the same envelope."""
    if record.fingerprint != claim.fingerprint:
        return IdempotencyKeyReused(
            "this idempotency key was used before for a different request; a new request "
            "needs a new key"
        )
    return Replayed(record.origin, record.id)


class CardSource(Protocol):
    """Where the cards of other domains' agents come from (relay.discovery.Discovery)."""

    async def agent_card(self, domain: str, local: str) -> dict[str, Any]: ...


def _ignore(*_: object) -> None:
    return None


class InboxReader:
    """One agent's inbox, read as often as the caller likes; see the module docstring.

    Made by :meth:`Mailbox.follow`, which holds the wake-up registration while it is open.
    """

    def __init__(self, store: Store, agent: str, listener: Listener) -> None:
        self._store = store
        self.agent = agent
        self._listener = listener

    async def read(
        self,
        *,
        wait: float = 0.0,
        limit: int = DEFAULT_INBOX_PAGE,
        after: int | None = None,
        include_acked: bool = False,
        thread: str | None = None,
    ) -> list[InboxItem]:
        """Up to ``limit`` inbox entries, oldest first: unacked ones (with ``include_acked``
        acked ones too), of ``thread`` if given, past the cursor ``after`` if given. When there
        are none, wait up to ``wait`` seconds for the first; an empty list when none came."""
        store, agent = self._store, self.agent

        def fetch() -> Awaitable[list[InboxItem]]:
            return store.inbox(
                agent, limit=limit, include_acked=include_acked, thread=thread, after_seq=after
            )

        deadline = asyncio.get_running_loop().time() + wait
        return list(await self._listener.poll(fetch, deadline))


class Mailbox:
    """Send, read, ack, status and card for local agents (module docstring).

    ``on_accepted(via, count)`` and ``on_acked(count)`` are told what was taken into custody
    and acknowledged (the relay's metrics).
    """

    def __init__(
        self,
        *,
        store: Store,
        router: Router,
        clock: Clock,
        public_url: str,
        adapters: Mapping[str, AgentAdapter],
        cards: CardSource,
        on_accepted: Callable[[str, int], None] = _ignore,
        on_acked: Callable[[int], None] = _ignore,
    ) -> None:
        self.store = store
        self.router = router
        self.clock = clock
        self.public_url = public_url
        self.adapters = adapters
        self.cards = cards
        self._on_accepted = on_accepted
        self._on_acked = on_acked
        #: (agent, key) of the keyed sends running in this process (module docstring, step 1).
        self._in_flight: set[tuple[str, str]] = set()

    @property
    def domain(self) -> str:
        return self.router.domain

    # --- sending --------------------------------------------------------------------------------

    @overload
    async def send(self, draft: Draft, *, via: str, key: None = None) -> Submitted: ...

    @overload
    async def send(self, draft: Draft, *, via: str, key: str | None) -> Submitted | Replayed: ...

    async def send(self, draft: Draft, *, via: str, key: str | None = None) -> Submitted | Replayed:
        """Check, sign and take custody of ``draft`` (relay.delivery.router): durable when it
        returns. ``via`` names the face, for the hop log, the metrics and the rate limit.
        ``key``: the sender's idempotency key (module docstring), checked by the caller
        (relay.core.idempotency); a retry under it is answered :class:`Replayed`."""
        if key is not None:
            (outcome,) = await self.send_many([draft], via=via, keys=[key])
            if isinstance(outcome, PeerError):
                raise outcome
            return outcome
        prepared = await self._prepare(draft, via)
        (submitted,) = await self.router.commit([prepared])
        self._on_accepted(via, 1)
        return submitted

    async def send_many(
        self, drafts: Sequence[Draft], *, via: str, keys: Sequence[str | None] | None = None
    ) -> list[Submitted | Replayed | PeerError]:
        """Send several independent drafts (SPEC.md §6.2.1): each checked on its own exactly as
        :meth:`send` checks it (one rate-limit charge each), the accepted ones taken into
        custody together, in one store call. One outcome per draft, in order: what was
        submitted, the first answer to a retried key, or the refusal of that draft alone.
        ``keys``: an idempotency key or None per draft (module docstring). A failure that is not
        the draft's fault (the store failing) raises, and then nothing was stored."""
        if keys is None:
            keys = [None] * len(drafts)
        elif len(keys) != len(drafts):
            raise ValueError("one key (or None) per draft")
        outcomes: list[Submitted | Replayed | PeerError | None] = [None] * len(drafts)
        claims: dict[int, IdempotencyKey] = {}
        held: list[tuple[str, str]] = []
        try:
            for i, (draft, key) in enumerate(zip(drafts, keys, strict=True)):
                if key is None:
                    continue
                owner = (draft.sender.local, key)
                if owner in self._in_flight:
                    outcomes[i] = Conflict(
                        "a request with this idempotency key is still being processed; retry "
                        "once it has been answered"
                    )
                    continue
                self._in_flight.add(owner)
                held.append(owner)
                claims[i] = IdempotencyKey(draft.sender.local, key, draft.fingerprint())
            if claims:
                await self._answer_known(claims, outcomes)
            return await self._send_rest(drafts, via, claims, outcomes)
        finally:
            for owner in held:
                self._in_flight.discard(owner)

    async def _answer_known(
        self,
        claims: Mapping[int, IdempotencyKey],
        outcomes: list[Submitted | Replayed | PeerError | None],
    ) -> None:
        """Answer the drafts whose key the store knows already (module docstring, step 2)."""
        by_agent: dict[str, list[int]] = {}
        for i, claim in claims.items():
            by_agent.setdefault(claim.agent, []).append(i)
        for agent, indexes in by_agent.items():
            known = await self.store.idempotency_records(agent, [claims[i].key for i in indexes])
            for i in indexes:
                record = known.get(claims[i].key)
                if record is not None:
                    outcomes[i] = _replay(record, claims[i])

    async def _send_rest(
        self,
        drafts: Sequence[Draft],
        via: str,
        claims: Mapping[int, IdempotencyKey],
        outcomes: list[Submitted | Replayed | PeerError | None],
    ) -> list[Submitted | Replayed | PeerError]:
        """Prepare and commit every draft without an outcome yet (module docstring, step 3)."""
        pending: list[tuple[int, Prepared]] = []
        # The mailboxes of the whole batch in one read, not one per draft. Nothing of the batch
        # is committed before every draft is prepared, so each draft's own read would see
        # exactly this state too.
        router = self.router
        local = {
            n for i, d in enumerate(drafts) if outcomes[i] is None for n in router.split(d.to)[0]
        }
        full = await router.quotas.full(local)
        for i, draft in enumerate(drafts):
            if outcomes[i] is not None:
                continue
            try:
                pending.append((i, await self._prepare(draft, via, claims.get(i), full)))
            except PeerError as exc:
                outcomes[i] = exc
            if i % BATCH_YIELD_EVERY == BATCH_YIELD_EVERY - 1:
                # Building and signing are CPU work; let other requests run between slices.
                await asyncio.sleep(0)
        committed = await self.router.commit_each([p for _, p in pending])
        accepted = 0
        for (i, _), outcome in zip(pending, committed, strict=True):
            if isinstance(outcome, Submitted) and outcome.result.prior is not None:
                # Another process recorded the key first; nothing of this draft was stored.
                outcomes[i] = _replay(outcome.result.prior, claims[i])
                continue
            outcomes[i] = outcome
            accepted += isinstance(outcome, Submitted)
        if accepted:
            self._on_accepted(via, accepted)
        done: list[Submitted | Replayed | PeerError] = []
        for each in outcomes:
            assert each is not None  # every draft was answered, refused, or committed
            done.append(each)
        return done

    def _prepare(
        self,
        draft: Draft,
        via: str,
        idempotency: IdempotencyKey | None = None,
        full: Mapping[str, str] | None = None,
    ) -> Coroutine[Any, Any, Prepared]:
        """The router's checks, after the one rule that is the mailbox's: agents never send
        delivery-status envelopes (SPEC.md §6.2). Returns the router's coroutine rather than
        awaiting it, so a send pays no extra frame."""
        if draft.kind == KIND_DSN:
            raise Forbidden("only the relay's mailer-daemon sends delivery-status envelopes")
        if via != "signals" and is_relay_signal(draft.kind, draft.content_type):
            # Offers and updates are the owner relay's (SPEC.md §13.6), made from a signal.
            raise Forbidden("signal offers and updates are sent by the relay that owns the signal")
        return self.router.prepare(draft, via=via, idempotency=idempotency, full=full)

    # --- reading --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def follow(self, agent: str) -> AsyncIterator[InboxReader]:
        """An :class:`InboxReader` on ``agent``'s inbox, woken by new mail while open."""
        async with self.store.notifier.listen(inbox_channel(agent)) as listener:
            yield InboxReader(self.store, agent, listener)

    async def read(
        self,
        agent: str,
        *,
        wait: float = 0.0,
        limit: int = DEFAULT_INBOX_PAGE,
        after: int | None = None,
        include_acked: bool = False,
        thread: str | None = None,
    ) -> list[InboxItem]:
        """One read of ``agent``'s inbox, long-polling up to ``wait`` seconds
        (:meth:`InboxReader.read`). Reading never consumes: an entry stays until acked."""
        async with self.follow(agent) as reader:
            return await reader.read(
                wait=wait, limit=limit, after=after, include_acked=include_acked, thread=thread
            )

    async def ack(self, agent: str, id: str) -> None:
        """Mark the envelope ``id`` in ``agent``'s inbox as handled (SPEC.md §6.5); again is
        not an error. ``NotFound`` when the inbox has no such envelope."""
        if not await self.store.ack(agent, id, self.clock.now()):
            raise NotFound("no such message in this inbox")
        self._on_acked(1)

    async def ack_all(self, agent: str, ids: Iterable[str]) -> int:
        """Ack each of ``ids`` that is in ``agent``'s inbox (what the agent has just read);
        return how many were."""
        now = self.clock.now()
        done = 0
        for id in ids:
            done += await self.store.ack(agent, id, now)
        if done:
            self._on_acked(done)
        return done

    # --- status and cards -----------------------------------------------------------------------

    async def status(self, id: str, *, agent: str | None) -> MessageStatus:
        """The delivery status of message ``id`` sent from this domain (SPEC.md §6.3).

        ``agent``: the local agent asking. Only the message's sender sees it: anyone else's
        message is ``NotFound`` exactly as a missing one is, so ids cannot be probed. None is
        the operator (``synq status``), who sees every message sent from this domain.
        """
        status = await self.store.message_status(self.domain, id)
        if agent is None:
            if status is None:
                raise NotFound(f"no message {id} sent from {self.domain}")
            return status
        if status is None or status.sender != f"{agent}@{self.domain}":
            raise NotFound("no such message")
        return status

    async def card(self, address: Address) -> dict[str, Any]:
        """The agent card of any address (SPEC.md §6.7): a local agent's as its adapter (or the
        relay, for an inbox agent) describes it, a partner's as its relay publishes it.
        ``NotFound`` for a local address with no agent; discovery errors for a remote one."""
        if address.domain != self.domain:
            return await self.cards.agent_card(address.domain, address.local)
        agent = await self.store.get_agent(address.local)
        if agent is None:
            raise NotFound(f"no agent {address}")
        adapter = self.adapters.get(agent.kind)
        if adapter is None:
            return inbox_agent_card(address, self.public_url)
        return await adapter.card(agent, str(address), self.public_url)
