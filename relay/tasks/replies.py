"""The reply tracker of the A2A face: replies in the task owners' inboxes become task events.

Each task of the face was started by a local inbox agent, its owner, and the agent it was sent
to answers with envelopes to that owner (SPEC.md "A2A mapping"). The tracker follows the owners'
inboxes (``Store.a2a_feed``, a durable cursor), woken by the store's notifier:

1. read the next rows of the feed after the cursor;
2. for each reply whose ``in_reply_to`` names an envelope of a task, sent by the address the task
   was sent to (or a delivery-status envelope from a relay on the way): ack it in the owner's
   inbox, and fold it into the task (adapters/a2a/tasks.py) with the task store's
   compare-and-set, which appends it to the task's event log and pushes it to the task's
   webhooks;
3. move the cursor past the rows read.

Applying is idempotent (the event log remembers its source envelope), so a crash between applying
and moving the cursor only repeats work.
"""

from __future__ import annotations

import asyncio
import logging
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
from relay.tasks.store import Change, TaskStore

__all__ = ["FEED_BATCH", "TRACKER_IDLE", "ReplyTracker"]

log = logging.getLogger("synq.a2a.face")

#: Inbox rows the tracker reads per pass.
FEED_BATCH: Final = 200
#: Longest idle wait of the tracker (a safety net for lost wake-ups, as the queues have).
TRACKER_IDLE: Final = 30.0


class ReplyTracker:
    """Folds replies into the tasks of ``tasks``; see the module docstring. The runtime runs
    :meth:`run` in the background; tests call :meth:`run_once`."""

    def __init__(self, tasks: TaskStore) -> None:
        self.tasks = tasks
        self.store = tasks.store
        self.clock = tasks.clock
        self.domain = tasks.domain

    async def run_once(self) -> int:
        """Apply every new reply in the owners' inboxes; return how many rows were read."""
        cursor = await self.store.a2a_feed_cursor()
        total = 0
        while True:
            rows = await self.store.a2a_feed(cursor, FEED_BATCH)
            if not rows:
                return total
            decoded: list[tuple[str, Envelope]] = []
            for row in rows:
                try:
                    payload = b64url_decode(row.token.split(".")[1])
                    decoded.append((row.agent, env_mod.decode(payload)))
                except (ValueError, IndexError, SynqError):
                    continue  # the store only holds envelopes that parsed; nothing to do
            wanted = [e.in_reply_to for _, e in decoded if e.in_reply_to]
            links = await self.store.a2a_tasks_for_envelopes(wanted) if wanted else {}
            for owner, envelope in decoded:
                task_id = links.get(envelope.in_reply_to or "")
                if task_id is not None:
                    await self.apply(task_id, owner, envelope)
            cursor = rows[-1].seq
            await self.store.a2a_set_feed_cursor(cursor)
            total += len(rows)

    async def apply(self, task_id: str, owner: str, envelope: Envelope) -> bool:
        """Fold one reply into its task; True if the task changed. The reply is acked in the
        owner's inbox once it is part of the task, whether it changed it or not."""
        row = await self.store.a2a_get_task(task_id)
        if row is None or row.owner != owner or not self._from_partner(row, envelope):
            return False
        try:
            event = wire.event_of_reply(envelope)
        except wire.WireError as exc:
            log.info("reply %s to task %s is not A2A: %s", envelope.id, task_id, exc)
            event = wire.event_of_reply(
                envelope.model_copy(update={"content_type": "application/json"})
            )
        now = self.clock.now()

        def fold(current: A2ATask, task: Task) -> Change | None:
            folded = folding.fold(task, event, now)
            if folded is None:
                return None
            return Change(task=folded.task, events=[folded.event], remote_id=folded.remote_id)

        # Acked first: once the task shows the reply, the inbox no longer offers it. The ack
        # is queued before the task's update rather than awaited first, so its commit overlaps
        # the update's preparation (one fsync less before the task's readers are woken). On
        # SQLite it still commits no later than the update (one writer, in order, often both
        # in one COMMIT); on PostgreSQL the two commit independently, and at worst the inbox
        # offers for a moment a reply the task already shows. A crash between the two is
        # harmless: the feed reads acked rows too, and the cursor has not moved past this one.
        ack = asyncio.ensure_future(self.store.ack(owner, envelope.id, now))
        try:
            await asyncio.sleep(0)  # let the ack reach the store's queue first
            source = f"{envelope.sender.domain}/{envelope.id}"
            changed = await self.tasks.change(task_id, fold, source=source, current=row)
        finally:
            await ack
        return changed is not None

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
