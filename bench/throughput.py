"""Throughput over HTTP: the bare aiohttp baseline, local send→inbox, relay→relay.

* ``baseline``: an aiohttp server answering the API's JSON POST with 202 and doing nothing else;
* ``local``: one relay, send → recipient's inbox (accepted with 202 = durable in SQLite);
* ``federated``: two relays and a loopback DNS server; alice@acme.test → bob@globex.test, end to
  end: accepted at acme (durable), signed, batched into transactions, verified and committed at
  globex, read from bob's inbox.

``local`` and ``federated`` take ``batch``: 1 sends one message per ``POST /synq/v1/messages``,
more sends that many per ``POST /synq/v1/messages/batch`` (SPEC.md §6.2.1), as an agent that
fans out would.

With PostgreSQL, globex.test runs on a throwaway durable cluster (fsync on,
``synchronous_commit`` on, like SQLite's FULL) as 1 and as 3 ``synq serve`` processes sharing
the database, 3 behind a round-robin balancer in the bench process as a load balancer would
stand in front of them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.common import (
    Federation,
    Proc,
    blast,
    cpu_seconds,
    drain_inbox,
    serve_argv,
    start,
    synq,
    unthrottle,
    workdir,
)

BASELINE_SERVER = """
import asyncio
from aiohttp import web
async def h(request):
    await request.read()
    return web.json_response({"id": "x", "status": "queued"}, status=202)
app = web.Application()
app.router.add_post("/synq/v1/messages", h)
async def main():
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print("listening on http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

#: Called with the relay processes of a run while the load runs (the profiler attaches).
OnServe = Callable[[str, list[Proc]], Awaitable[None]]


async def baseline(n: int, concurrency: int, base: Path) -> float:
    """Requests/s of the bare aiohttp server."""
    cwd = base / "baseline"
    cwd.mkdir()
    proc = await start([sys.executable, "-c", BASELINE_SERVER], cwd, "baseline")
    try:
        return n / await blast(proc.url, "x", n, concurrency)
    finally:
        await proc.stop()


async def local(n: int, concurrency: int, base: Path, batch: int = 1) -> float:
    """Messages/s sent to one relay (``batch`` per request) and read back from the recipient's
    inbox."""
    cwd = base / ("local" if batch == 1 else f"local-batch-{batch}")
    cwd.mkdir()
    await synq(cwd, "init", "--domain", "acme.test", "--dir", str(cwd), "--listen", "127.0.0.1:0")
    unthrottle(cwd)
    alice = (await synq(cwd, "agent", "add", "alice"))["token"]
    bob = (await synq(cwd, "agent", "add", "bob"))["token"]
    proc = await start(serve_argv(), cwd, "serve")
    try:
        started = time.perf_counter()
        await blast(proc.url, alice, n, concurrency, batch=batch)
        await drain_inbox(proc.url, bob, n)
        return n / (time.perf_counter() - started)
    finally:
        await proc.stop()


async def federated(
    n: int,
    concurrency: int,
    base: Path,
    store: str | None = None,
    processes: int = 1,
    on_serve: OnServe | None = None,
    batch: int = 1,
    cpu: dict[str, float] | None = None,
    label: str = "relay-to-relay",
) -> float:
    """Envelopes/s alice@acme.test → bob@globex.test, end to end. ``store``: the store URL of
    globex.test (default its own SQLite file), served by ``processes`` processes; ``batch``
    messages per request to acme. ``cpu``, when given, receives the CPU seconds per envelope
    of each relay (``acme``, ``globex``: every process and thread, from /proc) over the run."""
    workdir(base)
    async with Federation(base) as fed:
        acme = await fed.add("acme.test", ["alice"])
        globex = await fed.add("globex.test", ["bob"], store=store)
        await fed.serve(acme)
        await fed.serve(globex, processes)
        if on_serve is not None:
            await on_serve(label, acme.procs + globex.procs)
        pids = {"acme": [p.pid for p in acme.procs], "globex": [p.pid for p in globex.procs]}
        before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        started = time.perf_counter()
        await blast(
            acme.url, acme.tokens["alice"], n, concurrency, to="bob@globex.test", batch=batch
        )
        await drain_inbox(globex.url, globex.tokens["bob"], n)
        elapsed = time.perf_counter() - started
        if cpu is not None:
            for k, v in pids.items():
                cpu[k] = (sum(cpu_seconds(p) for p in v) - before[k]) / n
        return n / elapsed


def postgresql_available() -> str | None:
    """None when a throwaway cluster can be started here, else why not."""
    try:
        from tests.pg import pg_bindir
    except ImportError:
        return "tests/pg.py is not there"
    if pg_bindir() is None:
        return "no PostgreSQL server binaries on this machine"
    return None


async def federated_postgresql(
    n: int, concurrency: int, base: Path, processes: tuple[int, ...] = (1, 3), batch: int = 1
) -> dict[int, float]:
    """Envelopes/s of the federated run with globex.test on PostgreSQL, per process count;
    ``batch`` messages per request to acme (batched, the intake at acme is not what limits)."""
    from tests.pg import Cluster, pg_bindir

    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server binaries on this machine")
    cluster = Cluster(bindir, durable=True)
    try:
        cluster.start()
        rates: dict[int, float] = {}
        for count in processes:
            url = cluster.url(cluster.create_database())
            rates[count] = await federated(
                n, concurrency, base / f"postgresql-{count}", url, count, batch=batch
            )
        return rates
    finally:
        cluster.stop()
