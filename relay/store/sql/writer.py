"""The group-commit writer of the SQL dialects: every write of a store goes through it.

Every write (``accept_many``, ``settle``, agents, ack, leases, queue commands) becomes an
:class:`Op` on an asyncio queue. One writer task per store takes the first operation, drains
whatever else is already waiting (up to :data:`MAX_GROUP_OPS`) and runs them all in one
transaction on the store's one writer connection: one commit (one fsync, one WAL flush) for the
whole group. No timer: while one group commits, the next callers queue up and form the next
group, so batching grows with load and costs no latency when idle. Only the writer task uses
the writer connection, so no other coroutine's statement can land inside its transaction.

The way out goes first: the leases and settles of the federation sender and of the dispatcher
(``Op.way_out``) lead the next group, ahead of operations that were waiting before them —
leases in a group of their own, which commits without a sync (``next_group``; the group after
it is taken in order again) — and a group takes at most :data:`MAX_GROUP_ACCEPTS` accepted
envelopes. Without both, a flood of
submissions starves delivery: with 32 clients posting batches of 100, groups of thousands of
envelopes formed, and the sender's lease waited 0.5–0.9 s behind them while its partner sat
idle (bench ``throughput``). Operations that wait at the same time were issued concurrently,
so no caller can tell in which order they ran; a caller that needs one write before another
awaits the first (and a reader is woken only after the COMMIT that made the rows visible).

1. **Begin** (the dialect's ``_begin``): the transaction, and what the dialect takes first
   (SQLite: the write lock, and the sync level; PostgreSQL: the inbox order lock and the rows of
   the agents the group delivers to).
2. **Run** each operation under its own ``SAVEPOINT``: one that fails is rolled back to its
   savepoint and gets its own exception while the others commit. A group of one skips the
   savepoint (the transaction already isolates it). Consecutive accepts (concurrent API
   submissions) run as one batch under one savepoint, a few statements for the lot
   (relay/store/sql/accept.py); only if that batch fails are they run again one savepoint each,
   so the failing one alone fails.
3. **Commit**, after the dialect's ``_before_commit`` (PostgreSQL queues its NOTIFY, which
   travels on COMMIT), or roll back when every operation failed.
4. **Answer** every caller, then wake the notifier's listeners — after COMMIT, never before: a
   woken reader must find the rows.

An operation marked ``outside`` (SQLite's incremental vacuum, which a transaction would cut
short) runs alone between two groups, on the same connection and task, with no BEGIN.

A driver error that leaves the transaction untrustworthy (the dialect's ``_is_group_fatal``: a
lost connection, a full disk, a deadlock) fails the whole group; the dialect says whether
running it again may help (PostgreSQL's deadlocks and serialization failures, up to
``group_retries`` times). Constraint errors belong to the operation that hit them. Callers only
ever see ``relay.core.errors`` types (the dialect's ``_driver_error``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from relay.core.errors import StoreUnavailable, SynqError
from relay.store.base import AcceptResult, NewEnvelope, Notifier

__all__ = ["MAX_GROUP_OPS", "GroupFailed", "GroupWriter", "Op", "Tx"]

_log = logging.getLogger(__name__)

#: Most operations committed in one transaction. Bounds how long one group holds the write lock
#: (SQLite) or its agents' row locks (PostgreSQL) — another process waits that long at most —
#: and how much work a failing COMMIT throws back at its callers. Postfix's cleanup and
#: Synapse's event persister batch in the same order of magnitude.
MAX_GROUP_OPS: Final = 256
#: Most envelopes accepted in one group (an operation larger than this runs in a group of its
#: own). Bounds how long an operation queued behind a group of accepts waits for it: 500
#: envelopes are some 30 ms of statements here, where 32 batched submissions at once (3,200
#: envelopes) held the writer for 0.2–0.3 s; a commit per 500 costs nothing measurable.
MAX_GROUP_ACCEPTS: Final = 500


class Tx(abc.ABC):
    """The writer connection inside one group's transaction, as a write operation sees it.

    ``execute``, ``fetch``, ``executemany``, ``fetch_rows`` and ``insert_rows`` let driver
    exceptions through unchanged: the writer classifies them. ``control`` (BEGIN, SAVEPOINT,
    COMMIT…) raises :class:`GroupFailed` instead. ``conn`` is the driver's connection; the base
    methods take an ``execute`` that returns a cursor with ``rowcount`` and an awaitable
    ``fetchall`` (a dialect whose driver differs overrides them: SQLite runs them inline).
    """

    #: The driver's exception root.
    driver_errors: ClassVar[tuple[type[Exception], ...]]
    #: The local agents that exist, their rows locked by the dialect until COMMIT; None where
    #: the dialect does not lock them and lets the inbox's foreign key catch a vanished agent.
    agents: set[str] | None = None

    def __init__(self, conn: Any, group_failed: Callable[[BaseException], GroupFailed]) -> None:
        self.conn = conn
        self._group_failed = group_failed

    async def control(self, sql: str, params: Any = None) -> None:
        """A statement of the writer's own (BEGIN, SAVEPOINT, a lock…); a driver error fails
        the group."""
        try:
            await self.conn.execute(sql, params)
        except self.driver_errors as exc:
            raise self._group_failed(exc) from exc

    async def execute(self, sql: str, params: Any = ()) -> int:
        """One statement; its row count."""
        cursor = await self.conn.execute(sql, params)
        count: int = cursor.rowcount
        return count

    async def fetch(self, sql: str, params: Any = ()) -> list[Any]:
        """One statement; every row it returns."""
        cursor = await self.conn.execute(sql, params)
        return list(await cursor.fetchall())

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement per row, in as few round trips as the driver can."""

    @abc.abstractmethod
    async def fetch_rows(self, sql: str, rows: Sequence[Sequence[Any]], width: int) -> list[Any]:
        """One statement for a batch of ``width``-wide rows (statements.py, ``rows[N]``); every
        row it returns."""

    @abc.abstractmethod
    async def insert_rows(self, sql: str, rows: Sequence[Sequence[Any]], width: int) -> None:
        """A batch of ``width``-wide rows, the dialect's fastest way, returning nothing."""

    async def script(self, sql: str) -> None:
        """One statement of a migration (``Migration.statements``)."""
        await self.conn.execute(sql)

    async def commit(self) -> None:
        """COMMIT the group's transaction; a driver error fails the group."""
        await self.control("COMMIT")

    async def rollback_quietly(self) -> None:
        """Roll back if there is anything to roll back; never raise. (It fails harmlessly when
        the server already rolled back on its own, or the connection is gone.)"""
        with contextlib.suppress(*self.driver_errors, OSError, ValueError):
            await self.conn.execute("ROLLBACK")


#: A write operation: runs its statements inside the group's transaction and returns its result
#: and the notifier channels to wake after COMMIT.
Run = Callable[[Tx], Awaitable[tuple[Any, Collection[str]]]]


@dataclass(slots=True)
class Op:
    run: Run
    future: asyncio.Future[Any]
    #: For accepts: the (item, accepted-at) pairs, so that consecutive accepts of one group can
    #: be merged into one batch.
    accepts: tuple[tuple[NewEnvelope, Any], ...] | None = None
    #: The envelopes this operation may accept (accepts, DSNs of a settle): a dialect that locks
    #: their local agents at the start of the group reads them here.
    new: Sequence[NewEnvelope] = ()
    #: False for leases: a dialect may commit a group of only such operations without a sync
    #: (SQLite, whose leases are all released at the next start).
    durable: bool = True
    #: True for an operation that must run outside any transaction (SQLite's incremental
    #: vacuum, which a transaction would cut short): the writer runs it alone, between groups,
    #: on a ``Tx`` from the dialect's ``_outside``.
    outside: bool = False
    #: The way out of a queue (the sender's and the dispatcher's leases and settles): leads
    #: the next group, ahead of the operations waiting before it (``next_group``).
    way_out: bool = False


class GroupFailed(Exception):
    """Raised inside the writer when the whole group must be rolled back."""

    def __init__(self, error: SynqError, *, retry: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        #: Running the group again may succeed (a deadlock broken by the server).
        self.retry = retry


def runs(ops: list[Op]) -> list[list[Op]]:
    """``ops`` in order, consecutive accepts grouped into one run, every other op alone.
    Only consecutive ones: merging across another op would reorder writes."""
    grouped: list[list[Op]] = []
    for op in ops:
        if op.accepts is not None and grouped and grouped[-1][-1].accepts is not None:
            grouped[-1].append(op)
        else:
            grouped.append([op])
    return grouped


def next_group(waiting: deque[Op], way_out_first: bool = True) -> list[Op]:
    """Take the next group out of ``waiting``. With ``way_out_first``, and ``way_out``
    operations waiting, those first, in order: alone when none of them is durable (leases: the
    group then commits without a sync, and without the statements of the accepts before it),
    else followed by the others (a settle pays for a sync anyway; the accepts share it). The
    others go in order, within :data:`MAX_GROUP_OPS` operations and :data:`MAX_GROUP_ACCEPTS`
    accepted envelopes. What is not taken stays in ``waiting``, in order."""
    group: list[Op] = []
    if way_out_first and any(op.way_out for op in waiting):
        rest: list[Op] = []
        for op in waiting:
            (group if op.way_out and len(group) < MAX_GROUP_OPS else rest).append(op)
        waiting.clear()
        waiting.extend(rest)
        if not any(op.durable for op in group):
            return group
    accepted = 0
    while waiting and len(group) < MAX_GROUP_OPS:
        count = len(waiting[0].accepts or ())
        if count and accepted and accepted + count > MAX_GROUP_ACCEPTS:
            break
        group.append(waiting.popleft())
        accepted += count
    return group


def _apart(ops: list[Op]) -> list[list[Op]]:
    """``ops`` in order, in groups of consecutive transactional operations, each ``outside``
    operation alone."""
    parts: list[list[Op]] = []
    for op in ops:
        if op.outside or not parts or parts[-1][0].outside:
            parts.append([op])
        else:
            parts[-1].append(op)
    return parts


def copy_error(error: SynqError) -> SynqError:
    """A fresh exception per caller: one exception object raised in many tasks would share
    (and keep growing) one traceback."""
    return type(error)(error.message, **error.details)


class GroupWriter(abc.ABC):
    """The writer task and its queue; the dialect fills in the hooks below."""

    notifier: Notifier
    #: Times a group whose failure says ``retry`` is run again before its callers fail.
    group_retries: ClassVar[int] = 0
    #: Seconds between two calls of ``_on_idle`` while the queue is empty; None: never.
    idle_interval: ClassVar[float | None] = None
    #: Driver exceptions that are an operation's own failure (constraints), not worth a log.
    constraint_errors: ClassVar[tuple[type[Exception], ...]] = ()

    _queue: asyncio.Queue[Op | None] | None = None
    _writer_task: asyncio.Task[None] | None = None
    _closed: bool = False

    # hooks -------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _begin(self, ops: Sequence[Op]) -> Tx:
        """Start the group's transaction (and roll it back if that fails part-way)."""

    async def _before_commit(self, tx: Tx, channels: Collection[str]) -> None:  # noqa: B027
        """Last statements of a group that wakes ``channels``, before its COMMIT (none here)."""

    async def _on_idle(self) -> None:  # noqa: B027
        """Called between two groups once ``idle_interval`` seconds have passed since the last
        call, and every ``idle_interval`` seconds while no operation waits (nothing here)."""

    def _outside(self) -> Tx:
        """The writer connection outside any transaction, for ``Op.outside`` operations."""
        raise StoreUnavailable("this store runs no operation outside a transaction")

    @staticmethod
    @abc.abstractmethod
    def _driver_error(exc: BaseException) -> SynqError:
        """The relay error for an exception of the driver (or anything else unexpected)."""

    def _translate(self, exc: BaseException) -> SynqError:
        """The relay error to raise for ``exc``: SynqErrors as they are, driver errors in
        words. The SQL and the driver's text stay out of it."""
        return exc if isinstance(exc, SynqError) else self._driver_error(exc)

    @staticmethod
    @abc.abstractmethod
    def _is_group_fatal(exc: BaseException) -> bool:
        """True when, after ``exc``, the transaction cannot go on from a savepoint."""

    @staticmethod
    def _is_retryable(exc: BaseException) -> bool:
        """True when running the group again may succeed after ``exc``."""
        return False

    def _group_failed(self, exc: BaseException) -> GroupFailed:
        return GroupFailed(self._translate(exc), retry=self._is_retryable(exc))

    @abc.abstractmethod
    async def _accept_rows(
        self, tx: Tx, batch: Sequence[tuple[NewEnvelope, Any]]
    ) -> tuple[list[AcceptResult], Collection[str]]:
        """Take custody of a batch of (item, accepted-at) pairs inside ``tx``."""

    # the queue ---------------------------------------------------------------------------------

    def _start_writer(self, name: str) -> None:
        self._queue = asyncio.Queue()
        self._writer_task = asyncio.create_task(self._write_loop(), name=name)

    async def _stop_writer(self, last: Sequence[Op] = ()) -> None:
        """Run what is queued, then ``last``, then stop the writer task."""
        task = self._writer_task
        if task is not None and self._queue is not None:
            for op in last:
                self._queue.put_nowait(op)
            self._queue.put_nowait(None)
            await asyncio.wait([task])

    def _writer_running(self) -> bool:
        return self._writer_task is not None and not self._writer_task.done()

    async def _write(
        self,
        run: Run,
        *,
        accepts: tuple[tuple[NewEnvelope, Any], ...] | None = None,
        new: Sequence[NewEnvelope] = (),
        durable: bool = True,
        outside: bool = False,
        way_out: bool = False,
    ) -> Any:
        """Queue one operation for the writer and wait for its own result or exception."""
        if self._closed or self._queue is None:
            raise StoreUnavailable("the store is closed")
        if not self._writer_running():
            raise StoreUnavailable("the store is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Op(run, future, accepts, new, durable, outside, way_out))
        # If the caller is cancelled the future is cancelled too, and the writer skips the
        # operation if it has not started it yet (or drops its result if it has).
        return await future

    async def _write_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        interval = self.idle_interval
        next_idle = None if interval is None else loop.time() + interval
        #: Operations taken off the queue and not yet run, in arrival order.
        waiting: deque[Op] = deque()
        pending: list[Op] = []
        stop = False  # the queue's end (None) was read: run what is waiting, then return
        way_out_first = True
        try:
            while True:
                # Between two groups whenever it is due, busy or not: under a load that never
                # empties ``waiting``, another process's commits must still wake this one.
                if interval is not None and next_idle is not None and loop.time() >= next_idle:
                    await self._on_idle()
                    next_idle = loop.time() + interval
                if not waiting:
                    if stop:
                        return
                    try:
                        async with asyncio.timeout_at(next_idle):
                            first = await queue.get()
                    except TimeoutError:
                        continue
                    if first is None:
                        return
                    waiting.append(first)
                while not stop:
                    try:
                        op = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if op is None:
                        stop = True
                    else:
                        waiting.append(op)
                # After a group of the way out alone, the next one is taken in order: the way
                # out goes first, but cannot hold the others back for more than a group.
                pending = next_group(waiting, way_out_first)
                way_out_first = not all(op.way_out for op in pending)
                for part in _apart(pending):
                    if part[0].outside:
                        await self._run_outside(part[0])
                    else:
                        await self._commit_group(part)
                pending = []
        finally:
            # Only reached with work left when the task itself is cancelled (event loop torn
            # down without close()): nobody may wait forever on a future.
            pending.extend(waiting)
            while not queue.empty():
                leftover = queue.get_nowait()
                if leftover is not None:
                    pending.append(leftover)
            for op in pending:
                if not op.future.done():
                    op.future.set_exception(StoreUnavailable("the store is shutting down"))

    async def _run_outside(self, op: Op) -> None:
        """One ``Op.outside`` operation, alone, between two groups."""
        if op.future.done():
            return
        try:
            result, channels = await op.run(self._outside())
        except Exception as exc:
            if not isinstance(exc, SynqError):
                _log.error("store operation outside a transaction failed: %r", exc)
            if not op.future.done():
                op.future.set_exception(self._translate(exc))
            return
        if not op.future.done():
            op.future.set_result(result)
        if channels:
            self.notifier.notify(sorted(channels))

    # one group ---------------------------------------------------------------------------------

    async def _commit_group(self, group: list[Op]) -> None:
        """Run ``group`` in one transaction (again, after a retryable failure); settle every
        future; notify after COMMIT."""
        ops = [op for op in group if not op.future.done()]  # callers that gave up need no write
        if not ops:
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                done, failed, channels = await self._run_group(ops)
                break
            except GroupFailed as exc:
                if exc.retry and attempt <= self.group_retries:
                    _log.info("store group hit a deadlock; running it again (%d)", attempt)
                    continue
                _log.error("store group of %d operations failed: %s", len(ops), exc.error.message)
                for op in ops:
                    if not op.future.done():
                        op.future.set_exception(copy_error(exc.error))
                return
            except BaseException:
                # Cancelled mid-group (rolled back by _run_group): nobody may wait forever.
                for op in ops:
                    if not op.future.done():
                        op.future.set_exception(StoreUnavailable("the store is shutting down"))
                raise
        for op, result in done:
            if not op.future.done():
                op.future.set_result(result)
        for op, error in failed:
            if not op.future.done():
                op.future.set_exception(error)
        # After COMMIT, never before: a woken reader must find the rows.
        if channels:
            self.notifier.notify(sorted(channels))

    async def _run_group(
        self, ops: list[Op]
    ) -> tuple[list[tuple[Op, Any]], list[tuple[Op, SynqError]], set[str]]:
        done: list[tuple[Op, Any]] = []
        failed: list[tuple[Op, SynqError]] = []
        channels: set[str] = set()
        tx = await self._begin(ops)
        try:
            isolated = len(ops) > 1
            for run in runs(ops):
                if len(run) > 1 and await self._merged_accepts(tx, run, done, channels):
                    continue
                for op in run:
                    await self._one(tx, op, isolated, done, failed, channels)
            if channels and done:
                await self._before_commit(tx, channels)
            if done:
                await tx.commit()
            else:
                await tx.control("ROLLBACK")
        except BaseException:
            await tx.rollback_quietly()
            raise
        return done, failed, channels

    async def _one(
        self,
        tx: Tx,
        op: Op,
        isolated: bool,
        done: list[tuple[Op, Any]],
        failed: list[tuple[Op, SynqError]],
        channels: set[str],
    ) -> None:
        """One operation under its own savepoint (none needed when it is alone in the group:
        the transaction is its savepoint)."""
        if isolated:
            await tx.control("SAVEPOINT op")
        try:
            result, op_channels = await op.run(tx)
        except Exception as exc:
            if self._is_group_fatal(exc):
                raise self._group_failed(exc) from exc
            if not isinstance(exc, (SynqError, *self.constraint_errors)):
                _log.exception("store operation failed")
            if isolated:
                await tx.control("ROLLBACK TO SAVEPOINT op")
                await tx.control("RELEASE SAVEPOINT op")
            failed.append((op, self._translate(exc)))
            return
        if isolated:
            await tx.control("RELEASE SAVEPOINT op")
        done.append((op, result))
        channels.update(op_channels)

    async def _merged_accepts(
        self,
        tx: Tx,
        run: list[Op],
        done: list[tuple[Op, Any]],
        channels: set[str],
    ) -> bool:
        """Consecutive accepts as one batch under one savepoint. False (and nothing written) if
        the batch failed; the caller then runs them one by one, so only the failing accept
        fails."""
        batch = [pair for op in run for pair in op.accepts or ()]
        await tx.control("SAVEPOINT batch")
        try:
            results, batch_channels = await self._accept_rows(tx, batch)
        except Exception as exc:
            if self._is_group_fatal(exc):
                raise self._group_failed(exc) from exc
            await tx.control("ROLLBACK TO SAVEPOINT batch")
            await tx.control("RELEASE SAVEPOINT batch")
            return False
        await tx.control("RELEASE SAVEPOINT batch")
        start = 0
        for op in run:
            count = len(op.accepts or ())
            done.append((op, results[start : start + count]))
            start += count
        channels.update(batch_channels)
        return True
