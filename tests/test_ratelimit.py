"""Rate limits and back-pressure on live relays: 429 + Retry-After on the API, 4.7.0 per envelope
in federation (the partner's queue delivers later, nothing lost), and a store that is failing,
full or slow answering 4.3.0 / 503 instead of accepting what it cannot keep."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

from relay.config import Config
from relay.core.errors import StoreUnavailable
from relay.runtime import Relay
from tests.fedenv import Org, World, world
from tests.helpers import wait_until


def with_rates(relay: Relay, **rates: dict[str, float]) -> Config:
    data = relay.config.model_dump()
    data["rate_limits"] = rates
    return Config.model_validate({**data, "base_dir": relay.config.base_dir})


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
