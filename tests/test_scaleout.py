"""Scale-out: three ``synq serve`` processes of globex.test on one PostgreSQL database.

Real processes, a real DNS server on loopback, and two small HTTP front ends in the test process:

* a **balancer** for globex.test: what an operator puts in front of N replicas. Its URL is the
  relay URL globex publishes; it spreads requests round-robin over the three processes and, as
  load balancers do for idempotent requests, sends a request that died with its process to the
  next one (a federation PUT is idempotent by its dedup key; GETs are reads);
* a **gate** in front of acme.test's relay, which holds globex's transactions to acme until the
  test opens it, so that a globex process is SIGKILLed while it holds leased queue rows.

acme.test (one process on SQLite) sends 10,000 envelopes to bob@globex.test and 200 to an
unknown globex address (acme's DSNs). Meanwhile carol@globex.test sends 200 messages to
alice@acme.test and 100 to an unknown acme address (globex's DSNs), so globex's own queue is
worked by all three processes through their shared leases. Halfway through, the globex process
holding leased rows is SIGKILLed. Then: every envelope is in bob's inbox exactly once, carol's
and alice's messages and DSNs each arrived exactly once, and both queues drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.config import Config
from relay.core import records
from relay.dnsserver import DNSServer
from relay.store import postgres
from relay.store.postgres import LEASE_LOCK_CLASS
from tests import pg
from tests.procs import Served, synq

pytestmark = pytest.mark.slow

N = 10_000  # alice@acme → bob@globex
GHOSTS_IN = 200  # alice@acme → ghost@globex: refused by globex, DSNs at acme
REPLIES = 200  # carol@globex → alice@acme
GHOSTS_OUT = 100  # carol@globex → ghost@acme: refused by acme, DSNs at globex
SENDERS = 16  # concurrent API clients submitting alice's envelopes
#: Longest the gate holds globex's transactions before the kill (seconds), well inside the
#: sender's TRANSACTION_TIMEOUT (60 s).
HOLD_AT_MOST = 40.0

#: Rate limits raised for the test's one-sender flood (the defaults exist to stop exactly that).
RATE_LIMITS = """
[rate_limits]
sender_domain = { per_second = 100000.0, burst = 100000.0 }
sender = { per_second = 100000.0, burst = 100000.0 }
agent = { per_second = 100000.0, burst = 100000.0 }
"""

#: Which globex process (by OS pid, from the sessions' ``application_name``) holds leases on
#: queued rows: the owner's lease lock is held by its listener session.
LEASE_HOLDERS = """
SELECT DISTINCT a.application_name
FROM recipients AS r
JOIN pg_locks AS l ON l.locktype = 'advisory' AND l.classid = %s::bigint::oid
     AND l.objsubid = 2 AND l.objid::bigint = r.lease_owner AND l.granted
JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE r.state = 'queued' AND r.lease_owner IS NOT NULL
"""


@dataclass
class Balancer:
    """Round-robin over ``backends``; a dead backend is skipped from then on."""

    http: aiohttp.ClientSession
    backends: list[str]
    dead: set[str] = field(default_factory=set)
    retried: int = 0
    served: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._turn = itertools.cycle(range(len(self.backends)))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")
        }
        for _ in range(2 * len(self.backends)):
            backend = self.backends[next(self._turn)]
            if backend in self.dead:
                continue
            try:
                async with self.http.request(
                    request.method, backend + request.path_qs, data=body, headers=headers
                ) as resp:
                    payload = await resp.read()
                    self.served[backend] = self.served.get(backend, 0) + 1
                    return web.Response(
                        status=resp.status, body=payload, content_type=resp.content_type
                    )
            except aiohttp.ClientConnectionError:
                if request.method not in ("GET", "PUT"):
                    return web.Response(status=502, text="backend failed")
                self.dead.add(backend)
                self.retried += 1
        return web.Response(status=502, text="no backend left")


@dataclass
class Gate:
    """Forwards to ``target`` once opened; counts what it holds meanwhile."""

    http: aiohttp.ClientSession
    target: str
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not self.opened.is_set():
            self.held += 1
            self.holding.set()
            await self.opened.wait()
        async with self.http.put(
            self.target + request.path_qs,
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp:
            return web.Response(
                status=resp.status, body=await resp.read(), content_type=resp.content_type
            )


async def serve_app(handler: Any) -> TestServer:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app)
    await server.start_server()
    return server


async def make_org(base: Path, domain: str, dns: DNSServer, store: str | None = None) -> Path:
    cwd = base / domain
    cwd.mkdir()
    argv = [
        "init", "--domain", domain, "--dir", str(cwd), "--listen", "127.0.0.1:0",
        "--nameserver", dns.address, "--allow-private-addresses",
    ]  # fmt: skip
    if store is not None:
        argv += ["--store", store]
    await synq(*argv, cwd=cwd)
    if "rate_limits" in Config.model_fields:
        with (cwd / "synq.toml").open("a", encoding="utf-8") as config:
            config.write(RATE_LIMITS)
    for rec in await synq("dns", cwd=cwd):
        if "._synqkey." in rec["name"]:
            dns.set_txt(rec["name"].rstrip("."), [rec["value"]], ttl=3600)
    return cwd


def publish_relay(dns: DNSServer, domain: str, url: str) -> None:
    dns.set_txt(f"_synq.{domain}", [records.RelayRecord(url).to_txt()], ttl=3600)


async def send(http: aiohttp.ClientSession, url: str, token: str, to: str, body: str) -> str:
    async with http.post(
        f"{url}/synq/v1/messages",
        json={"to": [to], "body": body},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        answer = await resp.json()
        assert resp.status == 202, answer
        return str(answer["id"])


@dataclass
class Inbox:
    """Long-polls one agent's inbox (acked or not) page after page, collecting messages."""

    http: aiohttp.ClientSession
    url: str
    token: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    cursor: int | None = None

    async def read(self, wait: float) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 500, "wait": str(wait), "all": "1"}
        if self.cursor is not None:
            params["after"] = self.cursor
        async with self.http.get(
            f"{self.url}/synq/v1/inbox",
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
        if page["cursor"] is not None:
            self.cursor = page["cursor"]
        self.messages += page["messages"]
        return list(page["messages"])

    async def until(self, count: int, *marks: tuple[int, asyncio.Event]) -> None:
        while len(self.messages) < count:
            await self.read(10)
            for at, event in marks:
                if len(self.messages) >= at:
                    event.set()

    async def nothing_more(self) -> None:
        assert await self.read(0) == []


async def drained(cwd: Path) -> None:
    """Until ``synq queue list`` shows an empty queue (each look is a process run)."""
    async with asyncio.timeout(60):
        while await synq("queue", "list", cwd=cwd) != []:
            pass


@pytest.fixture
async def dns() -> AsyncIterator[DNSServer]:
    async with DNSServer(host="127.0.0.1", zones=["test"]) as server:
        yield server


@pytest.mark.timeout(420)  # about 70 s on an idle 2-core machine
async def test_three_processes_share_one_database_and_survive_losing_one(
    tmp_path: Path, dns: DNSServer, request: pytest.FixtureRequest
) -> None:
    started = time.perf_counter()
    database = pg.database_url(request)
    acme_dir = await make_org(tmp_path, "acme.test", dns)
    globex_dir = await make_org(tmp_path, "globex.test", dns, store=database)
    # ``synq dns`` above opened the store, which migrated it; ``migrate`` finds nothing to do.
    migrated = await synq("migrate", cwd=globex_dir)
    assert migrated == {
        "store": "postgresql",
        "schema_version": postgres.PostgresStore.newest_schema_version(),
        "applied": [],
    }
    alice = await synq("agent", "add", "alice", cwd=acme_dir)
    bob = await synq("agent", "add", "bob", cwd=globex_dir)
    carol = await synq("agent", "add", "carol", cwd=globex_dir)

    acme = Served(acme_dir)
    # Same directory, config and keys; port 0 gives each its own listening port.
    globex = [Served(globex_dir) for _ in range(3)]
    servers: list[TestServer] = []
    background: list[asyncio.Future[Any]] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            acme_url = await acme.start()
            globex_urls = list(await asyncio.gather(*(g.start() for g in globex)))
            balancer = Balancer(http, globex_urls)
            gate = Gate(http, acme_url)
            servers = [await serve_app(balancer.handle), await serve_app(gate.handle)]
            globex_url = str(servers[0].make_url("")).rstrip("/")
            publish_relay(dns, "globex.test", globex_url)
            publish_relay(dns, "acme.test", str(servers[1].make_url("")).rstrip("/"))

            early, half = asyncio.Event(), asyncio.Event()
            bob_inbox = Inbox(http, globex_url, bob["token"])
            reader = asyncio.create_task(bob_inbox.until(N, (N // 10, early), (N // 2, half)))
            background.append(reader)

            # alice floods bob (and a ghost) through acme's API.
            to_bob: list[str] = []
            to_ghost: list[str] = []
            work = iter(range(N + GHOSTS_IN))

            async def submit() -> None:
                for n in work:
                    if n % ((N + GHOSTS_IN) // GHOSTS_IN) == 0 and len(to_ghost) < GHOSTS_IN:
                        to_ghost.append(
                            await send(http, acme_url, alice["token"], "ghost@globex.test", "?")
                        )
                    else:
                        to_bob.append(
                            await send(http, acme_url, alice["token"], "bob@globex.test", str(n))
                        )

            flood = asyncio.gather(*(submit() for _ in range(SENDERS)))
            background.append(flood)

            # A tenth in, carol writes to acme through all three globex processes.
            await early.wait()
            replies: list[str] = []
            bounces: list[str] = []
            carol_work = iter(range(REPLIES + GHOSTS_OUT))

            async def reply() -> None:
                for n in carol_work:
                    url = globex_urls[n % 3]
                    if n % 3 == 0:
                        bounces.append(
                            await send(http, url, carol["token"], "ghost@acme.test", "?")
                        )
                    else:
                        replies.append(
                            await send(http, url, carol["token"], "alice@acme.test", "re")
                        )

            await asyncio.gather(*(reply() for _ in range(6)))
            assert (len(replies), len(bounces)) == (REPLIES, GHOSTS_OUT)

            # Halfway, kill the globex process that holds leased queue rows (held at the gate).
            await gate.holding.wait()
            # Halfway — or sooner on a slow machine: the held transactions must not reach the
            # sender's 60 s transaction timeout, or their rows would be settled as deferred.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(half.wait(), HOLD_AT_MOST)
            holders = await lease_holders(database)
            victims = [g for g in globex if g.proc and f"synq/{g.proc.pid}" in holders]
            assert victims, f"no globex process holds leases: {holders}"
            victim = victims[0]
            killed_at = len(bob_inbox.messages)
            victim.kill()
            await victim.wait_killed()
            killed_after = time.perf_counter() - started
            gate.opened.set()

            await flood
            await asyncio.wait_for(reader, 300)
            await bob_inbox.nothing_more()
            delivered = time.perf_counter() - started

            # Every envelope in bob's inbox exactly once.
            got = [m["id"] for m in bob_inbox.messages]
            assert len(got) == len(set(got)) == N
            assert sorted(got) == sorted(to_bob)

            # carol's replies reached alice once each; acme's DSNs for the ghost came once each.
            alice_inbox = Inbox(http, acme_url, alice["token"])
            await alice_inbox.until(REPLIES + GHOSTS_IN)
            await alice_inbox.nothing_more()
            from_carol = [m["id"] for m in alice_inbox.messages if m["kind"] != "dsn"]
            acme_dsns = [m["in_reply_to"] for m in alice_inbox.messages if m["kind"] == "dsn"]
            assert sorted(from_carol) == sorted(replies)
            assert sorted(acme_dsns) == sorted(to_ghost)

            # globex's DSNs for acme's ghost: once each, whichever process settled the bounce.
            carol_inbox = Inbox(http, globex_url, carol["token"])
            await carol_inbox.until(GHOSTS_OUT)
            await asyncio.gather(drained(globex_dir), drained(acme_dir))
            await carol_inbox.nothing_more()
            globex_dsns = [m["in_reply_to"] for m in carol_inbox.messages]
            assert all(m["kind"] == "dsn" for m in carol_inbox.messages)
            assert sorted(globex_dsns) == sorted(bounces)
            assert await count_rows(database) == (N, GHOSTS_OUT)

            print(
                f"\nscale-out: {N} + {GHOSTS_IN} envelopes acme→globex, "
                f"{REPLIES} + {GHOSTS_OUT} globex→acme; globex process {victim.proc.pid if victim.proc else '?'} "
                f"SIGKILLed at {killed_after:.1f} s with bob at {killed_at}/{N} and "
                f"{gate.held} transactions held at the gate; all in bob's inbox at "
                f"{delivered:.1f} s; balancer retried {balancer.retried} requests; "
                f"requests per globex process {sorted(balancer.served.values())}"
            )
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await acme.stop()
            for g in globex:
                await g.stop()
            for server in servers:
                await server.close()


async def lease_holders(database: str) -> set[str]:
    """``application_name`` of the sessions whose store instances hold leases on queued rows."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        cursor = await conn.execute(LEASE_HOLDERS, (LEASE_LOCK_CLASS,))
        return {row[0] for row in await cursor.fetchall()}


async def count_rows(database: str) -> tuple[int, int]:
    """bob's inbox rows and the DSN envelopes globex wrote, counted in the database itself."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT (SELECT count(*) FROM inbox WHERE agent = 'bob'),"
            " (SELECT count(*) FROM envelopes WHERE kind = 'dsn')"
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])
