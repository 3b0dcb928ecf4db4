"""The reply tracker of the A2A face: replies in the task owners' inboxes become task events.

Each task of the face was started by a local inbox agent, its owner, and the agent it was sent
to answers with envelopes to that owner (SPEC.md "A2A mapping"). The tracker follows the owners'
inboxes (``Store.a2a_feed``, a durable cursor), woken by the store's notifier:

1. read the next rows of the feed after the cursor (kept in memory between passes, read from the
   store when the tracker starts);
2. for each reply whose ``in_reply_to`` names an envelope of a task (a task whose readers wait
   in this process is known in memory, ``TaskStore.known``, with its snapshot parsed; one read
   for the batch gives the other tasks' rows, ``Store.a2a_reply_tasks``; a known task that a
   reply earlier in the batch ended is read when its next reply comes), sent by the address the
   task was sent to (or a delivery-status envelope from a relay on the way): fold it into the
   task (adapters/a2a/tasks.py; a reply made before the one that set the task's status:
   late.py) with the task store's compare-and-set, which acks it in the owner's inbox, appends
   it to the task's event log and, for the batch's last row, moves the cursor, all in one
   transaction; then pushes it to the task's webhooks and hands it to the task's readers in
   this process;
3. move the cursor past the rows read, if step 2 did not, once ``CURSOR_LAG`` rows have gone
   by unsaved; read again only after a full batch (a row committed meanwhile has woken the
   tracker).

Applying is idempotent (the event log remembers its source envelope), so a crash between applying
and moving the cursor, or before an unsaved cursor is written, only repeats work.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Final

from a2a.types import Task
from a2a.utils import errors as a2a

from adapters.a2a import tasks as folding
from adapters.a2a import wire
from relay.core import dsn as dsn_mod
from relay.core import envelope as env_mod
from relay.core.address import MAILER_DAEMON, Address
from relay.core.envelope import KIND_DSN, Envelope
from relay.core.errors import SynqError
from relay.core.jws import b64url_decode
from relay.store.base import A2ATask
from relay.tasks.late import StatusReply
from relay.tasks.store import Change, TaskStore

__all__ = ["CURSOR_LAG", "FEED_BATCH", "TRACKER_IDLE", "ReplyTracker"]

log = logging.getLogger("synq.a2a.face")

#: Inbox rows the tracker reads per pass.
FEED_BATCH: Final = 200
#: Longest idle wait of the tracker (a safety net for lost wake-ups, as the queues have).
TRACKER_IDLE: Final = 30.0
#: Feed rows the tracker may read past without saving its cursor. A batch with no reply to a
#: task (the owners' other mail: an MCP answer, a message from a peer) saves none until this
#: many have gone by: a cursor write per message would cost every owner's mail a commit. After
#: a restart the tracker reads them again, which changes nothing (module docstring).
CURSOR_LAG: Final = FEED_BATCH


class ReplyTracker:
    """Folds replies into the tasks of ``tasks``; see the module docstring. The runtime runs
    :meth:`run` in the background; tests call :meth:`run_once`."""

    def __init__(self, tasks: TaskStore) -> None:
        self.tasks = tasks
        self.store = tasks.store
        self.clock = tasks.clock
        self.domain = tasks.domain
        #: The feed position this tracker has read to, once read from the store.
        self._cursor: int | None = None
        #: Rows read past the cursor the store holds (at most CURSOR_LAG).
        self._unsaved = 0

    async def run_once(self) -> int:
        """Apply every new reply in the owners' inboxes; return how many rows were read."""
        if self._cursor is None:
            self._cursor = await self.store.a2a_feed_cursor()
        total = 0
        while True:
            rows = await self.store.a2a_feed(self._cursor, FEED_BATCH)
            if not rows:
                return total
            last = rows[-1].seq
            decoded: list[tuple[int, str, Envelope]] = []
            for row in rows:
                try:
                    payload = b64url_decode(row.token.split(".")[1])
                    decoded.append((row.seq, row.agent, env_mod.decode(payload)))
                except (ValueError, IndexError, SynqError):
                    continue  # the store only holds envelopes that parsed; nothing to do
            # The tasks the replies name: one whose readers wait in this process is known in
            # memory as this process last wrote it (looked up at each reply, so a second reply
            # to a task in the batch meets the first one's change); the others are read at once.
            wanted = [
                e.in_reply_to
                for _, _, e in decoded
                if e.in_reply_to and not self.tasks.knows(e.in_reply_to)
            ]
            read = await self.store.a2a_reply_tasks(wanted) if wanted else {}
            asked = set(wanted)
            saved = False
            for seq, owner, envelope in decoded:
                named = envelope.in_reply_to or ""
                known = self.tasks.known(named) if named else None
                task, snapshot = known if known is not None else (read.get(named), None)
                if task is None and named and named not in asked:
                    # Known when the batch was read, and ended since by a reply before this
                    # one (an ended task is not kept in memory): read it now, for a reply the
                    # agent made before the one that ended the task (late.py).
                    task = (await self.store.a2a_reply_tasks([named])).get(named)
                if task is not None:
                    # The batch's last row carries the cursor in its own write.
                    cursor = last if seq == last else None
                    saved = await self.apply(task, owner, envelope, cursor, snapshot=snapshot)
            self._unsaved = 0 if saved else self._unsaved + len(rows)
            if self._unsaved >= CURSOR_LAG:
                await self.store.a2a_set_feed_cursor(last)
                self._unsaved = 0
            self._cursor = last
            total += len(rows)
            if len(rows) < FEED_BATCH:
                # The feed was read to its end. A row committed since has fired the tracker's
                # wake-up (attached for an owner before its first task is written), so run()
                # passes again at once; reading here too would only add a read to the path of
                # the answer the face is writing now.
                return total

    async def apply(
        self,
        row: A2ATask,
        owner: str,
        envelope: Envelope,
        cursor: int | None = None,
        *,
        snapshot: Task | None = None,
    ) -> bool:
        """Fold one reply into its task (``row`` as just read or known, ``snapshot`` its task
        already parsed); True if ``cursor`` was saved with it. The reply is acked in the
        owner's inbox once it is part of the task, whether it changed it or not."""
        if row.owner != owner or not self._from_partner(row, envelope):
            return False
        try:
            event = wire.event_of_reply(envelope)
        except wire.WireError as exc:
            log.info("reply %s to task %s is not A2A: %s", envelope.id, row.id, exc)
            event = wire.event_of_reply(
                envelope.model_copy(update={"content_type": "application/json"})
            )
        now = self.clock.now()
        source = f"{envelope.sender.domain}/{envelope.id}"
        created = envelope.created
        declined = False

        def fold(current: A2ATask, task: Task) -> Change | None:
            nonlocal declined
            change = _fold(current, task, event, now, source, created)
            declined = change is None
            return change

        # One transaction acks the reply, folds it into the task and saves the cursor: once
        # the task shows the reply, the inbox no longer offers it, and one commit stands
        # between the reply's arrival and the task's readers being woken (not synced on its
        # own on SQLite: Store.a2a_update_task). A crash before it commits leaves all three
        # undone: the feed offers the reply again. The source makes a reply that logged an
        # event, offered again, a duplicate; a late one (late.py) is known by the task's record
        # of the reply that set its status.
        try:
            await self.tasks.change(
                row.id,
                fold,
                source=source,
                current=row,
                snapshot=snapshot,
                ack=(owner, envelope.id, now),
                cursor=cursor,
            )
        except a2a.TaskNotFoundError:
            # Known in memory, gone from the store (purged since, by another process): as a
            # reply to no task, it stays in the inbox.
            self.tasks.forget(row.id)
            return False
        if declined:
            # Nothing written (the task had ended before the reply was made, say): the reply
            # is acked on its own, and
            # the cursor moves after the batch.
            await self.store.ack(owner, envelope.id, now)
            return False
        return cursor is not None

    def _from_partner(self, row: A2ATask, envelope: Envelope) -> bool:
        """Only the address the task was sent to may advance it, or a relay reporting that the
        message could not be delivered: anyone else could name the envelope id in
        ``in_reply_to`` and forge the task's progress."""
        if envelope.from_ == row.address:
            return True
        target = Address.parse(row.address)
        return (
            envelope.kind == KIND_DSN
            and envelope.sender.local == MAILER_DAEMON
            and (envelope.sender.domain in (target.domain, self.domain))
            # A receipt or a delay report changes no task: it stays in the owner's inbox.
            and dsn_mod.is_failure(envelope.body)
        )

    async def run(self) -> None:
        """Run the tracker until cancelled."""
        for owner in await self.store.a2a_owners():
            self.tasks.owners.add(owner)
        while True:
            try:
                await self.run_once()
            except (SynqError, a2a.A2AError) as exc:
                log.warning("A2A reply tracker pass failed: %s", getattr(exc, "message", exc))
            except Exception:
                log.exception("A2A reply tracker pass failed")
            await self.tasks.owners.wake.wait(TRACKER_IDLE)

    def close(self) -> None:
        """Stop being woken by the owners' inboxes."""
        self.tasks.owners.clear()


def _fold(
    row: A2ATask, task: Task, event: wire.Event, now: datetime, source: str, created: datetime
) -> Change | None:
    """One reply folded into its task (late.py): late — made before the reply that set the
    task's status — it adds its content and leaves the status; otherwise it applies as it comes
    (adapters/a2a/tasks.py), unless the task has ended. None: declined, nothing to write."""
    state = task.status.state
    ended = state in wire.TERMINAL_STATES
    record = StatusReply.parse(row.status_by)
    if record is not None and record.admits(created, settled=ended or state in wire.WAITING_STATES):
        return _fold_late(record, task, event, source, created)
    if ended:
        return None
    folded = folding.fold(task, event, now)
    if folded is None:
        return None
    # A reply that sets the status (all but an artifact update) is the one later replies are
    # compared with; its late replies are to come.
    sets = folding.state_of(folded.event) is not None
    return Change(
        task=folded.task,
        events=[folded.event],
        remote_id=folded.remote_id,
        status_by=StatusReply(created).to_json() if sets else None,
    )


def _fold_late(
    record: StatusReply, task: Task, event: wire.Event, source: str, created: datetime
) -> Change | None:
    """A late reply (late.py), folded without changing the task's status unless it was folded
    before (then declined: None). It logs no event, so it is neither streamed nor pushed: a
    stream has ended at the event that ended the task or made it wait (A2A 1.0 §3.1.2), a
    webhook told so must not hear of the task working again, and what the reply adds — its
    message, its artifact — changes no state. GetTask, ListTasks and a retried call's answer
    show it."""
    if record.folded(source):
        return None
    folded = folding.fold_late(task, event, record.before(created))
    if folded is None:
        return None
    updated = record.with_late(source, created, folded.messages)
    return Change(task=folded.task, events=[], status_by=updated.to_json())
