"""The A2A bridge's pure parts, as tables: envelope ⇄ A2A translation (adapters/a2a/wire.py),
folding agent events into the face's task (adapters/a2a/tasks.py), and the cards the relay
publishes and signs (adapters/a2a/cards.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from a2a.client.card_resolver import parse_agent_card
from a2a.types import (
    Artifact,
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
from a2a.utils.signing import create_signature_verifier
from google.protobuf import json_format
from jwt.api_jwk import PyJWK

from adapters.a2a import cards, tasks, wire
from interop.a2a.tck_agent import agent_card
from relay.core.address import Address
from relay.core.cards import SYNQ_ADDRESS_EXTENSION
from relay.core.envelope import Envelope
from relay.core.errors import BadAgentCard, BadSignature
from relay.core.jws import SigningKey, b64url_decode
from relay.tasks.store import thread_of

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def envelope(**fields: Any) -> Envelope:
    data: dict[str, Any] = {
        "v": 1,
        "id": "0195a3c0-5f1e-7c3a-9b2d-4e5f6a7b8c9d",
        "from": "alice@acme.test",
        "to": ["tck@globex.test"],
        "created": "2026-03-01T11:59:00.000Z",
        "expires": "2026-03-03T11:59:00.000Z",
        "kind": "message",
        "content_type": "text/plain",
        "body": "hello",
    }
    data.update(fields)
    return Envelope.model_validate(data)


# --- envelope → the message an agent receives ----------------------------------------------------


def test_an_a2a_message_keeps_the_clients_message_id_and_gains_the_sender() -> None:
    body = {"messageId": "tck-complete-task-1", "role": "ROLE_AGENT", "parts": [{"text": "hi"}]}
    message = wire.message_for_agent(
        envelope(content_type=wire.CONTENT_TYPE, body=body, thread="conv-1")
    )
    assert message.message_id == "tck-complete-task-1"
    assert message.role == Role.ROLE_USER
    assert message.context_id == "conv-1"
    meta = json_format.MessageToDict(message.metadata)[SYNQ_ADDRESS_EXTENSION]
    assert meta == {"from": "alice@acme.test", "envelope": "0195a3c0-5f1e-7c3a-9b2d-4e5f6a7b8c9d"}


@pytest.mark.parametrize(
    ("content_type", "body", "part"),
    [
        ("text/plain", "hello", {"text": "hello"}),
        (
            "application/json",
            {"a": [1, 2]},
            {"data": {"a": [1, 2]}, "mediaType": "application/json"},
        ),
        ("application/x-thing", 7, {"data": 7, "mediaType": "application/x-thing"}),
    ],
)
def test_other_bodies_become_parts_with_the_envelope_id_as_message_id(
    content_type: str, body: Any, part: dict[str, Any]
) -> None:
    message = wire.message_for_agent(envelope(content_type=content_type, body=body))
    assert message.message_id == "0195a3c0-5f1e-7c3a-9b2d-4e5f6a7b8c9d"
    assert [json_format.MessageToDict(p) for p in message.parts] == [part]


@pytest.mark.parametrize("body", [[1], "x", {"parts": "nope"}, {"messageId": "m", "parts": []}])
def test_a_body_that_is_no_a2a_message_is_refused(body: Any) -> None:
    with pytest.raises(wire.WireError):
        wire.message_for_agent(envelope(content_type=wire.CONTENT_TYPE, body=body))


def test_cancel_signal_round_trip() -> None:
    env = envelope(kind="signal", content_type=wire.CONTENT_TYPE, body=wire.cancel_signal("t-9"))
    assert wire.parse_signal(env).cancel_task == "t-9"
    with pytest.raises(wire.WireError):
        wire.parse_signal(envelope(kind="signal", content_type=wire.CONTENT_TYPE, body={"x": 1}))


# --- agent events → reply envelopes → the face's events ------------------------------------------


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (StreamResponse(message=Message(message_id="m", role=Role.ROLE_AGENT)), "message"),
        (StreamResponse(task=Task(id="t")), "task.update"),
        (StreamResponse(status_update=TaskStatusUpdateEvent(task_id="t")), "task.update"),
        (StreamResponse(artifact_update=TaskArtifactUpdateEvent(task_id="t")), "task.update"),
    ],
)
def test_each_agent_event_is_one_reply_and_comes_back_as_the_same_event(
    event: StreamResponse, kind: str
) -> None:
    reply = wire.reply_of_event(event)
    assert (reply.kind, reply.content_type) == (kind, wire.CONTENT_TYPE)
    back = wire.event_of_reply(
        envelope(kind=kind, content_type=reply.content_type, body=reply.body)
    )
    which = event.WhichOneof("payload")
    assert which is not None
    assert back == getattr(event, which)


def test_a_delivery_status_envelope_fails_the_task_with_its_diagnostic() -> None:
    dsn = envelope(
        kind="dsn",
        **{"from": "mailer-daemon@globex.test"},
        content_type="application/synq-dsn+json",
        body={"status": "5.1.1", "diagnostic": "no such agent"},
    )
    event = wire.event_of_reply(dsn)
    assert isinstance(event, TaskStatusUpdateEvent)
    assert event.status.state == TaskState.TASK_STATE_FAILED
    assert event.status.message.parts[0].text == "not delivered (5.1.1): no such agent"


def test_replies_of_agents_that_do_not_speak_a2a() -> None:
    answer = wire.event_of_reply(envelope(body="done"))
    assert isinstance(answer, Message)
    assert answer.parts[0].text == "done"
    progress = wire.event_of_reply(envelope(kind="task.update", body="half way"))
    assert isinstance(progress, TaskStatusUpdateEvent)
    assert progress.status.state == TaskState.TASK_STATE_WORKING


# --- folding into the face's task ----------------------------------------------------------------


def face_task() -> Task:
    first = Message(message_id="c1", role=Role.ROLE_USER, parts=[Part(text="hi")])
    return tasks.new_task("face-1", "ctx-1", first, NOW)


def test_an_agent_task_replaces_the_snapshot_under_the_face_ids() -> None:
    agent = Task(
        id="agent-7",
        context_id="agent-ctx",
        status=TaskStatus(state=TaskState.TASK_STATE_WORKING),
        history=[Message(message_id="c1", task_id="agent-7", context_id="agent-ctx")],
    )
    folded = tasks.fold(face_task(), agent, NOW)
    assert folded is not None
    assert (folded.task.id, folded.task.context_id, folded.remote_id) == (
        "face-1",
        "ctx-1",
        "agent-7",
    )
    assert (folded.task.history[0].task_id, folded.task.history[0].context_id) == (
        "face-1",
        "ctx-1",
    )
    assert folded.event.task == folded.task


def test_a_status_update_moves_the_previous_status_message_into_history() -> None:
    task = face_task()
    first = TaskStatusUpdateEvent(
        task_id="agent-7",
        status=TaskStatus(state=TaskState.TASK_STATE_WORKING, message=Message(message_id="s1")),
    )
    done = TaskStatusUpdateEvent(
        task_id="agent-7", status=TaskStatus(state=TaskState.TASK_STATE_COMPLETED)
    )
    one = tasks.fold(task, first, NOW)
    assert one is not None
    two = tasks.fold(one.task, done, NOW)
    assert two is not None
    assert [m.message_id for m in two.task.history] == ["c1", "s1"]
    assert two.task.status.state == TaskState.TASK_STATE_COMPLETED
    assert two.event.status_update.task_id == "face-1"
    assert tasks.ends_stream(two.event)
    assert not tasks.ends_stream(one.event)


def test_artifact_chunks_append_and_a_lost_first_chunk_still_counts() -> None:
    task = face_task()
    chunk = TaskArtifactUpdateEvent(
        artifact=Artifact(artifact_id="a", parts=[Part(text="1 ")]), task_id="x"
    )
    more = TaskArtifactUpdateEvent(
        artifact=Artifact(artifact_id="a", parts=[Part(text="2")]), append=True, task_id="x"
    )
    one = tasks.fold(task, chunk, NOW)
    assert one is not None
    two = tasks.fold(one.task, more, NOW)
    assert two is not None
    assert [p.text for p in two.task.artifacts[0].parts] == ["1 ", "2"]
    orphan = tasks.fold(task, more, NOW)
    assert orphan is not None
    assert [p.text for p in orphan.task.artifacts[0].parts] == ["2"]


def test_a_direct_message_completes_the_task_and_nothing_moves_an_ended_task() -> None:
    answer = Message(
        message_id="m", role=Role.ROLE_AGENT, task_id="agent-9", parts=[Part(text="ok")]
    )
    done = tasks.fold(face_task(), answer, NOW)
    assert done is not None
    assert done.task.status.state == TaskState.TASK_STATE_COMPLETED
    assert done.task.status.message.task_id == "face-1"
    streamed = tasks.stream_event(done.event, done.task)
    assert streamed.status_update.status.message.parts[0].text == "ok"
    late = TaskStatusUpdateEvent(status=TaskStatus(state=TaskState.TASK_STATE_WORKING))
    assert tasks.fold(done.task, late, NOW) is None


def test_a_context_id_is_the_thread_or_a_stable_digest_of_it() -> None:
    assert thread_of("conv-1") == "conv-1"
    odd = thread_of("a b/c")
    assert odd.startswith("a2a-")
    assert len(odd) == 44
    assert odd == thread_of("a b/c")


# --- cards -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"<html>hello</html>", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"description": "x"}', "no name"),
        (
            b'{"name": "x", "supportedInterfaces": [{"url": "u", "protocolBinding": "SOAP"}]}',
            r"JSON-RPC, HTTP\+JSON or gRPC",
        ),
        (
            b'{"name": "x", "supportedInterfaces": [{"url": "", "protocolBinding": "GRPC"}]}',
            r"JSON-RPC, HTTP\+JSON or gRPC",
        ),
        (b'{"name": "' + b"x" * cards.MAX_CARD_BYTES + b'"}', "larger than"),
        (b'{"name": 1, "supportedInterfaces": 3}', "not an A2A agent card"),
    ],
)
def test_cards_that_are_not_usable_are_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(BadAgentCard, match=why):
        cards.parse_card(data, "http://agent/.well-known/agent-card.json")


def published() -> Any:
    return cards.publish_card(
        agent_card("http://agent:1"), Address.parse("tck@globex.test"), "http://relay:8/"
    )


def test_publishing_points_the_card_at_the_face_and_declares_the_bearer_scheme() -> None:
    card = cards.json_form(published())
    assert {i["url"] for i in card["supportedInterfaces"]} == {"http://relay:8/a2a/tck@globex.test"}
    assert {i["protocolBinding"] for i in card["supportedInterfaces"]} == {"JSONRPC", "HTTP+JSON"}
    assert card["securitySchemes"]["synq"]["httpAuthSecurityScheme"]["scheme"] == "Bearer"
    assert card["securityRequirements"] == [{"schemes": {"synq": {}}}]
    assert card["skills"][0]["id"] == "tck"
    assert card["capabilities"]["extensions"][-1]["params"] == {"address": "tck@globex.test"}


def test_the_signature_verifies_with_a2a_sdk_and_breaks_on_any_change() -> None:
    key = SigningKey.generate("s1")
    signed = cards.sign_card(published(), key, "http://relay:8")
    header = json.loads(b64url_decode(signed["signatures"][0]["protected"]))
    assert header == {
        "alg": "EdDSA",
        "kid": "s1",
        "jku": "http://relay:8/a2a/jwks.json",
        "typ": "JOSE",
    }
    jwk = PyJWK(key.public_key.jwk_dict(), algorithm="EdDSA")
    verify = create_signature_verifier(lambda _kid, _jku: jwk, ["EdDSA"])
    verify(parse_agent_card(json.loads(json.dumps(signed))))
    cards.verify_card(signed, {"s1": key.public_key})
    tampered = dict(signed, name="someone else")
    with pytest.raises(BadSignature):
        cards.verify_card(tampered, {"s1": key.public_key})
    with pytest.raises(BadSignature):
        cards.verify_card(signed, {"s1": SigningKey.generate("s1").public_key})
