"""Discovery: a search over a large catalog costs about what a card look-up costs.

One ``synq serve`` whose catalog holds ``n`` agents (10,000 by default), each with a
description, tags and representative queries drawn from a shared vocabulary, so that a
plain-language need matches a few hundred of them, as a real catalog would. From this process,
one request at a time, alternating, after a warm-up:

* baseline: ``GET /agents/<local>/.well-known/agent-card.json`` — one agent's card (a store read,
  the card built and signed by the relay; SPEC.md §7.8);
* ``POST /ard/search`` with a local agent's token, ``{"query": {"text": "translate invoices
  into German"}, "federation": "none"}`` — ranked by the store's full-text index, a page of 10
  entries built (SPEC.md §12.5).

Target: search p50 ≤ 3 × card p50. The catalog is written straight into the store before the
relay starts (the store's own API, in batches through its group commit), so the figure is the
search, not the filling.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.common import serve_argv, start, synq, unthrottle
from relay.core.ids import hash_token, new_token
from relay.store import open_store

#: The need searched for, and the agent whose skill says it in other words.
NEED = "translate invoices into German"
TARGET_DESCRIPTION = "Translates invoice documents to German"
#: Topic words of the synthetic catalog; the need's words are among them, so the search matches
#: many agents and must rank them.
_TOPICS = [
    "invoice",
    "invoices",
    "translate",
    "translation",
    "german",
    "french",
    "spanish",
    "contract",
    "legal",
    "payroll",
    "tax",
    "weather",
    "forecast",
    "flight",
    "hotel",
    "booking",
    "calendar",
    "email",
    "summary",
    "report",
    "chart",
    "sales",
    "lead",
    "support",
    "ticket",
    "refund",
    "shipping",
    "inventory",
    "price",
    "quote",
    "currency",
    "convert",
    "image",
    "audio",
    "video",
    "code",
    "review",
    "test",
    "deploy",
    "monitor",
    "alert",
    "database",
    "backup",
    "search",
    "index",
    "document",
    "pdf",
    "scan",
]


@dataclass(frozen=True, slots=True)
class DiscoveryResult:
    entries: int
    card_p50: float
    search_p50: float
    card_p99: float
    search_p99: float
    matched: int

    @property
    def ratio(self) -> float:
        return self.search_p50 / self.card_p50


async def fill(url: str, domain: str, n: int, seed: int = 7) -> None:
    """``n`` agents with catalog entries, written through the store's API in concurrent
    batches (its group commit makes each batch a few transactions)."""
    rng = random.Random(seed)
    store = await open_store(url, domain=domain)
    try:
        now_agents = []
        vocabulary = [f"w{i:04d}" for i in range(5000)]
        for i in range(n):
            # One topic word among five of a large vocabulary: each of the need's words is in
            # about one entry in fifty, so the need matches a few hundred entries to rank.
            words = [*rng.sample(vocabulary, 5), rng.choice(_TOPICS)]
            rng.shuffle(words)
            description = (
                TARGET_DESCRIPTION
                if i == n // 2
                else f"Agent {i} handles {' and '.join(words[:3])}"
            )
            now_agents.append((f"agent{i:05d}", description, words[3:5], words))
        step = 500
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        for start_at in range(0, n, step):
            chunk = now_agents[start_at : start_at + step]
            await asyncio.gather(
                *(
                    store.create_agent(a, "inbox", hash_token(new_token()), None, now)
                    for a, *_ in chunk
                )
            )
            await asyncio.gather(
                *(
                    store.catalog_update(
                        a,
                        now,
                        description=d,
                        tags=t,
                        queries=[" ".join(w[:3]), " ".join(w[3:])],
                    )
                    for a, d, t, w in chunk
                )
            )
    finally:
        await store.close()


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(base: Path, n: int = 10_000, requests: int = 300) -> DiscoveryResult:
    cwd = base / "acme"
    cwd.mkdir(parents=True)
    await synq(cwd, "init", "--domain", "acme.test", "--dir", str(cwd), "--listen", "127.0.0.1:0")
    unthrottle(cwd)
    with (cwd / "synq.toml").open("a", encoding="utf-8") as fh:
        # Capacity, not abuse resistance, is measured: searches are not rate limited here.
        fh.write("search = { per_second = 1e9, burst = 1e9 }\n")
    asker = await synq(cwd, "agent", "add", "asker")
    await fill(f"sqlite:///{cwd / 'synq.db'}", "acme.test", n)
    proc = await start(serve_argv(), cwd, "serve-discovery")
    try:
        auth = {"Authorization": f"Bearer {asker['token']}"}
        body = {"query": {"text": NEED}, "federation": "none"}
        card_url = f"{proc.url}/agents/agent{n // 2:05d}/.well-known/agent-card.json"
        cards: list[float] = []
        searches: list[float] = []
        matched = 0
        async with aiohttp.ClientSession() as http:

            async def card() -> float:
                t0 = time.perf_counter()
                async with http.get(card_url) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                return time.perf_counter() - t0

            async def search() -> float:
                nonlocal matched
                t0 = time.perf_counter()
                async with http.post(f"{proc.url}/ard/search", json=body, headers=auth) as resp:
                    data = await resp.json()
                    assert resp.status == 200, data
                elapsed = time.perf_counter() - t0
                matched = len(data["results"])
                top = data["results"][0]["metadata"]["address"]
                assert top == f"agent{n // 2:05d}@acme.test", data["results"][:2]
                return elapsed

            for _ in range(20):  # warm-up: connections, caches, the statements
                await card()
                await search()
            for _ in range(requests):
                cards.append(await card())
                searches.append(await search())
        return DiscoveryResult(
            entries=n,
            card_p50=statistics.median(cards),
            search_p50=statistics.median(searches),
            card_p99=_p(cards, 0.99),
            search_p99=_p(searches, 0.99),
            matched=matched,
        )
    finally:
        await proc.stop()
