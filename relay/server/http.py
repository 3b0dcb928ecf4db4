"""The HTTP server's own limits, set deliberately rather than left at aiohttp's defaults.

Each limit is a number a client can push against before any Synq code runs, so each is named
here with the attack it stops, beside aiohttp's default and nginx's for comparison. They are
applied in two places: the application (``client_max_size``, the body read deadline, via
:data:`HTTP_LIMITS`) and the server that runs it (:meth:`HttpLimits.server_kwargs`, for
``web.AppRunner`` or a test server).

Slow clients. A connection that trickles its request keeps a socket, a parser and (once the
headers are in) a handler busy for as long as it likes: the slow-loris attack. aiohttp closes a
connection that has not completed a request within ``keepalive_timeout`` — counted from
connection start and from the end of each response, not reset by bytes that arrive — which
makes it the header deadline too; it has no deadline for a body, so :func:`read_body` adds one
(``body_read_timeout``) and answers ``408``. ``lingering_time`` bounds how long the server keeps
draining an unread body after answering, before it closes the connection.

One source address (SPEC.md §10.3). The limits above bound one request; :class:`SourceLimits`
(relay.core.ratelimit) bound what one address may do with many: :func:`source_limits`, a
middleware, refuses a request ``429`` with ``Retry-After`` past the address's request rate or its
requests in flight; :class:`GatedSite`, the listener ``synq serve`` runs, closes a connection at
accept when its address already holds its share of connections. aiohttp has no hook between
accept and the HTTP protocol, so the site hands the event loop a protocol of its own that
counts the connection and then delegates to aiohttp's (an ``asyncio.Protocol``, whose five
methods are all the transport calls).

Every request (SPEC.md §14.3, §14.4): :func:`trace_and_log`, the outermost middleware, runs the
handler inside a server span that continues the request's ``traceparent`` and writes one
access-log line when the answer has gone.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode

from relay import telemetry
from relay.core import errors as E
from relay.core.limits import MAX_TXN_BYTES
from relay.core.ratelimit import SourceLimits
from relay.server.errors import Handler, error_response
from relay.server.keys import RELAY

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "DEFAULT_HTTP_LIMITS",
    "HTTP_LIMITS",
    "GatedSite",
    "HttpLimits",
    "make_runner",
    "read_body",
    "source_limits",
    "trace_and_log",
]

log = logging.getLogger("synq.server")
#: One line per HTTP request (SPEC.md §14.4).
access_log = logging.getLogger("synq.access")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    #: Largest request body aiohttp reads (it answers 413 past it; default 1 MiB). The
    #: federation transaction is the largest body any route takes; each route then applies its
    #: own smaller limit. Stops memory exhaustion by one huge body.
    client_max_size: int = MAX_TXN_BYTES + 64 * 1024
    #: Longest request line (method, path, query, version). Our longest URL carries an address
    #: (at most 318 characters) or a transaction id (128). aiohttp and nginx: 8190 / 8 KiB.
    #: Stops URLs that cost memory and log space to no purpose.
    max_line_size: int = 4096
    #: Longest single header field. A Synq bearer token is ~50 characters, a W3C traceparent
    #: 55, an OAuth JWT an A2A client might present rarely 2 KiB. aiohttp and nginx: 8190 /
    #: 8 KiB. Stops one huge header from pinning memory before the handler runs.
    max_field_size: int = 4096
    #: Header fields in one request. Our clients send fewer than 15; aiohttp allows 128, nginx
    #: caps the header block at 32 KiB. Stops hash-flooding and memory use by header floods.
    max_headers: int = 64
    #: Idle time allowed on a connection without a complete request: between requests, and —
    #: since aiohttp starts the timer at connect — for the request line and headers. aiohttp:
    #: 3630 s; nginx: keepalive_timeout 75 s, client_header_timeout 60 s. Stops slow-loris on
    #: headers and idle connections holding file descriptors.
    keepalive_timeout: float = 30.0
    #: How long the whole request body may take to arrive once the handler asks for it. A
    #: 4 MiB transaction in 30 s needs ~140 KB/s. aiohttp: none; nginx client_body_timeout
    #: 60 s (between reads). Stops slow-loris on bodies: a client dribbling a byte at a time.
    body_read_timeout: float = 30.0
    #: How long an unread body is drained after the answer before the connection is closed
    #: (so the client still sees the answer; RFC 9112 §9.6). aiohttp: 10 s. Stops a refused
    #: client from holding the connection by continuing to dribble.
    lingering_time: float = 2.0

    def server_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``web.AppRunner`` / ``web.Server`` / ``TestServer``."""
        return {
            "max_line_size": self.max_line_size,
            "max_field_size": self.max_field_size,
            "max_headers": self.max_headers,
            "keepalive_timeout": self.keepalive_timeout,
            "lingering_time": self.lingering_time,
        }


DEFAULT_HTTP_LIMITS: Final = HttpLimits()

#: The access log's status for a request whose client hung up before its answer was complete.
CLIENT_CLOSED_REQUEST: Final = 499

HTTP_LIMITS: web.AppKey[HttpLimits] = web.AppKey("http_limits", HttpLimits)


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner ``synq serve`` uses: the app's limits, and handler cancellation, so a client
    that hangs up mid long-poll or mid SSE stream frees its handler at once."""
    limits = app.get(HTTP_LIMITS, DEFAULT_HTTP_LIMITS)
    return web.AppRunner(app, handler_cancellation=True, access_log=None, **limits.server_kwargs())


def query_number(request: web.Request, name: str, default: float, lo: float, hi: float) -> float:
    """A numeric query parameter in ``[lo, hi]``, or ``default`` when absent; anything else is
    ``400 malformed_request`` naming the parameter (SPEC.md §6.9)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise E.MalformedRequest(f"{name} must be a number") from None
    if not lo <= value <= hi:
        raise E.MalformedRequest(f"{name} must be between {lo:g} and {hi:g}")
    return value


async def read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The whole request body, at most ``limit`` bytes, within the body read deadline.

    Raises PayloadTooLarge (413) — before reading anything when ``Content-Length`` says so —
    or RequestTimeout (408) when the body does not arrive in time.
    """
    too_large = E.PayloadTooLarge(f"{what} is larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    deadline = request.app.get(HTTP_LIMITS, DEFAULT_HTTP_LIMITS).body_read_timeout
    try:
        async with asyncio.timeout(deadline):
            body = await request.read()
    except TimeoutError:
        raise E.RequestTimeout(f"the {what} did not arrive within {deadline:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    if len(body) > limit:
        raise too_large
    return body


# --- tracing and the access log ----------------------------------------------------------------


def _route(request: web.Request) -> str:
    """The route's pattern (``/synq/v1/messages/{id}``): a span name of bounded cardinality,
    which names no message id, agent or token."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def trace_and_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request as a server span, child of its ``traceparent`` header (W3C Trace Context),
    and one access-log line: method, path (never the query string, which may carry a secret),
    status, bytes sent, duration, client address. Headers and bodies are never logged."""
    tracer = request.app[RELAY].telemetry.tracer
    started = time.perf_counter()
    status = 500
    sent = 0
    with tracer.start_as_current_span(
        f"{request.method} {_route(request)}",
        context=telemetry.extract(request.headers),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": request.method, "url.path": request.path},
    ) as span:
        try:
            response = await handler(request)
            status = response.status
            sent = response.body_length
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            # The client hung up before the answer was complete (aiohttp cancels the handler):
            # not a failure of the relay. Logged as 499, "client closed request", the status
            # nginx gave this case and log tools know; the span is not marked an error.
            status = CLIENT_CLOSED_REQUEST
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d",
                    request.method,
                    request.path,
                    status,
                    extra={
                        "fields": {
                            "method": request.method,
                            "path": request.path,
                            "status": status,
                            "bytes": sent,
                            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                            "remote": request.remote,
                        }
                    },
                )


# --- per source address ---------------------------------------------------------------------


@web.middleware
async def source_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests in flight and requests per second of the client's address (SPEC.md §10.3):
    past either, ``429 rate_limited`` with ``Retry-After``, before any route runs. The first
    middleware, so a refusal costs nothing more."""
    relay = request.app[RELAY]
    sources = relay.sources
    key = sources.key(request.remote)
    if key is None:
        return await handler(request)
    if not sources.in_flight.enter(key):
        limit = sources.in_flight.limit
        refusal = E.RateLimited(
            f"more than {limit} requests from this address at once", retry_after=1.0
        )
    else:
        wait = sources.requests.take(key, relay.clock.monotonic())
        if wait == 0.0:
            try:
                return await handler(request)
            finally:
                sources.in_flight.leave(key)
        sources.in_flight.leave(key)
        refusal = E.RateLimited(
            f"too many requests from this address; retry in {wait:.0f} s", retry_after=wait
        )
    relay.metrics.rejected.labels(code=refusal.code).inc()
    return error_response(refusal)


class _GatedProtocol(asyncio.Protocol):
    """One accepted connection: counted against its source address, then served by aiohttp's
    protocol — or, when the address already holds its share, closed before a byte is read."""

    __slots__ = ("_factory", "_inner", "_key", "_sources")

    def __init__(self, factory: web.Server, sources: SourceLimits) -> None:
        self._factory = factory
        self._sources = sources
        self._inner: asyncio.Protocol | None = None
        self._key: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        key = self._sources.key(peer[0] if isinstance(peer, tuple) and peer else None)
        if key is not None:
            if not self._sources.connections.enter(key):
                log.debug("refused a connection from %s: over its connection limit", key)
                transport.close()
                return
            self._key = key
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._key is not None:
            self._sources.connections.leave(self._key)
            self._key = None
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GatedSite(web.BaseSite):
    """A TCP listener, as ``web.TCPSite`` (or ``web.SockSite`` given ``sock``, a socket already
    bound and listening), that holds each source address to its share of open connections
    (``SourceLimits.connections``, SPEC.md §10.3)."""

    __slots__ = ("_bound", "_host", "_port", "_sock", "_sources")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        sources: SourceLimits,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._sources = sources
        self._sock = sock
        self._bound = sock.getsockname()[1] if sock is not None else port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._bound}"

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose, for port 0)."""
        return self._bound

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        sources = self._sources
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            listener = await loop.create_server(
                lambda: _GatedProtocol(server, sources), sock=self._sock, backlog=self._backlog
            )
        else:
            listener = await loop.create_server(
                lambda: _GatedProtocol(server, sources),
                self._host,
                self._port,
                backlog=self._backlog,
                reuse_address=True,
            )
        self._server = listener
        if listener.sockets:
            self._bound = listener.sockets[0].getsockname()[1]
