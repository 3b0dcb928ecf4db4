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
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qsl

from aiohttp import web

from relay import __version__
from relay.admintoken import check_admin_token, read_admin_token_hash
from relay.core import errors as E
from relay.core import jsonutil
from relay.core.envelope import format_timestamp
from relay.core.jws import b64url_decode
from relay.delivery import views
from relay.runtime import Relay
from relay.server.auth import bearer_token, refuse_guessing
from relay.server.errors import Handler, error_middleware
from relay.server.http import DEFAULT_HTTP_LIMITS, HTTP_LIMITS, read_body, source_limits
from relay.server.keys import RELAY
from relay.store.base import QUEUE_CHANNEL, EnvelopeSummary, QueueEntry

__all__ = [
    "ADMIN_SESSION_TTL",
    "CONSOLE",
    "HISTORY_SAMPLES",
    "MAX_ADMIN_SESSIONS",
    "MAX_CONSOLE_STREAMS",
    "SAMPLE_INTERVAL",
    "STREAM_INTERVAL",
    "Console",
    "build_admin_app",
]

log = logging.getLogger("synq.admin")

#: How long a console session lasts after login: a working day, then the token again.
ADMIN_SESSION_TTL: Final = 12 * 3600.0
#: Sessions kept at once; the oldest goes first. Bounds what logins can make the relay hold.
MAX_ADMIN_SESSIONS: Final = 64
#: Console event streams open at once (``/console/api/events``). Each costs a snapshot a second
#: (shared between streams, see ``SNAPSHOT_MAX_AGE``) and a connection; a forgotten tab left
#: open in several browsers should not add up to a load on the relay. Past it: 429.
MAX_CONSOLE_STREAMS: Final = 8
#: Seconds between two snapshots on an event stream when nothing wakes it sooner.
STREAM_INTERVAL: Final = 1.0
#: A snapshot younger than this is served again instead of read again: however many streams
#: and reloads, the store is read for the console at most about once a second.
SNAPSHOT_MAX_AGE: Final = 0.5
#: A comment line on an idle stream, so proxies and browsers keep it open (as the API's SSE).
STREAM_KEEPALIVE: Final = 15.0
#: The charts' samples: one every ``SAMPLE_INTERVAL`` seconds, the last hour of them.
SAMPLE_INTERVAL: Final = 10.0
HISTORY_SAMPLES: Final = 360
#: Rows the page gets at most, per list: a console for a queue of a million rows shows the
#: destinations' totals and the first rows, not a million table lines.
MAX_ROWS: Final = 200
#: Agents whose mailbox the snapshot reads (one short read each) and, of each, the unread
#: envelopes whose signing key it looks at (partners' "keys seen").
MAX_AGENTS_SHOWN: Final = 100
RECENT_PER_AGENT: Final = 20
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


@dataclass
class Session:
    csrf: str
    #: The token hash it was made with: a rotated token ends it.
    token_hash: str
    expires: float


@dataclass
class Sample:
    at: datetime
    accepted: float
    sent: float
    deferred: float
    bounced: float
    depth: int


@dataclass
class Console:
    """The console's state in a relay process: sessions, the charts' ring buffer, the shared
    snapshot and the count of open streams."""

    relay: Relay
    sessions: dict[str, Session] = field(default_factory=dict)
    history: deque[Sample] = field(default_factory=lambda: deque(maxlen=HISTORY_SAMPLES))
    streams: int = 0
    _snapshot: tuple[float, dict[str, Any]] | None = None
    _snapshot_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # --- sessions -------------------------------------------------------------------------------

    def login(self, token_hash: str) -> tuple[str, Session]:
        now = self.relay.clock.monotonic()
        for key in [k for k, s in self.sessions.items() if s.expires <= now]:
            del self.sessions[key]
        while len(self.sessions) >= MAX_ADMIN_SESSIONS:
            del self.sessions[min(self.sessions, key=lambda k: self.sessions[k].expires)]
        sid = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), token_hash, now + ADMIN_SESSION_TTL)
        # Kept by hash: a memory dump shows no cookie that could be replayed.
        self.sessions[_digest(sid)] = session
        return sid, session

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self.sessions.get(_digest(sid))
        if session is None:
            return None
        current = read_admin_token_hash(self.relay.config.admin_token_path)
        if session.expires <= self.relay.clock.monotonic() or session.token_hash != current:
            self.sessions.pop(_digest(sid), None)
            return None
        return session

    def logout(self, sid: str | None) -> None:
        if sid:
            self.sessions.pop(_digest(sid), None)

    # --- the charts' samples ----------------------------------------------------------------------

    async def sample(self) -> None:
        """Record the relay's counters now (the charts plot the differences)."""
        totals = _counter_totals(self.relay)
        outcomes = totals.get("synq_federation_outbound_recipients", {})
        depth = len(await self.relay.store.list_queue())
        self.history.append(
            Sample(
                at=self.relay.clock.now(),
                accepted=sum(totals.get("synq_envelopes_accepted", {}).values()),
                sent=outcomes.get("sent", 0.0),
                deferred=outcomes.get("deferred", 0.0),
                bounced=outcomes.get("bounced", 0.0),
                depth=depth,
            )
        )

    async def run_sampler(self) -> None:
        while True:
            try:
                await self.sample()
            except E.SynqError as exc:
                log.warning("console sample skipped: %s", exc.message)
            await asyncio.sleep(SAMPLE_INTERVAL)

    def chart(self) -> list[dict[str, Any]]:
        """Per sample interval: what was accepted, sent, deferred and bounced in it, and the
        queue depth at its end."""
        points = []
        samples = list(self.history)
        for before, after in itertools.pairwise(samples):
            points.append(
                {
                    "at": format_timestamp(after.at),
                    "accepted": max(0.0, after.accepted - before.accepted),
                    "sent": max(0.0, after.sent - before.sent),
                    "deferred": max(0.0, after.deferred - before.deferred),
                    "bounced": max(0.0, after.bounced - before.bounced),
                    "depth": after.depth,
                }
            )
        return points

    # --- the snapshot ---------------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, read at most once per ``SNAPSHOT_MAX_AGE``."""
        async with self._snapshot_lock:
            loop_now = asyncio.get_running_loop().time()
            if self._snapshot is not None and loop_now - self._snapshot[0] < SNAPSHOT_MAX_AGE:
                return self._snapshot[1]
            document = await self._read()
            self._snapshot = (loop_now, document)
            return document

    def invalidate(self) -> None:
        """The next snapshot is read afresh (after an action, so its result shows at once)."""
        self._snapshot = None

    async def _read(self) -> dict[str, Any]:
        relay = self.relay
        now = relay.clock.now()
        entries = await relay.store.list_queue()
        recent = await relay.store.recent_envelopes(MAX_ROWS)
        return {
            "now": format_timestamp(now),
            "relay": {
                "domain": relay.domain,
                "version": __version__,
                # The signals panel shows only on a relay that has them.
                "signals": getattr(relay, "signals", None) is not None,
            },
            "destinations": self._destinations(entries, now),
            "queue": [_queue_row(e) for e in entries[:MAX_ROWS]],
            "queued": len(entries),
            "partners": self._partners(entries, recent, await self._keys_seen(), now),
            "agents": await self._agents(),
            "recent": [_summary(e) for e in recent],
            "bounces": _bounces(recent),
            "chart": self.chart(),
        }

    def _destinations(self, entries: list[QueueEntry], now: datetime) -> list[dict[str, Any]]:
        by_domain: dict[str, list[QueueEntry]] = {}
        for e in entries:
            by_domain.setdefault(e.domain, []).append(e)
        out = []
        for domain, rows in sorted(by_domain.items()):
            oldest = min(rows, key=lambda r: r.accepted or r.next_attempt)
            last = max(rows, key=lambda r: r.attempts)
            out.append(
                {
                    "domain": domain,
                    "depth": len(rows),
                    "oldest": format_timestamp(oldest.accepted or oldest.next_attempt),
                    "next_attempt": format_timestamp(min(r.next_attempt for r in rows)),
                    **self._breaker(domain, now),
                    "code": last.code,
                    "reason": last.reason,
                }
            )
        return out

    def _breaker(self, domain: str, now: datetime) -> dict[str, Any]:
        """The sender's breaker for ``domain`` in this process (SPEC.md §9.3)."""
        breaker = self.relay.sender.breaker
        if domain == self.relay.domain or not breaker.failing(domain):
            return {"breaker": "closed", "probe_at": None}
        until = breaker.open_until(domain)
        if until is not None and until > now:
            return {"breaker": "open", "probe_at": format_timestamp(until)}
        return {"breaker": "failing", "probe_at": None}

    def _partners(
        self,
        entries: list[QueueEntry],
        recent: list[EnvelopeSummary],
        keys: dict[str, list[str]],
        now: datetime,
    ) -> list[dict[str, Any]]:
        """Every partner the queue or the recent mail names: its breaker, the failures its
        queued and bounced rows carry, when it last took an envelope of ours and when we last
        took one of its, the key selectors its unread envelopes were signed with."""
        own = self.relay.domain
        partners: dict[str, dict[str, Any]] = {}

        def partner(domain: str) -> dict[str, Any]:
            if domain not in partners:
                partners[domain] = {
                    "domain": domain,
                    "queued": 0,
                    "failures": [],
                    "last_success": None,
                    "last_received": None,
                    "keys": keys.get(domain, []),
                    **self._breaker(domain, now),
                }
            return partners[domain]

        def failed(p: dict[str, Any], code: str | None, reason: str | None) -> None:
            text = f"{code} {reason or ''}".strip()
            if code and text not in p["failures"] and len(p["failures"]) < 5:
                p["failures"].append(text)

        def later(p: dict[str, Any], key: str, when: datetime) -> None:
            stamp = format_timestamp(when)
            if p[key] is None or stamp > p[key]:
                p[key] = stamp

        for e in entries:
            if e.domain != own:
                p = partner(e.domain)
                p["queued"] += 1
                failed(p, e.code, e.reason)
        for env in recent:
            if env.origin != own:
                later(partner(env.origin), "last_received", env.accepted)
                continue
            for r in env.recipients:
                domain = r.address.rpartition("@")[2]
                if domain == own:
                    continue
                p = partner(domain)
                if r.state in ("sent", "delivered"):
                    later(p, "last_success", r.updated)
                elif r.state == "bounced":
                    failed(p, r.code, r.reason)
        for domain in keys:
            if domain != own:
                partner(domain)
        return [partners[d] for d in sorted(partners)]

    async def _agents(self) -> list[dict[str, Any]]:
        relay = self.relay
        agents = (await relay.store.list_agents())[:MAX_AGENTS_SHOWN]
        usage = await relay.store.mailbox_usage([a.name for a in agents])
        out = []
        for a in agents:
            oldest = await relay.store.inbox(a.name, limit=1)
            use = usage.get(a.name)
            out.append(
                {
                    "name": a.name,
                    "address": f"{a.name}@{relay.domain}",
                    "kind": a.kind,
                    "visibility": getattr(a, "visibility", None),
                    "endpoint": a.endpoint,
                    "unacked": use.unacked if use else 0,
                    "bytes": use.bytes if use else 0,
                    "oldest_unacked": format_timestamp(oldest[0].delivered_at) if oldest else None,
                    "health": _adapter_health(relay, a.kind, a.endpoint),
                }
            )
        return out

    async def _keys_seen(self) -> dict[str, list[str]]:
        """By partner domain, the key selectors (``kid``) of the envelopes waiting unread in
        local inboxes: what partners sign with now, read from a bounded few envelopes."""
        relay = self.relay
        seen: dict[str, list[str]] = {}
        for agent in (await relay.store.list_agents())[:MAX_AGENTS_SHOWN]:
            for entry in await relay.store.inbox(agent.name, limit=RECENT_PER_AGENT):
                kid = _kid(entry.token)
                if kid is not None and entry.origin != relay.domain:
                    kids = seen.setdefault(entry.origin, [])
                    if kid not in kids:
                        kids.append(kid)
        return seen


def _summary(env: EnvelopeSummary) -> dict[str, Any]:
    return {
        "id": env.id,
        "origin": env.origin,
        "from": env.sender,
        "to": [r.address for r in env.recipients],
        "states": {r.address: r.state for r in env.recipients},
        "thread": env.thread,
        "kind": env.kind,
        "received": format_timestamp(env.accepted),
    }


def _bounces(recent: list[EnvelopeSummary]) -> list[dict[str, Any]]:
    """Recipients of recent envelopes that bounced, newest first: refused, expired, refused
    by the partner or deleted by the operator (SPEC.md §9.5)."""
    out = [
        {
            "id": env.id,
            "origin": env.origin,
            "from": env.sender,
            "recipient": r.address,
            "code": r.code,
            "reason": r.reason,
            "at": format_timestamp(r.updated),
        }
        for env in recent
        for r in env.recipients
        if r.state == "bounced"
    ]
    return sorted(out, key=lambda b: str(b["at"]), reverse=True)[:MAX_ROWS]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _kid(token: str) -> str | None:
    try:
        header = json.loads(b64url_decode(token.split(".")[0]))
    except (ValueError, IndexError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def _queue_row(e: QueueEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "from": e.sender,
        "recipient": e.recipient,
        "domain": e.domain,
        "attempts": e.attempts,
        "next_attempt": format_timestamp(e.next_attempt),
        "expires": format_timestamp(e.expires),
        "code": e.code,
        "reason": e.reason,
    }


def _counter_totals(relay: Relay) -> dict[str, dict[str, float]]:
    """Each counter of the relay's registry: its value per label set (joined label values)."""
    totals: dict[str, dict[str, float]] = {}
    for family in relay.metrics.registry.collect():
        if family.type != "counter":
            continue
        values = totals.setdefault(family.name, {})
        for s in family.samples:
            if s.name == family.name + "_total":
                values[",".join(s.labels.values())] = s.value
    return totals


def _adapter_health(relay: Relay, kind: str, endpoint: str | None) -> str | None:
    """``up``, ``restarting`` or ``down`` from the agent kind's adapter when it reports health
    (a ``health(endpoint)`` method), ``unknown`` when it does not; None for an inbox agent."""
    adapter = relay.dispatcher.adapters.get(kind)
    if adapter is None or endpoint is None:
        return None
    report = getattr(adapter, "health", None)
    if not callable(report):
        return "unknown"
    value = report(endpoint)
    return value if isinstance(value, str) else "unknown"


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
        return _page(request, "login-failed.html", status=401)
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
    found = [_summary(e) for e in await relay.store.recent_envelopes(MAX_ROWS, q)]
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
