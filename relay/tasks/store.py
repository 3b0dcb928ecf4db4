"""The task store of the A2A face: tasks, their event logs, and compare-and-set changes.

A call to the face becomes an envelope from the caller's local agent (SPEC.md "A2A mapping").
The face's task is in the store (migration 0003), never only in memory:

* **start** — a new task is written first, linked to the id its first envelope will carry,
  then the envelope is sent through the mailbox (custody, policy, rate limits), so no
  reply can arrive before the task that expects it. A follow-up message (``taskId`` given)
  is linked to the task the same way.
* **retries** — the client's ``messageId`` together with the whole message is the call's
  idempotency key (SPEC.md §6.2, "The A2A face"), scoped by the calling agent: the task (or the
  follow-up's turn) is written with the key naming the envelope id the call is about to send,
  in one transaction. A call whose key is known is a retry: it makes no task, no turn and no
  envelope, but answers from the task the first call wrote — after sending that envelope if
  the first call stopped before custody. The key lives only while the first call's answer may
  have been lost: once the binding has written that answer in full it calls
  :meth:`TaskStore.answered_soon`, which frees the key in the background (a call of this
  process with the same key waits for that), so the same message sent again is a new call.
  A call the relay refuses (rate, policy, recipients) frees its key too.
* **change** — every change of a task is a compare-and-set on its version, retried on a
  conflict, so the reply tracker (replies.py) and a CancelTask never overwrite each other. A
  change that logs events hands them to the task's webhooks (push.py).
* **readers** (SendMessage waiting for a result, SendStreamingMessage, SubscribeToTask) tail
  the event log with :class:`Tail`, woken by the store's notifier; a restart loses nothing but
  open connections. While a reader waits, the task as this process last wrote it is kept in
  memory for the reply tracker (:meth:`TaskStore.known`): the reply that ends the wait is
  folded without reading the task or parsing its snapshot again.

The task store also keeps :class:`OwnerInboxes`: the inboxes replies to its tasks arrive in,
which the reply tracker follows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from a2a.types import (
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils import errors as a2a
from google.protobuf import json_format

from adapters.a2a import tasks as folding
from adapters.a2a import wire
from relay.core.address import Address
from relay.core.clock import Clock
from relay.core.draft import Draft
from relay.core.dsn import DEFAULT_NOTIFY, Notify, parse_notify
from relay.core.envelope import ID_PATTERN, KIND_MESSAGE, KIND_SIGNAL
from relay.core.errors import Conflict, PeerError, SynqError
from relay.core.idempotency import digest
from relay.core.ids import uuid7
from relay.delivery.mailbox import Mailbox
from relay.store.base import (
    A2ATask,
    IdempotencyKey,
    IdempotencyRecord,
    Listener,
    Notifier,
    Store,
    a2a_task_channel,
    inbox_channel,
)
from relay.tasks.push import MAX_PUSH_CONFIGS, PushSender, push_configs, push_json

__all__ = [
    "CLEAR",
    "FIRST_EVENT_WAIT",
    "MAX_BLOCKING_WAIT",
    "NOTIFY_METADATA",
    "Change",
    "OwnerInboxes",
    "Started",
    "Tail",
    "TaskStore",
    "event_json",
    "message_key",
    "parse_event",
    "parse_task",
    "task_json",
    "thread_of",
]

log = logging.getLogger("synq.a2a.face")

#: How long a blocking SendMessage (A2A 1.0 §3.2.2, ``returnImmediately`` false) waits for
#: the task to end or to ask for input before answering with the task as it stands. Stops
#: clients pinning connections on agents that take minutes; below the 30 s read timeout
#: common A2A clients use, so they get an answer rather than an error.
MAX_BLOCKING_WAIT: Final = 25.0
#: How long SendStreamingMessage waits for the agent's first event before it streams the
#: task as submitted. The first event decides whether the answer is a task or a direct
#: message (A2A 1.0 §3.1.2); an agent that is down must not keep the stream silent longer.
FIRST_EVENT_WAIT: Final = 5.0
#: Longest wait of an idle reader between two looks at the event log (a safety net for a lost
#: wake-up; normally the notifier wakes it at once).
READER_IDLE: Final = 15.0
#: Events read from the log at once. Bounds a reader's memory however long the log.
EVENT_PAGE: Final = 100
#: Compare-and-set attempts before a change gives up. Conflicts need two writers on one task
#: at the same moment; a handful of retries always suffices unless something is wrong.
MAX_CAS_ATTEMPTS: Final = 16
#: A task still ``submitted`` this long after it was created, whose envelope the store does
#: not hold, lost its envelope to a crash between the two writes: it is marked failed.
ORPHAN_AGE: Final = timedelta(seconds=60)
#: Tasks whose rows the task store keeps in memory for the reply tracker (:meth:`TaskStore.known`)
#: at most, and the largest snapshot it keeps. An entry lives while the task's readers wait
#: (from start to the last :class:`Tail` closing); the bounds only matter for calls that never
#: open one (``returnImmediately``, a refused call), whose entries the oldest-first eviction
#: drops. 256 entries of at most 64 KiB (with the parsed copy) bound the memory at some 32 MiB;
#: a bigger task is read from the store, as every task was before.
MAX_KNOWN_TASKS: Final = 256
MAX_KNOWN_SNAPSHOT: Final = 64 * 1024
#: ListTasks page size when the client names none, and the largest it may ask for (a2a-sdk's
#: defaults, A2A 1.0 §3.1.4).
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 100

_ID_RE: Final = re.compile(ID_PATTERN)


def thread_of(context_id: str) -> str:
    """The envelope ``thread`` of an A2A context. A context id that is a valid thread is used
    as it is; any other (A2A allows any string) by a stable digest of it."""
    if _ID_RE.fullmatch(context_id):
        return context_id
    return "a2a-" + hashlib.sha256(context_id.encode("utf-8")).hexdigest()[:40]


def task_json(task: Task) -> str:
    return json.dumps(wire.to_json(task), separators=(",", ":"), ensure_ascii=False)


def event_json(event: StreamResponse) -> str:
    return json.dumps(wire.to_json(event), separators=(",", ":"), ensure_ascii=False)


def parse_task(text: str) -> Task:
    task: Task = json_format.Parse(text, Task(), ignore_unknown_fields=True)
    return task


def parse_event(text: str) -> StreamResponse:
    event: StreamResponse = json_format.Parse(text, StreamResponse(), ignore_unknown_fields=True)
    return event


def _status_time(task: Task, fallback: datetime) -> datetime:
    if task.status.HasField("timestamp"):
        return task.status.timestamp.ToDatetime(tzinfo=fallback.tzinfo)
    return fallback


def _a2a_error(exc: SynqError) -> a2a.A2AError:
    """A relay refusal in A2A terms (A2A 1.0 §5.4): the caller's fault → invalid params or
    request, the relay's → internal error (retry later)."""
    if isinstance(exc, PeerError):
        if exc.code in ("unknown_recipient", "invalid_address", "invalid_envelope"):
            return a2a.InvalidParamsError(message=exc.message)
        return a2a.InvalidRequestError(message=exc.message)
    return a2a.InternalError(message=exc.message)


#: Where a client of the face asks for delivery reports: a member of its message's
#: ``metadata`` holding the ``notify`` list of SPEC.md §6.2 (``["success"]``…). The reports come
#: back to the calling agent's inbox; they do not change the task.
NOTIFY_METADATA: Final = "urn:synq:ext:notify:1"


def _notify_of(message: Message) -> Notify:
    """What the client asked to be told about its message (:data:`NOTIFY_METADATA`)."""
    if NOTIFY_METADATA not in message.metadata.fields:
        return DEFAULT_NOTIFY
    value = json_format.MessageToDict(message.metadata).get(NOTIFY_METADATA)
    try:
        return parse_notify(value)
    except SynqError as exc:
        raise a2a.InvalidParamsError(message=f"metadata {NOTIFY_METADATA}: {exc.message}") from None


def message_key(owner: str, address: Address, message: Message) -> IdempotencyKey | None:
    """The idempotency key of a client's message (module docstring, "retries"): its
    ``messageId`` and the fingerprint of the call — the address and the whole message — hashed
    to a fixed length (A2A bounds the id by nothing but the body's size) and kept apart from
    keys the agent gives the other faces (``a2a:``). A2A 1.0 §3.3.1 lets an agent use the
    ``messageId`` "to detect duplicate messages": the same id on another message is no
    duplicate of the first, so it is another key, and another call. None for a message without
    an id."""
    if not message.message_id:
        return None
    fingerprint = digest({"to": str(address), "message": wire.to_json(message)})
    named = json.dumps([message.message_id, fingerprint], separators=(",", ":"))
    key = "a2a:" + hashlib.sha256(named.encode("utf-8")).hexdigest()
    return IdempotencyKey(owner, key, fingerprint)


@dataclass(frozen=True, slots=True)
class Started:
    """A message handed to the relay: its task, whether the task is new, and the task's
    version just before the agent's answer to this message can arrive. ``replay``: the message
    was handed over before (a retried call); ``settled``: for a retried follow-up, the agent has
    answered it already (the task ended, or waits for input again since the turn). ``key`` and
    ``envelope``: the call's idempotency key and the envelope it names, for
    :meth:`TaskStore.answered`."""

    task_id: str
    new: bool
    version: int
    replay: bool = False
    settled: bool = False
    key: IdempotencyKey | None = None
    envelope: str = ""


#: :attr:`Change.status_by` of a change the face makes itself (a cancel, a failure, the
#: client's follow-up): the task keeps no reply of the agent's as the one that set its status
#: (relay/tasks/late.py).
CLEAR: Final = ""


@dataclass(frozen=True, slots=True)
class Change:
    """What a mutation of a task produced: the new snapshot and events to log; ``status_by``,
    when given, the task's new record of the reply that set its status (relay/tasks/late.py),
    or :data:`CLEAR` for none."""

    task: Task
    events: list[StreamResponse]
    remote_id: str | None = None
    push: str | None = None
    status_by: str | None = None


class Tail:
    """Reads a task's event log from a version on, waiting for new events as they come.

    Use as ``async with Tail(...) as tail`` and call :meth:`next` with a deadline: the wake-up
    listener is registered before the first read, so no event between a read and a wait is
    missed, and a deadline never cancels anything half way.

    The log in the store is the authority; a change committed in this process is also handed
    to the open tails of its task (:meth:`TaskStore.change` → :meth:`offer`) with its events
    and the task as it left it, so a reader waiting for a reply neither reads the log nor
    parses it again. A tail takes a hand-off only when it continues exactly where the tail
    stands; anything else (a gap, a change made by another process) is read from the store
    as before.
    """

    def __init__(self, tasks: TaskStore, task_id: str, after: int) -> None:
        self.tasks = tasks
        self.task_id = task_id
        self.after = after
        #: The task's version up to which this tail has seen every change: the log can skip
        #: versions (a change without events takes one), which only a hand-off tells.
        self._known = after
        #: The task as the last hand-off left it (:meth:`current`).
        self.latest: tuple[A2ATask, Task] | None = None
        self._buffer: collections.deque[tuple[int, StreamResponse]] = collections.deque()
        self._stack = contextlib.AsyncExitStack()
        self._listener: Listener | None = None

    async def __aenter__(self) -> Tail:
        notifier = self.tasks.store.notifier
        self._listener = await self._stack.enter_async_context(
            notifier.listen(a2a_task_channel(self.task_id))
        )
        self.tasks.tails.setdefault(self.task_id, set()).add(self)
        self._stack.callback(self._unregister)
        return self

    def _unregister(self) -> None:
        tails = self.tasks.tails.get(self.task_id)
        if tails is not None:
            tails.discard(self)
            if not tails:
                del self.tasks.tails[self.task_id]
                # Its last reader is gone: a reply now is read from the store.
                self.tasks.forget(self.task_id)

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def offer(self, base: int, events: list[StreamResponse], row: A2ATask, task: Task) -> None:
        """A committed change of the task from version ``base``: ``events`` numbered from
        ``base + 1``, ``row`` (at its new version) and ``task`` as it left them. Taken only if
        this tail has seen every version up to ``base``; otherwise it reads the log."""
        if base != self._known:
            return
        for number, event in enumerate(events, base + 1):
            mine = StreamResponse()
            mine.CopyFrom(event)  # the readers' own: the webhooks hold the originals
            self._buffer.append((number, mine))
        self.after = base + len(events) if events else self.after
        self._known = row.version
        copy = Task()
        copy.CopyFrom(task)
        self.latest = (row, copy)
        if self._listener is not None:
            self._listener.fire()

    def current(self) -> tuple[A2ATask, Task] | None:
        """The task as it stood after the last event this tail returned, when a hand-off
        brought it and nothing came since (None: read it from the store)."""
        latest = self.latest
        if latest is None or self._buffer or latest[0].version != self._known:
            return None
        return latest

    async def next(self, deadline: float | None = None) -> tuple[int, StreamResponse] | None:
        """The next event, or None when ``deadline`` (event-loop time) passes first."""
        listener = self._listener
        assert listener is not None
        loop = asyncio.get_running_loop()
        # Listener.poll's loop, with a look at the hand-offs before every read: the wake-up
        # that brings a hand-off needs no read at all.
        while not self._buffer:
            rows = await self.tasks.store.a2a_task_events(self.task_id, self.after, EVENT_PAGE)
            if self._buffer:  # a hand-off arrived during the read, and covers it
                break
            if rows:
                self._buffer.extend((version, parse_event(text)) for version, text in rows)
                self.after = self._known = rows[-1][0]
                break
            remaining = math.inf if deadline is None else deadline - loop.time()
            if remaining <= 0:
                return None
            await listener.wait(min(remaining, READER_IDLE))
        return self._buffer.popleft()


class OwnerInboxes:
    """The inboxes replies to tasks arrive in — those of the agents that own tasks — as one
    wake-up: the task store adds an owner when it creates a task, the reply tracker
    (replies.py) waits on :attr:`wake` for mail in any of them."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.wake = Listener()
        self._owners: set[str] = set()

    def add(self, owner: str) -> None:
        """Wake the tracker when ``owner``'s inbox gets mail (it owns tasks)."""
        if owner not in self._owners:
            self._owners.add(owner)
            self.notifier.attach(inbox_channel(owner), self.wake)

    def clear(self) -> None:
        for owner in self._owners:
            self.notifier.detach(inbox_channel(owner), self.wake)
        self._owners.clear()


class TaskStore:
    """The A2A face's tasks, on the relay's store; see the module docstring. Messages and
    cancel signals go out through ``mailbox``; the events a change logs go to ``pushes``."""

    def __init__(self, store: Store, mailbox: Mailbox, clock: Clock, pushes: PushSender) -> None:
        self.store = store
        self.mailbox = mailbox
        self.clock = clock
        self.domain: str = mailbox.router.domain
        self.pushes = pushes
        self.owners = OwnerInboxes(store.notifier)
        #: The open readers of each task in this process, which its changes are handed to.
        self.tails: dict[str, set[Tail]] = {}
        #: The tasks awaiting a reply in this process, as this process last wrote them (row
        #: at its committed version, parsed snapshot), oldest first; and the envelopes their
        #: replies will name (``in_reply_to``), each to its task (:meth:`known`).
        self._known: collections.OrderedDict[str, tuple[A2ATask, Task]] = collections.OrderedDict()
        self._links: collections.OrderedDict[str, str] = collections.OrderedDict()
        #: Key releases under way (:meth:`answered_soon`), by the key they free.
        self._releasing: dict[tuple[str, str], asyncio.Task[None]] = {}

    # reading ---------------------------------------------------------------------------------

    def known(self, envelope_id: str) -> tuple[A2ATask, Task] | None:
        """The task a reply naming ``envelope_id`` belongs to, as this process last wrote it,
        when a reader of it waits here and it has not ended; None: read it from the store.

        What the reply tracker would otherwise read (``Store.a2a_reply_tasks``) between the
        reply's commit and the face's answer. A stale entry (another process changed the task
        since) costs nothing but a compare-and-set conflict, after which :meth:`change` reads
        the store. An ended task is always read from the store, which may have purged it."""
        found = self._known_entry(envelope_id)
        if found is None:
            return None
        row, task = found
        copy = Task()
        copy.CopyFrom(task)  # the caller's own: a change mutates it
        return row, copy

    def knows(self, envelope_id: str) -> bool:
        """Whether :meth:`known` has the task of a reply naming ``envelope_id``."""
        return self._known_entry(envelope_id) is not None

    def _known_entry(self, envelope_id: str) -> tuple[A2ATask, Task] | None:
        task_id = self._links.get(envelope_id)
        found = self._known.get(task_id) if task_id is not None else None
        if found is None or found[1].status.state in wire.TERMINAL_STATES:
            return None
        return found

    def _remember(self, row: A2ATask, task: Task, link: str | None = None) -> None:
        """Keep ``row`` (at its committed version) and ``task`` for :meth:`known`: a task
        just started (``link``: its first envelope), or one changed while it is known or gets
        a follow-up's envelope (``link``)."""
        if link is None and row.id not in self._known:
            return
        if len(row.snapshot) > MAX_KNOWN_SNAPSHOT:
            self.forget(row.id)
            return
        copy = Task()
        copy.CopyFrom(task)
        self._known[row.id] = (row, copy)
        self._known.move_to_end(row.id)
        if link is not None:
            self._links[link] = row.id
            self._links.move_to_end(link)
        while len(self._known) > MAX_KNOWN_TASKS:
            self._known.popitem(last=False)
        while len(self._links) > MAX_KNOWN_TASKS:
            self._links.popitem(last=False)

    def forget(self, task_id: str) -> None:
        """Stop keeping the task for :meth:`known` (its readers are gone). Its envelopes'
        links go with it, or age out (``MAX_KNOWN_TASKS``) when the task was evicted first."""
        if self._known.pop(task_id, None) is not None:
            for link in [k for k, v in self._links.items() if v == task_id]:
                del self._links[link]

    async def load(self, task_id: str) -> tuple[A2ATask, Task] | None:
        row = await self.store.a2a_get_task(task_id)
        if row is None:
            return None
        task = parse_task(row.snapshot)
        if row.state == "TASK_STATE_SUBMITTED" and row.created < self.clock.now() - ORPHAN_AGE:
            row, task = await self._repair_orphan(row, task)
        return row, task

    async def get(self, owner: str, address: Address, task_id: str) -> tuple[A2ATask, Task]:
        """The task, if it is this caller's for this address (another's is not found, so task
        ids cannot be probed)."""
        found = await self.load(task_id) if task_id else None
        if found is None or found[0].owner != owner or found[0].address != str(address):
            raise a2a.TaskNotFoundError
        return found

    async def list_tasks(
        self, owner: str, address: Address, params: ListTasksRequest
    ) -> ListTasksResponse:
        size = params.page_size if params.HasField("page_size") else DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise a2a.InvalidParamsError(message=f"page size must be 1 to {MAX_PAGE_SIZE}")
        before = _decode_page_token(params.page_token) if params.page_token else None
        after = (
            params.status_timestamp_after.ToDatetime(tzinfo=self.clock.now().tzinfo)
            if params.HasField("status_timestamp_after")
            else None
        )
        state = TaskState.Name(params.status) if params.status else None
        rows, total = await self.store.a2a_list_tasks(
            owner,
            str(address),
            context=params.context_id or None,
            state=state,
            status_after=after,
            before=before,
            limit=size + 1,
        )
        page = rows[:size]
        token = _encode_page_token(page[-1]) if len(rows) > size else ""
        return ListTasksResponse(
            tasks=[parse_task(r.snapshot) for r in page],
            next_page_token=token,
            page_size=size,
            total_size=total,
        )

    # changing --------------------------------------------------------------------------------

    async def change(
        self,
        task_id: str,
        mutate: Callable[[A2ATask, Task], Change | None],
        *,
        source: str | None = None,
        link: str | None = None,
        key: IdempotencyKey | None = None,
        current: A2ATask | None = None,
        snapshot: Task | None = None,
        ack: tuple[str, str, datetime] | None = None,
        cursor: int | None = None,
    ) -> tuple[A2ATask, Task] | None:
        """Apply ``mutate`` to the current task with compare-and-set, retrying on conflict.
        Returns the task after the change, or None if ``mutate`` declined (nothing written)
        or the source was applied before. ``current``: the row as the caller just read it,
        for the first try (a stale one only costs a conflict and a re-read), and ``snapshot``
        its snapshot already parsed (the caller's own: ``mutate`` may change it). ``key`` is
        recorded with the change, naming ``link`` (``Conflict`` if it is taken); ``ack`` and
        ``cursor`` are the reply tracker's, written in the same transaction
        (``Store.a2a_update_task``). The change is handed to the task's open tails once it
        is committed."""
        for _ in range(MAX_CAS_ATTEMPTS):
            found = current or await self.store.a2a_get_task(task_id)
            parsed = snapshot if current is not None else None
            current = snapshot = None
            if found is None:
                raise a2a.TaskNotFoundError
            row = found
            outcome = mutate(row, parsed if parsed is not None else parse_task(row.snapshot))
            if outcome is None:
                return None
            now = self.clock.now()
            new_row = replace(
                row,
                state=TaskState.Name(outcome.task.status.state),
                remote_id=outcome.remote_id or row.remote_id,
                snapshot=task_json(outcome.task),
                push=outcome.push if outcome.push is not None else row.push,
                status_by=row.status_by if outcome.status_by is None else outcome.status_by or None,
                status_at=_status_time(outcome.task, now),
                updated=now,
            )
            written = await self.store.a2a_update_task(
                new_row,
                row.version,
                [event_json(e) for e in outcome.events],
                source=source,
                link=link,
                key=key,
                ack=ack,
                cursor=cursor,
            )
            if written == "duplicate":
                return None
            if written == "updated":
                self.pushes.send(new_row.push, outcome.events)
                committed = replace(new_row, version=row.version + max(1, len(outcome.events)))
                tails = self.tails.get(task_id)
                if tails:
                    for tail in list(tails):
                        tail.offer(row.version, outcome.events, committed, outcome.task)
                self._remember(committed, outcome.task, link)
                return new_row, outcome.task
        raise a2a.InternalError(message="the task is changing too fast; retry")

    async def start(self, owner: str, address: Address, params: SendMessageRequest) -> Started:
        """Hand a client's message to the relay: a new task, or the next turn of one."""
        message = params.message
        if message.role != Role.ROLE_USER:  # A2A 1.0 §4.1.4: clients send user messages
            raise a2a.InvalidParamsError(message="a client's message has role ROLE_USER")
        if not message.parts:
            raise a2a.InvalidParamsError(message="a message needs at least one part")
        notify = _notify_of(message)
        key = message_key(owner, address, message)
        if key is not None:
            releasing = self._releasing.get((owner, key.key))
            if releasing is not None:
                # The first call's answer is written and its key on the way out: this is a
                # new call, once the key is gone (answered_soon).
                await asyncio.shield(releasing)
            known = await self.store.idempotency_records(owner, [key.key])
            if key.key in known:
                replayed = await self._replay(owner, address, message, key, known[key.key])
                if replayed is not None:
                    return replayed
        now = self.clock.now()
        envelope_id = uuid7(now)
        if message.task_id:
            return await self._follow_up(owner, address, message, envelope_id, key, notify)
        context_id = message.context_id or str(uuid.uuid4())
        task = folding.new_task(envelope_id, context_id, message, now)
        push = "[]"
        if params.configuration.HasField("task_push_notification_config"):
            config = self.pushes.normalise(
                envelope_id, params.configuration.task_push_notification_config
            )
            push = push_json([config])
        row = A2ATask(
            id=envelope_id,
            owner=owner,
            address=str(address),
            context=context_id,
            state="TASK_STATE_SUBMITTED",
            remote_id=None,
            snapshot=task_json(task),
            push=push,
            version=0,
            status_at=now,
            created=now,
            updated=now,
        )
        try:
            await self.store.a2a_create_task(row, envelope_id, key=key)
        except Conflict:
            # The same call, retried before the first one had written its task, lost the race.
            if key is None:
                raise
            return await self._replay_raced(owner, address, message, key)
        self.owners.add(owner)
        # Before the envelope leaves: its reply finds the task in memory (known()).
        self._remember(row, task, envelope_id)
        body = _agent_message(message, task_id="", context_id=context_id)
        try:
            await self._send(
                owner, address, body, context=context_id, id=envelope_id, notify=notify
            )
        except SynqError as exc:
            await self._refused(exc, key, envelope_id, new=True)
            raise _a2a_error(exc) from None
        return Started(task_id=envelope_id, new=True, version=0, key=key, envelope=envelope_id)

    async def _follow_up(
        self,
        owner: str,
        address: Address,
        message: Message,
        envelope_id: str,
        key: IdempotencyKey | None,
        notify: Notify = DEFAULT_NOTIFY,
    ) -> Started:
        row, task = await self.get(owner, address, message.task_id)
        if message.context_id and message.context_id != row.context:
            raise a2a.InvalidParamsError(
                message=(
                    f"Context {message.context_id} does not match context {row.context} "
                    f"of task {row.id}"
                )
            )
        if task.status.state in wire.TERMINAL_STATES:
            raise a2a.UnsupportedOperationError(
                message=(f"Task {row.id} is in terminal state: {TaskState.Name(task.status.state)}")
            )
        turn = Message()
        turn.CopyFrom(message)
        turn.task_id, turn.context_id = row.id, row.context

        def add_turn(current: A2ATask, snapshot: Task) -> Change | None:
            if snapshot.status.state in wire.TERMINAL_STATES:
                return None
            snapshot.history.append(turn)
            # The client's input: the agent's next status is made after it, whatever the
            # agent's clock says (late.py), so no reply of the agent's is kept to compare with.
            return Change(task=snapshot, events=[], status_by=CLEAR)

        try:
            changed = await self.change(row.id, add_turn, link=envelope_id, key=key)
        except Conflict:
            if key is None:
                raise
            return await self._replay_raced(owner, address, message, key)
        if changed is None:
            raise a2a.UnsupportedOperationError(message=f"Task {row.id} has ended")
        current = changed[0]
        body = _agent_message(message, task_id=current.remote_id or "", context_id=row.context)
        try:
            await self._send(
                owner,
                address,
                body,
                context=row.context,
                in_reply_to=row.id,
                id=envelope_id,
                notify=notify,
            )
        except SynqError as exc:
            await self._refused(exc, key, envelope_id, new=False)
            raise _a2a_error(exc) from None
        return Started(
            task_id=row.id, new=False, version=current.version, key=key, envelope=envelope_id
        )

    async def _replay_raced(
        self, owner: str, address: Address, message: Message, key: IdempotencyKey
    ) -> Started:
        """The call's key was recorded by a concurrent copy of it between the look-up and the
        write: answer as a retry."""
        known = await self.store.idempotency_records(owner, [key.key])
        replayed = (
            await self._replay(owner, address, message, key, known[key.key])
            if key.key in known
            else None
        )
        if replayed is None:
            raise a2a.InternalError(message="the task changed while it was written; retry")
        return replayed

    async def _replay(
        self,
        owner: str,
        address: Address,
        message: Message,
        key: IdempotencyKey,
        first: IdempotencyRecord,
    ) -> Started | None:
        """A message handed over before (module docstring, "retries"): the task its first call
        wrote, the first call finished if it stopped before custody. None when the key names
        no task of this caller's any more (the task was purged before the key): the key is
        freed and the call is a new one."""
        task_id = (await self.store.a2a_tasks_for_envelopes([first.id])).get(first.id)
        # The store directly, not load(): a task the first call left orphaned is completed
        # below, not failed.
        row = await self.store.a2a_get_task(task_id) if task_id else None
        if (
            row is None
            or row.owner != owner
            or row.address != str(address)
            or first.fingerprint != key.fingerprint
        ):
            await self.store.release_idempotency_key(owner, key.key, first.id)
            return None
        self.owners.add(owner)
        new = row.id == first.id  # a task's id is the id of its first envelope
        task = parse_task(row.snapshot)
        state = task.status.state
        if (
            state not in wire.TERMINAL_STATES
            and await self.store.message_status(self.domain, first.id) is None
        ):
            # The first call wrote its task (or turn) and stopped before its envelope was in
            # custody: send that envelope now, under the id the task already expects.
            body = _agent_message(
                message, task_id="" if new else row.remote_id or "", context_id=row.context
            )
            try:
                await self._send(
                    owner,
                    address,
                    body,
                    context=row.context,
                    in_reply_to=None if new else row.id,
                    id=first.id,
                    notify=_notify_of(message),
                )
            except SynqError as exc:
                await self._refused(exc, key, first.id, new=new)
                raise _a2a_error(exc) from None
        # A follow-up is answered once the task ended or, changed since the turn, waits for
        # the client again.
        settled = not new and (
            state in wire.TERMINAL_STATES
            or (state in wire.WAITING_STATES and row.updated > first.created)
        )
        # A new task's answer is read from its log from the start, as the first call read it;
        # a follow-up's from the task as it stands.
        return Started(
            task_id=row.id,
            new=new,
            version=0 if new else row.version,
            replay=True,
            settled=settled,
            key=key,
            envelope=first.id,
        )

    async def answered(self, started: Started) -> None:
        """The binding wrote the answer to the call that ``started`` in full (the whole
        SendMessage response, or a stream up to its closing event): the client has what a retry
        would get, so the call's key is freed and the same message sent again is a new call
        (module docstring, "retries"). Only if the key still names the call's envelope: a
        concurrent copy of the call that started anew keeps its own. Best effort: a store
        failing here leaves the key, and a resend answered from the first task, as before."""
        if started.key is not None:
            with contextlib.suppress(SynqError):
                # Not synced on its own: a release lost to a power cut only leaves the key,
                # and a resend is then answered as a retry (the rule before the answer).
                await self.store.release_idempotency_key(
                    started.key.agent, started.key.key, started.envelope, durable=False
                )

    def answered_soon(self, started: Started) -> None:
        """:meth:`answered`, without holding the binding that wrote the answer: the client has
        the answer already, so the release is no part of the call, but on HTTP it would hold
        the connection's next request back, and the call's span, for a store write. A call of
        this process with the same key waits for the release before it looks the key up, so
        it is a new call as if the release had been awaited; :meth:`drain` waits for the
        releases under way before the store closes."""
        if started.key is None:
            return
        name = (started.key.agent, started.key.key)
        task = asyncio.get_running_loop().create_task(self.answered(started))
        self._releasing[name] = task

        def done(ended: asyncio.Task[None]) -> None:
            if self._releasing.get(name) is ended:
                del self._releasing[name]

        task.add_done_callback(done)

    async def drain(self) -> None:
        """Wait for the key releases under way (:meth:`answered_soon`)."""
        await asyncio.gather(*self._releasing.values(), return_exceptions=True)

    async def _refused(
        self, exc: SynqError, key: IdempotencyKey | None, envelope_id: str, *, new: bool
    ) -> None:
        """The call's envelope was not taken into custody.

        Refused (the caller's fault: rate, policy, recipients): a new task fails with the
        reason, and the key is freed, so that the client's retry — after a rate limit, say — is
        sent rather than answered with that failed task, as a refused request records no key
        anywhere (SPEC.md §6.2). Best effort: a store failing here leaves the key answering
        with the task. The relay's own failure (its store) with a key: the task stays as it is,
        for the client's retry to send this very envelope (or, with no retry, for the orphan
        rule, ``ORPHAN_AGE``, to fail it)."""
        if isinstance(exc, PeerError) or key is None:
            if new:
                await self._fail(envelope_id, f"the relay refused the message: {exc.message}")
            if key is not None:
                with contextlib.suppress(SynqError):
                    await self.store.release_idempotency_key(key.agent, key.key, envelope_id)

    async def _fail(self, task_id: str, why: str) -> None:
        def failed(row: A2ATask, task: Task) -> Change | None:
            if task.status.state in wire.TERMINAL_STATES:
                return None
            update = TaskStatusUpdateEvent(
                status=TaskStatus(
                    state=TaskState.TASK_STATE_FAILED, message=_agent_text(f"{row.id}-failed", why)
                )
            )
            folded = folding.fold(task, update, self.clock.now())
            if folded is None:
                return None
            # Ended by the face: no later reply changes it (late.py).
            return Change(task=folded.task, events=[folded.event], status_by=CLEAR)

        with contextlib.suppress(SynqError, a2a.A2AError):
            await self.change(task_id, failed)

    async def _repair_orphan(self, row: A2ATask, task: Task) -> tuple[A2ATask, Task]:
        if await self.store.message_status(self.domain, row.id) is not None:
            return row, task
        await self._fail(row.id, "the relay stopped before it took the message into custody")
        found = await self.store.a2a_get_task(row.id)
        return (found, parse_task(found.snapshot)) if found else (row, task)

    async def cancel(self, owner: str, address: Address, task_id: str) -> Task:
        """Cancel at the face at once and tell the agent with a ``signal`` envelope (A2A 1.0
        §3.1.5). The face's task is canceled whatever the agent says later; its later events
        are ignored, even those it sent before the cancel: no reply of the agent's set the task's
        status (late.py)."""
        row, _task = await self.get(owner, address, task_id)

        def canceled(current: A2ATask, task: Task) -> Change | None:
            if task.status.state in wire.TERMINAL_STATES:
                raise a2a.TaskNotCancelableError
            folded = folding.fold(
                task,
                TaskStatusUpdateEvent(status=TaskStatus(state=TaskState.TASK_STATE_CANCELED)),
                self.clock.now(),
            )
            assert folded is not None
            # Ended by the face: whatever the agent sent, before or after, changes nothing.
            return Change(task=folded.task, events=[folded.event], status_by=CLEAR)

        changed = await self.change(row.id, canceled)
        if changed is None:
            raise a2a.TaskNotCancelableError
        current, task = changed
        try:
            await self._send(
                owner,
                address,
                wire.cancel_signal(current.remote_id or ""),
                kind=KIND_SIGNAL,
                context=current.context,
                in_reply_to=current.id,
            )
        except SynqError as exc:
            # The face's task is canceled; the agent keeps working until it finishes.
            log.warning("cancel of task %s not sent to the agent: %s", current.id, exc.message)
        return task

    async def _send(
        self,
        owner: str,
        address: Address,
        body: Any,
        *,
        context: str,
        kind: str = KIND_MESSAGE,
        in_reply_to: str | None = None,
        id: str | None = None,
        notify: Notify = DEFAULT_NOTIFY,
    ) -> None:
        """One envelope of the face's task from ``owner`` to the agent at ``address``, in the
        thread of the task's context (SPEC.md "A2A mapping"); ``notify``: the reports the
        client asked for (:data:`NOTIFY_METADATA`)."""
        draft = Draft(
            Address(owner, self.domain),
            (address,),
            wire.CONTENT_TYPE,
            body,
            kind=kind,
            thread=thread_of(context),
            in_reply_to=in_reply_to,
            id=id,
            notify=notify,
        )
        await self.mailbox.send(draft, via="a2a")

    # push-notification configs (A2A 1.0 §3.1.7-§3.1.10) -------------------------------------

    async def set_push(
        self, owner: str, address: Address, config: TaskPushNotificationConfig
    ) -> TaskPushNotificationConfig:
        row, _ = await self.get(owner, address, config.task_id)
        normal = self.pushes.normalise(row.id, config)

        def store(current: A2ATask, task: Task) -> Change:
            configs = [c for c in push_configs(current.push) if c.id != normal.id]
            if len(configs) >= MAX_PUSH_CONFIGS:
                raise a2a.InvalidParamsError(
                    message=f"a task has at most {MAX_PUSH_CONFIGS} push notification configs"
                )
            return Change(task=task, events=[], push=push_json([*configs, normal]))

        await self.change(row.id, store)
        return normal

    async def push_configs(
        self, owner: str, address: Address, task_id: str
    ) -> list[TaskPushNotificationConfig]:
        row, _ = await self.get(owner, address, task_id)
        return push_configs(row.push)

    async def delete_push(self, owner: str, address: Address, task_id: str, id: str) -> None:
        row, _ = await self.get(owner, address, task_id)

        def drop(current: A2ATask, task: Task) -> Change | None:
            configs = push_configs(current.push)
            kept = [c for c in configs if c.id != id]
            if len(kept) == len(configs):
                return None
            return Change(task=task, events=[], push=push_json(kept))

        await self.change(row.id, drop)


def _agent_text(message_id: str, text: str) -> Message:
    message = Message(role=Role.ROLE_AGENT, message_id=message_id[:128])
    message.parts.add().text = text
    return message


def _agent_message(message: Message, *, task_id: str, context_id: str) -> dict[str, Any]:
    """The client's message as the agent receives it: the agent's own task id for a follow-up,
    the context id the face and the agent share."""
    out = Message()
    out.CopyFrom(message)
    out.task_id = task_id
    out.context_id = context_id
    return wire.to_json(out)


def _encode_page_token(row: A2ATask) -> str:
    text = json.dumps([row.status_at.isoformat(), row.id], separators=(",", ":"))
    return text.encode("utf-8").hex()


def _decode_page_token(token: str) -> tuple[datetime, str]:
    try:
        at, task_id = json.loads(bytes.fromhex(token).decode("utf-8"))
        return datetime.fromisoformat(at), str(task_id)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise a2a.InvalidParamsError(message=f"Invalid page token: {token[:80]}") from None
