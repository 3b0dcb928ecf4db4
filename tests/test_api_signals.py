"""The signal routes of the local agent API over real loopback HTTP (SPEC.md §13.3): answers
and error objects (SPEC.md §5.2) on the wire."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import Agent, AgentFactory

Client = TestClient[Any, Any]

EMIT = {"topic": "invoice.overdue", "text": "chase #7", "urgency": 0.8, "lease": 30}


async def call(
    client: Client, method: str, path: str, agent: Agent, body: Any = None
) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": agent.auth}
    if body is not None:
        kwargs["json"] = body
    resp = await client.request(method, path, **kwargs)
    return resp.status, await resp.json()


async def test_round_trip_over_http(client: Client, make_agent: AgentFactory) -> None:
    alice, bob, carol = [await make_agent(n) for n in ("alice", "bob", "carol")]
    status, sub = await call(
        client, "PUT", "/synq/v1/subscriptions", bob, {"topics": ["invoice.*"], "threshold": 0.2}
    )
    assert (status, sub) == (
        200,
        {"topics": ["invoice.*"], "threshold": 0.2, "capabilities": False},
    )
    status, made = await call(client, "POST", "/synq/v1/signals", alice, EMIT)
    assert status == 201
    assert made["state"] == "open"
    assert 0.79 < made["intensity"] <= 0.8
    sid = made["id"]

    status, feed = await call(client, "GET", "/synq/v1/signals?wait=5", bob)
    assert status == 200
    assert [s["id"] for s in feed["signals"]] == [sid]
    assert feed["signals"][0]["topic"] == "invoice.overdue"

    status, claimed = await call(client, "POST", f"/synq/v1/signals/{sid}/claim", bob)
    assert status == 200
    token = claimed["claim"]["token"]
    assert token.startswith("1.")
    status, err = await call(client, "POST", f"/synq/v1/signals/{sid}/claim", carol)
    assert status == 409
    assert err["error"]["code"] == "already_claimed"
    assert err["error"]["status"] == "5.5.4"
    status, beat = await call(
        client, "POST", f"/synq/v1/signals/{sid}/heartbeat", bob, {"token": token}
    )
    assert status == 200
    assert beat["claim"]["token"] == token
    status, err = await call(
        client, "POST", f"/synq/v1/signals/{sid}/complete", carol, {"token": token}
    )
    assert (status, err["error"]["code"]) == (409, "stale_claim")
    status, done = await call(
        client,
        "POST",
        f"/synq/v1/signals/{sid}/complete",
        bob,
        {"token": token, "content_type": "application/json", "body": {"paid": True}},
    )
    assert (status, done) == (200, {"id": sid, "state": "done"})

    status, shown = await call(client, "GET", f"/synq/v1/signals/{sid}", alice)
    assert status == 200
    assert shown["state"] == "done"
    assert shown["intensity"] == 0.0
    assert [(h["holder"], h["outcome"]) for h in shown["history"]] == [("bob@acme.test", "done")]
    assert "token" not in json.dumps(shown)

    status, mail = await call(client, "GET", "/synq/v1/inbox", alice)
    (result,) = mail["messages"]
    assert (result["from"], result["in_reply_to"], result["body"]) == (
        "bob@acme.test",
        sid,
        {"paid": True},
    )


async def test_errors_are_typed_on_the_wire(client: Client, make_agent: AgentFactory) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    for bad, code in [
        ({**EMIT, "urgency": 0}, "invalid_envelope"),
        ({**EMIT, "half_life": 0}, "invalid_envelope"),
        ({**EMIT, "lease": 1}, "invalid_envelope"),
        ({**EMIT, "scope": "everyone"}, "invalid_envelope"),
        ({**EMIT, "body": "x" * 70_000}, "too_large"),
    ]:
        status, err = await call(client, "POST", "/synq/v1/signals", alice, bad)
        assert (status, err["error"]["code"]) == (413 if code == "too_large" else 422, code)
    _, made = await call(client, "POST", "/synq/v1/signals", alice, EMIT)
    sid = made["id"]
    status, err = await call(client, "POST", f"/synq/v1/signals/{sid}/claim", alice)
    assert (status, err["error"]["code"]) == (403, "forbidden")
    status, err = await call(client, "DELETE", f"/synq/v1/signals/{sid}", bob)
    assert (status, err["error"]["code"]) == (403, "forbidden")
    status, err = await call(client, "POST", "/synq/v1/signals/nope/claim", bob)
    assert (status, err["error"]["code"]) == (404, "not_found")
    status, ok = await call(
        client, "POST", f"/synq/v1/signals/{sid}/reinforce", bob, {"amount": 0.1}
    )
    assert status == 200
    assert ok["intensity"] > 0.8
    status, err = await call(
        client, "POST", f"/synq/v1/signals/{sid}/reinforce", bob, {"amount": 0.1}
    )
    assert (status, err["error"]["code"]) == (409, "conflict")
    status, gone = await call(client, "DELETE", f"/synq/v1/signals/{sid}", alice)
    assert (status, gone["state"]) == (200, "withdrawn")
    status, err = await call(client, "POST", f"/synq/v1/signals/{sid}/claim", bob)
    assert (status, err["error"]["code"]) == (409, "signal_closed")
    resp = await client.post("/synq/v1/signals", json=EMIT)
    assert resp.status == 401


async def test_subscribe_by_capabilities(client: Client, make_agent: AgentFactory) -> None:
    bob = await make_agent("bob")
    status, sub = await call(client, "PUT", "/synq/v1/subscriptions", bob, {"capabilities": True})
    assert status == 200
    assert sub["capabilities"] is True
    assert "inbox" in sub["topics"]
    status, again = await call(client, "GET", "/synq/v1/subscriptions", bob)
    assert again == sub


async def test_sse_stream_offers_then_drops_what_is_taken(
    client: Client, make_agent: AgentFactory
) -> None:
    alice, bob, carol = [await make_agent(n) for n in ("alice", "bob", "carol")]
    await call(client, "PUT", "/synq/v1/subscriptions", bob, {"topics": ["invoice.**"]})
    resp = await client.get("/synq/v1/signals/stream", headers=bob.auth)
    assert resp.headers["Content-Type"] == "text/event-stream"

    async def next_event() -> list[str]:
        while True:
            line = await resp.content.readline()
            if line.startswith(b"data: "):
                return [s["id"] for s in json.loads(line[6:])["signals"]]

    assert await asyncio.wait_for(next_event(), 10) == []
    _, made = await call(client, "POST", "/synq/v1/signals", alice, EMIT)
    assert await asyncio.wait_for(next_event(), 10) == [made["id"]]
    await call(client, "POST", f"/synq/v1/signals/{made['id']}/claim", carol)
    assert await asyncio.wait_for(next_event(), 10) == []
    resp.close()


async def test_agents_cannot_send_offers(client: Client, make_agent: AgentFactory) -> None:
    alice = await make_agent("alice")
    for kind, ctype in (
        ("signal", "application/synq-signal+json"),
        ("signal.update", "application/json"),
    ):
        status, err = await call(
            client,
            "POST",
            "/synq/v1/messages",
            alice,
            {"to": ["signals@globex.test"], "kind": kind, "content_type": ctype, "body": {}},
        )
        assert (status, err["error"]["code"]) == (403, "forbidden")
    # An agent's own control traffic (kind signal, SPEC.md §3.1) is still its to send.
    status, _ = await call(
        client,
        "POST",
        "/synq/v1/messages",
        alice,
        {"to": ["alice@acme.test"], "kind": "signal", "body": "x"},
    )
    assert status == 202
