"""Kept-alive connections to the agents behind adapters: a response its reader left before its
end is read to the end in the background, so that its connection goes back to the pool.

Both agent SDK clients stop reading a streamed answer as soon as it holds what they wait for:
the a2a-sdk client returns after a ``Message`` event (A2A 1.0 §3.1.2), the MCP client after the
JSON-RPC response on a POST's SSE stream (MCP 2025-11-25 "Transports" §Sending Messages to the
Server). The server ends that stream a moment later, but HTTP/1.1 can reuse a connection only
once the response on it is complete (RFC 9112 §9.3), so closing it early closed the connection,
and every delivery paid a new TCP connection, and the agent a new accept. Here the rest is read
by a background task, at most ``DRAIN_MAX_BYTES`` for at most ``DRAIN_SECONDS``: a response
that ends within those is complete and its connection is kept; past either the connection is
closed, as before. The bytes read are discarded: the reader had left them.

A drain holds its connection while it runs; a request meanwhile takes another one from the
pool (or opens one), so nothing waits for a drain.

A kept connection needs one more thing. Once a connection has carried an exchange, the
relay's TCP acknowledges what it receives late (delayed ACK, RFC 1122 §4.2.3.2: up to 40 ms
on Linux), and a server that writes its response headers and its first event separately and
holds the second small write until the first is acknowledged (RFC 896) then sends the answer
40 ms late — measured with uvicorn and the a2a-sdk and MCP servers: 2 ms on a new connection,
42 ms on a kept one. So the relay acknowledges at once on these connections (``TCP_QUICKACK``,
Linux; Linux clears it as it pleases, so it is set again after each part of the response).
Elsewhere the option does not exist and nothing is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

import httpx
import httpx2

__all__ = [
    "DRAIN_MAX_BYTES",
    "DRAIN_SECONDS",
    "DrainingTransport",
    "Drains",
    "kept_alive",
    "quick_ack",
]

#: The most bytes read from the rest of a response left early. What follows an answer on a
#: stream is its end, or a final event or two; more than this is a stream that goes on (a
#: long task's updates nobody follows), and its connection is closed rather than read for.
DRAIN_MAX_BYTES: Final = 64 * 1024
#: The longest wait for the end of a response left early. An a2a-sdk agent ends its stream
#: some 40 ms after the answer; a server that keeps it open longer costs its connection.
DRAIN_SECONDS: Final = 1.0


#: Linux's TCP_QUICKACK (tcp(7)); None where the platform has none.
_QUICKACK: Final[int | None] = getattr(socket, "TCP_QUICKACK", None)


class _Socket(Protocol):
    """What is set on a connection's socket (asyncio hands out a ``TransportSocket``)."""

    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...


def _socket_of(extensions: Mapping[str, Any]) -> _Socket | None:
    """The TCP socket under an httpcore response (its ``network_stream`` extension)."""
    stream = extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    return sock if callable(getattr(sock, "setsockopt", None)) else None


def quick_ack(sock: _Socket | None) -> None:
    """Acknowledge what ``sock`` received at once, and what it receives next (see the module
    docstring). Nothing for a socket that is gone or a platform without the option."""
    if sock is None or _QUICKACK is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


class Drains:
    """The background reads of responses left early, for one HTTP client; :meth:`aclose` stops
    them (the client's transport calls it before closing its connections)."""

    def __init__(self, max_bytes: int = DRAIN_MAX_BYTES, seconds: float = DRAIN_SECONDS) -> None:
        self.max_bytes = max_bytes
        self.seconds = seconds
        #: Responses read to their end (their connections kept), and those cut off.
        self.completed = 0
        self.cut = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, rest: AsyncIterator[bytes], close: Callable[[], Awaitable[None]]) -> None:
        """Read ``rest`` to its end in the background, then ``close`` the response."""
        task = asyncio.get_running_loop().create_task(self._drain(rest, close))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(
        self, rest: AsyncIterator[bytes], close: Callable[[], Awaitable[None]]
    ) -> None:
        seen = 0
        complete = False
        try:
            async with asyncio.timeout(self.seconds):
                async for chunk in rest:
                    seen += len(chunk)
                    if seen > self.max_bytes:
                        break
                else:
                    complete = True
        except Exception:  # noqa: S110 — a failed read only means the connection is not kept
            pass
        finally:
            # Closing a complete response returns its connection to the pool; closing one that
            # is not closes the connection (httpcore's rule), as the reader's own close did.
            with contextlib.suppress(Exception):
                await close()
        if complete:
            self.completed += 1
        else:
            self.cut += 1

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def settled(self) -> None:
        """Wait for the drains running now to end."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class _Draining:
    """A response body that, closed before its end, is read to its end by ``drains``."""

    def __init__(
        self,
        inner: httpx.AsyncByteStream | httpx2.AsyncByteStream,
        drains: Drains,
        sock: _Socket | None,
    ) -> None:
        self.inner = inner
        self.drains = drains
        self.sock = sock
        self._rest: AsyncIterator[bytes] | None = None
        self._finished = False  # read to its end, or failed: nothing to drain
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # One iterator of the inner stream for the reader and the drain alike: the drain goes
        # on where the reader stopped.
        if self._rest is None:
            self._rest = aiter(self.inner)
        while True:
            try:
                chunk = await anext(self._rest)
            except StopAsyncIteration:
                self._finished = True
                return
            except BaseException:
                self._finished = True
                raise
            quick_ack(self.sock)
            yield chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._finished or self._rest is None:
            # Read to its end (the connection is reusable as it is), failed, or never started
            # (a response closed unread is left to the inner stream's own rule).
            await self.inner.aclose()
            return
        self.drains.start(self._rest, self.inner.aclose)


class _DrainingStream(_Draining, httpx.AsyncByteStream):
    pass


class _DrainingStream2(_Draining, httpx2.AsyncByteStream):
    pass


def kept_alive(response: httpx2.Response, drains: Drains) -> None:
    """Make ``response`` (an httpx2 response, as the MCP client's transport has it) keep its
    connection: acknowledged at once, read to its end by ``drains`` when closed early."""
    sock = _socket_of(response.extensions)
    quick_ack(sock)
    assert isinstance(response.stream, httpx2.AsyncByteStream)
    response.stream = _DrainingStream2(response.stream, drains, sock)


class DrainingTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose responses closed early are read to their end in the background
    (see the module docstring). ``keepalive_expiry``: how long an idle connection is kept."""

    def __init__(self, *, keepalive_expiry: float, drains: Drains | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(keepalive_expiry=keepalive_expiry)
        )
        self.drains = drains or Drains()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        sock = _socket_of(response.extensions)
        quick_ack(sock)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _DrainingStream(response.stream, self.drains, sock)
        return response

    async def aclose(self) -> None:
        await self.drains.aclose()
        await self.inner.aclose()
