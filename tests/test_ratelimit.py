"""Rate limits and back-pressure on live relays: 429 + Retry-After on the API, 4.7.0 per envelope
in federation (the partner's queue delivers later, nothing lost), and a store that is failing,
full or slow answering 4.3.0 / 503 instead of accepting what it cannot keep.

Per source address (SPEC.md §10.3), over real loopback sockets: loopback is all of 127.0.0.0/8,
so a client bound to 127.0.0.2 is another address than one bound to 127.0.0.3."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.config import Config
from relay.core import envelope as env_mod
from relay.core import jws
from relay.core.errors import RateLimited, StoreUnavailable
from relay.core.ids import uuid7
from relay.core.jws import SigningKey
from relay.core.txn import parse_request
from relay.runtime import Relay
from tests.fedenv import Org, World, world
from tests.helpers import wait_until


def with_rates(relay: Relay, **rates: dict[str, float]) -> Config:
    data = relay.config.model_dump()
    data["rate_limits"] = rates
    return Config.model_validate({**data, "base_dir": relay.config.base_dir})


def with_limits(relay: Relay, **limits: Any) -> Config:
    data = relay.config.model_dump()
    data["limits"] = limits
    return Config.model_validate({**data, "base_dir": relay.config.base_dir})


@contextlib.asynccontextmanager
async def from_address(host: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections come from ``host`` (an address of 127.0.0.0/8)."""
    connector = aiohttp.TCPConnector(local_addr=(host, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        yield http


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str, **kwargs: Any
) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body, resp.headers


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, "acme.test", "globex.test") as env:
        await env.orgs["acme.test"].agent("alice")
        await env.orgs["globex.test"].agent("bob")
        yield env


async def post(w: World, org: Org, agent: str, body: str) -> tuple[int, Any, Any]:
    async with w.http.post(
        f"{org.url}/synq/v1/messages",
        json={"to": ["bob@globex.test"], "body": body},
        headers=org.agents[agent].auth,
    ) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_threat_local_agent_flood_gets_429_with_retry_after(w: World) -> None:
    acme = w.orgs["acme.test"]
    acme.relay.reload(with_rates(acme.relay, agent={"per_second": 0.5, "burst": 2}))
    assert [(await post(w, acme, "alice", str(i)))[0] for i in range(2)] == [202, 202]
    status, body, headers = await post(w, acme, "alice", "too fast")
    assert status == 429
    assert (body["error"]["code"], body["error"]["status"]) == ("rate_limited", "4.7.0")
    assert headers["Retry-After"] == "2"  # RFC 9110 §10.2.3: whole seconds, rounded up
    assert len(await acme.relay.store.list_queue()) == 2  # the refused message was not kept
    w.clock.advance(2)
    assert (await post(w, acme, "alice", "later"))[0] == 202


async def test_threat_partner_flood_is_deferred_4_7_0_and_delivered_later(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    globex.relay.reload(with_rates(globex.relay, sender={"per_second": 0.1, "burst": 2}))
    ids = [(await post(w, acme, "alice", str(i)))[1]["id"] for i in range(5)]
    await acme.relay.sender.run_once()
    queued = await acme.relay.store.list_queue()
    assert len(queued) == 3
    assert {q.code for q in queued} == {"4.7.0"}  # deferred, not bounced
    status = await w.status(acme, acme.agents["alice"], queued[0].id)
    assert status["recipients"]["bob@globex.test"]["state"] == "queued"

    for _ in range(20):  # the partner's queue retries on its own backoff schedule
        due = await acme.relay.store.next_due()
        if due is None:
            break
        w.clock.set(max(due, w.clock.now()))
        await acme.relay.sender.run_once()
    assert await acme.relay.store.list_queue() == []
    delivered = [m["id"] for m in await w.inbox(globex, globex.agents["bob"])]
    assert sorted(delivered) == sorted(ids)  # every one, exactly once
    assert await w.inbox(acme, acme.agents["alice"]) == []  # and no bounce


async def test_threat_store_failure_answers_4_3_0_and_the_partner_retries(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("disk full")

    monkeypatch.setattr(globex.relay.store, "accept_many", failing)
    await post(w, acme, "alice", "x")
    await acme.relay.sender.run_once()
    [queued] = await acme.relay.store.list_queue()
    assert queued.code == "4.3.0"

    monkeypatch.undo()
    await acme.relay.store.flush(w.clock.now())
    await acme.relay.sender.run_once()
    assert len(await w.inbox(globex, globex.agents["bob"])) == 1


async def test_threat_slow_store_answers_4_3_0_and_a_late_commit_is_a_duplicate(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    release = asyncio.Event()
    real = globex.relay.store.accept_many

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(globex.relay.store, "accept_many", slow)
    monkeypatch.setattr(globex.relay.inbound, "write_timeout", 0.05)
    await post(w, acme, "alice", "x")
    await acme.relay.sender.run_once()
    [queued] = await acme.relay.store.list_queue()
    assert queued.code == "4.3.0"

    release.set()  # the write that timed out lands after all
    await wait_until(lambda: globex.relay.custody.gate.writes == 0)
    monkeypatch.undo()
    await acme.relay.store.flush(w.clock.now())
    await acme.relay.sender.run_once()
    assert await acme.relay.store.list_queue() == []
    assert len(await w.inbox(globex, globex.agents["bob"])) == 1  # delivered once


async def test_threat_store_exhaustion_answers_503_on_the_api(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme = w.orgs["acme.test"]
    release = asyncio.Event()
    real = acme.relay.store.accept_many

    async def stalled(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(acme.relay.store, "accept_many", stalled)
    monkeypatch.setattr(acme.relay.custody.gate, "max_writes", 1)
    first: asyncio.Task[tuple[int, Any, Any]] = asyncio.create_task(post(w, acme, "alice", "1"))
    await wait_until(lambda: acme.relay.custody.gate.writes == 1)
    status, body, _ = await post(w, acme, "alice", "2")
    assert status == 503
    assert (body["error"]["code"], body["error"]["status"]) == ("store_unavailable", "4.3.0")
    release.set()
    assert (await first)[0] == 202
    assert len(await acme.relay.store.list_queue()) == 1


async def test_custody_gate_bounds_bytes_and_releases_on_completion() -> None:
    from relay.store.backpressure import CustodyGate

    gate = CustodyGate(max_writes=10, max_bytes=100)
    hold = asyncio.Event()

    async def write(value: int) -> int:
        await hold.wait()
        return value

    def op(value: int) -> Coroutine[Any, Any, int]:
        return write(value)

    big = asyncio.create_task(gate.write(op(1), size=90))
    await wait_until(lambda: gate.writes == 1)
    with pytest.raises(StoreUnavailable):
        await gate.write(op(2), size=20)
    # Nothing pending: one write larger than the byte bound still goes through.
    hold.set()
    assert await big == 1
    assert await gate.write(op(3), size=500) == 3
    assert (gate.writes, gate.bytes) == (0, 0)


# ---------------------------------------------------------------------- per source address

GUESS = "synq_not-a-token"
TXN_IDS = itertools.count()


async def test_threat_online_token_guessing_gets_429_per_source_address(w: World) -> None:
    """Failed bearer tokens are limited per source address: past the budget every token from
    that address is refused 429 before it is looked up — the right one too, so a refused guess
    reveals nothing; successes cost nothing; another address is not affected."""
    acme = w.orgs["acme.test"]
    acme.relay.reload(with_rates(acme.relay, failed_auth={"per_second": 0.5, "burst": 3}))
    url = f"{acme.url}/synq/v1/inbox"
    alice = acme.agents["alice"].token
    async with from_address("127.0.0.2") as guesser, from_address("127.0.0.3") as agent:
        for _ in range(20):  # an agent authenticating all day is never charged
            assert (await call(agent, "GET", url, alice))[0] == 200

        assert [(await call(guesser, "GET", url, f"{GUESS}{i}"))[0] for i in range(3)] == [401] * 3
        status, body, headers = await call(guesser, "GET", url, f"{GUESS}-4")
        assert status == 429
        assert (body["error"]["code"], body["error"]["status"]) == ("rate_limited", "4.7.0")
        assert headers["Retry-After"] == "2"  # one attempt back at 0.5/s
        assert (await call(guesser, "GET", url, alice))[0] == 429

        # The agent at another address keeps working, and has a budget of its own.
        assert (await call(agent, "GET", url, alice))[0] == 200
        assert [(await call(agent, "GET", url, GUESS))[0] for _ in range(4)] == [401] * 3 + [429]

        w.clock.advance(2)
        assert (await call(guesser, "GET", url, alice))[0] == 200
        assert (await call(guesser, "GET", url, GUESS))[0] == 401
        assert (await call(guesser, "GET", url, GUESS))[0] == 429


async def test_threat_token_guessing_is_limited_on_every_face(w: World) -> None:
    """The local API, the MCP face and the A2A face share one budget of failures per address:
    a guesser cannot multiply its attempts by spreading them over the faces."""
    acme = w.orgs["acme.test"]
    acme.relay.reload(with_rates(acme.relay, failed_auth={"per_second": 0.5, "burst": 3}))
    mcp_headers = {"Accept": "application/json, text/event-stream"}
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"id": "x"}}
    faces = [
        ("GET", f"{acme.url}/synq/v1/inbox", {}),
        ("POST", f"{acme.url}/mcp", {"json": rpc, "headers": mcp_headers}),
        ("POST", f"{acme.url}/a2a/alice@acme.test", {"json": rpc}),
    ]
    async with from_address("127.0.0.2") as guesser:
        for method, url, kwargs in faces:
            assert (await call(guesser, method, url, GUESS, **kwargs))[0] == 401
        for method, url, kwargs in faces:
            status, body, headers = await call(guesser, method, url, GUESS, **kwargs)
            assert (status, body["error"]["code"]) == (429, "rate_limited"), url
            assert int(headers["Retry-After"]) >= 1
    # The MCP face still serves a good token from another address.
    async with from_address("127.0.0.3") as agent:
        status, _, _ = await call(
            agent, "POST", f"{acme.url}/mcp", acme.agents["alice"].token,
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "probe", "version": "1"}}},
            headers=mcp_headers,
        )  # fmt: skip
        assert status == 200


def forged(w: World, key: SigningKey, n: int) -> bytes:
    """A transaction of ``n`` envelopes claiming acme.test, signed by a key acme never published
    (each under a selector of its own, so each costs a key look-up)."""
    now = w.clock.now()
    tokens = []
    for i in range(n):
        doc = {
            "v": 1,
            "id": uuid7(now),
            "from": "alice@acme.test",
            "to": ["bob@globex.test"],
            "created": env_mod.format_timestamp(now),
            "expires": env_mod.format_timestamp(now + timedelta(hours=1)),
            "kind": "message",
            "content_type": "text/plain",
            "body": "forged",
        }
        signer = SigningKey(f"{key.selector}{i}", key.key)
        tokens.append(jws.sign(json.dumps(doc).encode(), signer))
    return json.dumps({"origin": "acme.test", "envelopes": tokens}).encode()


async def put_txn(http: aiohttp.ClientSession, org: Org, body: bytes) -> tuple[int, Any, Any]:
    async with http.put(
        f"{org.url}/synq/v1/federation/txn/t-{next(TXN_IDS)}",
        data=body,
        headers={"Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_threat_unverified_federation_flood_is_refused_before_key_lookup(w: World) -> None:
    """Transactions from an address whose envelopes keep failing verification are refused 429
    with Retry-After once it owes its budget — before the body is read, so before any key
    look-up or signature check; a partner whose envelopes verify is not slowed down."""
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    globex.relay.reload(with_rates(globex.relay, unverified={"per_second": 0.5, "burst": 4}))
    attacker = SigningKey.generate("evil")
    async with from_address("127.0.0.2") as forger:
        w.dns.reset_queries()
        status, body, _ = await put_txn(forger, globex, forged(w, attacker, 3))
        assert status == 200
        assert w.dns.query_count() >= 3  # each unknown selector cost a look-up
        assert {r["status"] for r in body["results"].values()} == {"rejected"}  # no such key
        # One envelope of budget left: admitted, and all six failures are charged (debt: -5).
        status, _, _ = await put_txn(forger, globex, forged(w, attacker, 6))
        assert status == 200
        w.dns.reset_queries()
        status, body, headers = await put_txn(forger, globex, forged(w, attacker, 1))
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        assert headers["Retry-After"] == "12"  # 6 tokens short of one at 0.5/s
        assert w.dns.query_count() == 0  # no key was looked up for the refused transaction
        # Refused before the body is even read: junk is answered 429, not 400.
        async with forger.put(
            f"{globex.url}/synq/v1/federation/txn/t-1",
            data=b"not json",
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 429
        # The receiver itself refuses it too, whoever calls it.
        txn = parse_request(forged(w, attacker, 1))
        with pytest.raises(RateLimited):
            await globex.relay.inbound.handle("t-direct", txn, source="127.0.0.2")
        assert w.dns.query_count() == 0

        # The real partner (the acme relay, from 127.0.0.1) is not slowed down.
        await post(w, acme, "alice", "hello")
        await acme.relay.sender.run_once()
        assert await acme.relay.store.list_queue() == []
        assert [m["body"] for m in await w.inbox(globex, globex.agents["bob"])] == ["hello"]

        # The debt is repaid at the rate, then the address is heard again.
        w.clock.advance(12)
        status, _, _ = await put_txn(forger, globex, forged(w, attacker, 1))
        assert status == 200


async def test_threat_request_flood_from_one_address_gets_429(w: World) -> None:
    """Requests per second per source address, on every route (here the public health check):
    past the burst, 429 with Retry-After; other addresses are served."""
    acme = w.orgs["acme.test"]
    acme.relay.reload(with_rates(acme.relay, source_requests={"per_second": 0.25, "burst": 5}))
    url = f"{acme.url}/healthz"
    async with from_address("127.0.0.2") as flood, from_address("127.0.0.3") as other:
        statuses = []
        for _ in range(6):
            async with flood.get(url) as resp:
                statuses.append(resp.status)
                retry_after = resp.headers.get("Retry-After")
                body = await resp.json()
        assert statuses == [200] * 5 + [429]
        assert (body["error"]["code"], retry_after) == ("rate_limited", "4")
        async with other.get(url) as resp:
            assert resp.status == 200
        w.clock.advance(4)
        async with flood.get(url) as resp:
            assert resp.status == 200


async def test_threat_one_address_holding_many_requests_open_gets_429(w: World) -> None:
    """Requests in flight per source address (long polls here): the one past the limit is
    refused 429 while the others are held; other addresses are served, and a place is given
    back when a request ends."""
    acme = w.orgs["acme.test"]
    acme.relay.reload(with_limits(acme.relay, requests_in_flight_per_source=2))
    alice = acme.agents["alice"].token
    poll = f"{acme.url}/synq/v1/inbox?wait=30"
    async with from_address("127.0.0.2") as holder, from_address("127.0.0.3") as other:
        held = [asyncio.create_task(call(holder, "GET", poll, alice)) for _ in range(2)]
        await wait_until(lambda: acme.relay.sources.in_flight.held("127.0.0.2") == 2)
        status, body, headers = await call(holder, "GET", f"{acme.url}/healthz", alice)
        assert (status, body["error"]["code"], headers["Retry-After"]) == (
            429,
            "rate_limited",
            "1",
        )
        assert (await call(other, "GET", f"{acme.url}/healthz", alice))[0] == 200
        # The client hangs up: the server cancels both polls and gives their places back.
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await wait_until(lambda: acme.relay.sources.in_flight.held("127.0.0.2") == 0)
        assert (await call(holder, "GET", f"{acme.url}/healthz", alice))[0] == 200


async def test_exempt_network_is_not_limited_per_source(w: World) -> None:
    acme = w.orgs["acme.test"]
    config = with_rates(acme.relay, failed_auth={"per_second": 0.5, "burst": 1})
    data = config.model_dump()
    data["limits"] = {"exempt": ["127.0.0.2/32"]}
    acme.relay.reload(Config.model_validate({**data, "base_dir": config.base_dir}))
    url = f"{acme.url}/synq/v1/inbox"
    async with from_address("127.0.0.2") as trusted, from_address("127.0.0.3") as other:
        assert [(await call(trusted, "GET", url, GUESS))[0] for _ in range(5)] == [401] * 5
        assert [(await call(other, "GET", url, GUESS))[0] for _ in range(2)] == [401, 429]
