"""The one ``Store`` interface. The SQLite and PostgreSQL dialects (relay/store/sqlite.py,
relay/store/postgres.py) implement it over the shared SQL layer of relay/store/sql/; nothing
above the store knows which one runs.

Data model (SPEC.md prescribes none; this is the relay's own business):

* **agents** — local agents: name (the local part), kind (``inbox``/``a2a``/``mcp``), the
  adapter endpoint, and the SHA-256 of the bearer token (never the token).
* **envelopes** — every envelope in the relay's custody, keyed by ``(origin, id)``, the dedup key
  of SPEC.md §8.5, holding the signed JWS exactly as received or created.
* **recipients** — one row per (envelope, recipient): the per-recipient delivery state
  (``queued`` → ``sent`` → ``delivered`` | ``bounced``), last code and reason, attempts, next
  attempt time and a lease. Remote rows in state ``queued`` *are* the federation queue. Since
  migration 0004 also what the sender asked to be told (``notify``, RFC 3461; NULL is the
  default) and whether the one ``delayed`` report was sent (``delay_reported``).
* **inbox** — one row per (agent, envelope) delivered locally, with a per-store sequence number
  (for SSE resumption) and the ack time.
* **events** — the per-recipient hop log shown by ``synq status``. Since migration 0009 a
  recipient row taken by the accept that created its envelope is marked ``implied`` and has no
  event row: its ``accepted`` or ``delivered`` event is read from the envelope and recipient
  rows (relay/store/sql/accept.py, "Implied events").
* **a2a_tasks**, **a2a_task_events**, **a2a_task_envelopes**, **a2a_feed** — the tasks of the
  relay's A2A face, their event logs, the envelopes sent for them, and the reply tracker's
  cursor over inbox sequence numbers (migration 0003; relay/tasks/).
* **idempotency_keys** — one row per (local agent, idempotency key) used for a send: the request
  fingerprint and the envelope the key answers with (SPEC.md §6.2). Written in the transaction
  that takes custody of that envelope (for the A2A face: that writes the call's task or turn), so
  a key never names an envelope that was not stored, nor an envelope lose its key to a crash.
* **mailboxes** — per local agent, the count and bytes of its unacknowledged inbox rows, kept
  in step with every inbox insert and ack, and the agent's own quotas (migration 0004).
* **catalog** — per local agent, what discovery lists (SPEC.md §12): its visibility, what the
  operator and the agent itself say it can do, and a full-text index of that (migration 0008).

Lifecycle (migration 0004; SPEC.md §8.5, §9.7): the ``purge_*`` methods delete, a bounded batch
at a time, what the retention service (relay/delivery/retention.py) finds old enough; an
envelope is never purged before ``expires`` + the clock skew its caller allows for, so a replay
stays a duplicate. Local recipients whose mailbox is full are *held*: a queued row of the
store's own domain, moved into the inbox by ``deliver_held`` once the agent makes room.

Durability contract: when ``accept``/``accept_many`` returns, the envelope and every row it
implies are committed (for SQLite with ``synchronous=FULL``: fsynced). The relay answers 202
or "accepted" only after that (Postfix: queue file on disk before 250 OK).

Accept is an idempotent union: a second accept of the same ``(origin, id)`` inserts only the
recipient rows that were missing, and reports ``duplicate`` when it inserted nothing. Replays
therefore never deliver twice, and a retry that adds a recipient the first try refused works.

Every method raises only ``relay.core.errors`` types (``StoreUnavailable``, ``Conflict``…):
driver exceptions are translated inside the dialect.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, TypeVar

from relay.core.catalog import CatalogRecord, Profile
from relay.core.dsn import DEFAULT_NOTIFY, Notify
from relay.core.errors import ConfigError
from relay.core.signals import ClaimRecord, Reinforcement, Signal, Subscription, Transition

_T = TypeVar("_T")

AgentKind = Literal["inbox", "a2a", "mcp"]
RecipientState = Literal["queued", "sent", "delivered", "bounced"]

#: Notifier channel names. ``inbox:<agent>`` wakes long polls and SSE streams for one agent;
#: ``queue`` wakes the federation workers when remote rows are queued or flushed.
QUEUE_CHANNEL: Final = "queue"
#: Wakes the local dispatcher when an adapter-backed agent (A2A, MCP) got an inbox row.
DELIVERY_CHANNEL: Final = "deliveries"
#: The destination a queue entry of a local delivery names (``local:<agent>``): the inbox row of
#: an adapter-backed agent that the dispatcher has yet to hand over (SPEC.md §9.5, §9.6).
LOCAL_DESTINATION: Final = "local:"


def local_agent(destination: str | None) -> str | None:
    """The agent a ``local:<agent>`` destination names; None for any other destination."""
    if destination is None or not destination.startswith(LOCAL_DESTINATION):
        return None
    return destination[len(LOCAL_DESTINATION) :]


#: Wakes the quota service when an ack made room in some agent's mailbox: mail held for it
#: may now go into its inbox (relay/delivery/quota.py).
HELD_CHANNEL: Final = "held"
#: Woken after every change to a signal or a subscription (SPEC.md §13): the agents' signal
#: feeds re-read what they hear.
SIGNALS_CHANNEL: Final = "signals"


def inbox_channel(agent: str) -> str:
    return f"inbox:{agent}"


def a2a_task_channel(task: str) -> str:
    """Woken after every change of one A2A face task (``a2a_create_task``, ``a2a_update_task``)."""
    return f"a2a:{task}"


@dataclass(frozen=True, slots=True)
class AgentRecord:
    name: str
    kind: AgentKind
    endpoint: str | None
    created: datetime


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A local agent's idempotency key for one submission (SPEC.md §6.2) and the fingerprint of
    the request it names (``Draft.fingerprint``)."""

    agent: str
    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What the store remembers of a key's first use: the request's fingerprint and the envelope
    ``(origin, id)`` the key answers with, since ``created``."""

    agent: str
    key: str
    fingerprint: str
    origin: str
    id: str
    created: datetime


@dataclass(frozen=True, slots=True)
class Hold:
    """Why and until when new mail to a destination known to be down waits (SPEC.md §9.3): its
    recipients are queued due at ``until`` (the breaker's next probe) with ``code`` and
    ``reason``, and a ``held`` event, which is not a delivery attempt."""

    until: datetime
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class NewEnvelope:
    """What the relay hands the store to take custody of one envelope.

    ``local`` are local agent names (already checked to exist) whose inbox gets the envelope now;
    ``remote`` are recipient addresses on other domains, queued for federation. ``via`` says where
    the envelope came from, for the hop log (``api``, ``federation:<domain>``, ``relay``).
    """

    origin: str
    id: str
    sender: str
    token: str
    created: datetime
    expires: datetime
    thread: str | None
    kind: str
    local: Sequence[str]
    remote: Sequence[str]
    via: str
    #: Recipients refused at acceptance (unknown, policy…), recorded as already bounced so that
    #: ``status`` shows them: (address, code, reason).
    refused: Sequence[tuple[str, str, str]] = ()
    #: What the sender asked to be told (relay.core.dsn), for the recipients that asked other
    #: than the default, keyed as ``local`` and ``remote`` name them: agent name or address.
    notify: Mapping[str, Notify] = field(default_factory=dict)
    #: Receipts (``delivered`` DSNs, SPEC.md §9.4) by local agent name: each is accepted in the
    #: same transaction when its agent gets a new inbox row and reads its inbox itself (kind
    #: ``inbox``); for an adapter-backed agent the dispatcher reports the hand-over instead,
    #: and on a replay nothing is new, so nothing is reported twice.
    receipts: Mapping[str, NewEnvelope] = field(default_factory=dict)
    #: For a receipt from a partner about an envelope this relay sent: the recipient row it
    #: marks ``delivered`` when this envelope is accepted (not on a replay).
    receipt_of: ReceiptMark | None = None

    #: The sender's idempotency key, recorded with the envelope in the same transaction; None
    #: for a send without one.
    idempotency: IdempotencyKey | None = None

    #: Local agents whose mailbox is over its quota (SPEC.md §9.7): (agent name, code, reason).
    #: Each gets a queued row with that code (4.2.2) instead of an inbox row, until
    #: ``Store.deliver_held`` delivers it or it expires. Needs the store's domain.
    held: Sequence[tuple[str, str, str]] = ()

    #: Destination domains known to be down, each with its hold: ``remote`` recipients of such
    #: a domain are queued held by this accept (relay/store/sql/accept.py), not due at once.
    holds: Mapping[str, Hold] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReceiptMark:
    """A partner's ``delivered`` report about one recipient of an envelope this relay sent:
    the row ``(origin, id, recipient)`` — if ``sender`` sent it and it is ``sent`` — becomes
    ``delivered``, with an event ``delivered`` from ``hop``."""

    origin: str
    id: str
    sender: str
    recipient: str
    code: str
    reason: str
    hop: str


@dataclass(frozen=True, slots=True)
class AcceptResult:
    origin: str
    id: str
    #: True when every row this envelope implies already existed: a replay, nothing changed.
    duplicate: bool
    #: The first use of the item's idempotency key, when the key had been used already (by an
    #: earlier transaction, or an earlier item of this batch): nothing of the item was written,
    #: and ``duplicate`` is True.
    prior: IdempotencyRecord | None = None


@dataclass(frozen=True, slots=True)
class InboxItem:
    seq: int
    origin: str
    id: str
    token: str
    delivered_at: datetime
    acked_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    at: datetime
    recipient: str
    event: str  # accepted | delivered | deferred | sent | bounced | expired | flushed | deleted
    code: str | None
    reason: str | None
    hop: str | None


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    address: str
    state: RecipientState
    code: str | None
    reason: str | None
    attempts: int
    next_attempt: datetime | None
    updated: datetime


@dataclass(frozen=True, slots=True)
class MessageStatus:
    origin: str
    id: str
    sender: str
    created: datetime
    expires: datetime
    recipients: list[RecipientStatus]
    events: list[DeliveryEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EnvelopeSummary:
    """One envelope the store holds, as the operator's console lists it: who sent it to whom,
    and where each recipient stands (``recent_envelopes``)."""

    origin: str
    id: str
    sender: str
    thread: str | None
    kind: str
    accepted: datetime
    #: In the order the store took them.
    recipients: list[RecipientStatus]


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One remote recipient row awaiting federation (``state = queued``)."""

    origin: str
    id: str
    sender: str
    recipient: str
    domain: str
    token: str
    expires: datetime
    attempts: int
    next_attempt: datetime
    code: str | None
    reason: str | None
    #: What the sender asked to be told; whether its ``delayed`` report went; when this relay
    #: took custody of the envelope (relay.core.dsn.delay_due).
    notify: Notify = DEFAULT_NOTIFY
    delay_reported: bool = False
    accepted: datetime | None = None


@dataclass(frozen=True, slots=True)
class DestinationSummary:
    """One destination of the queue, counted by the store (:meth:`Store.queue_summary`)."""

    #: A partner domain, this relay's own (held mail) or ``local:<agent>``.
    domain: str
    depth: int
    #: When this relay took custody of the destination's oldest row.
    oldest: datetime
    next_attempt: datetime
    #: The distinct ``(code, reason)`` of the destination's most recently deferred rows, the
    #: latest first, at most :data:`FAILURES_SHOWN`; empty when none has failed yet.
    failures: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """The queue as an operator's page shows it: totals by destination and the first rows,
    read at a cost that does not grow with the rows' tokens (:meth:`Store.queue_summary`)."""

    depth: int
    destinations: list[DestinationSummary]
    #: The first rows, oldest due first (as :meth:`Store.list_queue` orders them).
    first: list[QueueEntry]


#: Distinct failures a destination summary names, and the most recently deferred rows of a
#: destination they are read from: a bounded read however deep the destination's queue.
FAILURES_SHOWN: Final = 5
FAILURE_SAMPLE: Final = 500
#: Rows per read of :meth:`Store.iter_queue`.
QUEUE_PAGE: Final = 1000


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one delivery attempt for one queued row, applied by ``settle``.

    ``state``: ``sent`` (the partner took custody), ``queued`` (deferred: retry at
    ``next_attempt``) or ``bounced`` (permanent failure or expiry).
    """

    origin: str
    id: str
    recipient: str
    state: Literal["queued", "sent", "bounced"]
    code: str
    reason: str
    hop: str | None
    next_attempt: datetime | None = None
    #: Defaults: sent→sent, queued→deferred, bounced→bounced. ``expired`` and ``held`` (the
    #: destination is known down; not tried) do not count as attempts.
    event: str | None = None
    #: The row's ``delayed`` report goes with this outcome (the caller passes it to ``settle``).
    delay_reported: bool = False


@dataclass(frozen=True, slots=True)
class LocalDelivery:
    """One inbox row of an adapter-backed agent, leased for handing over to the agent."""

    agent: str
    seq: int
    origin: str
    id: str
    sender: str
    token: str
    expires: datetime
    attempts: int
    code: str | None
    reason: str | None
    #: As for QueueEntry: what the sender asked, whether ``delayed`` went, custody time.
    notify: Notify = DEFAULT_NOTIFY
    delay_reported: bool = False
    accepted: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """The result of one attempt to hand an inbox row to its agent, applied by
    ``settle_deliveries``: ``delivered`` (the agent took it: the row is acked), ``queued``
    (retry at ``next_attempt``) or ``bounced`` (permanent failure or expiry: acked, and the
    caller passes the DSN in the same call)."""

    agent: str
    seq: int
    state: Literal["delivered", "queued", "bounced"]
    code: str
    reason: str
    hop: str | None = None
    next_attempt: datetime | None = None
    #: As for Outcome: the recipient's ``delayed`` report goes with this outcome.
    delay_reported: bool = False


@dataclass(frozen=True, slots=True)
class A2ATask:
    """One task of the relay's A2A face (migration 0003; SPEC.md "A2A mapping").

    ``snapshot`` is the A2A ``Task`` JSON the face serves and ``push`` a JSON array of its
    push-notification configs; the store keeps both as opaque text. ``state`` repeats the
    snapshot's ``status.state`` (``TASK_STATE_WORKING``…) and ``status_at`` its status time, so
    listing can filter and order without parsing JSON. ``version`` counts the changes applied.
    ``status_by`` (migrations 0010, 0011) is what the task store keeps about the reply that set
    the task's current status, opaque text like ``snapshot``: None while no reply of the
    agent's set it.
    """

    id: str
    owner: str
    address: str
    context: str
    state: str
    remote_id: str | None
    snapshot: str
    push: str
    version: int
    status_at: datetime
    created: datetime
    updated: datetime
    status_by: str | None = None


@dataclass(frozen=True, slots=True)
class A2AFeedItem:
    """An inbox row of an agent that owns A2A face tasks: a possible reply to one of them."""

    seq: int
    agent: str
    token: str


@dataclass(frozen=True, slots=True)
class MailboxUsage:
    """One local agent's unacknowledged mail and its own quotas (migration 0004).

    ``bytes`` is the size of the signed envelopes (compact JWS) as stored. ``max_unacked`` and
    ``max_bytes`` are the agent's own quotas: None takes the relay's default, 0 means none.
    """

    unacked: int = 0
    bytes: int = 0
    max_unacked: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class PurgeBatch:
    """What one ``purge_*`` call did: how many rows it deleted, and where the next batch of the
    same sweep starts (the last key it examined), or None when the sweep is over."""

    deleted: int
    after: int | None


#: ``a2a_update_task`` outcomes: written; the version moved on (re-read and retry); the
#: ``source`` reply was applied before (nothing written).
A2AUpdate = Literal["updated", "conflict", "duplicate"]


class Listener:
    """A registration for wake-ups on one channel, made *before* reading, so no wake-up between
    the read and the wait is lost."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """True if woken, False on timeout. Clears the wake-up for the next wait."""
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        self._event.clear()
        return True

    async def poll(
        self,
        fetch: Callable[[], Awaitable[Sequence[_T]]],
        deadline: float | None,
        recheck: float | None = None,
    ) -> Sequence[_T]:
        """The relay's one long-poll loop: ``fetch`` until it returns something, waiting for a
        wake-up between tries, until ``deadline`` (event-loop time; None: no end). An empty
        result when the deadline passes first.

        ``recheck``: the longest wait between tries even without a wake-up — a safety net for
        a wake-up lost with another process (PostgreSQL NOTIFY is not delivered across a
        connection loss). The listener is registered before the first fetch (``listen``), so
        a commit between a fetch and the wait still wakes it.
        """
        loop = asyncio.get_running_loop()
        while True:
            found = await fetch()
            remaining = math.inf if deadline is None else deadline - loop.time()
            if found or remaining <= 0:
                return found
            await self.wait(remaining if recheck is None else min(remaining, recheck))


class Notifier:
    """In-process wake-ups by channel name. A multi-process dialect (PostgreSQL LISTEN/NOTIFY)
    subclasses it and calls ``_deliver`` for notifications from other processes."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = {}

    def notify(self, channels: Iterable[str]) -> None:
        for channel in channels:
            self._deliver(channel)

    def _deliver(self, channel: str) -> None:
        for listener in self._listeners.get(channel, ()):
            listener.fire()

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[Listener]:
        listener = Listener()
        self.attach(channel, listener)
        try:
            yield listener
        finally:
            self.detach(channel, listener)

    def attach(self, channel: str, listener: Listener) -> None:
        """Wake ``listener`` for ``channel`` too: one listener may wait on several channels
        (the A2A face's reply tracker waits on the inboxes of every agent with tasks)."""
        self._listeners.setdefault(channel, set()).add(listener)

    def detach(self, channel: str, listener: Listener) -> None:
        listeners = self._listeners.get(channel)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[channel]

    def wake_all(self) -> None:
        """Wake every listener, for a change this process cannot name: a commit by another
        process seen only as "something changed", or notifications possibly missed while a
        connection was down. A spurious wake-up costs a listener one read."""
        for channel in list(self._listeners):
            self._deliver(channel)

    def listener_count(self, prefix: str = "") -> int:
        """Listeners whose channel starts with ``prefix`` (exported as a metric)."""
        return sum(len(v) for k, v in self._listeners.items() if k.startswith(prefix))


class Store(abc.ABC):
    """Durable state of one relay. One instance per process, shared by every request."""

    def __init__(self) -> None:
        self.notifier = Notifier()

    # lifecycle ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations (numbered, per dialect)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def schema_version(self) -> int:
        """The schema version of the opened store: the number of its dialect's migrations, since
        ``open`` applies every pending one and refuses a schema newer than the code."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable unless a trivial query succeeds (for /healthz)."""

    @abc.abstractmethod
    async def size(self) -> int:
        """Bytes the store takes on disk now (SQLite: the file and its WAL; PostgreSQL: the
        database), for the operator and the soak benchmark."""

    def set_max_size(self, size: int | None) -> None:
        """Cap the store's size on disk at ``size`` bytes (None: no cap), from the next write
        on. A write that would pass the cap fails with StoreUnavailable, as on a full disk.
        Only an embedded store can cap itself; the others refuse a cap."""
        if size is not None:
            raise ConfigError("this store cannot cap its own size; [store] max_size is SQLite's")

    async def reclaim_space(self, max_pages: int) -> int:
        """Give up to ``max_pages`` pages that purges freed back to the file system, in one
        short write (SQLite's incremental vacuum); return how many. 0 where the database
        reclaims space on its own (PostgreSQL's autovacuum)."""
        return 0

    # agents ------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_agent(
        self, name: str, kind: AgentKind, token_hash: str, endpoint: str | None, now: datetime
    ) -> AgentRecord:
        """Raise Conflict if the name is taken."""

    @abc.abstractmethod
    async def get_agent(self, name: str) -> AgentRecord | None: ...

    @abc.abstractmethod
    async def agent_for_token(self, token_hash: str) -> AgentRecord | None: ...

    @abc.abstractmethod
    async def list_agents(self) -> list[AgentRecord]: ...

    @abc.abstractmethod
    async def remove_agent(self, name: str) -> bool:
        """Remove the agent and its inbox rows; False if there was none."""

    @abc.abstractmethod
    async def set_agent_token(self, name: str, token_hash: str) -> bool:
        """Replace the agent's token hash: the old token stops working, the inbox stays. False
        if there is no such agent; Conflict if another agent has that hash."""

    @abc.abstractmethod
    async def existing_agents(self, names: Iterable[str]) -> set[str]:
        """The subset of ``names`` that are registered agents (one query, for recipient checks)."""

    # custody -----------------------------------------------------------------------------------
    async def accept(self, item: NewEnvelope, now: datetime) -> AcceptResult:
        """Take custody of one envelope (see the module docstring); durable when it returns."""
        return (await self.accept_many([item], now))[0]

    @abc.abstractmethod
    async def accept_many(self, items: Sequence[NewEnvelope], now: datetime) -> list[AcceptResult]:
        """Take custody of several envelopes in one transaction (group commit).

        Wakes ``inbox:<agent>`` for every agent that got a new inbox row and ``queue`` when a
        remote row was queued — after the commit, never before.
        """

    @abc.abstractmethod
    async def message_status(self, origin: str, id: str) -> MessageStatus | None: ...

    # idempotency keys (0004) -------------------------------------------------------------------
    # ``accept_many`` records an item's ``idempotency`` key in its own transaction. A key already
    # recorded — by an earlier transaction, by another process committing first (its row locks
    # the key until COMMIT), or by an earlier item of the batch — is not recorded again, and the
    # item is not written at all: its result carries the first use as ``prior``.

    @abc.abstractmethod
    async def idempotency_records(
        self, agent: str, keys: Iterable[str]
    ) -> dict[str, IdempotencyRecord]:
        """The recorded first uses of ``agent``'s ``keys``, by key (one query)."""

    @abc.abstractmethod
    async def release_idempotency_key(
        self, agent: str, key: str, id: str, *, durable: bool = True
    ) -> bool:
        """Forget ``agent``'s ``key`` if it still names the envelope ``id``: the A2A face's call
        that recorded it with its task was then refused, or answered in full, and the same
        message sent again is a new call. False if it named another envelope or nothing.
        ``durable=False`` lets the commit go without a sync of its own (SQLite): a release lost
        to a power cut leaves the key, so a resend is answered as a retry, never sent twice."""

    @abc.abstractmethod
    async def purge_idempotency_keys(self, before: datetime, limit: int) -> int:
        """Forget up to ``limit`` keys recorded before ``before``, oldest first; how many were.
        A retention service calls it with ``now - IDEMPOTENCY_RETENTION`` (relay/core/limits.py)
        until it returns less than ``limit``."""

    # inbox -------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def inbox(
        self,
        agent: str,
        *,
        limit: int,
        include_acked: bool = False,
        thread: str | None = None,
        after_seq: int | None = None,
    ) -> list[InboxItem]:
        """Oldest first. Unacked only unless ``include_acked``."""

    @abc.abstractmethod
    async def ack(self, agent: str, id: str, now: datetime) -> bool:
        """Ack every inbox row of ``agent`` whose envelope id is ``id``; False if none exists.
        Acking twice is not an error (True again). The first ack of a row takes it off the
        agent's mailbox usage and wakes ``HELD_CHANNEL``."""

    # mailboxes and quotas (0004) ---------------------------------------------------------------
    @abc.abstractmethod
    async def mailbox_usage(self, names: Iterable[str]) -> dict[str, MailboxUsage]:
        """Usage and quotas of the named agents, in one read; an agent that never had mail
        (or does not exist) is absent, which means no usage and default quotas."""

    @abc.abstractmethod
    async def set_mailbox_quota(
        self, name: str, *, max_unacked: int | None, max_bytes: int | None
    ) -> bool:
        """Set one agent's own quotas (None: the relay's default, 0: none); False if there is
        no such agent."""

    @abc.abstractmethod
    async def held_agents(self) -> dict[str, int]:
        """Local agents with held mail (``NewEnvelope.held``), and how many envelopes each."""

    @abc.abstractmethod
    async def deliver_held(
        self, agent: str, now: datetime, *, limit: int, max_bytes: int | None
    ) -> int:
        """Move up to ``limit`` of ``agent``'s held envelopes, oldest first, into its inbox in
        one transaction: each one's row becomes ``delivered``, with a ``delivered`` event,
        while the bytes moved before it stay under ``max_bytes`` (None: no bound). Wakes the
        agent's inbox (and the dispatcher for an adapter-backed agent). Returns how many; a
        row another process delivered meanwhile is not delivered twice."""

    @abc.abstractmethod
    async def expired_held(self, now: datetime, limit: int) -> list[QueueEntry]:
        """Up to ``limit`` held rows whose envelope has expired by ``now``: the caller bounces
        them with ``settle``, which changes only rows still queued."""

    # retention (0004) ----------------------------------------------------------------------------
    # Each call examines at most ``limit`` rows after ``after`` in key order (the order rows
    # arrived in), deletes those old enough, and says where the next call starts: a short write
    # through the group-commit writer, however large the tables. A sweep of one kind starts at
    # ``after=0`` and ends when ``PurgeBatch.after`` is None: the table ran out, or the rows
    # examined were all newer than the cutoff.

    @abc.abstractmethod
    async def purge_acked(self, before: datetime, *, after: int, limit: int) -> PurgeBatch:
        """Delete inbox rows acknowledged at or before ``before``, except those the A2A face's
        reply tracker has not read yet. Keys: inbox sequence numbers."""

    @abc.abstractmethod
    async def purge_events(self, before: datetime, *, after: int, limit: int) -> PurgeBatch:
        """Delete hop-log events recorded at or before ``before``: the event rows of the window,
        and every implied event (0009) at or before ``before``, which the store stops showing at
        once without a write per row. ``deleted`` counts the event rows."""

    @abc.abstractmethod
    async def purge_envelopes(
        self,
        *,
        expired_before: datetime,
        settled_before: datetime,
        acked_before: datetime,
        after: int,
        limit: int,
    ) -> PurgeBatch:
        """Delete envelopes with nothing left to do, with their recipient rows, inbox rows and
        events: expired at or before ``expired_before`` (their deduplication window is over:
        the caller passes now − MAX_CLOCK_SKEW or earlier, SPEC.md §8.5), accepted and every
        recipient row last changed at or before ``settled_before``, none queued (held rows
        included), and every inbox row acknowledged at or before ``acked_before``."""

    @abc.abstractmethod
    async def purge_a2a_tasks(
        self, states: Sequence[str], before: datetime, *, limit: int
    ) -> PurgeBatch:
        """Delete up to ``limit`` A2A face tasks in one of ``states`` (ended ones) whose status
        is from ``before`` or earlier, with their events and envelope links. ``after`` of the
        result is 0 while more may be left, None when the sweep is over."""

    # federation queue --------------------------------------------------------------------------
    @abc.abstractmethod
    async def lease_due(
        self, now: datetime, *, lease_until: datetime, limit: int, domain: str | None = None
    ) -> list[QueueEntry]:
        """Lease up to ``limit`` queued remote rows whose next attempt is due and whose lease has
        lapsed, oldest first, grouped by nothing: the caller batches by domain. A leased row is
        invisible to other callers until ``lease_until`` or until ``settle`` releases it.
        Without ``domain``, held rows (the store's own domain) are never leased."""

    @abc.abstractmethod
    async def next_due(self) -> datetime | None:
        """The earliest next attempt among queued remote rows (lease ignored; held rows left
        out), or None."""

    @abc.abstractmethod
    async def settle(
        self, outcomes: Sequence[Outcome], new: Sequence[NewEnvelope], now: datetime
    ) -> None:
        """Apply delivery outcomes and accept ``new`` envelopes (DSNs) in one transaction, so a
        bounce and its DSN are both recorded or neither is. Releases the leases. Outcomes that
        are all holds (event ``held``, SPEC.md §9.3), with no ``new``, record no attempt and
        may commit without a sync, as a lease: lost, their rows are simply held again."""

    # local delivery to adapter-backed agents ----------------------------------------------------
    # ``accept``/``accept_many`` give every new inbox row of an agent whose kind is not
    # ``inbox`` a delivery row, due at once, and wake ``DELIVERY_CHANNEL``.

    @abc.abstractmethod
    async def lease_deliveries(
        self, now: datetime, *, lease_until: datetime, limit: int
    ) -> list[LocalDelivery]:
        """Lease due delivery rows (next attempt passed, lease lapsed), oldest first."""

    @abc.abstractmethod
    async def settle_deliveries(
        self, outcomes: Sequence[DeliveryOutcome], new: Sequence[NewEnvelope], now: datetime
    ) -> None:
        """Apply outcomes and accept ``new`` envelopes (replies' DSNs) in one transaction.
        ``delivered``/``bounced`` remove the delivery row, ack the inbox row and log an event
        for the recipient; ``queued`` counts an attempt and sets the next one."""

    @abc.abstractmethod
    async def next_delivery_due(self) -> datetime | None: ...

    @abc.abstractmethod
    async def release_leases(self) -> int:
        """Release every lease (single-process dialects only, at relay start: the process that
        held them is gone). Returns how many rows were released."""

    #: True when several relay processes may share this store (their leases are real);
    #: False for SQLite, which one ``synq serve`` owns at a time.
    shared_by_processes: bool = False

    @abc.abstractmethod
    async def list_queue(self, domain: str | None = None) -> list[QueueEntry]:
        """The queued rows, oldest due first: the federation queue, held mail, and the inbox rows
        adapter-backed agents have yet to be handed, as entries whose ``domain`` is
        ``local:<agent>``. ``domain``: one destination's (a partner domain, this relay's own for
        held mail, or ``local:<agent>``)."""

    @abc.abstractmethod
    def iter_queue(
        self, domain: str | None = None, page: int = QUEUE_PAGE
    ) -> AsyncIterator[QueueEntry]:
        """The rows of :meth:`list_queue` (``domain`` as there), in its order, read ``page``
        rows at a time: ``synq queue list`` prints a million-row queue in memory for a page."""

    @abc.abstractmethod
    async def queue_depth(self) -> int:
        """How many rows :meth:`list_queue` would return, counted by the store: a queue of a
        million rows is not read into memory to be counted."""

    @abc.abstractmethod
    async def queue_summary(self, limit: int, destinations: int) -> QueueSummary:
        """The queue by destination (at most ``destinations`` of them, the deepest first) and
        its first ``limit`` rows, for the console: each destination's rows counted, its oldest
        and next due found, its recent failures read from its :data:`FAILURE_SAMPLE` most
        recently deferred rows. Nothing here reads every row, so a page view costs about the
        same at a million rows queued as at ten (SPEC.md §14.2)."""

    @abc.abstractmethod
    async def recent_envelopes(self, limit: int, match: str | None = None) -> list[EnvelopeSummary]:
        """The ``limit`` envelopes taken into custody last, newest first; with ``match``, only
        those whose id, thread, sender or a recipient is exactly ``match`` (the console's
        search, SPEC.md §14.2). Newest first by custody order, so a page of them costs a walk
        back from the newest row; a match that finds nothing walks what retention kept."""

    @abc.abstractmethod
    async def flush(self, now: datetime, domain: str | None = None, id: str | None = None) -> int:
        """Make queued rows due now (postqueue -f / -s; ``id``: one envelope), local deliveries
        included (``domain`` as for :meth:`list_queue`); log ``flushed``. Returns the count."""

    @abc.abstractmethod
    async def delete_queued(
        self, now: datetime, id: str | None = None, domain: str | None = None
    ) -> int:
        """Drop queued rows without a DSN (postsuper -d), recording a ``deleted`` event.
        The row's state becomes ``bounced`` with code 5.0.0 so ``status`` explains it."""

    # the A2A face's tasks (0003) ---------------------------------------------------------------
    # Every write wakes ``a2a_task_channel(task.id)`` after its commit.

    @abc.abstractmethod
    async def a2a_create_task(
        self, task: A2ATask, envelope: str, *, key: IdempotencyKey | None = None
    ) -> None:
        """Insert a new task (its ``version`` as given, normally 0) and link ``envelope``, the
        id of the envelope that will carry its first message; with ``key``, record it as naming
        ``envelope`` (from the task's ``created``). Conflict if the id or the key is taken."""

    @abc.abstractmethod
    async def a2a_get_task(self, id: str) -> A2ATask | None: ...

    @abc.abstractmethod
    async def a2a_list_tasks(
        self,
        owner: str,
        address: str,
        *,
        context: str | None,
        state: str | None,
        status_after: datetime | None,
        before: tuple[datetime, str] | None,
        limit: int,
    ) -> tuple[list[A2ATask], int]:
        """One owner's tasks for one address, newest status first (``status_at`` then ``id``,
        both descending), filtered by context, state and ``status_at >= status_after``;
        ``before`` is the (status_at, id) of the last task of the previous page. Returns the
        page and how many tasks match the filters in all."""

    @abc.abstractmethod
    async def a2a_update_task(
        self,
        task: A2ATask,
        expected_version: int,
        events: Sequence[str] = (),
        *,
        source: str | None = None,
        link: str | None = None,
        key: IdempotencyKey | None = None,
        ack: tuple[str, str, datetime] | None = None,
        cursor: int | None = None,
    ) -> A2AUpdate:
        """Compare-and-set: if the task's version is still ``expected_version``, replace its
        state, remote_id, snapshot, push, status_at and updated with ``task``'s, append
        ``events`` numbered ``expected_version + 1…``, set the version to ``expected_version +
        max(1, len(events))``, link the envelope id ``link`` to the task and record ``key`` as
        naming ``link`` (from the task's ``updated``), in one transaction. ``source`` names the
        reply envelope the events came from, recorded with the first event: a source applied
        before makes the whole call ``duplicate`` and writes nothing else. Conflict if the link
        or the key is taken.

        For the reply tracker, in the same transaction: ``ack`` (agent, envelope id, at) acks
        the reply in the owner's inbox as :meth:`ack` does, whatever the outcome; ``cursor``
        saves the tracker's position (as :meth:`a2a_set_feed_cursor`) when the outcome is
        ``updated`` or ``duplicate``. A change with a ``source`` may commit without a sync of
        its own: all it writes derives from the reply, durable in the inbox before it."""

    async def a2a_reply_tasks(self, ids: Sequence[str]) -> dict[str, A2ATask]:
        """The tasks the envelope ids belong to: envelope id → task row (ids of no task are
        left out). One read where a dialect can join the two; this default takes two."""
        links = await self.a2a_tasks_for_envelopes(ids)
        found: dict[str, A2ATask] = {}
        for envelope, task_id in links.items():
            row = await self.a2a_get_task(task_id)
            if row is not None:
                found[envelope] = row
        return found

    @abc.abstractmethod
    async def a2a_task_events(self, id: str, after: int, limit: int) -> list[tuple[int, str]]:
        """The task's events numbered above ``after``, oldest first: (number, event JSON)."""

    @abc.abstractmethod
    async def a2a_tasks_for_envelopes(self, ids: Sequence[str]) -> dict[str, str]:
        """Which of the envelope ids belong to a task: envelope id → task id."""

    @abc.abstractmethod
    async def a2a_feed(self, after_seq: int, limit: int) -> list[A2AFeedItem]:
        """Inbox rows (acked or not) numbered above ``after_seq`` of agents that own a task
        created no later than the row arrived, oldest first."""

    @abc.abstractmethod
    async def a2a_owners(self) -> list[str]:
        """The local agents that own at least one task (whose inboxes the tracker watches)."""

    @abc.abstractmethod
    async def a2a_feed_cursor(self) -> int:
        """The reply tracker's saved position (0 at first)."""

    @abc.abstractmethod
    async def a2a_set_feed_cursor(self, seq: int) -> None:
        """Save the reply tracker's position; it never moves back."""

    # signals (0007; SPEC.md §13) ---------------------------------------------------------------
    # Every write wakes ``SIGNALS_CHANNEL`` after its commit.

    @abc.abstractmethod
    async def signal_insert(self, signal: Signal, tell: bool = False) -> bool:
        """Insert a new signal (or a partner's replica); False, writing nothing, when the id is
        taken (a replica offered twice). ``tell``: partners are owed the signal's offer (SPEC.md
        §13.6), marked in the same transaction; ``signals_untold`` finds it until ``signal_told``
        takes the offer into custody."""

    @abc.abstractmethod
    async def signal_get(self, id: str) -> Signal | None:
        """The signal with its reinforcements, as stored (not settled to any time)."""

    @abc.abstractmethod
    async def signal_claims(self, id: str) -> list[ClaimRecord]:
        """The signal's claim history, oldest generation first."""

    @abc.abstractmethod
    async def signal_write(
        self, change: Transition, expected_version: int, tell: bool = False
    ) -> bool:
        """Compare-and-set: if the signal's version is still ``expected_version``, write
        ``change.signal``'s state, generation, holder, token hash, lease end, version, update
        time and result, upsert ``change.claims`` and add ``change.reinforcements`` (each
        source once), in one transaction. False, writing nothing, when the version moved on.
        ``tell``: partners are owed an update of the change (SPEC.md §13.6), marked in that
        transaction (an offer still owed stays owed: it will carry the new state)."""

    @abc.abstractmethod
    async def signals_untold(self, limit: int, id: str | None = None) -> list[tuple[Signal, str]]:
        """Signals whose partners are owed an offer or an update (``id``: that signal only), as
        stored with their reinforcements, each with the kind of envelope owed
        (``relay.core.signals.KIND_SIGNAL`` or ``KIND_SIGNAL_UPDATE``), oldest id first."""

    @abc.abstractmethod
    async def signal_told(self, id: str, version: int, offer: NewEnvelope | None) -> bool:
        """``offer`` (the offer or update built from the signal at ``version``; None when no
        partner is to have one) is in custody: accepted as ``accept_many`` accepts an envelope,
        at its ``created`` time, in the transaction that clears what was owed. When the signal
        has moved past ``version`` since, an update stays owed. False, taking nothing into
        custody, when nothing is owed any more (another process told partners first). Not
        synced: what a crash loses of it, the mark that survives owes again."""

    @abc.abstractmethod
    async def signal_reinforce(self, id: str, reinforcement: Reinforcement) -> bool:
        """Add one reinforcement; False when its source reinforced the signal before."""

    @abc.abstractmethod
    async def signals_active(self, limit: int) -> list[Signal]:
        """Open and claimed signals (as stored, with their reinforcements), newest first."""

    @abc.abstractmethod
    async def signals_due(self, now: datetime, limit: int) -> list[str]:
        """Ids of claimed signals whose lease ran out by ``now`` and of open or claimed ones
        past their expiry: what the sweep settles."""

    @abc.abstractmethod
    async def signal_open_count(self, emitter: str) -> int:
        """How many of ``emitter``'s signals are open or claimed."""

    @abc.abstractmethod
    async def signal_results_unsent(self, limit: int) -> list[Signal]:
        """Completed signals whose result envelope is not yet in custody."""

    @abc.abstractmethod
    async def signal_mark_sent(self, id: str) -> None:
        """The signal's result envelope is in custody."""

    @abc.abstractmethod
    async def subscription_set(self, subscription: Subscription, now: datetime) -> None:
        """Insert or replace one local agent's subscription."""

    @abc.abstractmethod
    async def subscription_get(self, agent: str) -> Subscription | None: ...

    # the discovery catalog (0008; SPEC.md §12) ---------------------------------------------------

    @abc.abstractmethod
    async def catalog_get(self, agent: str) -> CatalogRecord | None:
        """One agent's catalog record; None when there is no such agent."""

    @abc.abstractmethod
    async def catalog_update(
        self,
        agent: str,
        now: datetime,
        *,
        visibility: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        queries: Sequence[str] | None = None,
        profile: Profile | None = None,
    ) -> bool:
        """Change what is given (None: unchanged) of an agent's record and reindex it, in one
        transaction. True when something changed; False when nothing did or there is no such
        agent (``catalog_get`` tells the two apart)."""

    @abc.abstractmethod
    async def catalog_scope(
        self, visibilities: Sequence[str], hidden: Sequence[str]
    ) -> list[CatalogRecord]:
        """Every record listed with one of ``visibilities``, except the agents ``hidden``, by
        agent name."""

    @abc.abstractmethod
    async def catalog_matches(
        self,
        terms: Sequence[str],
        visibilities: Sequence[str],
        hidden: Sequence[str],
        limit: int,
        scan: int,
    ) -> list[tuple[int, int, int]]:
        """The entries in scope (as ``catalog_scope``) whose full-text index matches any of
        ``terms`` (at most 32 words of ``[a-z0-9]``, relay.core.catalog.terms) with the store's
        stemming, at most ``scan`` of them, grouped by the bit set of the terms each matched
        (bit i: ``terms[i]``): rows (bit set, key, size of its group) for the ``limit`` oldest
        entries of each group (keys grow with an entry's age), in no particular order."""

    @abc.abstractmethod
    async def catalog_count(self, visibilities: Sequence[str], hidden: Sequence[str]) -> int:
        """How many entries are in scope (as ``catalog_scope``)."""

    @abc.abstractmethod
    async def catalog_records(self, keys: Sequence[int]) -> dict[int, CatalogRecord]:
        """The records of those of ``keys`` (``catalog_matches``) that exist."""
