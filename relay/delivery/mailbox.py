"""The mailbox: what a local agent does with the relay, whichever face it comes through.

An agent sends (one message or a batch), reads its inbox (waiting for mail to arrive), acks what
it has handled, asks after a message it sent, and looks up an agent card. The local API
(SPEC.md §6), the MCP face (SPEC.md "MCP mapping"), the A2A face (SPEC.md "A2A mapping") and
the ``synq`` command each translate their protocol's request into one of these calls and its
answer back (relay.delivery.views renders the answers); none of them holds a rule of its own.

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
from typing import Any, Final, Protocol

from relay.core.address import Address
from relay.core.cards import inbox_agent_card
from relay.core.clock import Clock
from relay.core.draft import Draft
from relay.core.envelope import KIND_DSN
from relay.core.errors import Forbidden, NotFound, PeerError
from relay.core.limits import DEFAULT_INBOX_PAGE
from relay.delivery.adapters import AgentAdapter
from relay.delivery.router import Prepared, Router, Submitted
from relay.store.base import InboxItem, Listener, MessageStatus, Store, inbox_channel

__all__ = ["BATCH_YIELD_EVERY", "CardSource", "InboxReader", "Mailbox"]

#: Messages of a batch built and signed between two yields to the event loop. Signing one
#: takes ~0.1 ms, so a full batch (MAX_BATCH_MESSAGES) would otherwise hold the loop for tens of
#: milliseconds, stalling every other request, heartbeat and delivery meanwhile.
BATCH_YIELD_EVERY: Final = 50


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

    @property
    def domain(self) -> str:
        return self.router.domain

    # --- sending --------------------------------------------------------------------------------

    async def send(self, draft: Draft, *, via: str) -> Submitted:
        """Check, sign and take custody of ``draft`` (relay.delivery.router): durable when it
        returns. ``via`` names the face, for the hop log, the metrics and the rate limit."""
        prepared = await self._prepare(draft, via)
        (submitted,) = await self.router.commit([prepared])
        self._on_accepted(via, 1)
        return submitted

    async def send_many(self, drafts: Sequence[Draft], *, via: str) -> list[Submitted | PeerError]:
        """Send several independent drafts (SPEC.md §6.2.1): each checked on its own exactly as
        :meth:`send` checks it (one rate-limit charge each), the accepted ones taken into
        custody together, in one store call. One outcome per draft, in order: what was
        submitted, or the refusal of that draft alone. A failure that is not the draft's fault
        (the store failing) raises, and then nothing was stored."""
        outcomes: list[Submitted | PeerError | None] = [None] * len(drafts)
        pending: list[tuple[int, Prepared]] = []
        for i, draft in enumerate(drafts):
            try:
                pending.append((i, await self._prepare(draft, via)))
            except PeerError as exc:
                outcomes[i] = exc
            if i % BATCH_YIELD_EVERY == BATCH_YIELD_EVERY - 1:
                # Building and signing are CPU work; let other requests run between slices.
                await asyncio.sleep(0)
        committed = await self.router.commit_each([p for _, p in pending])
        accepted = 0
        for (i, _), outcome in zip(pending, committed, strict=True):
            outcomes[i] = outcome
            accepted += isinstance(outcome, Submitted)
        if accepted:
            self._on_accepted(via, accepted)
        done: list[Submitted | PeerError] = []
        for each in outcomes:
            assert each is not None  # every draft was refused, or prepared and committed
            done.append(each)
        return done

    def _prepare(self, draft: Draft, via: str) -> Coroutine[Any, Any, Prepared]:
        """The router's checks, after the one rule that is the mailbox's: agents never send
        delivery-status envelopes (SPEC.md §6.2). Returns the router's coroutine rather than
        awaiting it, so a send pays no extra frame."""
        if draft.kind == KIND_DSN:
            raise Forbidden("only the relay's mailer-daemon sends delivery-status envelopes")
        return self.router.prepare(draft, via=via)

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
