"""``coordination``: work shared out by signals (SPEC.md §13) beside a central dispatcher, under
the same workload, in one run.

The workload, the same for every scenario: tasks arrive as a Poisson process (``rate`` a
second for ``seconds``), each needing one of four capabilities and taken by a worker that has it
(each worker has two); a worker serves one task at a time for an exponentially distributed time
(mean ``MEAN_SERVICE``, at most ``MAX_SERVICE``), heartbeating every third of the lease
(``LEASE``, the smallest a signal allows); every ``CHURN_EVERY`` seconds one worker holding a
claim is killed — its coroutine is cancelled mid-task, it never heartbeats, completes or releases
again — and the same agent comes back ``RESPAWN_AFTER`` later as a fresh worker that knows
nothing of its old claim. When the arrivals stop, the run waits until every task's result has
reached its emitter.

The scenarios:

* **dispatcher** (the baseline): a dispatcher process on a SQLite file
  (``synchronous=FULL``, WAL, like the relays): one queue table; a lease is one
  ``UPDATE … WHERE id = (SELECT … ORDER BY id LIMIT 1) RETURNING`` under ``BEGIN IMMEDIATE`` —
  SQLite's equivalent of ``FOR UPDATE SKIP LOCKED``; each task goes to the least-loaded waiting
  worker with the capability (fewest leases held, then fewest taken); heartbeat and complete are
  fenced by the lease's generation; a lapsed lease makes the task leasable again, and the
  dispatcher looks at the next lapse when it is due (at most a second later). Workers long-poll
  it over HTTP on loopback; emitters post tasks and long-poll their results.
* **signals, 1 relay**: one ``synq serve``; emitters ``POST /synq/v1/signals``, workers
  subscribe to their capabilities' topics, long-poll ``GET /synq/v1/signals?wait=``, claim,
  heartbeat and complete; each emitter long-polls its inbox for the results (``in_reply_to`` the
  signal).
* **signals, 2 relays**: acme.test and globex.test, emitters and workers at both, scope
  ``partners``: offers, updates and results cross between the relays, claims of the other
  relay's signals are signed requests to their owner.
* **signals, 2 relays, link cut**: the same, after both partner links are cut (each
  relay's partners reach it through a loopback forwarder, here stopped: connection refused) —
  no dispatcher to fall back on, each relay's own work must go on.

Figures per scenario: time from emit to the first claim (p50, p99), throughput (tasks completed
from the first emit to the last result), completions counted twice (by the workers' accepted
completes and by the results the emitters read: must be 0), orphan recovery (from a kill to
another claim of the task the killed worker held; target: at most the lease plus a second),
Jain's fairness index over the tasks each worker completed, and messages per task (every HTTP
request of every agent, and between relays every request through the forwarders, over the tasks
completed).

``python -m bench.coordination dispatcher DB`` is the dispatcher process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp
from aiohttp import web

from bench.common import (
    ROOT,
    Federation,
    Org,
    Proc,
    env_with_root,
    percentile,
    serve_argv,
    start,
    workdir,
)
from bench.signals import _partners
from relay.config import load_config
from relay.core.ids import hash_token, new_token
from relay.store import open_store

#: The lease of every claim, both sides (``MIN_LEASE`` of SPEC.md §13.7: the shortest allowed,
#: so that recovery is measured in seconds).
LEASE: Final = 5.0
#: A worker holding a claim heartbeats this often.
HEARTBEAT: Final = LEASE / 3
#: Service times: exponential with this mean, cut at MAX_SERVICE (past one heartbeat).
MEAN_SERVICE: Final = 0.4
MAX_SERVICE: Final = 4.0
#: One worker holding a claim is killed this often while tasks arrive, and comes back after
#: RESPAWN_AFTER as a fresh worker.
CHURN_EVERY: Final = 3.0
RESPAWN_AFTER: Final = 1.0
#: The four capabilities; each worker has two of them, each task needs one.
CAPABILITIES: Final = ("translate", "summarize", "classify", "extract")
#: Emitting agents per relay (and at the dispatcher): the arrivals are spread over them, so
#: each stays well inside the default emit rate (SPEC.md §13.7: 5/s, burst 50).
EMITTERS: Final = 3
#: Long-poll waits of workers and emitters, seconds.
POLL_WAIT: Final = 10
#: After a claim refused (taken, or the owner unreachable) a worker leaves that signal alone for
#: this long: a replica's state catches up with the owner's by an update, and a lapse (the only
#: way it opens again) is at least a lease away.
SKIP_REFUSED: Final = 1.0
#: How long the run waits, after the arrivals, for every result.
DRAIN_LIMIT: Final = 60.0
#: Quick-run defaults: seconds of arrivals per scenario, arrivals a second, workers.
SECONDS: Final = 20.0
RATE: Final = 6.0
AGENTS: Final = 20


# figures --------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one scenario counted, as it happened (times from ``time.perf_counter``)."""

    name: str
    workers: list[str] = field(default_factory=list)
    emitted: dict[str, float] = field(default_factory=dict)
    first_claim: dict[str, float] = field(default_factory=dict)
    first_heard: dict[str, float] = field(default_factory=dict)
    completes: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    done_by: Counter[str] = field(default_factory=Counter)
    orphaned: dict[str, float] = field(default_factory=dict)
    recoveries: list[float] = field(default_factory=list)
    requests: int = 0
    relay_requests: int = 0
    refused_emits: int = 0
    refused_claims: int = 0
    lost_leases: int = 0
    last_result: float = 0.0

    def claimed(self, task: str) -> None:
        now = time.perf_counter()
        # The claim can come before the emitter has read the answer to its emit: kept by id.
        self.first_claim.setdefault(task, now)
        killed = self.orphaned.pop(task, None)
        if killed is not None:
            self.recoveries.append(now - killed)

    def result(self, task: str) -> None:
        self.results[task] += 1
        self.last_result = time.perf_counter()

    def outstanding(self) -> int:
        return sum(1 for t in self.emitted if not self.results[t])


@dataclass
class Outcome:
    """A scenario's figures."""

    name: str
    emitted: int
    completed: int
    seconds: float
    claim_p50: float
    claim_p99: float
    heard_p50: float
    doubles: int
    kills: int
    recovery_p50: float
    recovery_max: float
    unrecovered: int
    jain: float
    per_task: float
    relay_per_task: float
    refused_emits: int
    refused_claims: float
    lost_leases: int

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: (Σx)² / (n·Σx²), 1 when all are equal, 1/n when one has all."""
    square = sum(v * v for v in values)
    return sum(values) ** 2 / (len(values) * square) if square > 0 else 1.0


def outcome(t: Tally, started: float) -> Outcome:
    waits = [t.first_claim[k] - t.emitted[k] for k in t.emitted if k in t.first_claim]
    heard = [t.first_heard[k] - t.emitted[k] for k in t.emitted if k in t.first_heard]
    completed = sum(1 for k in t.emitted if t.results[k])
    doubles = len(
        {k for k, n in t.completes.items() if n > 1} | {k for k, n in t.results.items() if n > 1}
    )
    return Outcome(
        name=t.name,
        emitted=len(t.emitted),
        completed=completed,
        seconds=max(t.last_result - started, 1e-9),
        claim_p50=percentile(waits, 50) if waits else float("nan"),
        claim_p99=percentile(waits, 99) if waits else float("nan"),
        heard_p50=percentile(heard, 50) if heard else float("nan"),
        doubles=doubles,
        kills=len(t.recoveries) + len(t.orphaned),
        recovery_p50=percentile(t.recoveries, 50) if t.recoveries else float("nan"),
        recovery_max=max(t.recoveries) if t.recoveries else float("nan"),
        unrecovered=len(t.orphaned),
        jain=jain([float(t.done_by[w]) for w in t.workers]),
        per_task=(t.requests + t.relay_requests) / completed if completed else float("nan"),
        relay_per_task=t.relay_requests / completed if completed else 0.0,
        refused_emits=t.refused_emits,
        refused_claims=t.refused_claims / completed if completed else 0.0,
        lost_leases=t.lost_leases,
    )


# the two faces of one workload ----------------------------------------------------------------


@dataclass
class Agent:
    """An emitter or a worker: its name, the server it talks to, its bearer token, and for a
    worker its capabilities."""

    name: str
    url: str
    token: str = ""
    caps: tuple[str, ...] = ()


class Face(Protocol):
    """How agents emit, take, heartbeat, complete and read results on one side."""

    async def emit(self, emitter: Agent, capability: str) -> str | None: ...
    async def take(self, worker: Agent) -> tuple[str, str] | None: ...
    async def heartbeat(self, worker: Agent, task: str, token: str) -> bool: ...
    async def complete(self, worker: Agent, task: str, token: str) -> bool: ...
    async def results(self, emitter: Agent) -> list[str]: ...


class Client:
    """The agents' HTTP client: every request counted in the tally."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=POLL_WAIT + 60),
        )

    async def call(
        self, method: str, url: str, token: str = "", body: Any = None
    ) -> tuple[int, Any]:
        self.tally.requests += 1
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, url, json=body, headers=headers) as resp:
            data = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, data

    async def close(self) -> None:
        await self.http.close()


def _topic(capability: str) -> str:
    return f"task.{capability}"


class SignalFace:
    """Agents of ``synq serve`` processes, through the REST API of SPEC.md §13.3."""

    def __init__(self, client: Client, scope: str, rng: random.Random) -> None:
        self.client = client
        self.scope = scope
        self.rng = rng
        self.skip: dict[tuple[str, str], float] = {}
        self.cursor: dict[str, int] = {}

    async def emit(self, emitter: Agent, capability: str) -> str | None:
        body = {
            "topic": _topic(capability),
            "text": "bench task",
            "urgency": round(0.5 + self.rng.random() / 2, 3),
            "lease": LEASE,
            "scope": self.scope,
        }
        status, data = await self.client.call(
            "POST", f"{emitter.url}/synq/v1/signals", emitter.token, body
        )
        if status == 429:
            return None
        if status != 201:
            raise RuntimeError(f"emit: {status} {data}")
        return str(data["id"])

    async def take(self, worker: Agent) -> tuple[str, str] | None:
        status, data = await self.client.call(
            "GET", f"{worker.url}/synq/v1/signals?wait={POLL_WAIT}&limit=20", worker.token
        )
        if status != 200:
            raise RuntimeError(f"feed: {status} {data}")
        now = time.perf_counter()
        for s in data["signals"]:
            self.client.tally.first_heard.setdefault(s["id"], now)
        heard = [s["id"] for s in data["signals"] if self.skip.get((worker.name, s["id"]), 0) < now]
        if not heard:
            if data["signals"]:
                # Only signals just refused: a replica that has not caught up yet.
                await asyncio.sleep(0.2)
            return None
        # The strongest first, but not all workers on the same one: the first three in a
        # random order, then the rest.
        head = heard[:3]
        self.rng.shuffle(head)
        for sid in head + heard[3:]:
            status, data = await self.client.call(
                "POST", f"{worker.url}/synq/v1/signals/{sid}/claim", worker.token
            )
            if status == 200:
                return sid, str(data["claim"]["token"])
            if status in (404, 409, 503):
                self.client.tally.refused_claims += 1
                self.skip[(worker.name, sid)] = time.perf_counter() + SKIP_REFUSED
                continue
            raise RuntimeError(f"claim: {status} {data}")
        return None

    async def heartbeat(self, worker: Agent, task: str, token: str) -> bool:
        status, _ = await self.client.call(
            "POST", f"{worker.url}/synq/v1/signals/{task}/heartbeat", worker.token,
            {"token": token},
        )  # fmt: skip
        return status == 200

    async def complete(self, worker: Agent, task: str, token: str) -> bool:
        status, _ = await self.client.call(
            "POST", f"{worker.url}/synq/v1/signals/{task}/complete", worker.token,
            {"token": token, "body": "done"},
        )  # fmt: skip
        return status == 200

    async def results(self, emitter: Agent) -> list[str]:
        """The results in the emitter's inbox since the last read (``in_reply_to`` the signal),
        paged by cursor: reading does not consume, so nothing is acked."""
        url = f"{emitter.url}/synq/v1/inbox?wait={POLL_WAIT}&all=1&limit=200"
        after = self.cursor.get(emitter.name)
        if after is not None:
            url += f"&after={after}"
        status, data = await self.client.call("GET", url, emitter.token)
        if status != 200:
            raise RuntimeError(f"inbox: {status} {data}")
        if data["cursor"] is not None:
            self.cursor[emitter.name] = data["cursor"]
        return [m["in_reply_to"] for m in data["messages"] if m.get("in_reply_to")]


class DispatcherFace:
    """Agents of the central dispatcher (``Dispatcher`` below), over HTTP."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.cursor: dict[str, int] = {}

    async def emit(self, emitter: Agent, capability: str) -> str | None:
        status, data = await self.client.call(
            "POST", f"{emitter.url}/tasks", body={"capability": capability, "emitter": emitter.name}
        )
        if status != 201:
            raise RuntimeError(f"submit: {status} {data}")
        return str(data["id"])

    async def take(self, worker: Agent) -> tuple[str, str] | None:
        caps = ",".join(worker.caps)
        status, data = await self.client.call(
            "GET", f"{worker.url}/work?worker={worker.name}&caps={caps}&wait={POLL_WAIT}"
        )
        if status == 204:
            return None
        if status != 200:
            raise RuntimeError(f"work: {status} {data}")
        # The assignment is the worker's first word of the task.
        self.client.tally.first_heard.setdefault(str(data["id"]), time.perf_counter())
        return str(data["id"]), str(data["gen"])

    async def heartbeat(self, worker: Agent, task: str, token: str) -> bool:
        status, _ = await self.client.call(
            "POST",
            f"{worker.url}/tasks/{task}/heartbeat",
            body={"worker": worker.name, "gen": int(token)},
        )
        return status == 200

    async def complete(self, worker: Agent, task: str, token: str) -> bool:
        status, _ = await self.client.call(
            "POST",
            f"{worker.url}/tasks/{task}/complete",
            body={"worker": worker.name, "gen": int(token)},
        )
        return status == 200

    async def results(self, emitter: Agent) -> list[str]:
        after = self.cursor.get(emitter.name, 0)
        status, data = await self.client.call(
            "GET", f"{emitter.url}/results?emitter={emitter.name}&after={after}&wait={POLL_WAIT}"
        )
        if status != 200:
            raise RuntimeError(f"results: {status} {data}")
        if data["results"]:
            self.cursor[emitter.name] = data["results"][-1]["seq"]
        return [str(r["task"]) for r in data["results"]]


# the workload ---------------------------------------------------------------------------------


@dataclass
class Running:
    """A worker coroutine and what it holds: the churn kills only a worker asleep in its task."""

    agent: Agent
    task: asyncio.Task[None] | None = None
    holding: str | None = None
    asleep: bool = False


async def _work(face: Face, w: Running, tally: Tally, rng: random.Random) -> None:
    while True:
        got = await face.take(w.agent)
        if got is None:
            continue
        task, token = got
        tally.claimed(task)
        end = time.perf_counter() + min(MAX_SERVICE, rng.expovariate(1 / MEAN_SERVICE))
        kept = True
        w.holding = task
        while (left := end - time.perf_counter()) > 0:
            w.asleep = True
            try:
                await asyncio.sleep(min(left, HEARTBEAT))
            finally:
                w.asleep = False
            if time.perf_counter() < end and not await face.heartbeat(w.agent, task, token):
                kept = False
                break
        w.holding = None
        if kept and await face.complete(w.agent, task, token):
            tally.completes[task] += 1
            tally.done_by[w.agent.name] += 1
        else:
            # The lease lapsed under a live worker: a heartbeat or the complete refused as stale.
            tally.lost_leases += 1


async def _read_results(face: Face, emitter: Agent, tally: Tally) -> None:
    while True:
        for task in await face.results(emitter):
            tally.result(task)


async def _churn(
    workers: list[Running],
    tally: Tally,
    rng: random.Random,
    until: float,
    spawn: Callable[[Running], None],
) -> None:
    while time.perf_counter() + CHURN_EVERY < until:
        await asyncio.sleep(CHURN_EVERY)
        holders = [w for w in workers if w.asleep and w.holding is not None and w.task is not None]
        if not holders:
            continue
        victim = rng.choice(holders)
        assert victim.task is not None
        assert victim.holding is not None
        tally.orphaned[victim.holding] = time.perf_counter()
        victim.task.cancel()
        victim.holding = None
        victim.task = None
        asyncio.get_running_loop().call_later(RESPAWN_AFTER, spawn, victim)


async def drive(
    face: Face,
    tally: Tally,
    emitters: list[Agent],
    workers: list[Agent],
    seconds: float,
    rate: float,
    seed: int,
) -> float:
    """Run the workload; returns the time of the first emit (``time.perf_counter``)."""
    # The arrivals (times, emitters, capabilities) from their own generator: every scenario run
    # with the same seed gets the same sequence, whatever the workers draw.
    arrivals, rng = random.Random(seed), random.Random(seed + 1)
    tally.workers = [w.name for w in workers]
    running = [Running(w) for w in workers]
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(r: Running) -> None:
        r.task = asyncio.get_running_loop().create_task(_work(face, r, tally, rng))

    for r in running:
        spawn(r)
    readers = [asyncio.create_task(_read_results(face, e, tally)) for e in emitters]

    async def emit_one(emitter: Agent, capability: str) -> None:
        started = time.perf_counter()
        task = await face.emit(emitter, capability)
        if task is None:
            tally.refused_emits += 1
        else:
            tally.emitted[task] = started

    first = time.perf_counter()
    until = first + seconds
    churn = asyncio.create_task(_churn(running, tally, rng, until, spawn))
    try:
        at = first
        while True:
            at += arrivals.expovariate(rate)
            if at >= until:
                break
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            job = asyncio.create_task(
                emit_one(arrivals.choice(emitters), arrivals.choice(CAPABILITIES))
            )
            tasks.add(job)
            job.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        give_up = time.perf_counter() + DRAIN_LIMIT
        while tally.outstanding() and time.perf_counter() < give_up:
            for t in (*readers, *(r.task for r in running if r.task is not None)):
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise RuntimeError(f"{tally.name}: an agent failed") from t.exception()
            await asyncio.sleep(0.1)
    finally:
        everything = [churn, *readers, *(r.task for r in running if r.task is not None)]
        for t in everything:
            t.cancel()
        await asyncio.gather(*everything, return_exceptions=True)
    return first


def _assign_caps(names: Sequence[str], offset: int = 0) -> list[tuple[str, tuple[str, ...]]]:
    """Two capabilities each, in turn: (translate, summarize), (summarize, classify), …"""
    n = len(CAPABILITIES)
    return [
        (name, (CAPABILITIES[(i + offset) % n], CAPABILITIES[(i + offset + 1) % n]))
        for i, name in enumerate(names)
    ]


# the central dispatcher -----------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    capability TEXT NOT NULL,
    emitter TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    worker TEXT,
    gen INTEGER NOT NULL DEFAULT 0,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (state, capability, id);
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (state, lease_until);
CREATE TABLE IF NOT EXISTS completions (
    seq INTEGER PRIMARY KEY,
    task INTEGER NOT NULL,
    worker TEXT NOT NULL,
    emitter TEXT NOT NULL
);
"""

#: Open work: queued, or leased with the lease run out.
_OPEN = "(state = 'queued' OR (state = 'leased' AND lease_until < :now))"


@dataclass
class _Waiter:
    caps: frozenset[str]
    since: float
    answer: asyncio.Future[dict[str, Any]]


def _fetch_one(sql: str, params: dict[str, Any], conn: sqlite3.Connection) -> Any:
    return conn.execute(sql, params).fetchone()


class Dispatcher:
    """The baseline (module docstring): one queue in one SQLite file, leases granted by the
    dispatcher to the least-loaded waiting worker. All SQL runs on one connection in a worker
    thread, one transaction at a time (``BEGIN IMMEDIATE``: the write lock first, so two
    leases of the same row cannot both read it open)."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.executescript(SCHEMA)
        self.lock = asyncio.Lock()
        self.waiters: dict[str, _Waiter] = {}
        self.taken: Counter[str] = Counter()
        self.wake = asyncio.Event()
        self.completed = asyncio.Event()

    async def _txn(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def run() -> Any:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self.conn)
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            return out

        async with self.lock:
            return await asyncio.to_thread(run)

    async def _read(self, sql: str, params: dict[str, Any]) -> list[Any]:
        async with self.lock:
            return await asyncio.to_thread(lambda: self.conn.execute(sql, params).fetchall())

    # routes

    async def submit(self, request: web.Request) -> web.Response:
        data = await request.json()
        row = await self._txn(
            lambda c: c.execute(
                "INSERT INTO tasks (capability, emitter) VALUES (?, ?) RETURNING id",
                (data["capability"], data["emitter"]),
            ).fetchone()
        )
        self.wake.set()
        return web.json_response({"id": row[0]}, status=201)

    async def work(self, request: web.Request) -> web.Response:
        worker = request.query["worker"]
        caps = frozenset(request.query["caps"].split(","))
        wait = float(request.query.get("wait", "0"))
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters[worker] = _Waiter(caps, time.monotonic(), answer)
        self.wake.set()
        try:
            return web.json_response(await asyncio.wait_for(asyncio.shield(answer), wait))
        except TimeoutError:
            if self.waiters.get(worker) is not None and self.waiters[worker].answer is answer:
                del self.waiters[worker]
            if answer.done():
                return web.json_response(answer.result())
            return web.Response(status=204)

    async def heartbeat(self, request: web.Request) -> web.Response:
        task, data = int(request.match_info["id"]), await request.json()
        now = time.time()
        params = {"id": task, "gen": data["gen"], "worker": data["worker"], "now": now,
                  "until": now + LEASE}  # fmt: skip
        n = await self._txn(
            lambda c: (
                c.execute(
                    "UPDATE tasks SET lease_until = :until WHERE id = :id AND gen = :gen "
                    "AND worker = :worker AND state = 'leased' AND lease_until >= :now",
                    params,
                ).rowcount
            )
        )
        return web.json_response({"ok": bool(n)}, status=200 if n else 409)

    async def complete(self, request: web.Request) -> web.Response:
        task, data = int(request.match_info["id"]), await request.json()
        params = {"id": task, "gen": data["gen"], "worker": data["worker"], "now": time.time()}

        def finish(c: sqlite3.Connection) -> bool:
            row = c.execute(
                "UPDATE tasks SET state = 'done', lease_until = NULL WHERE id = :id "
                "AND gen = :gen AND worker = :worker AND state = 'leased' "
                "AND lease_until >= :now RETURNING emitter",
                params,
            ).fetchone()
            if row is None:
                return False
            c.execute(
                "INSERT INTO completions (task, worker, emitter) VALUES (?, ?, ?)",
                (task, data["worker"], row[0]),
            )
            return True

        done = await self._txn(finish)
        if done:
            self.completed.set()
            self.completed = asyncio.Event()
        return web.json_response({"ok": done}, status=200 if done else 409)

    async def results(self, request: web.Request) -> web.Response:
        params = {"emitter": request.query["emitter"], "after": int(request.query["after"])}
        sql = ("SELECT seq, task FROM completions WHERE emitter = :emitter AND seq > :after "
               "ORDER BY seq LIMIT 500")  # fmt: skip
        deadline = time.monotonic() + float(request.query.get("wait", "0"))
        while True:
            changed = self.completed
            rows = await self._read(sql, params)
            left = deadline - time.monotonic()
            if rows or left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
        return web.json_response({"results": [{"seq": s, "task": t} for s, t in rows]})

    async def stats(self, _request: web.Request) -> web.Response:
        rows = await self._read(
            "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM tasks WHERE state = 'done'),"
            " (SELECT count(*) FROM (SELECT task FROM completions GROUP BY task HAVING count(*) > 1))",
            {},
        )
        tasks, done, doubles = rows[0]
        return web.json_response({"tasks": tasks, "done": done, "double_completions": doubles})

    # assignment

    async def assign(self) -> None:
        """Lease open tasks to waiting workers, the least loaded first, until no waiting worker
        has a capability some open task needs."""
        while self.waiters:
            now = time.time()
            rows = await self._read(
                f"SELECT DISTINCT capability FROM tasks WHERE {_OPEN}", {"now": now}
            )
            wanted = {r[0] for r in rows}
            if not wanted:
                return
            held = dict(
                await self._read(
                    "SELECT worker, count(*) FROM tasks WHERE state = 'leased' "
                    "AND lease_until >= :now GROUP BY worker",
                    {"now": now},
                )
            )
            order = sorted(
                (w for w in self.waiters.items() if w[1].caps & wanted),
                key=lambda w: (held.get(w[0], 0), self.taken[w[0]], w[1].since),
            )
            if not order:
                return
            name, waiter = order[0]
            caps = sorted(waiter.caps & wanted)
            marks = ", ".join(f":c{i}" for i in range(len(caps)))
            params: dict[str, Any] = {f"c{i}": c for i, c in enumerate(caps)}
            params.update(worker=name, now=now, until=now + LEASE)
            lease = (
                "UPDATE tasks SET state = 'leased', worker = :worker, gen = gen + 1, "
                "lease_until = :until WHERE id = (SELECT id FROM tasks WHERE "
                f"capability IN ({marks}) AND {_OPEN} ORDER BY id LIMIT 1) "
                "RETURNING id, gen"
            )
            row = await self._txn(partial(_fetch_one, lease, params))
            if row is None:
                continue
            del self.waiters[name]
            self.taken[name] += 1
            if waiter.answer.done():
                continue  # its poll ended meanwhile: the lease lapses like a dead worker's
            waiter.answer.set_result({"id": row[0], "gen": row[1]})

    async def assigner(self) -> None:
        while True:
            rows = await self._read("SELECT min(lease_until) FROM tasks WHERE state = 'leased'", {})
            due = rows[0][0]
            timeout = 1.0 if due is None else min(1.0, max(0.0, due - time.time()) + 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
            self.wake.clear()
            await self.assign()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/tasks", self.submit)
        app.router.add_get("/work", self.work)
        app.router.add_post("/tasks/{id}/heartbeat", self.heartbeat)
        app.router.add_post("/tasks/{id}/complete", self.complete)
        app.router.add_get("/results", self.results)
        app.router.add_get("/stats", self.stats)
        return app


async def _serve_dispatcher(db: Path) -> None:
    dispatcher = Dispatcher(db)
    runner = web.AppRunner(dispatcher.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    assigner = asyncio.create_task(dispatcher.assigner())
    try:
        await asyncio.Event().wait()
    finally:
        assigner.cancel()
        await runner.cleanup()


# partner links --------------------------------------------------------------------------------

_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


class Link:
    """A loopback forwarder in front of a relay: its partners reach it only through this, so the
    bench counts what crosses between relays, and ``cut`` stops it (connection refused)."""

    def __init__(self, target: str, tally: Callable[[], Tally]) -> None:
        self.target = target
        self.tally = tally
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def forward(self, request: web.Request) -> web.Response:
        self.tally().relay_requests += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self.http.request(
            request.method, self.target + request.path_qs, data=await request.read(),
            headers=headers, allow_redirects=False,
        ) as resp:  # fmt: skip
            out = {
                k: v
                for k, v in resp.headers.items()
                if k.lower() not in _HOP and k.lower() != "content-encoding"
            }
            return web.Response(status=resp.status, body=await resp.read(), headers=out)

    async def start(self) -> str:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def cut(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def close(self) -> None:
        await self.cut()
        await self.http.close()


# scenarios ------------------------------------------------------------------------------------


async def _add_agents(org: Org, names: Sequence[str]) -> None:
    """Register inbox agents through the store API, before the relay starts (one CLI process
    per agent would cost seconds each on a loaded machine)."""
    config = load_config(org.cwd / "synq.toml")
    store = await open_store(config.store_url, domain=org.domain)
    try:
        for name in names:
            token = new_token()
            await store.create_agent(name, "inbox", hash_token(token), None, datetime.now(UTC))
            org.tokens[name] = token
    finally:
        await store.close()


async def _subscribe(client: Client, workers: Sequence[Agent]) -> None:
    for w in workers:
        status, data = await client.call(
            "PUT", f"{w.url}/synq/v1/subscriptions", w.token,
            {"topics": [_topic(c) for c in w.caps]},
        )  # fmt: skip
        if status != 200:
            raise RuntimeError(f"subscribe {w.name}: {status} {data}")


async def _scenario(
    name: str,
    face_of: Callable[[Client], Face],
    emitters: list[Agent],
    workers: list[Agent],
    seconds: float,
    rate: float,
    seed: int,
    prepare: Callable[[Client], Awaitable[None]] | None = None,
    on_tally: Callable[[Tally], None] | None = None,
) -> Outcome:
    tally = Tally(name)
    if on_tally is not None:
        on_tally(tally)
    client = Client(tally)
    try:
        if prepare is not None:
            await prepare(client)
            tally.requests = 0
        first = await drive(face_of(client), tally, emitters, workers, seconds, rate, seed)
    finally:
        await client.close()
    return outcome(tally, first)


async def baseline(base: Path, agents: int, seconds: float, rate: float) -> Outcome:
    """The central dispatcher under the workload (module docstring)."""
    workdir(base)
    argv = [sys.executable, "-m", "bench.coordination", "dispatcher", str(base / "queue.db")]
    proc: Proc = await start(argv, base, "dispatcher", env=env_with_root())
    try:
        workers = [
            Agent(n, proc.url, caps=c) for n, c in _assign_caps([f"w{i:02}" for i in range(agents)])
        ]
        emitters = [Agent(f"e{i}", proc.url) for i in range(EMITTERS)]
        result = await _scenario(
            "dispatcher (baseline)", DispatcherFace, emitters, workers, seconds, rate, 1
        )
        async with aiohttp.ClientSession() as http, http.get(f"{proc.url}/stats") as r:
            stats = await r.json()
        # The store's own count beside the agents': a task completed twice in the queue table.
        result.doubles = max(result.doubles, int(stats["double_completions"]))
        return result
    finally:
        await proc.stop()


async def signals(base: Path, agents: int, seconds: float, rate: float) -> list[Outcome]:
    """The three signal scenarios on two ``synq serve`` processes (module docstring)."""
    half = agents // 2
    acme_workers = [f"w{i:02}" for i in range(agents)]
    globex_workers = [f"g{i:02}" for i in range(agents - half)]
    current: list[Tally] = [Tally("")]
    links: list[Link] = []
    outcomes: list[Outcome] = []
    async with Federation(base) as fed:
        acme = await fed.add("acme.test")
        globex = await fed.add("globex.test")
        _partners(acme, globex.domain)
        _partners(globex, acme.domain)
        await asyncio.gather(
            _add_agents(acme, [*acme_workers, *(f"e{i}" for i in range(EMITTERS))]),
            _add_agents(globex, [*globex_workers, *(f"f{i}" for i in range(EMITTERS))]),
        )
        for org in (acme, globex):
            proc = await start(serve_argv(), org.cwd, "serve-0")
            org.procs.append(proc)
            org.url = proc.url
            link = Link(proc.url, lambda: current[0])
            links.append(link)
            fed.publish(org.domain, await link.start())
        try:

            def agents_of(org: Org, names: Sequence[str], offset: int = 0) -> list[Agent]:
                return [Agent(n, org.url, org.tokens[n], c) for n, c in _assign_caps(names, offset)]

            def emitters_of(org: Org, prefix: str) -> list[Agent]:
                return [
                    Agent(f"{prefix}{i}", org.url, org.tokens[f"{prefix}{i}"])
                    for i in range(EMITTERS)
                ]

            def face(scope: str, seed: int) -> Callable[[Client], Face]:
                return lambda client: SignalFace(client, scope, random.Random(seed))

            def track(t: Tally) -> None:
                current[0] = t

            local_workers = agents_of(acme, acme_workers)
            outcomes.append(
                await _scenario(
                    "signals, 1 relay", face("local", 2), emitters_of(acme, "e"), local_workers,
                    seconds, rate, 1, lambda c: _subscribe(c, local_workers), track,
                )
            )  # fmt: skip
            both = agents_of(acme, acme_workers[:half]) + agents_of(globex, globex_workers, half)
            emitters = emitters_of(acme, "e") + emitters_of(globex, "f")
            outcomes.append(
                await _scenario(
                    "signals, 2 relays", face("partners", 3), emitters, both, seconds, rate, 1,
                    lambda c: _subscribe(c, both), track,
                )
            )  # fmt: skip
            for link in links:
                await link.cut()
            outcomes.append(
                await _scenario(
                    "signals, 2 relays, link cut", face("partners", 4), emitters, both,
                    seconds, rate, 1, None, track,
                )
            )  # fmt: skip
        finally:
            for link in links:
                await link.close()
    return outcomes


async def run(
    base: Path, agents: int = AGENTS, seconds: float = SECONDS, rate: float = RATE
) -> list[Outcome]:
    """The baseline, then the three signal scenarios."""
    first = await baseline(base / "dispatcher", agents, seconds, rate)
    return [first, *await signals(base / "signals", agents, seconds, rate)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.coordination")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dispatcher", help="the central dispatcher process (the baseline)")
    d.add_argument("db", type=Path)
    r = sub.add_parser("run", help="the section alone, its figures as JSON")
    r.add_argument("dir", type=Path)
    r.add_argument("--seconds", type=float, default=SECONDS)
    r.add_argument("--agents", type=int, default=AGENTS)
    r.add_argument("--rate", type=float, default=RATE)
    args = ap.parse_args(argv)
    if args.command == "dispatcher":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_dispatcher(args.db))
        return 0
    found = asyncio.run(run(args.dir, args.agents, args.seconds, args.rate))
    print(json.dumps([o.__dict__ for o in found], indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
