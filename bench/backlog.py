"""Memory and growth: a sending relay with Q envelopes queued for a partner that is down, then
the drain when the partner comes back.

For each queue size Q:

1. acme.test and globex.test are set up; globex.test's relay URL is published on a loopback
   port chosen free where nothing listens yet (the partner is down: connections are refused);
2. ``bench.fill`` queues Q signed envelopes alice@acme.test → bob@globex.test through the store
   API (the relay is not running yet);
3. acme's relay starts and sweeps its queue: every row is leased, tried or held back by the
   breaker, and deferred. The sweep is over when no queued row is left that the relay has not
   settled since it started. Its RSS is sampled throughout: the peak and the value at the end
   are reported, and RSS / Q;
3a. the operator opens the console: one ``GET /console/api/snapshot`` (SPEC.md §14.2) on acme's
   admin listener, timed, and acme's RSS after it (a snapshot that read the whole queue cost
   gigabytes at a million rows);
4. globex's relay starts on that port, ``synq queue flush`` makes every row due, and the clock
   runs until all Q envelopes are in bob's inbox at globex (counted in globex's database,
   read-only, so the count costs the relays nothing).

The drain rate (Q / drain seconds) is compared with the fresh-queue relay→relay rate measured
in the same run; RSS at the largest Q is compared with RSS at the smallest.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench.common import Federation, Proc, env_with_root, free_port, synq, workdir
from bench.throughput import OnServe

#: Seconds between two RSS samples / progress reads.
SAMPLE_INTERVAL = 0.5


@dataclass
class BacklogResult:
    queued: int
    fill_seconds: float
    sweep_seconds: float
    rss_start: int
    rss_peak: int
    rss_end: int
    #: One console snapshot after the sweep: its time, and acme's RSS after it.
    console_seconds: float
    rss_console: int
    drain_seconds: float

    @property
    def rss_per_envelope(self) -> float:
        return self.rss_peak / self.queued

    @property
    def drain_rate(self) -> float:
        return self.queued / self.drain_seconds

    @property
    def sweep_rate(self) -> float:
        return self.queued / self.sweep_seconds


def _count(db: Path, sql: str, params: tuple[object, ...] = ()) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute(sql, params).fetchone()
        return int(row[0])
    finally:
        conn.close()


def _ts(value: datetime) -> str:
    """The store's fixed-width UTC text (relay/store/sqlite.py), for comparisons in SQL."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


async def _admin_url(proc: Proc) -> str:
    """The admin listener's URL, from the line ``synq serve`` prints after its first."""
    assert proc.proc.stdout is not None
    line = (await asyncio.wait_for(proc.proc.stdout.readline(), 60)).decode()
    if "admin listener on " not in line:
        raise RuntimeError(f"no admin listener line from synq serve: {line!r}")
    return line.split("admin listener on ", 1)[1].split()[0]


async def _console_snapshot(admin: str, token: str, queued: int) -> float:
    """Seconds for one console snapshot, checked to count the whole queue."""
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.get(
            f"{admin}/console/api/snapshot", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            response.raise_for_status()
            snapshot = await response.json()
        took = time.perf_counter() - started
    if snapshot["queued"] != queued:
        raise RuntimeError(f"the console counted {snapshot['queued']} queued, not {queued}")
    return took


async def run(
    queued: int, base: Path, timeout: float = 3600.0, on_serve: OnServe | None = None
) -> BacklogResult:
    workdir(base)
    async with Federation(base) as fed:
        acme = await fed.add("acme.test", ["alice"])
        port = free_port()
        globex = await fed.add("globex.test", ["bob"], listen=f"127.0.0.1:{port}")
        fed.publish("globex.test", f"http://127.0.0.1:{port}")

        started = time.perf_counter()
        filler = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.fill", str(acme.cwd / "synq.toml"), str(queued),
            "bob@globex.test", cwd=acme.cwd, env=env_with_root(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _out, err = await asyncio.wait_for(filler.communicate(), timeout)
        if filler.returncode != 0:
            raise RuntimeError(f"bench.fill failed: {err.decode(errors='replace')[-2000:]}")
        fill_seconds = time.perf_counter() - started

        token = (await synq(acme.cwd, "admin", "token"))["token"]
        serve_start = datetime.now(UTC)
        await fed.serve(acme)
        proc = acme.procs[0]
        admin = await _admin_url(proc)
        started = time.perf_counter()
        rss_start = rss_peak = proc.rss()
        untouched = "SELECT count(*) FROM recipients WHERE state = 'queued' AND updated < ?"
        next_check = 0.0
        deadline = started + timeout
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            rss_peak = max(rss_peak, proc.rss())
            now = time.perf_counter()
            if now >= next_check:
                left = await asyncio.to_thread(_count, acme.db, untouched, (_ts(serve_start),))
                if left == 0:
                    break
                # A full count scans the table: look less often the larger it is.
                next_check = now + max(SAMPLE_INTERVAL, queued / 500_000)
            if now > deadline:
                raise RuntimeError(f"acme's relay did not sweep its queue in {timeout:.0f} s")
        sweep_seconds = time.perf_counter() - started
        rss_end = proc.rss()
        console_seconds = await _console_snapshot(admin, token, queued)
        rss_console = proc.rss()

        await fed.serve(globex)
        if on_serve is not None:
            await on_serve(f"drain-{queued}", acme.procs + globex.procs)
        started = time.perf_counter()
        await synq(acme.cwd, "queue", "flush")
        inbox = "SELECT count(*) FROM inbox"
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            if await asyncio.to_thread(_count, globex.db, inbox) >= queued:
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the backlog of {queued} did not drain in {timeout:.0f} s")
        drain_seconds = time.perf_counter() - started
        return BacklogResult(
            queued=queued,
            fill_seconds=fill_seconds,
            sweep_seconds=sweep_seconds,
            rss_start=rss_start,
            rss_peak=rss_peak,
            rss_end=rss_end,
            console_seconds=console_seconds,
            rss_console=rss_console,
            drain_seconds=drain_seconds,
        )
