"""The admin listener: ``/metrics``, ``/healthz`` and the operator's console (SPEC.md §14).

A second aiohttp application, bound by ``synq serve`` to ``[admin] listen`` (loopback by
default), so that nothing here is reachable where partners and agents are::

    GET  /metrics                     Prometheus text (no token: for the monitoring)
    GET  /healthz                     {"status": "ok"} or 503 (no token)
    GET  /console                     the page (303 to /console/login without a session)
    GET  /console/login               the login form; POST it {token} → session cookie, 303
    POST /console/logout              ends the session
    GET  /console/static/{name}       the page's files (relay/server/console/static/)
    GET  /console/api/session         {"csrf": …} for the page's actions
    GET  /console/api/snapshot        everything the page shows, one JSON document
    GET  /console/api/events          the same, as server-sent events, about once a second
    GET  /console/api/messages?q=     recent messages matching an id, address or thread
    GET  /console/api/message?id=&origin=   one message's recipients and every hop
    POST /console/api/queue/flush     {domain?}             as ``synq queue flush``
    POST /console/api/queue/retry     {id}                  as ``synq queue retry``
    POST /console/api/queue/delete    {id? domain? all?}    as ``synq queue delete``

Who may do what:

1. Every console route needs the admin token (relay/admintoken.py): as
   ``Authorization: Bearer`` (scripts), or once on the login form, which sets a session cookie
   (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over https, path ``/console``). A failed
   token is charged to the client's address like an agent's (SPEC.md §10.3).
2. An action (a POST) is refused ``403`` when the browser says it comes from another origin —
   ``Sec-Fetch-Site`` other than ``same-origin``/``none``, or an ``Origin`` that is not this
   listener's — before anything else is looked at. ``SameSite`` alone is not enough: another
   port of the same host is the *same site*, and a browser sends the cookie along.
3. With the cookie, an action also needs the session's CSRF token, in ``X-CSRF-Token`` or the
   form field ``csrf_token`` (the synchroniser-token pattern); a bearer token needs none, since
   no browser attaches one by itself.
4. While the listener is on loopback, a ``Host`` that does not name loopback is refused, so a
   page whose DNS name is rebound to 127.0.0.1 cannot talk to the console as itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qsl

from aiohttp import web

from relay.admintoken import check_admin_token
from relay.core import errors as E
from relay.core import jsonutil
from relay.delivery import views
from relay.runtime import Relay
from relay.server.auth import bearer_token, refuse_guessing
from relay.server.console.state import ADMIN_SESSION_TTL, MAX_ROWS, Console, Session, summary
from relay.server.errors import Handler, error_middleware
from relay.server.http import DEFAULT_HTTP_LIMITS, HTTP_LIMITS, read_body, source_limits
from relay.server.keys import RELAY
from relay.store.base import QUEUE_CHANNEL

__all__ = [
    "CONSOLE",
    "MAX_CONSOLE_STREAMS",
    "SESSION_COOKIE",
    "STREAM_INTERVAL",
    "build_admin_app",
]

log = logging.getLogger("synq.admin")

#: Console event streams open at once (``/console/api/events``). Each costs a snapshot a second
#: (shared between streams, see ``SNAPSHOT_MAX_AGE``) and a connection; a forgotten tab left
#: open in several browsers should not add up to a load on the relay. Past it: 429.
MAX_CONSOLE_STREAMS: Final = 8
#: Seconds between two snapshots on an event stream when nothing wakes it sooner.
STREAM_INTERVAL: Final = 1.0
#: A comment line on an idle stream, so proxies and browsers keep it open (as the API's SSE).
STREAM_KEEPALIVE: Final = 15.0
#: The largest action body: a few fields.
MAX_ACTION_BYTES: Final = 4096

SESSION_COOKIE: Final = "synq_admin"
CSRF_HEADER: Final = "X-CSRF-Token"
CSRF_FIELD: Final = "csrf_token"

#: Every console answer: no framing (clickjacking of the buttons), only the page's own files,
#: no referrer leaving the console with a message id in it. (Not ``no-referrer``: under it
#: Chromium sends ``Origin: null`` with the page's own form posts, which rule 2 must refuse.)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_CONTENT_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
}


# --- the application ----------------------------------------------------------------------------

CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)
_STATIC: web.AppKey[dict[str, bytes]] = web.AppKey("console_static")


def _static_files() -> dict[str, bytes]:
    """The page's files, read once from the package (no build step, nothing fetched)."""
    root = resources.files("relay.server.console").joinpath("static")
    return {
        entry.name: entry.read_bytes()
        for entry in root.iterdir()
        if entry.is_file() and any(entry.name.endswith(s) for s in _CONTENT_TYPES)
    }


#: What the login form says after a wrong token, below the form.
_LOGIN_ERROR: Final = b'\n  <p class="error" id="login-error">That is not the admin token.</p>'


def _login_failed(login: bytes) -> bytes:
    """The login page with the wrong-token line: one page kept, not two copies of it."""
    return login.replace(b"</form>", b"</form>" + _LOGIN_ERROR, 1)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if request.path.startswith("/console"):
            exc.headers.update(SECURITY_HEADERS)
        raise
    if request.path.startswith("/console"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


def build_admin_app(relay: Relay, *, sample: bool = True) -> web.Application:
    """The admin listener's application for ``relay``. ``sample``: keep the charts' ring
    buffer filled (a background task while the app runs)."""
    app = web.Application(
        middlewares=[source_limits, security_headers, error_middleware],
        client_max_size=64 * 1024,
    )
    app[RELAY] = relay
    app[HTTP_LIMITS] = DEFAULT_HTTP_LIMITS
    console = Console(relay)
    app[CONSOLE] = console
    app[_STATIC] = _static_files()
    app.add_routes(routes)
    if sample:

        async def sampler(app: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(console.run_sampler(), name="synq-console-sampler")
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.cleanup_ctx.append(sampler)
    return app


routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    await request.app[RELAY].store.ping()
    return web.json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[RELAY].metrics.render()
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


# --- who is asking ------------------------------------------------------------------------------


def _check_host(request: web.Request) -> None:
    """Rule 4: on a loopback listener, a Host naming anything but loopback is refused."""
    if not request.app[RELAY].config.admin_is_loopback:
        return
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    host = host.strip("[]").lower()
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise E.Forbidden("the admin listener answers only to a loopback host name")


def _check_same_origin(request: web.Request) -> None:
    """Rule 2: a request the browser marks as coming from another origin is refused."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise E.Forbidden("cross-site requests to the console are refused")
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise E.Forbidden("cross-origin requests to the console are refused")


@dataclass(frozen=True)
class Caller:
    #: The cookie's session; None for a bearer token.
    session: Session | None


def _caller(request: web.Request) -> Caller | None:
    """Rule 1: the admin token as a bearer token, or a live session cookie; None otherwise.
    Raises Unauthenticated for a wrong bearer token (charged), RateLimited while the
    address may not try another."""
    relay = request.app[RELAY]
    header = request.headers.get("Authorization")
    if header is not None:
        token = bearer_token(header)
        if token is None:
            raise E.Unauthenticated()
        refuse_guessing(relay, request.remote)
        if check_admin_token(relay.config.admin_token_path, token) is None:
            _charge(relay, request.remote)
            raise E.Unauthenticated("the admin token is not valid")
        return Caller(None)
    session = request.app[CONSOLE].session(request.cookies.get(SESSION_COOKIE))
    return Caller(session) if session is not None else None


def _charge(relay: Relay, peer: str | None) -> None:
    key = relay.sources.key(peer)
    if key is not None:
        relay.sources.failed_auth.charge(key, relay.clock.monotonic())


def _require(request: web.Request) -> Caller:
    _check_host(request)
    caller = _caller(request)
    if caller is None:
        raise E.Unauthenticated("the console needs the admin token ('synq admin token')")
    return caller


async def _action(request: web.Request) -> dict[str, str]:
    """Rules 1–4 for a POST; its fields (JSON or a form)."""
    _check_host(request)
    _check_same_origin(request)
    caller = _caller(request)
    if caller is None:
        raise E.Unauthenticated("the console needs the admin token ('synq admin token')")
    body = await read_body(request, MAX_ACTION_BYTES, "an action")
    fields: dict[str, str] = {}
    if request.content_type == "application/json" and body:
        parsed = jsonutil.loads(body, max_bytes=MAX_ACTION_BYTES, what="action")
        if not isinstance(parsed, dict):
            raise E.MalformedRequest("an action is a JSON object")
        fields = {k: str(v) for k, v in parsed.items() if v is not None and v != ""}
    elif body:
        fields = dict(parse_qsl(body.decode("utf-8", "replace")))
    if caller.session is not None:
        sent = request.headers.get(CSRF_HEADER) or fields.get(CSRF_FIELD, "")
        if not hmac.compare_digest(sent.encode(), caller.session.csrf.encode()):
            raise E.Forbidden("the console's CSRF token is missing or wrong; reload the page")
    fields.pop(CSRF_FIELD, None)
    return fields


def _page(request: web.Request, name: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=request.app[_STATIC][name], content_type="text/html", charset="utf-8"
    )


# --- pages --------------------------------------------------------------------------------------


@routes.get("/console")
async def console_page(request: web.Request) -> web.StreamResponse:
    _check_host(request)
    if _caller(request) is None:
        raise web.HTTPSeeOther("/console/login")
    return _page(request, "index.html")


@routes.get("/console/login")
async def login_page(request: web.Request) -> web.Response:
    _check_host(request)
    return _page(request, "login.html")


@routes.post("/console/login")
async def login(request: web.Request) -> web.StreamResponse:
    """The login form: the token once, a session cookie back. Guarded like an action (a
    cross-site login would sign the operator's browser into a session someone else chose)."""
    relay = request.app[RELAY]
    _check_host(request)
    _check_same_origin(request)
    refuse_guessing(relay, request.remote)
    form = await request.post()
    token = form.get("token")
    token_hash = (
        check_admin_token(relay.config.admin_token_path, token.strip())
        if isinstance(token, str)
        else None
    )
    if token_hash is None:
        _charge(relay, request.remote)
        return web.Response(
            status=401,
            body=_login_failed(request.app[_STATIC]["login.html"]),
            content_type="text/html",
            charset="utf-8",
        )
    sid, _ = request.app[CONSOLE].login(token_hash)
    response = web.HTTPSeeOther("/console")
    response.set_cookie(
        SESSION_COOKIE,
        sid,
        path="/console",
        max_age=int(ADMIN_SESSION_TTL),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


@routes.post("/console/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    await _action(request)
    request.app[CONSOLE].logout(request.cookies.get(SESSION_COOKIE))
    response = web.HTTPSeeOther("/console/login")
    response.del_cookie(SESSION_COOKIE, path="/console")
    raise response


@routes.get("/console/static/{name}")
async def static(request: web.Request) -> web.Response:
    _check_host(request)
    name = request.match_info["name"]
    files = request.app[_STATIC]
    if name not in files:
        raise E.NotFound("no such file")
    suffix = name[name.rfind(".") :]
    return web.Response(body=files[name], content_type=_CONTENT_TYPES[suffix], charset="utf-8")


# --- read-only JSON -----------------------------------------------------------------------------


def _json(data: Any) -> web.Response:
    return web.Response(body=jsonutil.dumps(data), content_type="application/json")


@routes.get("/console/api/session")
async def session_info(request: web.Request) -> web.Response:
    caller = _require(request)
    return _json(
        {
            "csrf": caller.session.csrf if caller.session else None,
            "domain": request.app[RELAY].domain,
        }
    )


@routes.get("/console/api/snapshot")
async def snapshot(request: web.Request) -> web.Response:
    _require(request)
    return _json(await request.app[CONSOLE].snapshot())


@routes.get("/console/api/messages")
async def search(request: web.Request) -> web.Response:
    """Messages whose id, thread, sender or a recipient is ``q`` (any the store still holds),
    and recent ones where ``q`` is part of one of those; without ``q``, the recent ones."""
    _require(request)
    relay = request.app[RELAY]
    q = request.query.get("q", "").strip()
    recent = (await request.app[CONSOLE].snapshot())["recent"]
    if not q:
        return _json({"messages": recent})
    if len(q) > 320:
        raise E.MalformedRequest("search for an id, an address or a thread")
    found = [summary(e) for e in await relay.store.recent_envelopes(MAX_ROWS, q)]
    known = {(m["origin"], m["id"]) for m in found}
    needle = q.lower()
    found += [
        m
        for m in recent
        if (m["origin"], m["id"]) not in known and needle in " ".join(_words(m)).lower()
    ]
    return _json({"messages": found[:MAX_ROWS]})


def _words(m: dict[str, Any]) -> Iterable[str]:
    yield str(m.get("id") or "")
    yield str(m.get("from") or "")
    yield from (str(t) for t in m.get("to") or [])
    yield str(m.get("thread") or "")


@routes.get("/console/api/message")
async def message(request: web.Request) -> web.Response:
    """One message's recipients and hop log, as ``synq status`` shows it (SPEC.md §9.5)."""
    _require(request)
    relay = request.app[RELAY]
    id = request.query.get("id", "")
    origin = request.query.get("origin") or relay.domain
    status = await relay.store.message_status(origin, id) if id else None
    if status is None:
        raise E.NotFound(f"no message {id} from {origin}")
    return _json({"origin": origin, **views.status_to_wire(status)})


@routes.get("/console/api/events")
async def events(request: web.Request) -> web.StreamResponse:
    """The snapshot as server-sent events: at once, then whenever the queue changes or
    ``STREAM_INTERVAL`` passes and it differs from the last one sent. Ends with the session."""
    caller = _require(request)
    console = request.app[CONSOLE]
    if console.streams >= MAX_CONSOLE_STREAMS:
        raise E.RateLimited(
            f"more than {MAX_CONSOLE_STREAMS} console streams are open", retry_after=5.0
        )
    console.streams += 1
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    try:
        await response.prepare(request)
        relay = request.app[RELAY]
        sent = b""
        quiet_since = time.monotonic()
        async with relay.store.notifier.listen(QUEUE_CHANNEL) as listener:
            while True:
                if (
                    caller.session is not None
                    and console.session(request.cookies.get(SESSION_COOKIE)) is None
                ):
                    await response.write(b"event: ended\ndata: {}\n\n")
                    break
                try:
                    data = jsonutil.dumps(await console.snapshot())
                except E.StoreUnavailable:
                    data = b'{"error":"store unavailable"}'
                if data != sent:
                    await response.write(b"event: snapshot\ndata: " + data + b"\n\n")
                    sent = data
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > STREAM_KEEPALIVE:
                    await response.write(b": keep-alive\n\n")
                    quiet_since = time.monotonic()
                await listener.wait(STREAM_INTERVAL)
    except ConnectionResetError:
        pass  # the page went away
    finally:
        console.streams -= 1
    return response


# --- actions: the queue commands of SPEC.md §9.6 --------------------------------------------------


@routes.post("/console/api/queue/flush")
async def flush(request: web.Request) -> web.Response:
    fields = await _action(request)
    relay = request.app[RELAY]
    count = await relay.flush_queue(domain=fields.get("domain"))
    request.app[CONSOLE].invalidate()
    log.info("console: flushed %d queued recipients%s", count, _of(fields))
    return _json({"flushed": count})


@routes.post("/console/api/queue/retry")
async def retry(request: web.Request) -> web.Response:
    fields = await _action(request)
    id = fields.get("id")
    if not id:
        raise E.MalformedRequest("retry needs the message id")
    count = await request.app[RELAY].flush_queue(id=id)
    if count == 0:
        raise E.NotFound(f"no queued recipients for message {id}")
    request.app[CONSOLE].invalidate()
    log.info("console: retried %d queued recipients of %s", count, id)
    return _json({"retried": count})


@routes.post("/console/api/queue/delete")
async def delete(request: web.Request) -> web.Response:
    fields = await _action(request)
    id, domain = fields.get("id"), fields.get("domain")
    if id is None and domain is None and fields.get("all") not in ("1", "true", "True"):
        raise E.MalformedRequest("say which: an id, a domain, or all")
    count = await request.app[RELAY].delete_queued(id=id, domain=domain)
    if count == 0 and id is not None:
        raise E.NotFound(f"no queued recipients for message {id}")
    request.app[CONSOLE].invalidate()
    log.info("console: deleted %d queued recipients%s", count, _of(fields))
    return _json({"deleted": count})


def _of(fields: dict[str, str]) -> str:
    if "id" in fields:
        return f" of {fields['id']}"
    if "domain" in fields:
        return f" for {fields['domain']}"
    return ""
