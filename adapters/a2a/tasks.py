"""The relay face's view of a task: folding the agent's events into the Task the face serves.

Pure functions on a2a-sdk's protobuf types, without I/O, so that tables can test them. The face
gives every task its own id and context id; the agent behind it, possibly two relays away, has
ids of its own. Every event that comes back is rewritten into the face's ids before it is stored
or streamed, so a client only ever sees the ids the face gave it (SPEC.md "A2A mapping").

Folding follows a2a-sdk's TaskManager (A2A 1.0 §3.1.1, §4.2): a ``Task`` event replaces the
snapshot; a status update moves the previous status message into the history and takes its
place; an artifact update adds or appends to an artifact; a direct ``Message`` answer ends
the task as completed with that message.

An ended task takes no event that changes how it ended, and no task takes a status from an event
the agent sent before the one that set its current status: what an agent sent before an answer
can still arrive after it, since envelopes keep no order (SPEC.md §9.1). :func:`fold_late` adds
what such an event carries — its messages to the history, before the current status's message;
its artifacts — and leaves the status as it is. Whether an event is late rather than new is the
caller's to tell (it knows when the agent sent it: relay/tasks/late.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from a2a.server.tasks.task_manager import append_artifact_to_task
from a2a.types import (
    Message,
    StreamResponse,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import A2AError
from google.protobuf.timestamp_pb2 import Timestamp

from adapters.a2a.wire import TERMINAL_STATES, WAITING_STATES, Event
from relay.core.cards import SYNQ_ADDRESS_EXTENSION

__all__ = [
    "Folded",
    "FoldedLate",
    "ends_stream",
    "fold",
    "fold_late",
    "new_task",
    "state_of",
    "stream_event",
]


def _timestamp(now: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(now)
    return ts


def _rewrite_message(message: Message, task_id: str, context_id: str) -> None:
    if message.task_id:
        message.task_id = task_id
    message.context_id = context_id
    # The relay's own bookkeeping for the agent (wire.message_for_agent) is not the client's.
    if SYNQ_ADDRESS_EXTENSION in message.metadata:
        del message.metadata[SYNQ_ADDRESS_EXTENSION]


def new_task(task_id: str, context_id: str, message: Message, now: datetime) -> Task:
    """A task the face has just created for ``message``: submitted, the message its history."""
    first = Message()
    first.CopyFrom(message)
    first.task_id = task_id
    first.context_id = context_id
    return Task(
        id=task_id,
        context_id=context_id,
        status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED, timestamp=_timestamp(now)),
        history=[first],
    )


@dataclass(frozen=True, slots=True)
class Folded:
    """The outcome of folding one event: the new snapshot, the event in the face's ids (what
    is stored in the task's log and streamed), and the agent's own task id if it named one."""

    task: Task
    event: StreamResponse
    remote_id: str | None


def fold(task: Task, event: Event, now: datetime) -> Folded | None:
    """Apply one event of the agent to the face's task. None when the task has already ended:
    a late or repeated event changes nothing."""
    if task.status.state in TERMINAL_STATES:
        return None
    tid, cid = task.id, task.context_id
    out = Task()
    out.CopyFrom(task)
    if isinstance(event, Message):
        message = Message()
        message.CopyFrom(event)
        _rewrite_message(message, tid, cid)
        if out.status.HasField("message"):
            out.history.append(out.status.message)
        out.status.CopyFrom(
            TaskStatus(
                state=TaskState.TASK_STATE_COMPLETED, message=message, timestamp=_timestamp(now)
            )
        )
        return Folded(out, StreamResponse(message=message), None)
    if isinstance(event, Task):
        remote = event.id or None
        snapshot = Task()
        snapshot.CopyFrom(event)
        snapshot.id, snapshot.context_id = tid, cid
        if snapshot.status.HasField("message"):
            _rewrite_message(snapshot.status.message, tid, cid)
        for message in snapshot.history:
            _rewrite_message(message, tid, cid)
        if not snapshot.history:
            snapshot.history.extend(task.history)
        if not snapshot.status.HasField("timestamp"):
            snapshot.status.timestamp.CopyFrom(_timestamp(now))
        return Folded(snapshot, StreamResponse(task=snapshot), remote)
    if isinstance(event, TaskStatusUpdateEvent):
        update = TaskStatusUpdateEvent()
        update.CopyFrom(event)
        remote = update.task_id or None
        update.task_id, update.context_id = tid, cid
        if update.status.HasField("message"):
            _rewrite_message(update.status.message, tid, cid)
        if not update.status.HasField("timestamp"):
            update.status.timestamp.CopyFrom(_timestamp(now))
        if out.status.HasField("message"):
            out.history.append(out.status.message)
        if update.metadata:
            out.metadata.MergeFrom(update.metadata)
        out.status.CopyFrom(update.status)
        return Folded(out, StreamResponse(status_update=update), remote)
    artifact = TaskArtifactUpdateEvent()
    artifact.CopyFrom(event)
    remote = artifact.task_id or None
    artifact.task_id, artifact.context_id = tid, cid
    try:
        append_artifact_to_task(out, artifact)
    except A2AError:
        # ``append`` to an artifact the face never saw (its first chunk was lost with a
        # broken stream): keep the chunk as an artifact of its own rather than drop it.
        artifact.append = False
        append_artifact_to_task(out, artifact)
    return Folded(out, StreamResponse(artifact_update=artifact), remote)


@dataclass(frozen=True, slots=True)
class FoldedLate:
    """The outcome of folding one late event into a task: the new snapshot, and how many
    messages the event put into its history (the caller orders later late events by them)."""

    task: Task
    messages: int


def _copy(message: Message) -> Message:
    out = Message()
    out.CopyFrom(message)
    return out


def _has_message(task: Task, message: Message) -> bool:
    """Whether the task holds ``message`` already: the same ``messageId`` (A2A 1.0 §3.3.1: the
    id names the message), or, for a message without one, an equal message."""
    held = list(task.history)
    if task.status.HasField("message"):
        held.append(task.status.message)
    if message.message_id:
        return any(m.message_id == message.message_id for m in held)
    return any(m == message for m in held)


def _add_late_artifact(task: Task, update: TaskArtifactUpdateEvent) -> None:
    """An artifact update of a late event: added, or appended to the artifact it names.

    A first chunk (``append`` false) of an artifact the task holds does not replace it, as a
    live one would: what the task holds arrived before, but was sent after — the artifact's
    later chunks, or a newer version. Its parts go before the parts held, unless the artifact
    begins with them already, so no part the agent sent is lost."""
    artifact = update.artifact
    held = next((a for a in task.artifacts if a.artifact_id == artifact.artifact_id), None)
    if held is None:
        task.artifacts.append(artifact)
        return
    if update.append:
        held.parts.extend(artifact.parts)
        for key, value in artifact.metadata.fields.items():
            if key not in held.metadata.fields:
                held.metadata.fields[key].CopyFrom(value)
        return
    if list(held.parts[: len(artifact.parts)]) == list(artifact.parts):
        return
    parts = [*artifact.parts, *held.parts]
    del held.parts[:]
    held.parts.extend(parts)
    if not held.name:
        held.name = artifact.name
    if not held.description:
        held.description = artifact.description


def fold_late(task: Task, event: Event, before: int) -> FoldedLate | None:
    """Apply one late event of the agent to a task (module docstring): the status stays as it
    is — as the task ended, or as a later event of the agent's set it. A status update's message
    (or a direct message answer) goes into the history ``before`` messages from its end — the
    late messages the agent sent after this one — so the history keeps the order the agent sent
    it in, and the current status's message, after the history, stays last. An artifact update adds or appends its artifact; a
    task snapshot adds the messages and artifacts the task lacks. Metadata only fills keys the
    task lacks: the task's own are newer. None when the event carries nothing the task lacks
    (a bare change of state, a repeat)."""
    tid, cid = task.id, task.context_id
    out = Task()
    out.CopyFrom(task)
    messages: list[Message] = []
    metadata = None
    if isinstance(event, Message):
        message = Message()
        message.CopyFrom(event)
        _rewrite_message(message, tid, cid)
        messages.append(message)
    elif isinstance(event, TaskStatusUpdateEvent):
        if event.status.HasField("message"):
            message = Message()
            message.CopyFrom(event.status.message)
            _rewrite_message(message, tid, cid)
            messages.append(message)
        metadata = event.metadata
    elif isinstance(event, Task):
        snapshot = Task()
        snapshot.CopyFrom(event)
        for message in snapshot.history:
            _rewrite_message(message, tid, cid)
        messages.extend(snapshot.history)
        if snapshot.status.HasField("message"):
            _rewrite_message(snapshot.status.message, tid, cid)
            messages.append(snapshot.status.message)
        for artifact in snapshot.artifacts:
            if not any(a.artifact_id == artifact.artifact_id for a in out.artifacts):
                out.artifacts.append(artifact)
        metadata = snapshot.metadata
    else:
        update = TaskArtifactUpdateEvent()
        update.CopyFrom(event)
        _add_late_artifact(out, update)
    if metadata is not None:
        for key, value in metadata.fields.items():
            if key not in out.metadata.fields:
                out.metadata.fields[key].CopyFrom(value)
    added: list[Message] = []
    for message in messages:
        if not _has_message(out, message) and message not in added:
            added.append(message)
    if added:
        at = max(0, len(out.history) - max(0, before))
        history = [_copy(m) for m in out.history]
        del out.history[:]
        out.history.extend([*history[:at], *added, *history[at:]])
    if out == task:
        return None
    return FoldedLate(out, len(added))


def state_of(event: StreamResponse) -> TaskState | None:
    """The task state an event announces, if it announces one."""
    which = event.WhichOneof("payload")
    if which == "task":
        return event.task.status.state
    if which == "status_update":
        return event.status_update.status.state
    if which == "message":
        return TaskState.TASK_STATE_COMPLETED
    return None


def ends_stream(event: StreamResponse) -> bool:
    """A stream ends after a message, or an event that ends the task or makes it wait for the
    client (A2A 1.0 §3.1.2: the stream closes when the task reaches a terminal or interrupted
    state)."""
    state = state_of(event)
    return state is not None and (state in TERMINAL_STATES or state in WAITING_STATES)


def stream_event(event: StreamResponse, task: Task) -> StreamResponse:
    """How a logged event is streamed once the client has seen the task: a direct message
    answer (which ended the task) becomes the completing status update, since a stream in
    task mode carries no bare messages (A2A 1.0 §3.1.2)."""
    if event.WhichOneof("payload") != "message":
        return event
    return StreamResponse(
        status_update=TaskStatusUpdateEvent(
            task_id=task.id,
            context_id=task.context_id,
            status=TaskStatus(
                state=TaskState.TASK_STATE_COMPLETED,
                message=event.message,
                timestamp=task.status.timestamp,
            ),
        )
    )
