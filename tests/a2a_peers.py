"""A2A peers for the A2A bridge tests: real a2a-sdk agents on loopback port 0, plus agents that
misbehave on purpose (garbage, silence, a stream cut off midway).

The SDK agents run inside an aiohttp server through the relay's own ASGI bridge (AsgiHost),
the same way the relay hosts the SDK's routes; the misbehaving ones are plain aiohttp
handlers, since no SDK would produce their faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from interop.a2a import tck_agent
from relay.server.asgi import AsgiHost
from tests.fedenv import bound_socket


@dataclass
class Peer:
    """A server on a fixed loopback port that can be stopped and started again (an agent that
    goes down and comes back at the same URL)."""

    make: Callable[[str], web.Application]
    port: int = 0
    server: TestServer | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        if not self.port:
            sock = bound_socket()
            self.port = sock.getsockname()[1]
            sock.close()
        self.server = TestServer(self.make(self.url), port=self.port, handler_cancellation=True)
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None


def sdk_app(url: str) -> web.Application:
    """The TCK scenario agent (a2a-sdk 1.3) served by aiohttp through AsgiHost."""
    host = AsgiHost(tck_agent.build_app(url), "agent")
    app = web.Application()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await host.handle(request)

    async def lifespan(_app: web.Application) -> AsyncIterator[None]:
        await host.startup()
        yield
        await host.shutdown()

    app.router.add_route("*", "/{tail:.*}", handle)
    app.cleanup_ctx.append(lifespan)
    return app


@contextlib.asynccontextmanager
async def sdk_agent() -> AsyncIterator[Peer]:
    peer = Peer(sdk_app)
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


def card_json(url: str, *, streaming: bool = True) -> dict[str, Any]:
    return {
        "name": "faulty",
        "description": "an agent that misbehaves",
        "version": "1",
        "supportedInterfaces": [
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
        ],
        "capabilities": {"streaming": streaming},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [],
    }


Rpc = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


def scripted_app(
    rpc: Rpc, *, card: Callable[[str], Any] | None = None
) -> Callable[[str], web.Application]:
    """An aiohttp 'agent' with a valid card whose JSON-RPC endpoint runs ``rpc``."""

    def make(url: str) -> web.Application:
        app = web.Application()

        async def get_card(_request: web.Request) -> web.StreamResponse:
            body = card(url) if card is not None else card_json(url)
            if isinstance(body, web.StreamResponse):
                return body
            return web.json_response(body)

        async def post(request: web.Request) -> web.StreamResponse:
            return await rpc(request, await request.json())

        app.router.add_get("/.well-known/agent-card.json", get_card)
        app.router.add_post("/", post)
        return app

    return make


def task_json(task_id: str, state: str, text: str | None = None) -> dict[str, Any]:
    task: dict[str, Any] = {"id": task_id, "contextId": "ctx", "status": {"state": state}}
    if text is not None:
        task["status"]["message"] = {
            "messageId": f"m-{task_id}-{state}",
            "role": "ROLE_AGENT",
            "parts": [{"text": text}],
        }
    return task


def rpc_result(request_id: Any, result: dict[str, Any]) -> web.Response:
    return web.json_response({"jsonrpc": "2.0", "id": request_id, "result": result})


async def sse(
    request: web.Request,
    events: list[dict[str, Any]],
    *,
    then: Callable[[], Awaitable[None]] | None = None,
) -> web.StreamResponse:
    """An SSE answer with the given JSON-RPC results, optionally followed by ``then``."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for data in events:
        await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")
    if then is not None:
        await then()
    return response


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Yield to the event loop until ``check()`` holds (no wall-clock sleep): for conditions
    reached through real sockets and background loops, which offer no event to await."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0)


async def never() -> None:
    await asyncio.Event().wait()
