"""The A2A adapter against real agents on loopback: an a2a-sdk 1.3 agent (the TCK scenario
agent) and agents that fail on purpose — a card that is no card or is huge, garbage answers,
silence, HTTP errors, refusals, an SSE stream cut off midway."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from aiohttp import web

from adapters.a2a import A2AAdapter, wire
from relay.cli import main
from relay.core import status as st
from relay.core.envelope import Envelope
from relay.core.errors import AgentUnreachable, AttemptFailed, BadAgentCard
from relay.delivery.adapters import Reply
from relay.store.base import AgentRecord
from tests.a2a_peers import (
    Peer,
    card_json,
    never,
    rpc_result,
    scripted_app,
    sdk_agent,
    sdk_app,
    sse,
    task_json,
)
from tests.fedenv import bound_socket
from tests.helpers import wait_until


class Replies:
    """A Replier that keeps what the agent answered."""

    def __init__(self) -> None:
        self.items: list[Reply] = []

    async def __call__(self, reply: Reply) -> str:
        self.items.append(reply)
        return f"r{len(self.items)}"

    def states(self) -> list[str]:
        out = []
        for r in self.items:
            body = r.body
            if "task" in body:
                out.append(body["task"]["status"]["state"])
            elif "statusUpdate" in body:
                out.append(body["statusUpdate"]["status"]["state"])
            elif "artifactUpdate" in body:
                out.append("artifact")
            else:
                out.append("message")
        return out


def envelope(
    text: str,
    *,
    kind: str = "message",
    id: str = "0195a3c0-5f1e-7c3a-9b2d-4e5f6a7b8c9d",
    a2a: bool = True,
) -> Envelope:
    if a2a and kind == "message":
        body: Any = {"messageId": text, "role": "ROLE_USER", "parts": [{"text": "hi"}]}
        content_type = wire.CONTENT_TYPE
    else:
        body, content_type = text, "text/plain"
    return Envelope.model_validate(
        {
            "v": 1,
            "id": id,
            "from": "alice@acme.test",
            "to": ["tck@globex.test"],
            "created": "2026-03-01T11:59:00.000Z",
            "expires": "2026-03-03T11:59:00.000Z",
            "kind": kind,
            "content_type": content_type,
            "body": body,
        }
    )


def record(url: str) -> AgentRecord:
    from datetime import UTC, datetime

    return AgentRecord(name="tck", kind="a2a", endpoint=url, created=datetime.now(UTC))


@pytest.fixture
async def adapter() -> AsyncIterator[A2AAdapter]:
    a = A2AAdapter(timeout=5.0, follow_seconds=10.0)
    try:
        yield a
    finally:
        await a.close()


async def serve(make: Any) -> Peer:
    peer = Peer(make)
    await peer.start()
    return peer


# --- checking a card at ``synq agent add`` ------------------------------------------------------


async def test_check_takes_the_agent_url_or_its_card_url(adapter: A2AAdapter) -> None:
    async with sdk_agent() as agent:
        assert await adapter.check(agent.url + "/") == agent.url
        assert await adapter.check(agent.url + "/.well-known/agent-card.json") == agent.url


def _card_answer(body: bytes, status: int = 200, chunked: bool = False) -> Any:
    def make(url: str) -> web.Application:
        app = web.Application()

        async def card(request: web.Request) -> web.StreamResponse:
            if not chunked:
                return web.Response(body=body, status=status, content_type="application/json")
            response = web.StreamResponse(status=status)
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(body), 8192):
                await response.write(body[start : start + 8192])
            return response

        app.router.add_get("/.well-known/agent-card.json", card)
        return app

    return make


@pytest.mark.parametrize(
    ("body", "status", "chunked", "error", "why"),
    [
        (b"<html>not found</html>", 404, False, BadAgentCard, "HTTP 404"),
        (b"<html>hello</html>", 200, False, BadAgentCard, "not JSON"),
        (b'{"hello": "world"}', 200, False, BadAgentCard, "no name"),
        (b'{"name": "' + b"x" * 200_000 + b'"}', 200, False, BadAgentCard, "larger than"),
        (b'{"name": "' + b"x" * 200_000 + b'"}', 200, True, BadAgentCard, "larger than"),
        (b"busy", 503, False, AgentUnreachable, "HTTP 503"),
    ],
)
async def test_a_card_that_is_no_a2a_card_or_is_huge_is_refused(
    adapter: A2AAdapter, body: bytes, status: int, chunked: bool, error: type[Exception], why: str
) -> None:
    peer = await serve(_card_answer(body, status, chunked))
    try:
        with pytest.raises(error, match=why):
            await adapter.check(peer.url)
    finally:
        await peer.stop()


async def test_an_agent_that_is_not_there_is_unreachable(adapter: A2AAdapter) -> None:
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(AgentUnreachable, match="cannot reach"):
        await adapter.check(f"http://127.0.0.1:{port}")


# --- delivering to an a2a-sdk agent -------------------------------------------------------------


async def test_streamed_events_come_back_in_order_with_the_clients_message_id(
    adapter: A2AAdapter,
) -> None:
    async with sdk_agent() as agent:
        replies = Replies()
        await adapter.deliver(record(agent.url), envelope("tck-stream-001-x"), replies)
    assert replies.states() == [
        "TASK_STATE_SUBMITTED",
        "TASK_STATE_WORKING",
        "artifact",
        "TASK_STATE_COMPLETED",
    ]
    assert {r.kind for r in replies.items} == {"task.update"}
    first = replies.items[0].body["task"]
    assert first["history"][0]["messageId"] == "tck-stream-001-x"


async def test_a_direct_message_answer_is_one_message_reply(adapter: A2AAdapter) -> None:
    async with sdk_agent() as agent:
        replies = Replies()
        await adapter.deliver(record(agent.url), envelope("tck-message-response-1"), replies)
    [reply] = replies.items
    assert reply.kind == "message"
    assert reply.body["parts"] == [{"text": "Direct message response"}]


async def test_deliveries_share_one_connection_and_a_restarted_agent_gets_a_new_one(
    adapter: A2AAdapter,
) -> None:
    """The SDK client leaves the stream at the agent's Message; the relay reads its end in the
    background (adapters/keepalive.py), so the next delivery reuses the connection. An agent
    that restarts closed it: the next delivery connects again and is not lost."""
    ports: list[int] = []

    def make(url: str) -> web.Application:
        app = sdk_app(url)

        async def seen(request: web.Request, _response: web.StreamResponse) -> None:
            if request.method == "POST":
                ports.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]

        app.on_response_prepare.append(seen)
        return app

    agent = await serve(make)
    try:
        for n in range(4):
            if n == 3:
                await agent.stop()
                await agent.start()
            replies = Replies()
            await adapter.deliver(record(agent.url), envelope(f"tck-message-response-{n}"), replies)
            assert replies.states() == ["message"]
            # The SDK's stream is closed as its generator is finalised, just after the answer.
            await wait_until(lambda done=n + 1: adapter.drains.completed == done)
    finally:
        await agent.stop()
    assert adapter.drains.completed == 4
    assert len(ports) == 4
    assert len(set(ports[:3])) == 1  # one connection for the first three
    assert ports[3] != ports[0]  # the restarted agent's new one


async def test_text_from_an_inbox_agent_gets_the_envelope_id_as_message_id(
    adapter: A2AAdapter,
) -> None:
    async with sdk_agent() as agent:
        replies = Replies()
        env = envelope("tck-complete-task please", a2a=False)
        await adapter.deliver(record(agent.url), env, replies)
        await adapter.deliver(record(agent.url), env, replies)  # delivered again after a crash
    tasks = [r.body["task"] for r in replies.items if "task" in r.body]
    ids = [t["history"][0]["messageId"] for t in tasks]
    assert ids == [env.id, env.id]  # the agent can tell it is the same message


async def test_cancel_signal_reaches_the_agents_task(adapter: A2AAdapter) -> None:
    async with sdk_agent() as agent:
        replies = Replies()
        await adapter.deliver(record(agent.url), envelope("tck-input-required-1"), replies)
        remote = replies.items[0].body["task"]["id"]
        assert replies.states()[-1] == "TASK_STATE_INPUT_REQUIRED"
        signal = envelope("", kind="signal", a2a=False).model_copy(
            update={"content_type": wire.CONTENT_TYPE, "body": wire.cancel_signal(remote)}
        )
        cancel = Replies()
        await adapter.deliver(record(agent.url), signal, cancel)
        assert cancel.states() == ["TASK_STATE_CANCELED"]
        # Again: the agent says the task cannot be canceled; that is an answer, not a failure.
        again = Replies()
        await adapter.deliver(record(agent.url), signal, again)
        assert again.items == []


async def test_each_delivery_speaks_as_the_card_fetched_last_says(adapter: A2AAdapter) -> None:
    """The client built for a card serves the deliveries after it, until the card is fetched
    anew: an agent that stops streaming is then called with SendMessage, not the old client's
    SendStreamingMessage."""
    streaming = True
    methods: list[str] = []

    async def rpc(request: web.Request, call: dict[str, Any]) -> web.StreamResponse:
        methods.append(call["method"])
        message = {"messageId": f"m{len(methods)}", "role": "ROLE_AGENT", "parts": [{"text": "ok"}]}
        if call["method"] == "SendStreamingMessage":
            return await sse(
                request, [{"jsonrpc": "2.0", "id": call["id"], "result": {"message": message}}]
            )
        return rpc_result(call["id"], {"message": message})

    peer = await serve(scripted_app(rpc, card=lambda url: card_json(url, streaming=streaming)))
    try:
        for i in range(2):
            replies = Replies()
            await adapter.deliver(record(peer.url), envelope(f"tck-{i}"), replies)
            assert replies.states() == ["message"]
        streaming = False
        await adapter.fetch_card(peer.url)  # as the card's time-to-live running out would
        replies = Replies()
        await adapter.deliver(record(peer.url), envelope("tck-2"), replies)
        assert replies.states() == ["message"]
    finally:
        await peer.stop()
    assert methods == ["SendStreamingMessage", "SendStreamingMessage", "SendMessage"]


# --- agents that fail ---------------------------------------------------------------------------


async def _deliver_to(
    adapter: A2AAdapter, rpc: Any, *, streaming: bool = True
) -> tuple[Replies, AttemptFailed | None]:
    peer = await serve(scripted_app(rpc, card=lambda url: card_json(url, streaming=streaming)))
    replies = Replies()
    failure = None
    try:
        await adapter.deliver(record(peer.url), envelope("tck-complete-task-1"), replies)
    except AttemptFailed as exc:
        failure = exc
    finally:
        await peer.stop()
    return replies, failure


async def test_garbage_answers_are_transient(adapter: A2AAdapter) -> None:
    async def garbage(request: web.Request, call: dict[str, Any]) -> web.StreamResponse:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    _, failure = await _deliver_to(adapter, garbage, streaming=False)
    assert failure is not None
    assert failure.status == st.REMOTE_PROTOCOL

    async def not_rpc(request: web.Request, call: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"hello": "world"})

    _, failure = await _deliver_to(adapter, not_rpc, streaming=False)
    assert failure is not None
    assert failure.status == st.REMOTE_PROTOCOL


async def test_server_errors_are_transient_and_refusals_permanent(adapter: A2AAdapter) -> None:
    async def down(request: web.Request, call: dict[str, Any]) -> web.StreamResponse:
        return web.Response(status=502, text="bad gateway")

    _, failure = await _deliver_to(adapter, down, streaming=False)
    assert failure is not None
    assert failure.status == st.NO_ANSWER

    async def refuse(request: web.Request, call: dict[str, Any]) -> web.StreamResponse:
        error = {"code": -32602, "message": "no such skill"}
        return web.json_response({"jsonrpc": "2.0", "id": call["id"], "error": error})

    _, failure = await _deliver_to(adapter, refuse, streaming=False)
    assert failure is not None
    assert failure.status.is_permanent
    assert "no such skill" in failure.reason


async def test_an_agent_that_never_answers_times_out() -> None:
    adapter = A2AAdapter(timeout=0.3, follow_seconds=5.0)
    try:

        async def silent(request: web.Request, call: dict[str, Any]) -> web.StreamResponse:
            await never()
            raise AssertionError

        for streaming in (False, True):
            _, failure = await _deliver_to(adapter, silent, streaming=streaming)
            assert failure is not None
            assert failure.status == st.NO_ANSWER
    finally:
        await adapter.close()


async def test_a_stream_cut_off_midway_is_followed_by_polling(adapter: A2AAdapter) -> None:
    polls: list[str] = []

    async def rpc(request: web.Request, call: dict[str, Any]) -> web.StreamResponse:
        if call["method"] == "SendStreamingMessage":
            working = {
                "jsonrpc": "2.0",
                "id": call["id"],
                "result": {"task": task_json("t1", "TASK_STATE_WORKING")},
            }
            # One event, then the connection drops without ending the chunked body.
            return await sse(request, [working], then=_drop(request))
        polls.append(call["method"])
        state = "TASK_STATE_WORKING" if len(polls) < 3 else "TASK_STATE_COMPLETED"
        return rpc_result(call["id"], task_json("t1", state, "done" if len(polls) >= 3 else None))

    replies, failure = await _deliver_to(adapter, rpc)
    assert failure is None  # not redelivered: the agent has the message
    assert replies.states() == ["TASK_STATE_WORKING", "TASK_STATE_COMPLETED"]
    assert set(polls) == {"GetTask"}


def _drop(request: web.Request) -> Any:
    async def drop() -> None:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0)

    return drop


async def test_a_non_streaming_agent_is_polled_until_its_task_settles(adapter: A2AAdapter) -> None:
    calls: list[str] = []

    async def rpc(request: web.Request, call: dict[str, Any]) -> web.StreamResponse:
        calls.append(call["method"])
        if call["method"] == "SendMessage":
            assert call["params"]["configuration"]["returnImmediately"] is True
            return rpc_result(call["id"], {"task": task_json("t2", "TASK_STATE_SUBMITTED")})
        state = "TASK_STATE_WORKING" if len(calls) < 4 else "TASK_STATE_INPUT_REQUIRED"
        return rpc_result(call["id"], task_json("t2", state))

    replies, failure = await _deliver_to(adapter, rpc, streaming=False)
    assert failure is None
    # Unchanged snapshots are not sent again.
    assert replies.states() == [
        "TASK_STATE_SUBMITTED",
        "TASK_STATE_WORKING",
        "TASK_STATE_INPUT_REQUIRED",
    ]
    assert json.loads(json.dumps(replies.items[-1].body))["task"]["id"] == "t2"


# --- ``synq agent add NAME --a2a URL`` ----------------------------------------------------------


class _CardHandler(BaseHTTPRequestHandler):
    bodies: ClassVar[dict[str, bytes]] = {
        "/html/.well-known/agent-card.json": b"<html>welcome</html>",
        "/huge/.well-known/agent-card.json": b'{"name": "' + b"x" * 300_000 + b'"}',
    }

    def do_GET(self) -> None:
        body = self.bodies.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.mark.parametrize(
    ("path", "why"), [("/html", "not JSON"), ("/huge", "larger than"), ("/none", "HTTP 404")]
)
def test_agent_add_refuses_what_is_no_a2a_agent_in_one_line(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], path: str, why: str
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CardHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert main(["init", "--domain", "acme.test", "--dir", str(tmp_path)]) == 0
        capsys.readouterr()
        url = f"http://127.0.0.1:{server.server_address[1]}{path}"
        code = main(["--config", str(tmp_path / "synq.toml"), "agent", "add", "bot", "--a2a", url])
        err = capsys.readouterr().err
        assert code == 1
        assert why in err
        assert len(err.strip().splitlines()) == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
