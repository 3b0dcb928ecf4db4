"""Soak: steady traffic through one relay for minutes, with retention compressed from days to
seconds, and the store's size sampled until it stops growing (SPEC.md §8.5, "Retention").

Two organisations on loopback, as in the throughput runs. For ``seconds``:

1. alice@acme.test sends ``rate`` messages a second, in batches every :data:`TICK` seconds
   (``POST /synq/v1/messages/batch``): half to bob@acme.test (local), half to carol@globex.test
   (relay → relay). Each message expires :data:`LIFETIME` after it is sent, as short-lived
   agent traffic would, so its deduplication key may go after expiry + MAX_CLOCK_SKEW;
2. bob and carol read their inboxes (long polls) and ack every message they read;
3. both relays run with ``[retention]`` of :data:`RETENTION` for every kind and a sweep every
   :data:`SWEEP_INTERVAL`; MAX_CLOCK_SKEW (5 minutes) is the protocol's and stays, so an
   envelope lives about ``LIFETIME`` + 5 minutes + ``RETENTION`` and the store should stop
   growing after about six minutes;
4. every :data:`SAMPLE_INTERVAL` seconds, acme's store size is sampled (SQLite: the file and its
   WAL; with ``--store postgresql`` acme runs on a throwaway durable PostgreSQL cluster and
   ``pg_database_size`` is sampled), with globex's SQLite size and acme's envelope count.

Plateau: the run is cut in thirds by time; the store reached a plateau when its growth over the
last third is under :data:`PLATEAU_SHARE` of its growth over the first (a store that only grows
at a steady rate grows as much in each third). The default of ten minutes leaves the last third
wholly past the first envelopes' purge.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import BODY, Federation, Org, workdir

#: Seconds between two batches of the sender.
TICK = 0.1
#: Each message's lifetime (``expires`` − now).
LIFETIME = timedelta(seconds=30)
#: Every ``[retention]`` period of both relays, and their sweep interval.
RETENTION = "20s"
SWEEP_INTERVAL = "5s"
#: Seconds between two size samples.
SAMPLE_INTERVAL = 5.0
#: Last third's growth under this share of the first third's: a plateau.
PLATEAU_SHARE = 0.05


@dataclass
class Sample:
    at: float
    size: int
    partner_size: int
    envelopes: int


@dataclass
class SoakResult:
    seconds: float
    rate: int
    store: str
    sent: int = 0
    read: int = 0
    samples: list[Sample] = field(default_factory=list)

    def thirds(self) -> tuple[int, int, int]:
        """Growth of acme's store over each third of the run, in bytes."""

        def size_at(t: float) -> int:
            before = [s for s in self.samples if s.at <= t]
            return (before[-1] if before else self.samples[0]).size

        edges = [self.seconds * k / 3 for k in range(4)]
        first, second, third = (size_at(edges[k + 1]) - size_at(edges[k]) for k in range(3))
        return first, second, third

    @property
    def plateau(self) -> bool:
        first, _, last = self.thirds()
        return last <= max(first, 0) * PLATEAU_SHARE

    @property
    def peak(self) -> int:
        return max(s.size for s in self.samples)


def _retention_config(cwd: Path) -> None:
    """Compress every ``[retention]`` period of the relay's config to :data:`RETENTION`."""
    path = cwd / "synq.toml"
    text = path.read_text(encoding="utf-8")
    periods = {key: RETENTION for key in ("acked", "settled", "events", "tasks")}
    for key, value in {**periods, "interval": SWEEP_INTERVAL}.items():
        text, found = re.subn(rf'(?m)^{key} = "[^"]*"', f'{key} = "{value}"', text)
        if found != 1:
            raise RuntimeError(f"synq init wrote no [retention] {key} to change")
    path.write_text(text, encoding="utf-8")


def _sqlite_size(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def _sqlite_envelopes(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM envelopes").fetchone()[0])
    finally:
        conn.close()


def _postgres_probe(url: str) -> Callable[[], tuple[int, int]]:
    import psycopg

    def probe() -> tuple[int, int]:
        with psycopg.connect(url, autocommit=True) as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            count = conn.execute("SELECT count(*) FROM envelopes").fetchone()
            assert size is not None
            assert count is not None
            return int(size[0]), int(count[0])

    return probe


async def _reader(url: str, token: str, stop: asyncio.Event, counter: list[int]) -> None:
    """Long-poll the inbox and ack everything read, until ``stop``."""
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        while not stop.is_set():
            params = {"limit": "500", "wait": "2"}
            async with http.get(f"{url}/synq/v1/inbox", params=params, headers=headers) as r:
                page = await r.json()
            for message in page["messages"]:
                async with http.post(
                    f"{url}/synq/v1/inbox/{message['id']}/ack", headers=headers
                ) as r:
                    if r.status != 200:
                        raise RuntimeError(f"ack failed: {r.status} {await r.text()}")
                counter[0] += 1


async def _sender(acme: Org, rate: int, seconds: float, result: SoakResult) -> None:
    per_tick = max(1, round(rate * TICK))
    headers = {"Authorization": f"Bearer {acme.tokens['alice']}"}
    started = time.monotonic()
    ticks = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        while time.monotonic() - started < seconds:
            expires = datetime.now(UTC) + LIFETIME
            stamp = expires.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            messages = [
                {
                    "to": ["bob@acme.test" if (ticks * per_tick + i) % 2 else "carol@globex.test"],
                    "body": BODY,
                    "expires": stamp,
                }
                for i in range(per_tick)
            ]
            async with http.post(
                f"{acme.url}/synq/v1/messages/batch", json={"messages": messages}, headers=headers
            ) as r:
                if r.status != 202:
                    raise RuntimeError(f"batch refused: {r.status} {await r.text()}")
                refused = [x for x in (await r.json())["results"] if "id" not in x]
                if refused:
                    raise RuntimeError(f"{len(refused)} refused, e.g. {refused[0]}")
            result.sent += per_tick
            ticks += 1
            # Pacing to the rate, not waiting for a condition.
            await asyncio.sleep(max(0.0, started + ticks * TICK - time.monotonic()))


@contextlib.asynccontextmanager
async def _acme_store(store: str, base: Path) -> AsyncIterator[tuple[str | None, Any]]:
    """(store URL for acme, size probe factory) for ``store``."""
    if store != "postgresql":
        yield None, None
        return
    from tests.pg import Cluster, pg_bindir

    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server binaries on this machine")
    cluster = Cluster(bindir, durable=True)
    cluster.start()
    try:
        url = cluster.url(cluster.create_database("soak"))
        yield url, _postgres_probe(url)
    finally:
        cluster.stop()


async def run(
    seconds: float,
    rate: int,
    base: Path,
    store: str = "sqlite",
    progress: Callable[[str], None] | None = None,
) -> SoakResult:
    workdir(base)
    result = SoakResult(seconds=seconds, rate=rate, store=store)
    async with _acme_store(store, base) as (url, probe), Federation(base) as fed:
        acme = await fed.add("acme.test", ["alice", "bob"], store=url)
        globex = await fed.add("globex.test", ["carol"])
        for org in (acme, globex):
            _retention_config(org.cwd)
        await fed.serve(acme)
        await fed.serve(globex)

        def measure() -> tuple[int, int, int]:
            if probe is not None:
                size, count = probe()
            else:
                size, count = _sqlite_size(acme.db), _sqlite_envelopes(acme.db)
            return size, _sqlite_size(globex.db), count

        stop = asyncio.Event()
        read = [0]
        readers = [
            asyncio.create_task(_reader(acme.url, acme.tokens["bob"], stop, read)),
            asyncio.create_task(_reader(globex.url, globex.tokens["carol"], stop, read)),
        ]
        started = time.monotonic()
        sender = asyncio.create_task(_sender(acme, rate, seconds, result))
        try:
            while not sender.done():
                for task in readers:
                    if task.done():
                        # A reader stops only on an error (an ack refused): the run fails with
                        # it rather than going on with mail piling up unread.
                        task.result()
                size, partner, count = await asyncio.to_thread(measure)
                at = time.monotonic() - started
                result.samples.append(Sample(at, size, partner, count))
                if progress is not None:
                    progress(
                        f"soak {at:5.0f} s: {size / 2**20:7.1f} MB ({count:,} envelopes), "
                        f"partner {partner / 2**20:.1f} MB, sent {result.sent:,}, read {read[0]:,}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(sender), SAMPLE_INTERVAL)
            await sender
            size, partner, count = await asyncio.to_thread(measure)
            result.samples.append(Sample(time.monotonic() - started, size, partner, count))
        finally:
            stop.set()
            sender.cancel()
            for task in readers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 10)
            result.read = read[0]
    return result
