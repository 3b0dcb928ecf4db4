"""The ASGI bridge: a real Starlette application served by the relay's aiohttp server."""

from __future__ import annotations

import asyncio
import contextlib
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
