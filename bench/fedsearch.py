"""Federated search on loopback: ``PartnerSearch`` asking partner registries, beside one round trip.

Three partner registries, each its own process (``python -m bench.fedsearch partner``), hold a
catalog of 10,000 synthetic ARD entries (about 1 KB each: a description, tags, skills, example
queries) behind an inverted index, verify every request with ``SearchRequestVerifier`` (the key
looked up in the suite's DNS server, then cached) and answer a page of 10 results. A fourth
partner accepts requests and never answers. The asking side is this process, with the relay's
own ``PartnerSearch``, SSRF-guarded session and discovery.

Measured, sequentially (one search in flight: latency), after a warm-up that fills the caches
of keys, relay URLs and connections, each search a different question (the result cache is
off, so every search asks every partner):

* **one round trip**: the signed ``POST /ard/search`` to one partner and its answer read, with
  nothing of ``PartnerSearch`` around it — the baseline: one search at a registry of 10,000
  entries plus one loopback round trip;
* ``PartnerSearch`` over one partner, then over the three;
* the three plus the silent one: what the first search costs (the deadline, once), then the
  p50 of the searches after it, while the silent partner is skipped, and how many requests it
  received in all (1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import secrets
import socket
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import Proc, env_with_root, percentile, start, workdir
from relay.core import httpsig, jsonutil, records
from relay.core.clock import SystemClock
from relay.core.errors import SynqError
from relay.core.jws import SigningKey
from relay.discovery import Discovery
from relay.discovery.dnsclient import make_resolver
from relay.discovery.ssrf import AddressPolicy, make_guarded_connector
from relay.dnsserver import DNSServer
from relay.federation import search
from relay.federation.search import PartnerSearch, SearchRequestVerifier

ENTRIES = 10_000
PAGE = 10
PARTNERS = ("globex.test", "initech.test", "umbrella.test")
SILENT = "hooli.test"
ASKER = "acme.test"
WARMUP = 10

_VOCABULARY = (
    "translate invoice german french spanish contract review legal summarise report audit "
    "payroll tax expense receipt ledger reconcile forecast budget schedule meeting calendar "
    "travel booking flight hotel customer support ticket triage refund order shipping "
    "inventory warehouse supplier purchase quote pricing sales lead email newsletter campaign "
    "social media image caption video transcript subtitle speech voice research paper patent "
    "code review test deploy incident alert monitor database query migrate backup security "
    "compliance policy privacy consent identity onboarding training recruit resume interview "
    "benefit claim insurance risk fraud loan credit mortgage portfolio trade market news "
    "weather energy grid sensor maintenance fleet route logistics customs tariff export"
)
_WORDS = _VOCABULARY.split()
_TOKEN = re.compile(r"[a-z]+")


def catalog(domain: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` ARD catalog entries as a registry would list agents: about 1 KB each."""
    rng = random.Random(seed)
    entries = []
    for i in range(n):
        words = rng.sample(_WORDS, 12)
        name = f"{words[0]}-{words[1]}-{i}"
        entries.append(
            {
                "identifier": f"urn:air:{domain}:agent:{name}",
                "displayName": f"{words[0].title()} {words[1]} agent {i}",
                "description": (
                    f"Handles {words[0]} and {words[1]} work: {' '.join(words[2:8])}. "
                    f"Answers in minutes, keeps an audit trail, escalates {words[8]} "
                    f"questions to a person, and reports on {words[9]} every week."
                ),
                "type": "application/a2a-agent-card+json",
                "url": f"https://relay.{domain}/agents/{name}/.well-known/agent-card.json",
                "tags": words[:5],
                "capabilities": [f"{w}-skill" for w in words[5:9]],
                "representativeQueries": [
                    f"{words[0]} this {words[1]} for me",
                    f"help with {words[2]} and {words[3]}",
                    f"who can {words[4]} a {words[5]}",
                ],
                "publisher": {"name": domain},
                "metadata": {"address": f"{name}@{domain}"},
            }
        )
    return entries


class Registry:
    """An inverted index over the catalog's words: a search counts, per entry, the query words
    it contains, and answers the best ``page`` with a score from 0 to 100."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries
        self.postings: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            text = json.dumps(entry, separators=(",", ":")).lower()
            for word in set(_TOKEN.findall(text)):
                self.postings.setdefault(word, []).append(i)

    def search(self, text: str, page: int) -> list[dict[str, Any]]:
        words = set(_TOKEN.findall(text.lower()))
        counts: Counter[int] = Counter()
        for word in words:
            counts.update(self.postings.get(word, ()))
        return [
            {**self.entries[i], "score": round(100 * c / max(1, len(words)))}
            for i, c in counts.most_common(page)
        ]


# ---------------------------------------------------------------------------- partner process


def partner_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fedsearch partner")
    ap.add_argument("--domain", required=True)
    ap.add_argument("--dns", required=True, help="HOST:PORT of the suite's DNS server")
    ap.add_argument("--entries", type=int, default=ENTRIES)
    ap.add_argument("--silent", action="store_true", help="accept requests, never answer")
    args = ap.parse_args(argv)
    registry = Registry(catalog(args.domain, args.entries, seed=zlib.crc32(args.domain.encode())))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    hits = 0

    async def serve() -> None:
        never = asyncio.Event()
        async with Discovery(
            [args.dns], SystemClock(), allow_private_addresses=True, dns_timeout=2.0
        ) as keys:
            verifier = SearchRequestVerifier(keys, SystemClock())

            async def handle(request: web.Request) -> web.StreamResponse:
                nonlocal hits
                hits += 1
                body = await request.read()
                if args.silent:
                    await never.wait()
                try:
                    await verifier.verify(
                        request.method, base + request.path_qs, request.headers, body
                    )
                except SynqError as exc:
                    return web.json_response(exc.to_wire(), status=exc.http_status)
                query = json.loads(body)
                text = str(query.get("query", {}).get("text", ""))
                page = int(query.get("pageSize", PAGE))
                # Compact, as a Synq relay writes JSON on the wire (relay.core.jsonutil.dumps).
                answer = jsonutil.dumps({"results": registry.search(text, page)})
                return web.Response(body=answer, content_type="application/json")

            async def count(_request: web.Request) -> web.Response:
                return web.json_response({"hits": hits})

            app = web.Application()
            app.router.add_post(search.SEARCH_PATH, handle)
            app.router.add_get("/hits", count)
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            print(f"listening on {base}", flush=True)
            await never.wait()

    asyncio.run(serve())
    return 0


# ------------------------------------------------------------------------------ the measurement


@dataclass
class FedSearchResult:
    searches: int
    deadline: float
    answer_bytes: int
    round_trip: list[float]
    one_partner: list[float]
    three_partners: list[float]
    dead_first: float
    dead_after: list[float]
    dead_hits: int
    dead_left_out: list[str]
    #: CPU seconds this process (the asking relay) spent per search over the three partners.
    asker_cpu: float

    @staticmethod
    def p(samples: list[float], q: float) -> float:
        return percentile(samples, q)


QUESTIONS = [
    "translate invoices into German",
    "review a legal contract",
    "reconcile the expense ledger",
    "book a flight and a hotel",
    "triage customer support tickets",
    "summarise a research paper",
    "monitor database alerts",
    "forecast the sales budget",
    "caption images for social media",
    "check compliance with the privacy policy",
]


def _question(i: int) -> dict[str, Any]:
    # A different body every time (the result cache is off, but keep it honest anyway).
    return {"query": {"text": QUESTIONS[i % len(QUESTIONS)] + f" {i}"}, "pageSize": PAGE}


async def run(base: Path, searches: int = 200) -> FedSearchResult:
    base = workdir(base)
    procs: list[Proc] = []
    async with DNSServer(host="127.0.0.1", zones=["test"]) as dns_server:
        key = SigningKey.generate("s1")
        dns_server.set_txt(
            records.key_record_name("s1", ASKER), [records.KeyRecord(key.public_key).to_txt()]
        )
        try:
            urls: dict[str, str] = {}
            for domain in (*PARTNERS, SILENT):
                argv = [sys.executable, "-m", "bench.fedsearch", "partner", "--domain", domain,
                        "--dns", dns_server.address]  # fmt: skip
                if domain == SILENT:
                    argv.append("--silent")
                proc = await start(argv, base, f"partner-{domain}", env=env_with_root())
                procs.append(proc)
                urls[domain] = proc.url
                dns_server.set_txt(
                    records.relay_record_name(domain), [records.RelayRecord(proc.url).to_txt()]
                )
            return await _measure(dns_server.address, key, urls, searches)
        finally:
            for proc in procs:
                await proc.stop()


async def _measure(
    dns_address: str, key: SigningKey, urls: dict[str, str], searches: int
) -> FedSearchResult:
    clock = SystemClock()
    policy = AddressPolicy.build(allow_private=True)
    deadline = search.DEFAULT_SEARCH_DEADLINE
    async with (
        Discovery([dns_address], clock, allow_private_addresses=True, dns_timeout=2.0) as disc,
        aiohttp.ClientSession(
            connector=make_guarded_connector(policy, make_resolver([dns_address], timeout=2.0)),
            trust_env=False,
        ) as session,
    ):

        def searcher(*partners: str) -> PartnerSearch:
            return PartnerSearch(
                domain=ASKER, signer=lambda _now: key, resolver=disc, session=session,
                policy=policy, partners=partners, clock=clock, cache_ttl=0.0,
            )  # fmt: skip

        first = PARTNERS[0]
        url = urls[first] + search.SEARCH_PATH
        answer_bytes = 0

        async def round_trip(i: int) -> None:
            nonlocal answer_bytes
            body = json.dumps({**_question(i), "federation": "none"}).encode()
            headers = httpsig.sign_request(
                method="POST", url=url, body=body, key=key, domain=ASKER,
                created=int(time.time()), nonce=secrets.token_urlsafe(18),
            )  # fmt: skip
            async with session.post(url, data=body, headers=headers) as resp:
                raw = await resp.read()
                assert resp.status == 200, raw[:200]
            answer_bytes = len(raw)
            # Read as PartnerSearch reads it: strict I-JSON.
            answer = jsonutil.loads(raw, max_bytes=search.MAX_SEARCH_ANSWER_BYTES)
            assert len(answer["results"]) == PAGE

        async def timed(call: Any) -> list[float]:
            for i in range(WARMUP):
                await call(-1 - i)
            samples = []
            for i in range(searches):
                started = time.perf_counter()
                await call(i)
                samples.append(time.perf_counter() - started)
            return samples

        def federated(ps: PartnerSearch, expect: int) -> Any:
            async def call(i: int) -> None:
                found = await ps.search(_question(i))
                assert found.left_out == [], found.left_out
                assert len(found.results) == expect * PAGE

            return call

        rtt = await timed(round_trip)
        one = await timed(federated(searcher(first), 1))
        cpu = time.process_time()
        three = await timed(federated(searcher(*PARTNERS), len(PARTNERS)))
        asker_cpu = (time.process_time() - cpu) / (searches + WARMUP)

        with_dead = searcher(*PARTNERS, SILENT)
        started = time.perf_counter()
        found = await with_dead.search(_question(10_000))
        dead_first = time.perf_counter() - started
        after: list[float] = []
        for i in range(searches):
            started = time.perf_counter()
            later = await with_dead.search(_question(10_001 + i))
            after.append(time.perf_counter() - started)
            assert later.left_out == [SILENT]
        async with session.get(urls[SILENT] + "/hits") as resp:
            dead_hits = int((await resp.json())["hits"])
    return FedSearchResult(
        searches=searches,
        deadline=deadline,
        answer_bytes=answer_bytes,
        round_trip=rtt,
        one_partner=one,
        three_partners=three,
        dead_first=dead_first,
        dead_after=after,
        dead_hits=dead_hits,
        dead_left_out=found.left_out,
        asker_cpu=asker_cpu,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["partner"]:
        return partner_main(argv[1:])
    raise SystemExit("usage: python -m bench.fedsearch partner … (run by python -m bench)")


if __name__ == "__main__":
    sys.exit(main())
