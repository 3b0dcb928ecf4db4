"""Signals for local agents (SPEC.md §13): emit, subscribe, hear, reinforce, claim, heartbeat,
complete, release, withdraw — whichever face (REST, MCP, the CLI) asks.

The rules are the pure model's (relay/core/signals.py); this service reads the row, applies a
rule and writes the result as one compare-and-set (``Store.signal_write``):

1. **Change** (:meth:`Signals._change`): read the signal and its current claim, bring it up to
   now (``settle``: a lapsed lease reopens, a signal past its expiry closes), apply the
   operation, and write both with the version read as the expected one. Another writer in
   between (a second claim, a heartbeat, the sweep) moves the version: the write is refused and
   the whole step runs again on what that writer left, so the rule sees the winner's state —
   the second of two claims gets ``already_claimed``, a complete after a lapse and a new claim
   gets ``stale_claim``. Exactly one completion, whatever the interleaving, on any backend.
2. **Completion's result**: the complete writes the result and a fresh envelope id with the
   signal; then the result is sent, through the mailbox, from the worker to the emitter with
   ``in_reply_to`` = the signal id, under that id. Only then is it marked sent. A crash between
   the two is caught by the sweep, which sends the same envelope again (the store's accept
   deduplicates by id): the emitter gets the result once, never twice, never not at all.
3. **Hearing** (:meth:`Signals.feed`): the open signals whose topic one of the agent's patterns
   matches and whose intensity (settled to now: a lapsed lease counts as open, with its boost)
   is at least its threshold, strongest first; long-polled like ``Listener.poll``. The feeds
   share one copy of the active signals (:class:`ActiveSignals`), read from the store once and
   kept current by the changes this process writes, so a feed woken by an emit or a claim
   made here answers without a read. Each wake-up of ``SIGNALS_CHANNEL`` is passed on to the
   feeds by :meth:`Signals._dispatch`: when the change is one written here, only to the feeds
   whose subscription names its topic, and the first hearers of a new signal first; else to
   all. A new signal is offered first to a few of the agents waiting here, the others hear it
   a moment later (``sg.offered_from``, SPEC.md §13.1). The signals of a partner relay that
   did not answer a request are not offered for ``OWNER_QUIET`` (SPEC.md §13.6).
4. **Claims decided once** (:meth:`Signals._claim`): of the claims of one signal that reach
   this process together, one is decided (from the shared scan's copy of an open signal, no
   read: the compare-and-set refuses a stale copy) and the others wait for it; when it is
   granted they are answered ``already_claimed`` without touching the store — linearizable,
   since each of them was in flight when the grant committed. When it found the signal
   closed (a final state) or the owner of a partner's signal did not answer it, they get the
   same answer; when it is refused otherwise, each is decided on its own.
5. **The sweep** (:meth:`Signals.run_once`, every ``SWEEP_INTERVAL`` in the background):
   writes the lapses and expiries that are due (so feeds wake, and history records them when
   nobody touched the signal) and sends the results not yet in custody.
6. **Partners told** (:meth:`Signals.tell_owed`): a new signal of partner scope owes its
   partners an offer, each change of its state (claimed, reopened, done) an update. The write
   marks what is owed in its own transaction (``Store.signal_insert``, ``Store.signal_write``,
   migration 0012) and is answered at once; the teller then builds and signs the envelope from
   the signal as it then stands and takes it into custody in the transaction that clears the
   mark (``Store.signal_told``, unsynced: a crash that loses it keeps the mark). A crash
   between the two leaves the mark, and the sweep tells partners after the restart; changes
   made meanwhile travel in one update, which carries the whole state. So an emit or a claim
   waits for its own commit only, and never for an envelope to be built, signed or queued.
   An offer or update the router refuses (the partner policy, the emitter's send rate) is
   logged and not owed any more: as SPEC.md §13.6 allows, a partner's agent that claims is
   answered by this relay, and the next update carries the whole state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from relay.core import jsonutil
from relay.core import signals as sg
from relay.core.address import Address
from relay.core.clock import Clock
from relay.core.draft import Draft
from relay.core.envelope import CONTENT_TYPE_PATTERN, format_timestamp, parse_timestamp
from relay.core.errors import (
    Conflict,
    Forbidden,
    InvalidEnvelope,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    SynqError,
)
from relay.core.ids import uuid7
from relay.core.ratelimit import Rate, TokenBuckets
from relay.delivery.mailbox import Mailbox
from relay.delivery.router import Prepared
from relay.store.base import SIGNALS_CHANNEL, Listener, Store

__all__ = [
    "DEFAULT_EMIT_RATE",
    "FEED_RECHECK",
    "MAX_ACTIVE_SCAN",
    "MAX_CAS_ATTEMPTS",
    "MAX_FEED_PAGE",
    "OWNER_QUIET",
    "SCAN_MAX_AGE",
    "SWEEP_INTERVAL",
    "Acted",
    "ActiveSignals",
    "Heard",
    "OwnerLink",
    "Partners",
    "Signals",
    "TooManySignals",
    "signal_view",
]

log = logging.getLogger("synq.signals")

#: The default emit rate per agent (``[signals] emit_rate``), explained in relay/core/signals.py.
DEFAULT_EMIT_RATE: Final = sg.DEFAULT_EMIT_RATE
#: How often the sweep writes lapsed leases and expiries and resends unsent results. A lapse is
#: visible to every read at once (settled lazily); the sweep only makes it wake the feeds.
SWEEP_INTERVAL: Final = 1.0
#: The longest a feed waits without a wake-up before it looks again: a lapse reaches the feeds
#: through the sweep's write, this bounds the wait if that wake-up was lost with another process.
FEED_RECHECK: Final = 5.0
#: Open and claimed signals a feed considers, newest first. The cap on open signals per agent
#: bounds what one agent can put here; this bounds one read.
MAX_ACTIVE_SCAN: Final = 2000
#: The age at which the shared copy of the active signals is read again (in the background: it
#: serves meanwhile), so that a wake-up lost with another process (see FEED_RECHECK) or a write
#: not applied to it is found; the feeds are woken when the read finds one.
SCAN_MAX_AGE: Final = 1.0
#: After the owner of a partner's signal did not answer a request (``owner_unreachable``), its
#: signals are not offered for this long: every agent that heard them would claim in vain, and
#: an agent busy with those refusals is not there for the signals it can take. Feeds look again
#: when it ends; the next request to that owner tries again, whatever the time.
OWNER_QUIET: Final = 5.0
#: Signals one feed read lists at most.
MAX_FEED_PAGE: Final = 200
#: Compare-and-set attempts of one change before it gives up with 409: each failed attempt means
#: another writer changed the signal meanwhile, so more than a few means a storm of writers.
MAX_CAS_ATTEMPTS: Final = 16
#: Due signals and unsent results one sweep handles.
SWEEP_BATCH: Final = 200


class TooManySignals(RateLimited):
    """``429 too_many_signals``: the agent has ``MAX_OPEN_PER_AGENT`` open signals already."""

    code = "too_many_signals"
    default_message = "too many open signals"


@dataclass(frozen=True, slots=True)
class Heard:
    """A signal as a feed offers it, with its intensity at the time of the read."""

    signal: sg.Signal
    intensity: float


def signal_view(
    signal: sg.Signal,
    now: datetime,
    history: Sequence[sg.ClaimRecord] | None = None,
) -> dict[str, Any]:
    """A signal on the wire (SPEC.md §13.3): what a feed lists, and with ``history`` what
    ``GET /synq/v1/signals/{id}`` answers. Never the token or its hash."""
    view: dict[str, Any] = {
        "id": signal.id,
        "topic": signal.topic,
        "text": signal.text,
        "emitter": signal.emitter,
        "owner": signal.owner,
        "state": signal.state,
        "intensity": sg.intensity(signal, now),
        "urgency": signal.urgency,
        "half_life": signal.half_life,
        "lease": signal.lease,
        "scope": list(signal.scope) if isinstance(signal.scope, tuple) else signal.scope,
        "created": format_timestamp(signal.created),
        "expires": format_timestamp(signal.expires),
        "reinforcements": len(signal.reinforcements),
    }
    if signal.content_type is not None:
        view["content_type"] = signal.content_type
        view["body"] = signal.body
    if signal.state == "claimed" and signal.lease_until is not None:
        view["claim"] = {"holder": signal.holder, "expires": format_timestamp(signal.lease_until)}
    if history is not None:
        view["history"] = [
            {
                "generation": c.generation,
                "holder": c.holder,
                "claimed": format_timestamp(c.claimed),
                "until": format_timestamp(c.until),
                **({"ended": format_timestamp(c.ended), "outcome": c.outcome} if c.ended else {}),
            }
            for c in history
        ]
    return view


#: The states ``signals_active`` lists.
_ACTIVE: Final = frozenset({"open", "claimed"})


class _Changes(Listener):
    """Counts the wake-ups of ``SIGNALS_CHANNEL``: every committed change to a signal or a
    subscription, in this process or (as the dialect learns of them) in another; and passes
    each on to ``then``."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.then: Callable[[], None] | None = None

    def fire(self) -> None:
        self.count += 1
        if self.then is not None:
            self.then()


@dataclass(frozen=True, slots=True)
class _Scan:
    epoch: int
    taken: float
    signals: Sequence[sg.Signal]
    by_id: Mapping[str, sg.Signal]


class ActiveSignals:
    """The active (open and claimed) signals, read once and kept current in memory for every
    feed (step 3 of the module docstring).

    A change wakes every waiting feed at once; each used to read the whole active set for
    itself, so N feeds queued N scans on the store's reader ahead of the claims they were about
    to cause. Here one read serves them all, and the changes this process writes are applied
    to it in memory, so a feed woken by an emit or a claim answers without a read at all:

    1. **The read** is tagged with the number of wake-ups seen when it started (``epoch``): it
       holds every change committed before (the store wakes listeners after COMMIT). Feeds
       asking while it runs join it.
    2. **Changes written here** (:meth:`note`, called by the writer as its write returns):
       the signal as written replaces the copy of its id (a newer version wins; a closed
       signal leaves the set). A wake-up is *accounted for* when the copy reflects it: the
       read's, and each one a noted write explains. The store settles a group's writers
       before it wakes anyone, and they resume before the feeds it woke and before any later
       commit; so a writer that finds exactly one wake-up unaccounted for finds its own
       group's, and accounts for it. Any other wake-up (another process's commit, a write not
       noted) leaves the copy behind: the next feed reads again.
    3. **Served** while every wake-up is accounted for. A copy older than ``SCAN_MAX_AGE`` is
       read again in the background when next used, and serves meanwhile: what it missed (a
       wake-up lost with another process, a wake-up wrongly taken as explained because a write
       in this process bypassed :meth:`note`) is found then, and every feed is woken.

    Rows are kept as stored, not settled: each reader settles them to its own now."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._changes = _Changes()
        # Attached for the store's lifetime: a count, not a waiter, so it holds nothing.
        store.notifier.attach(SIGNALS_CHANNEL, self._changes)
        self._scan: _Scan | None = None
        #: The wake-ups the copy in ``_scan`` reflects (step 2): current when it is ``count``.
        self._known = -1
        self._reading: tuple[int, asyncio.Future[_Scan]] | None = None
        self._reads = 0
        #: Changes noted while a read runs, applied over its rows when it ends (a read whose
        #: snapshot came before their commit does not hold them).
        self._notes: dict[str, sg.Signal] = {}
        #: The signals noted since the last :meth:`changes`; None after a change that names
        #: none (a subscription, a reinforcement).
        self._since: list[sg.Signal] | None = []

    def on_wake(self, then: Callable[[], None]) -> None:
        """Call ``then`` at each wake-up of ``SIGNALS_CHANNEL`` (synchronously: it may only
        schedule work)."""
        self._changes.then = then

    @property
    def accounted(self) -> bool:
        """Whether every wake-up seen so far is reflected in the copy (step 2)."""
        return self._known == self._changes.count

    def current(self) -> Sequence[sg.Signal] | None:
        """The active signals if the copy is current (step 3), without a read; else None."""
        scan = self._fresh()
        return None if scan is None else scan.signals

    def changes(self) -> list[sg.Signal] | None:
        """The signals written by this process since the last call that were open before or
        after, when they are all that changed (every wake-up since is accounted for, step 2);
        None when something else may have changed too (another process's commit, a
        subscription): then any may matter."""
        since, self._since = self._since, []
        if self._known != self._changes.count:
            return None
        return since

    def _fresh(self) -> _Scan | None:
        scan = self._scan
        if scan is None or self._known != self._changes.count:
            return None
        if self.clock.monotonic() - scan.taken >= SCAN_MAX_AGE:
            self._refresh()
        return scan

    def _refresh(self) -> None:
        """Step 3: read the copy again behind its back; it serves meanwhile, and when the read
        finds what it missed, every feed is woken."""
        if self._reading is not None:  # one is on its way
            return
        epoch = self._changes.count
        future = asyncio.ensure_future(self._read(epoch, refresh=True))
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._reading = (epoch, future)

    async def signals(self) -> Sequence[sg.Signal]:
        """The active signals, newest first, reflecting every change committed before this call
        that this process was told of (step 3)."""
        return (await self._get()).signals

    def recent(self, id: str) -> sg.Signal | None:
        """Signal ``id`` as the copy holds it, if the copy is current or younger than
        ``SCAN_MAX_AGE`` (changes since may have moved its version on): a starting point for a
        compare-and-set, never an answer (a stale one costs a refused write and a read)."""
        scan = self._scan
        if scan is None or (
            self._known != self._changes.count
            and self.clock.monotonic() - scan.taken >= SCAN_MAX_AGE
        ):
            return None
        return scan.by_id.get(id)

    def open_count(self, emitter: str) -> int | None:
        """Open and claimed signals of ``emitter`` in a scan that holds every active signal
        and is current (every wake-up accounted for), or None: then the store counts. A relay
        whose feeds are waiting has one nearly always, and an emit spares its read."""
        scan = self._fresh()
        if scan is None or len(scan.signals) >= MAX_ACTIVE_SCAN:
            return None
        # The scan holds only active rows (``signals_active``). A wake-up lost with another
        # process leaves it behind by SCAN_MAX_AGE at most: the cap may admit one signal late.
        return sum(1 for s in scan.signals if s.emitter == emitter)

    def note(self, signal: sg.Signal | None, before: sg.Signal | None = None) -> None:
        """Step 2: this process has just written ``signal`` over ``before`` (None: a new
        signal; ``signal`` None: a change that leaves the active signals as they were, a
        subscription). Called as the write returns, before any other await: the step's
        accounting relies on the writer resuming before the feeds."""
        count = self._changes.count
        if signal is None:
            self._since = None
        else:
            # Feeds list open signals only: a change between two other states (a heartbeat, a
            # completion) alters no feed's answer, and is no reason to wake one (changes()).
            heard = signal.state == "open" or before is None or before.state == "open"
            if self._since is not None and heard:
                self._since.append(signal)
            if self._reads:
                self._notes[signal.id] = _newer(self._notes.get(signal.id), signal)
            scan = self._scan
            if scan is not None:
                if len(scan.signals) >= MAX_ACTIVE_SCAN:
                    # A capped read: a signal leaving it would make room for one it never held.
                    return
                self._scan = _applied(scan, (signal,))
        if count == self._known + 1:
            self._known = count

    def forget(self) -> None:
        """A change this process wrote that :meth:`note` cannot apply (a reinforcement): the
        next feed reads again."""
        self._known = -1
        self._since = None

    async def _get(self) -> _Scan:
        scan = self._fresh()
        if scan is not None:
            return scan
        epoch = self._changes.count
        reading = self._reading
        if reading is None or reading[0] != epoch:
            future = asyncio.ensure_future(self._read(epoch))
            # Read by whoever awaits it; retrieved here too, so a read every caller gave up on
            # (cancelled requests) leaves no "exception never retrieved" behind.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            reading = self._reading = (epoch, future)
        # Shielded: one feed cancelled (its client went away) must not cancel the others' read.
        return await asyncio.shield(reading[1])

    async def _read(self, epoch: int, *, refresh: bool = False) -> _Scan:
        taken = self.clock.monotonic()
        self._reads += 1
        try:
            found = await self.store.signals_active(MAX_ACTIVE_SCAN)
        finally:
            self._reads -= 1
            if self._reading is not None and self._reading[0] == epoch:
                self._reading = None
        scan = _Scan(epoch, taken, found, {s.id: s for s in found})
        if len(found) < MAX_ACTIVE_SCAN and self._notes:
            scan = _applied(scan, self._notes.values())
        if not self._reads:
            self._notes.clear()
        old = self._scan
        if old is None or old.epoch <= epoch:
            self._scan = scan
            self._known = max(self._known, epoch)
            if refresh and old is not None and _versions(old) != _versions(scan):
                # The copy had missed a change (a wake-up lost, or a write not noted): the
                # feeds look again, at the copy now right.
                self._since = None
                if self._changes.then is not None:
                    self._changes.then()
        return scan


def _versions(scan: _Scan) -> set[tuple[str, int]]:
    return {(s.id, s.version) for s in scan.signals}


def _newer(old: sg.Signal | None, new: sg.Signal) -> sg.Signal:
    return new if old is None or new.version >= old.version else old


def _applied(scan: _Scan, changes: Iterable[sg.Signal]) -> _Scan:
    """``scan`` with ``changes`` in it: each replaces the copy of its id unless that copy is
    newer, and leaves the set when it is no longer active."""
    by_id = dict(scan.by_id)
    for signal in changes:
        kept = by_id.get(signal.id)
        if kept is not None and kept.version > signal.version:
            continue
        if signal.state in _ACTIVE:
            by_id[signal.id] = signal
        else:
            by_id.pop(signal.id, None)
    # As ``signals_active`` orders them: newest first, then by id.
    ordered = sorted(
        sorted(by_id.values(), key=lambda s: s.id), key=lambda s: s.created, reverse=True
    )
    return _Scan(scan.epoch, scan.taken, ordered, by_id)


@dataclass(frozen=True, slots=True)
class Acted:
    """What a claim, heartbeat, complete or release did: the signal after it, and for a claim
    or heartbeat the token and the lease's end."""

    signal: sg.Signal
    token: str | None
    until: datetime | None


class OwnerLink(Protocol):
    """The way to the relay that owns a partner's signal (relay/federation/signals.py)."""

    async def request(
        self, signal: sg.Signal, address: str, op: str, data: Mapping[str, Any]
    ) -> Any:
        """Ask the owner to apply ``op`` for ``address``; its answer (the JSON the local API
        would answer), or the error it answered raised as its class; ``OwnerUnreachable``
        when it did not answer."""
        ...


class Partners(Protocol):
    """The way to the partner relays in a signal's scope (relay/federation/signals.py)."""

    async def prepare_offer(self, signal: sg.Signal, kind: str) -> Prepared | None:
        """The offer (kind ``signal``) or update (``signal.update``) of ``signal``, checked,
        built and signed, not stored; None when no partner relay is in its scope."""
        ...

    def offered(self, prepared: Prepared, error: BaseException | None = None) -> None:
        """The write taking ``prepared`` into custody committed (``error`` None) or did not."""
        ...


class Signals:
    """The signal operations of local agents (module docstring). ``agent`` arguments are local
    agent names; addresses are formed with the relay's domain."""

    def __init__(
        self,
        store: Store,
        mailbox: Mailbox,
        clock: Clock,
        *,
        emit_rate: Rate = DEFAULT_EMIT_RATE,
        max_open: int = sg.MAX_OPEN_PER_AGENT,
        partners: Partners | None = None,
        owner_link: OwnerLink | None = None,
    ) -> None:
        self.store = store
        self.mailbox = mailbox
        self.clock = clock
        self.emit_rates = TokenBuckets(emit_rate)
        self.max_open = max_open
        #: Builds the offer of each new signal of partner scope and the update of each change
        #: of its state, which the teller takes into custody (step 6).
        self.partners = partners
        #: Asks the owner relay of a partner's signal (relay/federation/signals.py).
        self.owner_link = owner_link
        #: The one scan of the active signals every feed reads (step 3).
        self.active = ActiveSignals(store, clock)
        self.active.on_wake(self._wake_soon)
        #: The feeds and streams waiting here, each with its agent: woken by ``_dispatch``,
        #: the ones a change concerns, the first hearers of a new signal first (step 3).
        self._feeds: dict[Listener, str] = {}
        self._dispatching = False
        #: The claim being decided, per signal, in this process (step 4).
        self._claiming: dict[str, asyncio.Future[None]] = {}
        #: The agents waiting for signals in this process (long polls and streams, how many
        #: each) and their subscriptions as last read: the rivals of a staggered offer (step 3).
        self._waiting: Counter[str] = Counter()
        self._listening: dict[str, sg.Subscription] = {}
        #: When each waiting agent's subscription was read (``clock.monotonic``): a feed woken
        #: again within ``SCAN_MAX_AGE`` uses it without a read; a subscription this process
        #: writes replaces it at once.
        self._read_at: dict[str, float] = {}
        #: The first hearers of the signals whose offer is held back now, by id, with the
        #: signal's creation (step 3).
        self._first: dict[str, tuple[datetime, frozenset[str]]] = {}
        #: Partner relays that did not answer a request, and until when (``clock.monotonic``)
        #: their signals are not offered (``OWNER_QUIET``).
        self._quiet: dict[str, float] = {}
        #: Signals written here whose partners are owed an offer or update, for the teller
        #: (step 6); the store's mark is what counts, this only says where to look first.
        self._owing: set[str] = set()
        self._owing_event = asyncio.Event()
        self._telling = asyncio.Lock()
        #: New signals whose offer waits for the first hearers here (``_hold_offer``).
        self._held_offers: dict[str, asyncio.TimerHandle] = {}

    @property
    def domain(self) -> str:
        return self.mailbox.domain

    def address(self, agent: str) -> str:
        return f"{agent}@{self.domain}"

    # --- emitting -------------------------------------------------------------------------------

    async def emit(self, agent: str, data: object) -> sg.Signal:
        """``POST /synq/v1/signals``: a new open signal owned by this relay."""
        now = self.clock.now()
        emit = sg.check_emit(data, now)
        emitter = self.address(agent)
        wait = self.emit_rates.take(agent, self.clock.monotonic())
        if wait > 0:
            raise RateLimited(f"{emitter} is emitting signals too fast", retry_after=wait)
        known = self.active.open_count(emitter)
        count = known if known is not None else await self.store.signal_open_count(emitter)
        if count >= self.max_open:
            # Retry once some of them are done: the shortest useful wait is one lease.
            raise TooManySignals(
                f"{emitter} has {self.max_open} open signals already",
                retry_after=emit.lease.total_seconds(),
            )
        signal = sg.Signal(
            id=uuid7(now),
            owner=self.domain,
            emitter=emitter,
            topic=emit.topic,
            text=emit.text,
            urgency=emit.urgency,
            half_life=emit.half_life.total_seconds(),
            lease=emit.lease.total_seconds(),
            scope=emit.scope,
            created=now,
            expires=emit.expires,
            content_type=emit.content_type,
            body=emit.body,
            updated=now,
        )
        owed = self._owed(None, signal)
        inserted = await self.store.signal_insert(signal, tell=owed)
        if inserted:
            if owed:
                self._offer_soon(signal)
            self._noted(signal)
            # The feeds just woken for it answer first (one turn of the event loop): this
            # task's own answer would otherwise run ahead of them.
            await asyncio.sleep(0)
        return signal

    # --- subscribing and hearing ----------------------------------------------------------------

    async def subscribe(self, agent: str, data: object) -> sg.Subscription:
        """``PUT /synq/v1/subscriptions``. With ``"capabilities": true`` the skill ids and tags
        of the agent's own card are taken as topics too (``capability_topics``)."""
        capabilities: list[str] = []
        if isinstance(data, dict) and data.get("capabilities") is True:
            card = await self.mailbox.card(Address(agent, self.domain))
            skills = card.get("skills", [])
            for skill in skills if isinstance(skills, list) else []:
                if isinstance(skill, dict):
                    capabilities.append(str(skill.get("id", "")))
                    tags = skill.get("tags", [])
                    capabilities += [str(t) for t in tags] if isinstance(tags, list) else []
        subscription = sg.check_subscription(self.address(agent), data, capabilities)
        await self.store.subscription_set(replace(subscription, agent=agent), self.clock.now())
        self._noted(None)
        if agent in self._listening:
            self._listening[agent] = subscription
        return subscription

    async def subscription(self, agent: str) -> sg.Subscription | None:
        found = await self.store.subscription_get(agent)
        return None if found is None else replace(found, agent=self.address(agent))

    async def heard(self, agent: str, limit: int) -> list[Heard]:
        """What ``agent`` hears now, strongest first (newest first among equals)."""
        return (await self._hear(agent, limit))[0]

    async def _hear(self, agent: str, limit: int) -> tuple[list[Heard], datetime | None]:
        """:meth:`heard`, and when a signal held back from ``agent`` for now (a staggered
        offer, step 3) will be offered to it, if one is."""
        subscription = await self._subscription_of(agent)
        if subscription is None or not subscription.topics:
            return [], None
        now = self.clock.now()
        out: list[Heard] = []
        later: datetime | None = None
        active = await self.active.signals()
        for stored in active:
            signal = sg.settle(stored, _current_claim(stored), now).signal
            level = sg.hears(subscription, signal, now)
            if level is None:
                continue
            quiet = self._quiet_for(signal.owner)
            if quiet > 0:
                back = now + timedelta(seconds=quiet)
                later = back if later is None else min(later, back)
                continue
            first = self._first_hearers(subscription.agent, signal, now, active)
            held = sg.offered_from(signal, subscription.agent, first, now)
            if held is not None:
                later = held if later is None else min(later, held)
                continue
            out.append(Heard(signal, level))
        out.sort(key=lambda h: (-h.intensity, h.signal.id))
        return out[:limit], later

    async def _subscription_of(self, agent: str) -> sg.Subscription | None:
        """``agent``'s subscription; for a waiting agent, as read at most ``SCAN_MAX_AGE`` ago
        (a wake-up reaches every feed at once: ten feeds, ten reads queued ahead of the claims
        they are about to cause)."""
        known = self._listening.get(agent)
        if known is not None and self.clock.monotonic() - self._read_at[agent] < SCAN_MAX_AGE:
            return known
        subscription = await self.subscription(agent)
        if agent in self._waiting and subscription is not None:
            self._listening[agent] = subscription
            self._read_at[agent] = self.clock.monotonic()
        return subscription

    def _first_hearers(
        self,
        looking: str | None,
        signal: sg.Signal,
        now: datetime,
        active: Sequence[sg.Signal],
    ) -> frozenset[str]:
        """The hearers a new signal is offered to first (step 3): fixed at the first look at
        it (its write's wake-up, or the first feed to read it: ``looking``), from the agents
        waiting then and the one looking, so that the first hearers' feeds
        returning does not move others up while the offer is held back; while fewer than
        ``OFFER_FIRST`` were waiting, the next agents to look join them. Those holding a claim
        of one of the ``active`` signals (a lease not run out) come after those holding none."""
        if not sg.offer_pending(signal, now):
            return frozenset()
        for id, (created, _) in list(self._first.items()):
            if not created <= now < created + sg.OFFER_DELAY:
                del self._first[id]
        fixed = self._first.get(signal.id)
        if fixed is not None and len(fixed[1]) >= sg.OFFER_FIRST:
            return fixed[1]
        hearers = [] if looking is None else [looking]
        if fixed is None:
            for other in self._listening.values():
                if sg.hears(other, signal, now) is not None:
                    hearers.append(other.agent)
        busy = {
            s.holder
            for s in active
            if s.state == "claimed"
            and s.holder is not None
            and s.lease_until is not None
            and now < s.lease_until
        }
        first = sg.first_hearers(
            signal.id, hearers, frozenset() if fixed is None else fixed[1], busy
        )
        if first:
            self._first[signal.id] = (signal.created, first)
        return first

    def _quiet_for(self, owner: str) -> float:
        """Seconds before the signals of partner relay ``owner`` are offered again, or 0."""
        until = self._quiet.get(owner)
        if until is None:
            return 0.0
        left = until - self.clock.monotonic()
        if left <= 0:
            del self._quiet[owner]
        return max(0.0, left)

    @property
    def waiting(self) -> frozenset[str]:
        """The agents waiting for signals here now (a long poll or a stream that has looked
        once): the rivals of a staggered offer."""
        return frozenset(self._listening)

    @contextlib.contextmanager
    def _waits(self, agent: str) -> Iterator[Listener]:
        """``agent`` is waiting for signals (a long poll, a stream) while this lasts; the
        listener its wake-ups come to, registered before its first look (so a change between
        that look and the wait still wakes it)."""
        listener = Listener()
        self._feeds[listener] = agent
        self._waiting[agent] += 1
        try:
            yield listener
        finally:
            del self._feeds[listener]
            self._waiting[agent] -= 1
            if not self._waiting[agent]:
                del self._waiting[agent]
                self._listening.pop(agent, None)
                self._read_at.pop(agent, None)

    def _noted(self, signal: sg.Signal | None, before: sg.Signal | None = None) -> None:
        """A write of this process has just returned: ``active`` applies it and, once every
        wake-up is accounted for, the feeds it concerns are woken now (``_dispatch``), so that
        a writer that yields once lets them answer before it goes on (the emit does); what the
        other writers of its group note after it, the scheduled dispatch wakes."""
        self.active.note(signal, before)
        if self.active.accounted:
            self._dispatch()

    def _wake_soon(self) -> None:
        """A wake-up of ``SIGNALS_CHANNEL``: the feeds are woken once the writers of the
        changes committed with it have resumed (they were scheduled first) and told
        ``active`` what they wrote."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a store used outside an event loop: nothing waits there
            self._dispatching = False
            return
        loop.call_soon(self._dispatch_scheduled)

    def _dispatch_scheduled(self) -> None:
        self._dispatching = False
        self._dispatch()

    def _dispatch(self) -> None:
        """Step 3 of the module docstring: wake the waiting feeds a change concerns.

        When the changes are known (written here, ``ActiveSignals.changes``), only the feeds
        whose subscription names the topic of one of them are woken: the others would look,
        find what they found before, and hold the event loop while a claim waits. The first
        hearers of a new signal are fixed now and woken first, so their answers leave before
        the other feeds run. When anything else may have changed, every feed is woken."""
        changes = self.active.changes()
        if not self._feeds:
            return
        if changes is None:  # any feed may be concerned
            for listener in self._feeds:
                listener.fire()
            return
        if not changes:  # only changes no feed lists (heartbeats, completions)
            return
        now = self.clock.now()
        active = self.active.current()
        first: set[str] = set()
        if active is not None:
            for signal in changes:
                if signal.state == "open" and sg.offer_pending(signal, now):
                    first |= self._first_hearers(None, signal, now, active)
        later: list[Listener] = []
        for listener, agent in self._feeds.items():
            sub = self._listening.get(agent)
            if sub is not None and not any(
                sg.matches(p, s.topic) for s in changes for p in sub.topics
            ):
                continue
            if sub is not None and sub.agent in first:
                listener.fire()
            else:
                later.append(listener)
        for listener in later:
            listener.fire()

    def _pause(self, limit: float, later: datetime | None) -> float:
        """The wait before the next look: ``limit``, or less when a held-back offer is due."""
        if later is None:
            return limit
        return max(0.0, min(limit, (later - self.clock.now()).total_seconds()))

    async def feed(self, agent: str, *, wait: float, limit: int) -> list[Heard]:
        """``GET /synq/v1/signals?wait=S``: :meth:`heard`, waiting up to ``wait`` seconds for
        something to hear (the loop of ``Listener.poll``, also woken when an offer held back
        from this agent is due)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        with self._waits(agent) as listener:
            while True:
                found, later = await self._hear(agent, limit)
                remaining = deadline - loop.time()
                if found or remaining <= 0:
                    return found
                await listener.wait(self._pause(min(remaining, FEED_RECHECK), later))

    async def watch(self, agent: str, *, every: float) -> AsyncIterator[list[Heard] | None]:
        """What ``agent`` hears, the first at once and again each time the set of signals it
        hears changes; None after ``every`` seconds without a change (the SSE stream's
        keepalive). A signal that evaporated below the threshold is noticed at the next look."""
        loop = asyncio.get_running_loop()
        last: list[tuple[str, str]] | None = None
        said = loop.time()
        with self._waits(agent) as listener:
            while True:
                heard, later = await self._hear(agent, MAX_FEED_PAGE)
                seen: list[tuple[str, str]] = [(h.signal.id, h.signal.state) for h in heard]
                if seen != last:
                    last = seen
                    said = loop.time()
                    yield heard
                elif loop.time() - said >= every:
                    said = loop.time()
                    yield None
                await listener.wait(self._pause(max(0.0, said + every - loop.time()), later))

    # --- one signal -----------------------------------------------------------------------------

    async def _load(self, id: str) -> tuple[sg.Signal, sg.ClaimRecord | None]:
        signal = await self.store.signal_get(id)
        if signal is None:
            raise NotFound("no such signal")
        history = None
        if signal.generation:
            claims = await self.store.signal_claims(id)
            history = claims[-1] if claims and claims[-1].generation == signal.generation else None
        return signal, history

    async def show(self, id: str) -> tuple[sg.Signal, list[sg.ClaimRecord]]:
        """``GET /synq/v1/signals/{id}``: the signal settled to now and its claim history (a
        lapse that is due shows, whether or not the sweep has written it yet)."""
        signal, current = await self._load(id)
        settled = sg.settle(signal, current, self.clock.now())
        claims = {c.generation: c for c in await self.store.signal_claims(id)}
        claims.update({c.generation: c for c in settled.claims})
        return settled.signal, [claims[g] for g in sorted(claims)]

    async def _change(
        self,
        id: str,
        rule: Callable[[sg.Signal, sg.ClaimRecord | None, datetime], sg.Transition],
        copy: sg.Signal | None = None,
    ) -> sg.Transition:
        """Step 1 of the module docstring: settle, apply ``rule``, compare-and-set; again on a
        lost race. A refusal by ``rule`` still writes what settling found due.

        ``copy``: the signal as stored, read a moment ago (the shared scan), tried first
        instead of a read when it is ``open`` — an open signal's rule needs no claim record.
        Its version is compared like any other: a stale copy loses and the change runs again
        on a fresh read."""
        for _ in range(MAX_CAS_ATTEMPTS):
            if copy is not None and copy.state == "open":
                stored, current = copy, None
            else:
                stored, current = await self._load(id)
            copy = None
            now = self.clock.now()
            settled = sg.settle(stored, current, now)
            if settled.claims:
                current = settled.claims[-1]
            try:
                change = rule(settled.signal, current, now)
            except SynqError:
                if settled.changed and await self._write(settled, stored):
                    self._noted(settled.signal, stored)
                raise
            merged = _merge(settled, change)
            if not merged.changed:
                return merged
            if await self._write(merged, stored):
                self._noted(merged.signal, stored)
                return merged
        raise Conflict("the signal is changing too fast; try again")

    async def _write(self, change: sg.Transition, stored: sg.Signal) -> bool:
        """The compare-and-set of ``change`` against ``stored``'s version, marking in the same
        transaction that partners are owed an update of it (step 6)."""
        owed = self._owed(stored, change.signal)
        written = await self.store.signal_write(change, stored.version, tell=owed)
        if written and owed:
            self._tell_soon(change.signal.id)
        return written

    def _owed(self, before: sg.Signal | None, after: sg.Signal) -> bool:
        """Whether partners in scope of a signal this relay owns are owed an envelope for this
        write (step 6): the offer when it is new, an update when its state or generation moves
        (not for a heartbeat)."""
        if self.partners is None or after.owner != self.domain or after.scope == "local":
            return False
        return before is None or (before.state, before.generation) != (
            after.state,
            after.generation,
        )

    def _offer_soon(self, signal: sg.Signal) -> None:
        """Have the teller offer a new signal to partners: once it is ``OFFER_DELAY`` old when
        agents waiting here hear it — partners' agents are among the others of the staggered
        offer (SPEC.md §13.1, §13.6), and the first hearers' claim usually comes first: its
        update then sends the offer at once, showing the signal taken — else at once."""
        now = self.clock.now()
        if sg.offer_pending(signal, now) and any(
            sg.hears(sub, signal, now) for sub in self._listening.values()
        ):
            self._hold_offer(signal)
        else:
            self._tell_soon(signal.id)

    def _hold_offer(self, signal: sg.Signal) -> None:
        """Tell partners of ``signal`` once it is ``OFFER_DELAY`` old by the relay's clock, or
        with the first change that owes them an update (``_tell_soon``), whichever is first."""
        now = self.clock.now()
        if not sg.offer_pending(signal, now):
            self._tell_soon(signal.id)
            return
        # At least a millisecond: a clock that stands still (tests drive it) is looked at
        # again, not spun on.
        left = max((signal.created + sg.OFFER_DELAY - now).total_seconds(), 0.001)
        loop = asyncio.get_running_loop()
        self._held_offers[signal.id] = loop.call_later(left, self._hold_offer, signal)

    def _tell_soon(self, id: str) -> None:
        """Have the teller (``run``) tell partners of ``id`` as soon as it can, after the answer
        to the write that owes it."""
        held = self._held_offers.pop(id, None)
        if held is not None:
            held.cancel()
        self._owing.add(id)
        self._owing_event.set()

    async def tell_owed(self, id: str | None = None) -> int:
        """Tell partners what the store says they are owed (``id``: of that signal only; else
        up to ``SWEEP_BATCH`` signals, oldest first), each from the signal as it now stands;
        how many were told. One at a time: two tellers of one signal would each queue an
        envelope."""
        told = 0
        async with self._telling:
            for signal, kind in await self.store.signals_untold(SWEEP_BATCH, id):
                if id is None and signal.id in self._held_offers:
                    continue  # an offer held back for the first hearers here (_hold_offer)
                await self._tell(signal, kind)
                told += 1
        return told

    async def _tell(self, signal: sg.Signal, kind: str) -> None:
        prepared: Prepared | None = None
        if self.partners is not None:
            try:
                prepared = await self.partners.prepare_offer(signal, kind)
            except SynqError as exc:
                # Nothing is owed any more: partners learn the state from the next update, or
                # from the owner's answer to a claim (SPEC.md §13.6).
                log.warning("signal %s: partners not told (%s)", signal.id, exc.message)
        item = None if prepared is None else prepared.item
        try:
            told = await self.store.signal_told(signal.id, signal.version, item)
        except BaseException as exc:
            if prepared is not None and self.partners is not None:
                self.partners.offered(prepared, exc)
            raise
        if prepared is not None and self.partners is not None:
            self.partners.offered(prepared, None if told else Conflict("told by another process"))

    async def claim(self, agent: str, id: str) -> tuple[str, datetime]:
        """``POST /synq/v1/signals/{id}/claim`` → (token, lease end)."""
        done = await self.act(self.address(agent), id, "claim", {})
        assert done.token is not None
        assert done.until is not None
        return done.token, done.until

    async def heartbeat(self, agent: str, id: str, token: object) -> datetime:
        """``POST /synq/v1/signals/{id}/heartbeat`` → the new lease end."""
        done = await self.act(self.address(agent), id, "heartbeat", {"token": token})
        assert done.until is not None
        return done.until

    async def release(self, agent: str, id: str, token: object) -> sg.Signal:
        return (await self.act(self.address(agent), id, "release", {"token": token})).signal

    async def complete(
        self, agent: str, id: str, token: object, content_type: object = None, body: Any = None
    ) -> sg.Signal:
        """``POST /synq/v1/signals/{id}/complete``: done, and the result on its way to the
        emitter (step 2 of the module docstring)."""
        data = {"token": token, "content_type": content_type, "body": body}
        return (await self.act(self.address(agent), id, "complete", data)).signal

    async def withdraw(self, agent: str, id: str) -> sg.Signal:
        address = self.address(agent)
        change = await self._change(id, lambda s, h, now: sg.withdraw(s, h, address, now))
        return change.signal

    async def act(
        self, address: str, id: str, op: str, data: Mapping[str, Any], *, remote: bool = False
    ) -> Acted:
        """Claim, heartbeat, complete or release signal ``id`` as ``address``. On a signal this
        relay owns, the rule is applied here (``remote``: the request came from a partner relay
        for one of its agents, which sends the result itself). On a partner's replica, the
        owner relay decides (``owner_link``) and the replica follows its answer."""
        if op not in sg.REQUEST_OPS:
            raise NotFound(f"no signal operation {op!r}")
        if op == "claim":
            return await self._claim(address, id, remote=remote)
        return await self._act(address, id, op, data, remote=remote)

    async def _claim(self, address: str, id: str, *, remote: bool) -> Acted:
        """Step 4 of the module docstring: one claim of signal ``id`` decided at a time in this
        process; the claims that arrived while one was granted are refused from memory."""
        if (deciding := self._claiming.get(id)) is not None:
            try:
                await asyncio.shield(deciding)
            except sg.OwnerUnreachable as exc:
                # The owner relay did not answer a claim made while this one waited: the same
                # temporary answer, at once (SPEC.md §13.6), not one more wait each, in turn.
                raise sg.OwnerUnreachable(exc.message) from None
            except sg.SignalClosed as exc:
                raise sg.SignalClosed(exc.message) from None  # final: closed for this one too
            except SynqError:
                # Refused for a reason that may not hold for this claim (taken by a claim
                # before it, which may lapse; its emitter's own): decided on its own, beside
                # the other waiters, not each after the other.
                return await self._act(address, id, "claim", {}, remote=remote)
            raise sg.AlreadyClaimed()
        decided: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Read by the waiters, if any; retrieved here too, so a refusal nobody waited for
        # leaves no "exception never retrieved" behind.
        decided.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._claiming[id] = decided
        try:
            acted = await self._act(address, id, "claim", {}, remote=remote)
        except BaseException as exc:
            decided.set_exception(exc if isinstance(exc, SynqError) else Conflict())
            raise
        else:
            decided.set_result(None)
            return acted
        finally:
            del self._claiming[id]

    async def _act(
        self, address: str, id: str, op: str, data: Mapping[str, Any], *, remote: bool
    ) -> Acted:
        # A copy from the shared scan spares the claim that wins a race its reads: its owner
        # never changes, and the compare-and-set judges the rest (a copy that is out of date
        # costs one refused write and a read).
        copy = self.active.recent(id)
        stored = copy if copy is not None else await self.store.signal_get(id)
        if stored is None:
            raise NotFound("no such signal")
        if stored.owner != self.domain:
            return await self._act_remote(stored, address, op, data)
        token = data.get("token")
        if op == "claim":
            change = await self._change(id, lambda s, _h, now: sg.claim(s, address, now), copy)
        elif op == "heartbeat":
            change = await self._change(
                id, lambda s, h, now: sg.heartbeat(s, _need(h), address, token, now)
            )
        elif op == "release":
            change = await self._change(
                id, lambda s, h, now: sg.release(s, _need(h), address, token, now)
            )
        else:
            ctype = _result_type(data.get("content_type"), data.get("body"))
            result_id = uuid7(self.clock.now())

            def rule(s: sg.Signal, h: sg.ClaimRecord | None, now: datetime) -> sg.Transition:
                t = sg.complete(
                    s,
                    _need(h),
                    address,
                    token,
                    now,
                    result_id=result_id,
                    content_type=ctype,
                    body=data.get("body"),
                )
                # A partner's worker: its own relay sends the result (SPEC.md §13.6).
                return replace(t, signal=replace(t.signal, result_sent=True)) if remote else t

            change = await self._change(id, rule)
            if not remote:
                await self._try_send_result(change.signal)
        return Acted(change.signal, change.token, change.signal.lease_until)

    async def _act_remote(
        self, replica: sg.Signal, address: str, op: str, data: Mapping[str, Any]
    ) -> Acted:
        """A local agent acts on a partner's signal: the owner relay answers at once (or the
        request fails with ``OwnerUnreachable``); the replica then follows the answer, so this
        relay stops offering what its agent took."""
        if self.owner_link is None:
            raise sg.OwnerUnreachable("this relay has no link to partner relays")
        if op == "complete":
            _result_type(data.get("content_type"), data.get("body"))
        try:
            answer = await self.owner_link.request(replica, address, op, data)
        except sg.OwnerUnreachable:
            self._quiet[replica.owner] = self.clock.monotonic() + OWNER_QUIET
            raise
        self._quiet.pop(replica.owner, None)
        claim = answer.get("claim") if isinstance(answer, dict) else None
        token = claim.get("token") if isinstance(claim, dict) else None
        until_raw = claim.get("expires") if isinstance(claim, dict) else None
        until = parse_timestamp(until_raw) if isinstance(until_raw, str) else None
        if op in ("claim", "heartbeat") and (not isinstance(token, str) or until is None):
            raise sg.OwnerUnreachable("the owner relay's answer is not a claim")
        result_id = uuid7(self.clock.now())
        # The owner's answer is what counts; the replica follows it. Another write to the
        # replica in between (an update from the owner) moves its version: read and apply again,
        # so a completion's result id is always kept and its result sent (module docstring).
        new = self._follow(replica, address, op, data, token, until, result_id)
        for _ in range(MAX_CAS_ATTEMPTS):
            if await self.store.signal_write(sg.Transition(new), new.version - 1):
                self._noted(new)
                break
            fresh = await self.store.signal_get(replica.id)
            if fresh is None:
                break
            new = self._follow(fresh, address, op, data, token, until, result_id)
        if op == "complete":
            await self._try_send_result(new)
        return Acted(new, token if isinstance(token, str) else None, until)

    def _follow(
        self,
        replica: sg.Signal,
        address: str,
        op: str,
        data: Mapping[str, Any],
        token: object,
        until: datetime | None,
        result_id: str,
    ) -> sg.Signal:
        """The replica after the owner granted ``op`` to the local agent ``address``."""
        new = replace(replica, updated=self.clock.now(), version=replica.version + 1)
        if op == "claim" and isinstance(token, str):
            generation, _ = sg.parse_token(token)
            return replace(
                new, state="claimed", generation=generation, holder=address, lease_until=until
            )
        if op == "heartbeat":
            return replace(new, lease_until=until)
        if op == "release":
            return replace(new, state="open", holder=None, lease_until=None)
        return replace(
            new,
            state="done",
            holder=address,
            lease_until=None,
            result_id=result_id,
            result_type=_result_type(data.get("content_type"), data.get("body")),
            result_body=data.get("body"),
            result_sent=False,
        )

    async def apply_offer(self, offer: sg.Signal) -> bool:
        """A partner's ``signal`` or ``signal.update`` (relay/federation/signals.py): kept as a
        replica, or applied to the one kept when it is newer. True when something changed."""
        stored = await self.store.signal_get(offer.id)
        if stored is None:
            if not await self.store.signal_insert(offer):
                return False
            self._noted(offer)
            return True
        if stored.owner != offer.owner or stored.emitter != offer.emitter:
            raise Forbidden("that signal belongs to another relay")
        # A final state is never left (updates may arrive out of order through the queue), and
        # an update that says nothing new is not written.
        if stored.state in sg.CLOSED or (
            offer.version <= stored.version and offer.state == stored.state
        ):
            return False
        new = replace(
            stored,
            state=offer.state,
            generation=offer.generation,
            holder=offer.holder,
            lease_until=offer.lease_until,
            version=max(offer.version, stored.version + 1),
            updated=self.clock.now(),
            reinforcements=offer.reinforcements,
        )
        fresh = tuple(r for r in offer.reinforcements if r not in stored.reinforcements)
        if not await self.store.signal_write(sg.Transition(new, (), fresh), stored.version):
            return False
        self._noted(new, stored)
        return True

    async def _try_send_result(self, signal: sg.Signal) -> None:
        try:
            await self._send_result(signal)
        except SynqError as exc:
            # The completion is written and its result with it: the sweep sends it (step 5).
            # The worker's answer is the completion's, which stands.
            log.warning("result of signal %s not sent yet: %s", signal.id, exc.message)

    async def _send_result(self, signal: sg.Signal) -> None:
        """The result envelope of a signal completed here: from its worker to its emitter, under
        the id chosen at completion, then marked sent (step 2)."""
        if signal.result_id is None or signal.holder is None:
            return
        if signal.result_type is None:
            ctype, body = "application/json", {"signal": signal.id, "state": "done"}
        else:
            ctype, body = signal.result_type, signal.result_body
        draft = Draft(
            Address.parse(signal.holder),
            (Address.parse(signal.emitter),),
            ctype,
            body,
            in_reply_to=signal.id,
            thread=signal.id,
            id=signal.result_id,
        )
        await self.mailbox.send(draft, via="signals")
        await self.store.signal_mark_sent(signal.id)

    async def reinforce(self, agent: str, id: str, amount: object) -> sg.Signal:
        """``POST /synq/v1/signals/{id}/reinforce``: once per agent (409 the second time)."""
        signal, current = await self._load(id)
        now = self.clock.now()
        settled = sg.settle(signal, current, now).signal
        reinforcement = sg.reinforce(settled, self.address(agent), amount, now)
        if not await self.store.signal_reinforce(id, reinforcement):
            raise Conflict("this agent has reinforced the signal already")
        self.active.forget()
        return replace(settled, reinforcements=(*settled.reinforcements, reinforcement))

    # --- the sweep ------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Write the lapses and expiries due now and send the results not yet in custody
        (step 5); how many signals it changed or sent."""
        done = 0
        for id in await self.store.signals_due(self.clock.now(), SWEEP_BATCH):
            try:
                await self._change(id, _nothing)
            except SynqError:
                continue
            done += 1
        for signal in await self.store.signal_results_unsent(SWEEP_BATCH):
            try:
                await self._send_result(signal)
            except SynqError as exc:
                log.warning("result of signal %s not sent yet: %s", signal.id, exc.message)
                continue
            done += 1
        # What partners are owed and a crash or a failed write left untold (step 6).
        return done + await self.tell_owed()

    async def run(self) -> None:
        """The sweep and the teller, until cancelled."""
        teller = asyncio.create_task(self._teller(), name="synq-signals-teller")
        try:
            await self._sweep()
        finally:
            teller.cancel()
            for held in self._held_offers.values():
                held.cancel()  # the store owes them: the next start's sweep tells them
            self._held_offers.clear()
            with contextlib.suppress(asyncio.CancelledError):
                await teller

    async def _sweep(self) -> None:
        # Passes start every SWEEP_INTERVAL, not SWEEP_INTERVAL after the last one ended, so a
        # lapsed lease is written (and its signal offered again) within SWEEP_INTERVAL of its
        # end however long a pass takes ("at least once a second", SPEC.md §13.5).
        while True:
            started = self.clock.monotonic()
            try:
                await self.run_once()
            except SynqError as exc:
                log.warning("signal sweep failed: %s", exc.message)
            await asyncio.sleep(max(0.0, SWEEP_INTERVAL - (self.clock.monotonic() - started)))

    async def _teller(self) -> None:
        """Tell partners of each signal written here as soon as its write is answered (step 6);
        what fails here, the sweep tells within ``SWEEP_INTERVAL``."""
        while True:
            await self._owing_event.wait()
            self._owing_event.clear()
            while self._owing:
                id = self._owing.pop()
                try:
                    await self.tell_owed(id)
                except SynqError as exc:
                    log.warning("signal %s: partners not told yet: %s", id, exc.message)
                except Exception:
                    # The teller goes on with the next; the sweep retries this one.
                    log.exception("signal %s: partners not told yet", id)


def _nothing(signal: sg.Signal, _h: sg.ClaimRecord | None, _now: datetime) -> sg.Transition:
    """The sweep's rule: what settling found is the whole change."""
    return sg.Transition(signal, changed=False)


def _need(history: sg.ClaimRecord | None) -> sg.ClaimRecord:
    """The current claim's record, which a claimed signal always has; a token for a signal
    never claimed is stale."""
    if history is None:
        raise sg.StaleClaim()
    return history


def _current_claim(signal: sg.Signal) -> sg.ClaimRecord | None:
    """A stand-in for the current claim record where only the row was read (the feeds): the
    lapse it settles is shown, not written, so the record's own fields do not matter."""
    if signal.state != "claimed" or signal.holder is None or signal.lease_until is None:
        return None
    return sg.ClaimRecord(signal.generation, signal.holder, signal.created, signal.lease_until)


def _merge(first: sg.Transition, second: sg.Transition) -> sg.Transition:
    """One write for settling and the operation: the operation's signal, every claim record
    (the later one of a generation wins) and every reinforcement."""
    claims = {c.generation: c for c in first.claims}
    claims.update({c.generation: c for c in second.claims})
    return sg.Transition(
        second.signal if second.changed else first.signal,
        tuple(claims[g] for g in sorted(claims)),
        (*first.reinforcements, *second.reinforcements),
        token=second.token,
        changed=first.changed or second.changed,
    )


def _result_type(content_type: object, body: Any) -> str | None:
    """The result's content type: as given, or chosen from the body; None without a body."""
    if body is None:
        if content_type is not None:
            raise InvalidEnvelope("content_type: given without a body")
        return None
    if content_type is None:
        content_type = "text/plain" if isinstance(body, str) else "application/json"
    if not isinstance(content_type, str) or not re.fullmatch(CONTENT_TYPE_PATTERN, content_type):
        raise InvalidEnvelope("content_type: a media type")
    if len(jsonutil.dumps(body)) > sg.MAX_SIGNAL_BODY_BYTES:
        raise PayloadTooLarge(f"body: at most {sg.MAX_SIGNAL_BODY_BYTES} bytes of JSON")
    return content_type
