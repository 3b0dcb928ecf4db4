"""Kept-alive connections to agents (adapters/keepalive.py), against a real loopback server: a
response left before its end is read to its end in the background and its connection serves
the next request; one that goes on too long or too far is cut and its connection closed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.keepalive import DrainingTransport, Drains, kept_alive, quick_ack


@dataclass
class Streamer:
    """A server whose ``/stream`` sends ``head``, waits for ``release``, then sends ``tail``
    and ends; it records the client port of every request (one port, one connection)."""

    tail: bytes = b"data: end\n\n"
    ports: list[int] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        async def stream(request: web.Request) -> web.StreamResponse:
            self.ports.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: answer\n\n")
            await self.release.wait()
            await response.write(self.tail)
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_get("/stream", stream)
        return app


@pytest.fixture
async def streamer() -> AsyncIterator[tuple[Streamer, str]]:
    s = Streamer()
    server = TestServer(s.app(), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield s, str(server.make_url("/stream"))
    finally:
        s.release.set()
        await server.close()


async def _first_event(client: httpx.AsyncClient, url: str) -> bytes:
    """Read up to the first event, then leave the stream, as the agent SDK clients do."""
    async with client.stream("GET", url) as response:
        async for chunk in response.aiter_bytes():
            return chunk
    return b""


async def test_a_stream_left_early_is_read_to_its_end_and_its_connection_kept(
    streamer: tuple[Streamer, str],
) -> None:
    server, url = streamer
    drains = Drains()
    async with httpx.AsyncClient(
        transport=DrainingTransport(keepalive_expiry=5.0, drains=drains)
    ) as client:
        for _ in range(3):
            server.release.clear()
            assert await _first_event(client, url) == b"data: answer\n\n"
            assert drains.running == 1  # the rest is being read
            server.release.set()
            await drains.settled()
    assert (drains.completed, drains.cut) == (3, 0)
    assert len(server.ports) == 3
    assert len(set(server.ports)) == 1  # one connection for the three


@pytest.mark.parametrize(
    ("drains", "tail"),
    [
        (Drains(max_bytes=100), b"x" * 1000),  # the rest is longer than the bound
        (Drains(seconds=0.05), b""),  # the rest does not come in time (never released)
    ],
    ids=["too-far", "too-long"],
)
async def test_a_stream_that_goes_on_is_cut_and_its_connection_closed(
    streamer: tuple[Streamer, str], drains: Drains, tail: bytes
) -> None:
    server, url = streamer
    server.tail = tail
    async with httpx.AsyncClient(
        transport=DrainingTransport(keepalive_expiry=5.0, drains=drains)
    ) as client:
        if tail:
            server.release.set()
        await _first_event(client, url)
        await drains.settled()
        server.release.set()
        await _first_event(client, url)
        await drains.settled()
    assert drains.cut >= 1
    assert len(set(server.ports)) == 2  # the cut connection was not reused


async def test_closing_the_client_stops_its_drains(streamer: tuple[Streamer, str]) -> None:
    _server, url = streamer
    drains = Drains()
    transport = DrainingTransport(keepalive_expiry=5.0, drains=drains)
    async with httpx.AsyncClient(transport=transport) as client:
        await _first_event(client, url)
        assert drains.running == 1
    assert drains.running == 0


async def test_an_httpx2_response_keeps_its_connection(streamer: tuple[Streamer, str]) -> None:
    """The MCP client's transport (httpx2) gets the same treatment through ``kept_alive``."""
    server, url = streamer
    drains = Drains()

    class Kept(httpx2.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx2.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            response = await self.inner.handle_async_request(request)
            kept_alive(response, drains)
            return response

        async def aclose(self) -> None:
            await drains.aclose()
            await self.inner.aclose()

    async with httpx2.AsyncClient(transport=Kept()) as client:
        for _ in range(2):
            server.release.clear()
            async with client.stream("GET", url) as response:
                async for _chunk in response.aiter_bytes():
                    break
            server.release.set()
            await drains.settled()
    assert drains.completed == 2
    assert len(set(server.ports)) == 1


def _quickack(sock: socket.socket) -> Any:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_quick_ack_sets_the_option_and_ignores_what_has_none() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
        quick_ack(sock)
        assert _quickack(sock) == 1
    quick_ack(None)
    closed = socket.socket()
    closed.close()
    quick_ack(closed)  # a socket that is gone: nothing raised
