"""The one place errors become HTTP responses (STYLE §6).

Handlers raise :class:`relay.core.errors.SynqError`; this middleware renders it as
``{"error": {"code", "status", "message"}}`` with its HTTP status. aiohttp's own HTTP exceptions
(unknown route, wrong method, body too large) are mapped onto the same shape, and anything else
is logged with its traceback and answered ``500 internal_error`` without a word of its text, so
no internal name or path reaches a peer.
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

    response = web.Response(
        status=exc.http_status,
        body=jsonutil.dumps(exc.to_wire()),
        content_type="application/json",
        headers=headers,
    )
    if exc.http_status == 408:
        # RFC 9110 §15.5.9: the server closes a connection whose request timed out; keeping it
        # would let a slow client dribble the rest of its body into the next "request".
        response.force_close()
    return response


def _from_http_exception(exc: web.HTTPException) -> E.SynqError:
    if exc.status == 404:
        return E.NotFound("no such endpoint")
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return E.MalformedRequest(f"method not allowed; allowed: {allowed}", http_status=405)
    if exc.status == 413:
        return E.PayloadTooLarge()
    if exc.status == 401:
        return E.Unauthenticated()
    if 400 <= exc.status < 500:
        return E.MalformedRequest(exc.reason, http_status=exc.status)
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
