"""The one place errors become HTTP responses (SPEC.md §5.2, §6.9).

Handlers raise :class:`relay.core.errors.SynqError`; this middleware renders it as
``{"error": {"code", "status", "message"}}`` with the HTTP status its class carries, and the
headers its class calls for. aiohttp's own HTTP exceptions (unknown route, wrong method, body
too large) become the classes of the same failures first, and anything else is logged with its
traceback and answered ``500 internal_error`` without a word of its text, so no internal name or
path reaches a peer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.core import errors as E
from relay.core import jsonutil

log = logging.getLogger("synq.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: E.SynqError) -> web.Response:
    headers: dict[str, str] = {}
    if isinstance(exc, E.RateLimited):
        # RFC 9110 §10.2.3: delay-seconds, a non-negative integer.
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    elif isinstance(exc, E.Unauthenticated):
        # RFC 6750 §3: a 401 names the scheme the client must use.
        headers["WWW-Authenticate"] = 'Bearer realm="synq"'
    elif isinstance(exc, E.MethodNotAllowed) and exc.allowed:
        # RFC 9110 §15.5.6: a 405 lists the methods the resource supports.
        headers["Allow"] = ", ".join(exc.allowed)

    response = web.Response(
        status=exc.http_status,
        body=jsonutil.dumps(exc.to_wire()),
        content_type="application/json",
        headers=headers,
    )
    if isinstance(exc, E.RequestTimeout):
        # RFC 9110 §15.5.9: the server closes a connection whose request timed out; keeping it
        # would let a slow client dribble the rest of its body into the next "request".
        response.force_close()
    return response


def _from_http_exception(exc: web.HTTPException) -> E.SynqError:
    """The class of the failure aiohttp raised. The router's 404 and 405 and the body reader's
    413 are what reaches the middleware (the HTTP parser answers malformed requests and ``Expect``
    failures itself, before any middleware runs); the other classes cover a handler raising
    aiohttp's exceptions, and any other 4xx is a malformed request."""
    if isinstance(exc, web.HTTPNotFound):
        return E.NotFound("no such endpoint")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = tuple(sorted(exc.allowed_methods))
        return E.MethodNotAllowed(
            f"method not allowed; allowed: {','.join(allowed)}", allowed=allowed
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return E.PayloadTooLarge()
    if isinstance(exc, web.HTTPUnauthorized):
        return E.Unauthenticated()
    if isinstance(exc, web.HTTPUnsupportedMediaType):
        return E.UnsupportedMediaType()
    if isinstance(exc, web.HTTPRequestTimeout):
        return E.RequestTimeout()
    if 400 <= exc.status < 500:
        return E.MalformedRequest(exc.reason)
    return E.InternalError()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except E.SynqError as exc:
        if isinstance(exc, E.RelayError):
            log.warning("%s %s: %s", request.method, request.path, exc.code, exc_info=exc.__cause__)
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http_exception(exc))
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(E.InternalError())
