"""Retention: what the relay forgets, when, and how without slowing what it is doing
(SPEC.md §8.5, "Retention").

Under steady traffic a store that only grows fills its disk. The retention service deletes,
after their retention (``[retention]``, defaults below), what the relay no longer needs:

=========================  ===============================================  =============
what                       old enough when                                  default
=========================  ===============================================  =============
A2A face tasks             ended (completed, failed, canceled, rejected)    ``tasks`` 7 d
                           this long ago; with their event logs
acknowledged inbox rows    acknowledged this long ago (history of           ``acked`` 7 d
                           ``GET /synq/v1/inbox?all=1``)
hop-log events             recorded this long ago (``synq status``)         ``events`` 7 d
envelopes, with their      expired more than MAX_CLOCK_SKEW ago (their      ``settled`` 7 d
recipient rows (the        replay window is over, §8.5), and every
settled queue rows) and    recipient row settled this long ago: none
deduplication key          queued or held, every inbox row acknowledged
                           ``acked`` ago
=========================  ===============================================  =============

The ``accepted`` and ``delivered`` events that recipient rows imply (migration 0009, no event
row of their own) go with the events' cutoff too: the store stops showing those at or before
it, at once, with one write (``Store.purge_events``); the sweep's count is of event rows.

Never purged: an unacknowledged inbox row (mailbox quotas bound those, relay/delivery/quota.py),
a queued or held recipient row, and an envelope inside its deduplication window — a replay of
it stays a duplicate whatever else was purged (SPEC.md §8.5: a receiver MUST keep the key until
``expires`` + MAX_CLOCK_SKEW).

How, without blocking the hot path:

1. A **sweep** runs every ``interval`` (default 5 minutes): tasks, acknowledged inbox rows,
   events, envelopes, in that order, each kind in **batches**.
2. A batch is one write through the group-commit writer (relay/store/sql/writer.py), so it
   queues behind and among the relay's own writes like any other and never holds the write
   lock for long: it examines the next :data:`PURGE_BATCH` rows in key order — the order they
   arrived in — and deletes those old enough. 250 envelopes and the rows each drags along (its
   recipient rows, inbox rows and events: some 1,500 rows) took a median 3.9 ms on SQLite and
   10 ms on PostgreSQL here (20,000 envelopes, a load average of 3), the order of one group
   commit under load: a send that queues behind a batch waits about that much more, once.
   (Synapse's purge jobs and Postfix's queue manager work in bounded batches for the same
   reason.)
3. Between two batches the service pauses :data:`PURGE_PAUSE`, leaving the writer to the
   traffic; a sweep of a kind ends when the rows examined are newer than its cutoff.
4. Then SQLite gives the freed pages back to the file system, :data:`RECLAIM_PAGES` pages a
   write (incremental vacuum; ``Store.reclaim_space``); PostgreSQL leaves that to autovacuum,
   which makes the space reusable by later rows.

Several relay processes on one PostgreSQL each run a sweep; deletes are idempotent, so the
worst case is work done twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from relay.core.clock import Clock
from relay.core.errors import SynqError
from relay.core.limits import MAX_CLOCK_SKEW
from relay.core.retention import RetentionPolicy
from relay.store.base import PurgeBatch, Store

__all__ = [
    "PURGE_BATCH",
    "PURGE_PAUSE",
    "RECLAIM_PAGES",
    "RetentionPolicy",
    "RetentionService",
    "SweepReport",
]

log = logging.getLogger("synq.delivery.retention")

#: Rows one purge batch examines (module docstring, step 2).
PURGE_BATCH: Final = 250
#: Seconds between two batches of a sweep (step 3). With batches of 4–10 ms the purge takes at
#: most a third of the writer while it sweeps, and still deletes 8,000–10,000 envelopes a second:
#: three times the most a relay took in here (2,500 a second, README "Benchmarks"), so a sweep
#: always catches up with the traffic.
PURGE_PAUSE: Final = 0.02
#: Pages one incremental-vacuum write hands back (step 4): 4 MiB with SQLite's default 4 KiB
#: pages; 16 ms here.
RECLAIM_PAGES: Final = 1024


@dataclass(slots=True)
class SweepReport:
    """What one sweep deleted, by kind, in how many batches, and the pages reclaimed."""

    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    reclaimed_pages: int = 0

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


#: One purge call of the store for a given ``after``.
_Purge = Callable[[int], Awaitable[PurgeBatch]]


class RetentionService:
    """Sweeps (module docstring). ``task_states``: the A2A task states that count as ended.
    Tests build it with ``pause=0`` and call :meth:`sweep` with a fake clock."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        policy: RetentionPolicy | None = None,
        *,
        task_states: Sequence[str] = (),
        batch: int = PURGE_BATCH,
        pause: float = PURGE_PAUSE,
        reclaim_pages: int = RECLAIM_PAGES,
    ) -> None:
        if batch <= 0:
            raise ValueError("a purge batch examines at least one row")
        self.store = store
        self.clock = clock
        #: ``Relay.reload`` swaps it; the next sweep uses the new one.
        self.policy = policy or RetentionPolicy()
        self.task_states = tuple(task_states)
        self.batch = batch
        self.pause = pause
        self.reclaim_pages = reclaim_pages

    def cutoffs(self, now: datetime) -> dict[str, datetime]:
        """The cutoff of each kind at ``now``: rows of that kind at or before it may go."""
        p = self.policy
        return {
            "tasks": now - p.tasks,
            "acked": now - p.acked,
            "events": now - p.events,
            "settled": now - p.settled,
            # The replay window (SPEC.md §8.5): the skew covers a checking clock behind ours.
            "expired": now - MAX_CLOCK_SKEW,
        }

    async def sweep(self) -> SweepReport:
        """One sweep of every kind, then the space reclaimed; returns what it did."""
        report = SweepReport()
        cut = self.cutoffs(self.clock.now())
        store, limit = self.store, self.batch
        tasks = self.task_states
        kinds: list[tuple[str, _Purge]] = [
            ("tasks", lambda _after: store.purge_a2a_tasks(tasks, cut["tasks"], limit=limit)),
            ("acked", lambda after: store.purge_acked(cut["acked"], after=after, limit=limit)),
            ("events", lambda after: store.purge_events(cut["events"], after=after, limit=limit)),
            (
                "envelopes",
                lambda after: store.purge_envelopes(
                    expired_before=cut["expired"],
                    settled_before=cut["settled"],
                    acked_before=cut["acked"],
                    after=after,
                    limit=limit,
                ),
            ),
        ]
        for kind, purge in kinds:
            report.deleted[kind] = await self._drain(purge, report)
        if report.total:
            report.reclaimed_pages = await self._reclaim()
        return report

    async def _drain(self, purge: _Purge, report: SweepReport) -> int:
        deleted = 0
        after: int | None = 0
        while after is not None:
            if report.batches:
                await self._rest()
            batch = await purge(after)
            report.batches += 1
            deleted += batch.deleted
            after = batch.after
        return deleted

    async def _reclaim(self) -> int:
        total = 0
        while True:
            freed = await self.store.reclaim_space(self.reclaim_pages)
            total += freed
            if freed < self.reclaim_pages:
                return total
            await self._rest()

    async def _rest(self) -> None:
        # Pacing the writer between two batches (module docstring, step 3): time for the
        # traffic, not a wait for a condition.
        if self.pause > 0:
            await asyncio.sleep(self.pause)

    async def run(self) -> None:
        """Sweep every ``policy.interval`` for ever (cancel to stop); nothing while disabled."""
        while True:
            if self.policy.enabled:
                try:
                    report = await self.sweep()
                    if report.total:
                        log.info(
                            "retention: purged %s in %d batches; %d pages reclaimed",
                            ", ".join(f"{n} {k}" for k, n in report.deleted.items() if n),
                            report.batches,
                            report.reclaimed_pages,
                        )
                except SynqError as exc:
                    log.warning("retention sweep failed: %s", exc.message)
                except Exception:
                    log.exception("retention sweep failed")
            await asyncio.sleep(self.policy.interval.total_seconds())
