"""Hosting ASGI applications (the a2a-sdk and mcp SDKs' Starlette glue) inside the relay's
aiohttp server, on the same port and event loop: one web stack, not two.

ASGI (asgiref spec, HTTP connection scope 2.x and lifespan 2.0) is small; the part bridges get
wrong is disconnects. An SSE handler loops ``await receive()`` to learn that its client left;
a bridge that never sends ``http.disconnect`` (or answers ``receive()`` at once with nothing)
leaves that loop spinning at 100% CPU. Here:

* ``receive()`` yields the request body in chunks, then *blocks* until the client disconnects
  or the response is complete, and only then returns ``{"type": "http.disconnect"}``;
* the aiohttp server must run with ``handler_cancellation=True`` (``synq serve`` does): when
  the client hangs up, aiohttp cancels the handler; the bridge turns that into
  ``http.disconnect`` for the application, gives it ``DISCONNECT_GRACE`` seconds to finish,
  then cancels it — no task outlives its request;
* a ``send()`` that finds the connection closed (the client read what it wanted and hung up:
  SDK clients close an SSE stream as soon as its last event arrived) is dropped, and
  ``receive()`` answers ``http.disconnect`` from then on. The scope says ASGI spec 2.3, whose
  servers do not raise there (raising, from 2.4, would be an error in the SDKs' stream tasks
  for what is the ordinary end of a stream: a logged traceback and a 500 per call). Once the
  application has ended, ``handle()`` raises :class:`ClientGone`, as if aiohttp had noticed
  the disconnect first: the response was not written in full.

Lifespan: ``AsgiHost.startup()`` runs the application's lifespan protocol (Starlette apps start
their background managers there) and ``shutdown()`` ends it; the relay ties both to the aiohttp
application's ``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping
from typing import Any, Final

from aiohttp import web

log = logging.getLogger("synq.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]

#: Body bytes handed to the application per ``http.request`` message.
CHUNK_SIZE: Final = 64 * 1024
#: How long an application may take to wind down after its client disconnected.
DISCONNECT_GRACE: Final = 5.0
#: How long lifespan startup and shutdown may take.
LIFESPAN_TIMEOUT: Final = 30.0


class ClientGone(asyncio.CancelledError):
    """Raised by :meth:`AsgiHost.handle` when the client hung up before the response was
    written in full (a send found the connection closed). A cancellation, as aiohttp's own when
    it notices a disconnect first: the server drops the request quietly, the access log says
    499, and a caller that acts only on a complete answer (the A2A face freeing a retry key)
    does not act."""


class _Exchange:
    """One request/response between aiohttp and the ASGI application."""

    def __init__(self, request: web.Request, body: bytes | None = None) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self.body = body
        self.body_done = False
        self.finished = asyncio.Event()
        self.disconnected = asyncio.Event()
        #: Part of the response was dropped: the client hung up before it was written in full.
        self.cut = False

    async def receive(self) -> Message:
        if not self.body_done and self.body is not None:
            # Read by the caller already (with its own size limit and deadline).
            self.body_done = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        if not self.body_done:
            chunk = await self.request.content.read(CHUNK_SIZE)
            more = not self.request.content.at_eof()
            if not more:
                self.body_done = True
            return {"type": "http.request", "body": chunk, "more_body": more}
        # The body is consumed: nothing more will arrive until the client leaves or the
        # response ends. Block until then — never return early (the 100%-CPU trap).
        waiters = [
            asyncio.create_task(self.disconnected.wait()),
            asyncio.create_task(self.finished.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.response is not None:
                raise RuntimeError("http.response.start sent twice")
            response = web.StreamResponse(status=int(message["status"]))
            for raw_name, raw_value in message.get("headers", []):
                name = raw_name.decode("latin-1")
                value = raw_value.decode("latin-1")
                if name.lower() == "content-length":
                    response.content_length = int(value)
                else:
                    response.headers.add(name, value)
            self.response = response
            await response.prepare(self.request)
        elif kind == "http.response.body":
            if self.response is None:
                raise RuntimeError("http.response.body before http.response.start")
            if self.disconnected.is_set():
                self.cut = True
                return
            body = message.get("body", b"")
            try:
                if body:
                    await self.response.write(body)
                if not message.get("more_body", False):
                    await self.response.write_eof()
                    self.finished.set()
            except ConnectionResetError:
                # The client is gone; the application learns it from receive().
                self.cut = True
                self.disconnected.set()
        # Other messages (extensions such as http.response.trailers) are not offered in the
        # scope, so a conforming application does not send them.


def _scope(request: web.Request, state: Mapping[str, Any] | None) -> Scope:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    sock = transport.get_extra_info("sockname") if transport is not None else None
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.raw_path.split("?", 1)[0].encode("latin-1"),
        "query_string": request.query_string.encode("latin-1"),
        "root_path": "",
        # ASGI wants lower-cased header names as bytes, in order, repeats kept.
        "headers": [(name.lower(), value) for name, value in request.raw_headers],
        "client": (peer[0], peer[1]) if peer else None,
        "server": (sock[0], sock[1]) if sock else None,
        "state": dict(state or {}),
    }


class AsgiHost:
    """Serves one ASGI application from aiohttp handlers (``await host.handle(request)``)."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.name = name
        self._lifespan: asyncio.Task[None] | None = None
        self._lifespan_queue: asyncio.Queue[Message] = asyncio.Queue()
        self._lifespan_events: asyncio.Queue[Message] = asyncio.Queue()
        self.active = 0

    async def handle(
        self,
        request: web.Request,
        *,
        state: Mapping[str, Any] | None = None,
        body: bytes | None = None,
    ) -> web.StreamResponse:
        """Run the application for ``request``. ``state`` becomes the ASGI scope's ``state``
        (what the relay already knows of the request, such as the authenticated agent);
        ``body``, when the caller has read the body itself (with a size limit and deadline),
        is handed over instead of the request's stream."""
        exchange = _Exchange(request, body)
        task = asyncio.create_task(
            self.app(_scope(request, state), exchange.receive, exchange.send)
        )
        self.active += 1
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # The client hung up (aiohttp cancelled this handler): tell the application.
            exchange.disconnected.set()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                async with asyncio.timeout(DISCONNECT_GRACE):
                    await asyncio.shield(task)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise
        finally:
            exchange.finished.set()
            self.active -= 1
        if exchange.cut:
            raise ClientGone(f"{self.name}: the client hung up before the response was written")
        if exchange.response is None:
            raise RuntimeError(f"{self.name}: the application sent no response")
        return exchange.response

    async def startup(self) -> None:
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": {},
        }

        async def receive() -> Message:
            return await self._lifespan_queue.get()

        async def send(message: Message) -> None:
            await self._lifespan_events.put(message)

        self._lifespan = asyncio.create_task(self.app(scope, receive, send))
        await self._lifespan_queue.put({"type": "lifespan.startup"})
        async with asyncio.timeout(LIFESPAN_TIMEOUT):
            message = await self._lifespan_events.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(
                f"{self.name}: lifespan startup failed: {message.get('message', '')}"
            )

    async def shutdown(self) -> None:
        if self._lifespan is None:
            return
        await self._lifespan_queue.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LIFESPAN_TIMEOUT):
                await self._lifespan_events.get()
        self._lifespan.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._lifespan
        self._lifespan = None
