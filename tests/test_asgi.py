"""The ASGI bridge: a real Starlette application served by the relay's aiohttp server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from relay.server.asgi import AsgiHost
from tests.helpers import wait_until


class Probe:
    def __init__(self) -> None:
        self.started = False
        self.stopped = False
        self.stream_receives = 0
        self.disconnected = asyncio.Event()
        self.streaming = asyncio.Event()


def make_app(probe: Probe) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(
            {"echo": body, "path": request.url.path, "q": request.query_params.get("q")},
            status_code=201,
        )

    async def events(request: Request) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            probe.streaming.set()
            # Like sse-starlette: watch receive() for the client leaving.
            while True:
                message = await request.receive()
                probe.stream_receives += 1
                if message["type"] == "http.disconnect":
                    probe.disconnected.set()
                    return

        return StreamingResponse(gen(), media_type="text/event-stream")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        probe.started = True
        yield
        probe.stopped = True

    return Starlette(
        routes=[Route("/x/echo", echo, methods=["POST"]), Route("/x/events", events)],
        lifespan=lifespan,
    )


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestServer, Probe, AsgiHost]]:
    probe = Probe()
    host = AsgiHost(make_app(probe), "test")
    app = web.Application()
    app.router.add_route("*", "/x/{tail:.*}", host.handle)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await host.startup()
        yield
        await host.shutdown()

    app.cleanup_ctx.append(lifecycle)
    server = TestServer(app, handler_cancellation=True)
    await server.start_server()
    try:
        yield server, probe, host
    finally:
        await server.close()
    assert probe.stopped


async def test_request_and_response_cross_the_bridge(served: Any) -> None:
    server, probe, _ = served
    assert probe.started
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.make_url("/x/echo?q=1"), json={"a": [1, 2]}) as resp,
    ):
        assert resp.status == 201
        assert await resp.json() == {"echo": {"a": [1, 2]}, "path": "/x/echo", "q": "1"}


async def test_sse_client_disconnect_is_delivered_and_nothing_spins(served: Any) -> None:
    """The trap an ASGI bridge must avoid: an SSE handler polling receive() for a disconnect
    that never comes spins the CPU. Here receive() blocks, then says http.disconnect."""
    server, probe, host = served
    async with aiohttp.ClientSession() as http:
        resp = await http.get(server.make_url("/x/events"))
        assert await resp.content.readline() == b"data: first\n"
        await asyncio.wait_for(probe.streaming.wait(), 5)
        # While the client is connected, receive() blocks: the handler called it once.
        await asyncio.sleep(0)
        assert probe.stream_receives <= 1
        resp.close()
    await asyncio.wait_for(probe.disconnected.wait(), 5)
    assert probe.stream_receives == 1
    await wait_until(lambda: host.active == 0)


async def test_a_send_after_the_client_hung_up_is_dropped_not_raised() -> None:
    """SDK clients close an SSE stream as soon as its last event arrived, while the
    application still writes the stream's end: that send finds the connection closed. The
    bridge drops it (ASGI 2.3) and answers http.disconnect; the application ends normally, so
    no traceback is logged for the ordinary end of a stream, and the request ends as one
    whose client left."""
    client_gone = asyncio.Event()
    outcome: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b"data: last\n\n", "more_body": True})
        await client_gone.wait()
        try:
            await send({"type": "http.response.body", "body": b"data: more\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception as exc:
            outcome["error"] = exc
        outcome["then"] = (await receive())["type"]

    host = AsgiHost(app, "test")
    ended: list[BaseException | None] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            response = await host.handle(request)
        except BaseException as exc:
            ended.append(exc)
            raise
        ended.append(None)
        return response

    web_app = web.Application()
    web_app.router.add_get("/s", handle)
    server = TestServer(web_app, handler_cancellation=True)
    await server.start_server()
    loop = asyncio.get_running_loop()
    try:
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, (server.host, server.port))
            await loop.sock_sendall(sock, b"GET /s HTTP/1.1\r\nHost: test\r\n\r\n")
            seen = b""
            while b"data: last" not in seen:
                seen += await loop.sock_recv(sock, 4096)
            # Hang up at once (a reset, as a client killed or timing out does), not by the
            # polite end of the stream.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Closed, and the application woken in the same step: its sends run before the
        # server has read the end of the connection (the race SDK clients win every time).
        client_gone.set()
        await wait_until(lambda: "then" in outcome)
        await wait_until(lambda: bool(ended))
    finally:
        await server.close()
    assert outcome == {"then": "http.disconnect"}
    # Not written in full: the request ends as a cancellation (499), not as an answer.
    [end] = ended
    assert isinstance(end, asyncio.CancelledError)
