"""Federated search over real loopback partners (relay/federation/search.py, SPEC.md §12.6).

Each partner is a small aiohttp server on a port the OS chose, verifying every request with
``SearchRequestVerifier`` and answering like an ARD registry; a real DNS server on loopback
publishes the partners' ``_synq`` records and the asking relay's key. Keys, signatures, the
breaker and the caches run on one fake clock; only the search deadline is real time, which is
what it bounds. Misbehaving partners never answer, answer garbage, too much, or a byte at a
time: each is left out within the deadline and named.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.core import httpsig, records
from relay.core.clock import FakeClock
from relay.core.errors import RateLimited, ReplayedRequest, SynqError
from relay.core.jws import SigningKey
from relay.discovery import Discovery
from relay.discovery.dnsclient import make_resolver
from relay.discovery.ssrf import AddressPolicy, make_guarded_connector
from relay.dnsserver import DNSServer
from relay.federation import search
from relay.federation.search import PartnerSearch, ReplayCache, SearchRequestVerifier

ASKER = "acme.test"
QUERY = {"query": {"text": "translate invoices into German"}, "pageSize": 10}
#: Short, so the tests that wait for it stay fast; long enough for a loaded machine to answer
#: a loopback request well within it.
DEADLINE = 1.0


def entry(domain: str, name: str, score: int, **extra: Any) -> dict[str, Any]:
    """An ARD search result as a partner's registry answers it."""
    return {
        "identifier": f"urn:air:{domain}:agent:{name}",
        "displayName": name,
        "description": f"{name} at {domain}",
        "type": "application/a2a-agent-card+json",
        "url": f"https://{domain}/agents/{name}/.well-known/agent-card.json",
        "metadata": {"address": f"{name}@{domain}"},
        "score": score,
        "source": "https://elsewhere.example/ard",
        **extra,
    }


@dataclass
class Partner:
    """A partner relay's registry. ``mode`` says how it answers."""

    domain: str
    verifier: SearchRequestVerifier
    mode: str = "ok"
    results: list[dict[str, Any]] = field(default_factory=list)
    #: The asking domain of every request that verified, and the body it carried.
    asked: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Every request received, verified or not.
    hits: int = 0
    server: TestServer | None = None
    never: asyncio.Event = field(default_factory=asyncio.Event)
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    abandoned: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        body = await request.read()
        try:
            # The URL under the base the partner publishes, as the route will pass it.
            asker = await self.verifier.verify(
                request.method, self.url + request.path_qs, request.headers, body
            )
        except SynqError as exc:
            return web.json_response(exc.to_wire(), status=exc.http_status)
        self.asked.append((asker, json.loads(body)))
        if self.mode == "silent":
            self.holding.set()
            try:
                await self.never.wait()  # never set: the partner holds the request
            except asyncio.CancelledError:
                # The asking side closed the connection (aiohttp cancels the handler).
                self.abandoned.set()
                raise
        if self.mode == "garbage":
            return web.Response(body=b"<html>busy</html>", content_type="text/html")
        if self.mode == "status500":
            return web.json_response({"errorCode": "INTERNAL"}, status=500)
        if self.mode == "declared-huge":
            size = search.MAX_SEARCH_ANSWER_BYTES + 1
            return web.Response(body=b" " * size, content_type="application/json")
        if self.mode in ("huge", "trickle"):
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await resp.write(b'{"results":[')
            if self.mode == "huge":
                # Chunked, no length: the reader's cap is what stops it.
                chunk = json.dumps(entry(self.domain, "x", 1)).encode() + b","
                for _ in range(search.MAX_SEARCH_ANSWER_BYTES // len(chunk) + 2):
                    await resp.write(chunk)
            else:
                # The partner's own pacing (what a trickling peer does), not a test waiting:
                # a byte every 50 ms, which no per-read timeout would catch.
                for _ in range(1000):
                    await resp.write(b" ")
                    await asyncio.sleep(0.05)
            return resp
        return web.json_response({"results": self.results})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(search.SEARCH_PATH, self.handle)
        self.server = TestServer(app, host="127.0.0.1", port=0)
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()


@dataclass
class World:
    dns: DNSServer
    clock: FakeClock
    key: SigningKey
    #: The partners' side resolver (keys of askers), and the asker's (partners' relay URLs).
    partner_discovery: Discovery
    asker_discovery: Discovery
    session: aiohttp.ClientSession
    http: aiohttp.ClientSession
    partners: dict[str, Partner] = field(default_factory=dict)

    async def partner(self, domain: str, mode: str = "ok", *results: dict[str, Any]) -> Partner:
        p = Partner(domain, SearchRequestVerifier(self.partner_discovery, self.clock), mode)
        p.results = list(results)
        await p.start()
        self.dns.set_txt(records.relay_record_name(domain), [records.RelayRecord(p.url).to_txt()])
        self.partners[domain] = p
        return p

    def searcher(self, *partners: str, deadline: float = DEADLINE) -> PartnerSearch:
        return PartnerSearch(
            domain=ASKER,
            signer=lambda _now: self.key,
            resolver=self.asker_discovery,
            session=self.session,
            policy=self.asker_discovery.policy,
            partners=list(partners),
            clock=self.clock,
            deadline=deadline,
        )

    def signed(self, url: str, body: bytes, **changes: Any) -> dict[str, str]:
        kwargs: dict[str, Any] = {
            "method": "POST",
            "url": url,
            "body": body,
            "key": self.key,
            "domain": ASKER,
            "created": int(self.clock.now().timestamp()),
            "nonce": "N" * 22,
        }
        kwargs.update(changes)
        return httpsig.sign_request(**kwargs)

    async def post(self, partner: Partner, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        async with self.http.post(
            partner.url + search.SEARCH_PATH, data=body, headers=headers
        ) as resp:
            answer = await resp.json()
            return resp.status, answer.get("error", {}).get("code", "")


@asynccontextmanager
async def world() -> AsyncIterator[World]:
    async with DNSServer(host="127.0.0.1", zones=["test"]) as dns_server:
        clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
        key = SigningKey.generate("s1")
        dns_server.set_txt(
            records.key_record_name("s1", ASKER), [records.KeyRecord(key.public_key).to_txt()]
        )
        servers = [dns_server.address]
        policy = AddressPolicy.build(allow_private=True)
        async with (
            Discovery(servers, clock, allow_private_addresses=True, dns_timeout=2.0) as theirs,
            Discovery(servers, clock, allow_private_addresses=True, dns_timeout=2.0) as ours,
            aiohttp.ClientSession(
                connector=make_guarded_connector(policy, make_resolver(servers, timeout=2.0)),
                trust_env=False,
            ) as session,
            aiohttp.ClientSession() as http,
        ):
            w = World(dns_server, clock, key, theirs, ours, session, http)
            try:
                yield w
            finally:
                for p in w.partners.values():
                    p.never.set()
                    await p.stop()


# ------------------------------------------------------------------------------ fan-out


async def test_results_are_merged_by_score_with_their_source() -> None:
    async with world() as w:
        globex = await w.partner(
            "globex.test",
            "ok",
            entry("globex.test", "lingo", 90),
            entry("globex.test", "ledger", 40),
        )
        initech = await w.partner("initech.test", "ok", entry("initech.test", "babel", 70))
        found = await w.searcher("globex.test", "initech.test").search(
            {**QUERY, "federation": "auto", "pageToken": "local-page-2"}
        )
        assert found.left_out == []
        assert [(r["displayName"], r["score"]) for r in found.results] == [
            ("lingo", 90),
            ("babel", 70),
            ("ledger", 40),
        ]
        # Source is the registry that answered, whatever the partner wrote there.
        assert [r["source"] for r in found.results] == [
            f"{globex.url}/ard",
            f"{initech.url}/ard",
            f"{globex.url}/ard",
        ]
        # Each partner verified the asking domain, and was asked for one hop, first page.
        for p in (globex, initech):
            assert p.asked == [(ASKER, {**QUERY, "federation": "none"})]


async def test_entries_that_do_not_speak_for_the_partner_are_dropped() -> None:
    async with world() as w:
        await w.partner(
            "globex.test",
            "ok",
            entry("globex.test", "good", 50),
            # Another domain's address: a partner speaks only for its own.
            entry("globex.test", "spoof", 99, metadata={"address": "ceo@acme.test"}),
            entry("globex.test", "noscore", 10) | {"score": "high"},
            entry("globex.test", "toohigh", 101),
            entry("globex.test", "boolean", 10) | {"score": True},
            {"score": 80},
            cast(dict[str, Any], "not an object"),
        )
        found = await w.searcher("globex.test").search(QUERY)
        assert [r["displayName"] for r in found.results] == ["good"]


async def test_a_silent_partner_is_left_out_within_the_deadline_and_named() -> None:
    async with world() as w:
        await w.partner("globex.test", "ok", entry("globex.test", "lingo", 90))
        silent = await w.partner("initech.test", "silent")
        loop = asyncio.get_running_loop()
        started = loop.time()
        found = await w.searcher("globex.test", "initech.test").search(QUERY)
        took = loop.time() - started
        assert found.left_out == ["initech.test"]
        assert [r["displayName"] for r in found.results] == ["lingo"]
        assert DEADLINE * 0.9 <= took < DEADLINE + 1.0
        assert silent.hits == 1
        assert search.partial_header_value(found.left_out) == "initech.test"
        assert search.partial_header_value([]) is None


async def test_a_dead_partner_costs_the_deadline_once_then_is_skipped() -> None:
    async with world() as w:
        await w.partner("globex.test", "ok", entry("globex.test", "lingo", 90))
        dead = await w.partner("initech.test", "silent")
        searcher = w.searcher("globex.test", "initech.test")
        loop = asyncio.get_running_loop()
        first = await searcher.search(QUERY)
        assert first.left_out == ["initech.test"]
        assert dead.hits == 1
        # Another question (not answered from the cache), a moment later: skipped at no cost.
        w.clock.advance(5)
        started = loop.time()
        second = await searcher.search({**QUERY, "pageSize": 20})
        assert loop.time() - started < DEADLINE / 2
        assert second.left_out == ["initech.test"]
        assert [r["displayName"] for r in second.results] == ["lingo"]
        assert dead.hits == 1
        # After the skip period it is probed again (and, still silent, costs one deadline).
        w.clock.advance(search.PARTNER_SKIP.total_seconds() + 1)
        third = await searcher.search({**QUERY, "pageSize": 30})
        assert third.left_out == ["initech.test"]
        assert dead.hits == 2


async def test_a_cancelled_search_leaves_no_request_behind() -> None:
    # The local client went away: the partners' requests go with it, nothing is left running.
    async with world() as w:
        silent = await w.partner("initech.test", "silent")
        searcher = w.searcher("initech.test", deadline=30.0)
        task = asyncio.create_task(searcher.search(QUERY))
        async with asyncio.timeout(10):
            await silent.holding.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(10):
            await silent.abandoned.wait()


async def test_a_partner_that_comes_back_is_asked_again() -> None:
    async with world() as w:
        globex = await w.partner("globex.test", "status500")
        searcher = w.searcher("globex.test")
        assert (await searcher.search(QUERY)).left_out == ["globex.test"]
        globex.mode = "ok"
        globex.results = [entry("globex.test", "lingo", 90)]
        w.clock.advance(search.PARTNER_SKIP.total_seconds() + 1)
        found = await searcher.search(QUERY)
        assert (found.left_out, len(found.results)) == ([], 1)


async def test_a_stopped_partner_fails_fast_and_is_left_out() -> None:
    async with world() as w:
        await w.partner("globex.test", "ok", entry("globex.test", "lingo", 90))
        gone = await w.partner("initech.test")
        await gone.stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        found = await w.searcher("globex.test", "initech.test").search(QUERY)
        assert loop.time() - started < DEADLINE
        assert found.left_out == ["initech.test"]
        assert len(found.results) == 1


@pytest.mark.parametrize("mode", ["garbage", "huge", "declared-huge", "trickle", "status500"])
async def test_a_misbehaving_partner_is_left_out_never_an_error(mode: str) -> None:
    async with world() as w:
        await w.partner("globex.test", "ok", entry("globex.test", "lingo", 90))
        bad = await w.partner("initech.test", mode)
        loop = asyncio.get_running_loop()
        started = loop.time()
        found = await w.searcher("globex.test", "initech.test").search(QUERY)
        assert loop.time() - started < DEADLINE + 1.0
        assert found.left_out == ["initech.test"]
        assert [r["displayName"] for r in found.results] == ["lingo"]
        assert bad.hits == 1


async def test_a_partner_without_records_is_left_out() -> None:
    async with world() as w:
        await w.partner("globex.test", "ok", entry("globex.test", "lingo", 90))
        found = await w.searcher("globex.test", "nowhere.test").search(QUERY)
        assert found.left_out == ["nowhere.test"]
        assert len(found.results) == 1


async def test_answers_are_cached_briefly() -> None:
    async with world() as w:
        globex = await w.partner("globex.test", "ok", entry("globex.test", "lingo", 90))
        searcher = w.searcher("globex.test")
        first = await searcher.search(QUERY)
        # The caller may change what it got; the cache keeps its own copy.
        first.results[0]["score"] = 0
        again = await searcher.search(QUERY)
        assert (globex.hits, again.results[0]["score"]) == (1, 90)
        await searcher.search({**QUERY, "pageSize": 5})  # another question
        assert globex.hits == 2
        w.clock.advance(search.RESULT_CACHE_TTL)
        await searcher.search(QUERY)
        assert globex.hits == 3


async def test_partner_list_is_normalised() -> None:
    async with world() as w:
        globex = await w.partner("globex.test", "ok", entry("globex.test", "lingo", 90))
        searcher = w.searcher("GLOBEX.test.", "globex.test", ASKER)
        assert searcher.partners == ["globex.test"]
        found = await searcher.search(QUERY)
        assert (len(found.results), globex.hits) == (1, 1)
        assert await w.searcher().search(QUERY) == search.FederatedResults()


# ------------------------------------------------------------------------------- verifier


async def test_verifier_refuses_what_is_not_a_fresh_signed_request() -> None:
    async with world() as w:
        globex = await w.partner("globex.test", "ok", entry("globex.test", "lingo", 90))
        initech = await w.partner("initech.test", "ok")
        url = globex.url + search.SEARCH_PATH
        body = json.dumps({**QUERY, "federation": "none"}).encode()
        now = int(w.clock.now().timestamp())
        impostor = SigningKey.generate("s1")
        unpublished = SigningKey.generate("s9")
        cases: list[tuple[str, dict[str, str], bytes, int, str]] = [
            ("unsigned", {"Content-Type": "application/json"}, body, 401, "signature_required"),
            ("badly signed", w.signed(url, body, key=impostor), body, 422, "bad_signature"),
            ("unknown key", w.signed(url, body, key=unpublished), body, 422, "unknown_key"),
            ("stale", w.signed(url, body, created=now - 3600), body, 401, "stale_signature"),
            ("from the future", w.signed(url, body, created=now + 3600), body, 401,
             "stale_signature"),
            ("wrong digest", w.signed(url, body), body + b" ", 400, "digest_mismatch"),
            ("signed for another relay",
             w.signed(initech.url + search.SEARCH_PATH, body, nonce="O" * 22), body, 422,
             "bad_signature"),
        ]  # fmt: skip
        for what, headers, sent, status, code in cases:
            assert await w.post(globex, headers, sent) == (status, code), what
        assert globex.asked == []
        # A fresh one is taken, once; the same request again is a replay.
        fresh = w.signed(url, body, nonce="F" * 22)
        assert await w.post(globex, fresh, body) == (200, "")
        assert await w.post(globex, fresh, body) == (401, "replayed_request")
        assert globex.asked == [(ASKER, {**QUERY, "federation": "none"})]
        # After its window the copy is stale, not a replay: nothing needs remembering.
        w.clock.advance(search.REPLAY_WINDOW)
        assert await w.post(globex, fresh, body) == (401, "stale_signature")


def test_replay_cache_forgets_after_the_window_and_is_bounded() -> None:
    cache = ReplayCache(max_entries=2)
    cache.add(("k", "a"), forget_at=100, now=0)
    with pytest.raises(ReplayedRequest):
        cache.add(("k", "a"), forget_at=100, now=50)
    cache.add(("k", "b"), forget_at=160, now=50)
    # Full of entries still needed: refused for now, never a nonce forgotten early.
    with pytest.raises(RateLimited) as caught:
        cache.add(("k", "c"), forget_at=170, now=60)
    assert caught.value.retry_after == 40
    assert len(cache) == 2
    cache.add(("k", "c"), forget_at=170, now=100)  # ("k", "a") has gone
    cache.add(("k", "a"), forget_at=200, now=160)
    assert len(cache) == 2


def test_the_replay_window_covers_every_accepted_request() -> None:
    # Accepted: created <= now + skew and expires + skew > now, expires - created <= lifetime.
    assert search.REPLAY_WINDOW == httpsig.MAX_SIGNATURE_LIFETIME + 2 * httpsig.MAX_SIGNATURE_SKEW


def test_the_config_default_is_the_named_deadline() -> None:
    from relay.config import DiscoverySection

    assert DiscoverySection().search_deadline == search.DEFAULT_SEARCH_DEADLINE
    assert DiscoverySection().partners == []


def test_config_writer_renders_partners() -> None:
    from relay.config import Config, DiscoverySection, RelaySection, render_config

    config = Config(
        relay=RelaySection(domain="acme.example"),
        discovery=DiscoverySection(partners=["globex.example"], search_deadline=2.0),
    )
    text = render_config(config)
    assert 'partners = ["globex.example"]' in text
    assert "search_deadline = 2" in text
