"""What the console shows and remembers in one relay process (SPEC.md §14.2): its sessions,
the charts' ring buffer of samples, and the snapshot — read from the relay's store, its
sender's breaker, its adapters and its metrics — that every open page is sent.

Read-only: the console's actions go through the relay's queue commands (relay/server/admin.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import secrets
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from relay import __version__
from relay.admintoken import read_admin_token_hash
from relay.core import errors as E
from relay.core.envelope import format_timestamp
from relay.core.jws import b64url_decode
from relay.delivery import views
from relay.delivery.signals import signal_view
from relay.runtime import Relay
from relay.store.base import EnvelopeSummary, QueueSummary, local_agent

__all__ = [
    "ADMIN_SESSION_TTL",
    "HISTORY_SAMPLES",
    "MAX_ADMIN_SESSIONS",
    "MAX_ROWS",
    "SAMPLE_INTERVAL",
    "SNAPSHOT_MAX_AGE",
    "Console",
    "Sample",
    "Session",
    "summary",
]

log = logging.getLogger("synq.admin")

#: How long a console session lasts after login: a working day, then the token again.
ADMIN_SESSION_TTL: Final = 12 * 3600.0
#: Sessions kept at once; the oldest goes first. Bounds what logins can make the relay hold.
MAX_ADMIN_SESSIONS: Final = 64
#: A snapshot younger than this is served again instead of read again: however many streams
#: and reloads, the store is read for the console at most about once a second.
SNAPSHOT_MAX_AGE: Final = 0.5
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
        # Counted by the store: reading the queue to count it made every sample hold the
        # whole queue in memory (2.4 GB at 1,000,000 rows queued for a partner that is down).
        depth = await self.relay.store.queue_depth()
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
        # Counted and sampled by the store: reading the whole queue here made each page view
        # of a relay with 1,000,000 rows queued hold every row and its token in memory.
        queue = await relay.store.queue_summary(MAX_ROWS, MAX_ROWS)
        recent = await relay.store.recent_envelopes(MAX_ROWS)
        return {
            "now": format_timestamp(now),
            "relay": {
                "domain": relay.domain,
                "version": __version__,
            },
            "destinations": self._destinations(queue, now),
            "queue": [views.queue_row(e) for e in queue.first],
            "queued": queue.depth,
            "partners": self._partners(queue, recent, await self._keys_seen(), now),
            "agents": await self._agents(),
            "recent": [summary(e) for e in recent],
            "bounces": _bounces(recent),
            "chart": self.chart(),
            "signals": await self._signals(now),
        }

    async def _signals(self, now: datetime) -> list[dict[str, Any]]:
        """The open and claimed signals this relay owns or holds a replica of (SPEC.md §13),
        strongest first: what agents are being asked for, and who holds what."""
        active = await self.relay.store.signals_active(MAX_ROWS)
        views = [signal_view(s, now) for s in active]
        return sorted(views, key=lambda v: -float(v["intensity"]))

    def _destinations(self, queue: QueueSummary, now: datetime) -> list[dict[str, Any]]:
        out = []
        for d in sorted(queue.destinations, key=lambda d: d.domain):
            code, reason = d.failures[0] if d.failures else (None, None)
            out.append(
                {
                    "domain": d.domain,
                    "depth": d.depth,
                    "oldest": format_timestamp(d.oldest),
                    "next_attempt": format_timestamp(d.next_attempt),
                    **self._breaker(d.domain, now),
                    "code": code,
                    "reason": reason,
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
        queue: QueueSummary,
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

        for d in queue.destinations:
            if d.domain != own and local_agent(d.domain) is None:
                p = partner(d.domain)
                p["queued"] = d.depth
                for code, reason in d.failures:
                    failed(p, code, reason)
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


def summary(env: EnvelopeSummary) -> dict[str, Any]:
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
