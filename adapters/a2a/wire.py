"""A2A objects ⇄ envelope bodies (SPEC.md "A2A mapping"): pure translation, no I/O.

An A2A object travels in an envelope as its A2A 1.0 JSON form (the protobuf JSON mapping the
A2A specification §5 prescribes: camelCase members, enum names as strings) with the content
type ``application/a2a+json``. The envelope ``kind`` says which object the body is:

=============  ===============================================================================
kind           body
=============  ===============================================================================
message        an A2A ``Message`` (A2A 1.0 §4.1.4)
task.update    an A2A ``StreamResponse`` holding exactly one of ``task``, ``statusUpdate``,
               ``artifactUpdate`` (A2A 1.0 §3.2.3 streaming events)
signal         ``{"cancelTask": <CancelTaskRequest>}``: ask the agent to cancel its task
               (A2A 1.0 §3.1.5)
=============  ===============================================================================

Envelopes of other content types reach A2A agents too (an inbox agent writing ``text/plain``):
a text body becomes a text part, anything else a data part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from a2a.types import (
    CancelTaskRequest,
    Message,
    Part,
    Role,
    StreamResponse,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Value

from relay.core.cards import SYNQ_ADDRESS_EXTENSION
from relay.core.envelope import KIND_DSN, KIND_MESSAGE, KIND_SIGNAL, KIND_TASK_UPDATE, Envelope
from relay.delivery.adapters import Reply

__all__ = [
    "CONTENT_TYPE",
    "TERMINAL_STATES",
    "WAITING_STATES",
    "Signal",
    "WireError",
    "cancel_signal",
    "event_of_reply",
    "message_for_agent",
    "parse_message",
    "parse_signal",
    "reply_of_event",
    "to_json",
]

#: The content type of an envelope whose body is an A2A object.
CONTENT_TYPE: Final = "application/a2a+json"

#: Task states after which nothing more happens (A2A 1.0 §4.1.3).
TERMINAL_STATES: Final = frozenset(
    {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_REJECTED,
    }
)
#: Task states in which the agent waits for the client (A2A 1.0 §4.1.3 "interrupted").
WAITING_STATES: Final = frozenset(
    {TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED}
)

#: What a reply event is: the A2A object a ``message`` or ``task.update`` envelope carries.
Event = Message | Task | TaskStatusUpdateEvent | TaskArtifactUpdateEvent


class WireError(ValueError):
    """A body that is not the A2A object its kind and content type promise."""


def to_json(message: Any) -> dict[str, Any]:
    """The A2A JSON form of a protobuf object (A2A 1.0 §5: camelCase, enums by name)."""
    data: dict[str, Any] = json_format.MessageToDict(message)
    return data


def _parse(body: Any, target: Any, what: str) -> Any:
    if not isinstance(body, dict):
        raise WireError(f"the body is not an A2A {what} object")
    try:
        return json_format.ParseDict(body, target, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise WireError(f"the body is not an A2A {what}: {str(exc)[:200]}") from None


def parse_message(body: Any) -> Message:
    message: Message = _parse(body, Message(), "Message")
    return message


# delivery to an agent ---------------------------------------------------------------------------


def _parts_of(content_type: str, body: Any) -> list[Part]:
    if content_type.startswith("text/") and isinstance(body, str):
        return [Part(text=body)]
    value = Value()
    try:
        json_format.ParseDict(body, value)
    except (json_format.ParseError, ValueError, TypeError):
        value.string_value = str(body)
    return [Part(data=value, media_type=content_type)]


def message_for_agent(envelope: Envelope) -> Message:
    """The A2A message an agent receives for ``envelope`` (kind ``message``, or any other kind
    an agent can only read as a message).

    An A2A message keeps the ``messageId`` its client chose: an agent (the A2A TCK's scenario
    agent among them) may act on it, and a redelivered envelope carries the same one, so the
    agent can recognise the repeat. Other bodies get the envelope id as ``messageId``. The
    ``contextId`` is the envelope's ``thread`` when the body names none. The sender's Synq
    address and the envelope id ride in ``metadata`` under the Synq extension URI.
    """
    if envelope.content_type == CONTENT_TYPE and envelope.kind == KIND_MESSAGE:
        message = parse_message(envelope.body)
    else:
        message = Message(parts=_parts_of(envelope.content_type, envelope.body))
    message.role = Role.ROLE_USER
    if not message.message_id:
        message.message_id = envelope.id
    if not message.context_id and envelope.thread:
        message.context_id = envelope.thread
    if not message.parts:
        raise WireError("an A2A message needs at least one part")
    message.metadata.update(
        {SYNQ_ADDRESS_EXTENSION: {"from": envelope.from_, "envelope": envelope.id}}
    )
    return message


@dataclass(frozen=True, slots=True)
class Signal:
    """A control request for the agent; the only one is cancel."""

    cancel_task: str


def cancel_signal(remote_task_id: str) -> dict[str, Any]:
    """The body of a ``signal`` envelope asking the agent to cancel its task."""
    return {"cancelTask": to_json(CancelTaskRequest(id=remote_task_id))}


def parse_signal(envelope: Envelope) -> Signal:
    if envelope.kind != KIND_SIGNAL or envelope.content_type != CONTENT_TYPE:
        raise WireError("not an A2A signal")
    body = envelope.body
    if not isinstance(body, dict) or set(body) != {"cancelTask"}:
        raise WireError('an A2A signal body is {"cancelTask": {...}}')
    request: CancelTaskRequest = _parse(
        body["cancelTask"], CancelTaskRequest(), "CancelTaskRequest"
    )
    return Signal(cancel_task=request.id)


# replies from an agent ---------------------------------------------------------------------------


def reply_of_event(event: StreamResponse) -> Reply:
    """The reply envelope for one event the agent produced: a direct ``Message`` answer, or one
    task status, artifact or snapshot."""
    which = event.WhichOneof("payload")
    if which == "message":
        return Reply(kind=KIND_MESSAGE, content_type=CONTENT_TYPE, body=to_json(event.message))
    if which in ("task", "status_update", "artifact_update"):
        return Reply(kind=KIND_TASK_UPDATE, content_type=CONTENT_TYPE, body=to_json(event))
    raise WireError("the agent sent an empty stream event")


def _text_message(text: str) -> Message:
    return Message(role=Role.ROLE_AGENT, parts=[Part(text=text)])


def event_of_reply(envelope: Envelope) -> Event:
    """The A2A event a reply envelope carries, for the face's task (SPEC.md "A2A mapping").

    A reply from an agent that does not speak A2A (an inbox agent answering with text) is still
    an event: a ``message`` becomes the agent's ``Message``, a ``task.update`` a status update
    to ``TASK_STATE_WORKING`` carrying it. A delivery-status envelope is the relay saying the
    message could not be delivered: the task failed, with the diagnostic as its message.
    Raises WireError for an A2A body that does not parse.
    """
    if envelope.kind == KIND_DSN:
        body = envelope.body if isinstance(envelope.body, dict) else {}
        status = str(body.get("status", "5.0.0"))
        diagnostic = str(body.get("diagnostic", "the message could not be delivered"))
        return TaskStatusUpdateEvent(
            status=TaskStatus(
                state=TaskState.TASK_STATE_FAILED,
                message=_text_message(f"not delivered ({status}): {diagnostic}"),
            )
        )
    if envelope.content_type == CONTENT_TYPE:
        if envelope.kind == KIND_MESSAGE:
            return parse_message(envelope.body)
        if envelope.kind == KIND_TASK_UPDATE:
            stream: StreamResponse = _parse(envelope.body, StreamResponse(), "StreamResponse")
            which = stream.WhichOneof("payload")
            if which == "task":
                return stream.task
            if which == "status_update":
                return stream.status_update
            if which == "artifact_update":
                return stream.artifact_update
            raise WireError("a task.update body holds a task, statusUpdate or artifactUpdate")
    message = Message(role=Role.ROLE_AGENT, parts=_parts_of(envelope.content_type, envelope.body))
    message.message_id = envelope.id
    if envelope.kind == KIND_TASK_UPDATE:
        return TaskStatusUpdateEvent(
            status=TaskStatus(state=TaskState.TASK_STATE_WORKING, message=message)
        )
    return message
