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
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from relay.core import errors as E
from relay.core.limits import MAX_TXN_BYTES

__all__ = ["DEFAULT_HTTP_LIMITS", "HTTP_LIMITS", "HttpLimits", "make_runner", "read_body"]


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

HTTP_LIMITS: web.AppKey[HttpLimits] = web.AppKey("http_limits", HttpLimits)


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner ``synq serve`` uses: the app's limits, and handler cancellation, so a client
    that hangs up mid long-poll or mid SSE stream frees its handler at once."""
    limits = app.get(HTTP_LIMITS, DEFAULT_HTTP_LIMITS)
    return web.AppRunner(app, handler_cancellation=True, access_log=None, **limits.server_kwargs())


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
