"""Signals across two organisations on loopback, with a real DNS server and one fake clock
(tests/fedenv.py; SPEC.md §13.6): an agent at acme emits; agents at acme and globex hear it by
threshold; exactly one claims and completes it, the result reaches the emitter; a worker whose
lease lapsed loses the signal to another; forged and replayed requests are refused; an owner
that is down fails remote claims at once while the partner's own agents go on. Through REST
and the MCP face."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.core import signals as sg
from relay.core.address import Address
from relay.core.draft import Draft
from tests.conftest import Agent
from tests.fedenv import Org, World, world
from tests.mcpenv import mcp_client

ACME, GLOBEX = "acme.test", "globex.test"


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, ACME, GLOBEX, "evil.test") as env:
        for org, partner in ((ACME, GLOBEX), (GLOBEX, ACME)):
            relay = env.orgs[org].relay
            discovery = relay.config.discovery.model_copy(update={"partners": [partner]})
            relay.config = relay.config.model_copy(update={"discovery": discovery})
        yield env


async def call(
    w: World, org: Org, method: str, path: str, agent: Agent, body: Any = None
) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": agent.auth}
    if body is not None:
        kwargs["json"] = body
    async with w.http.request(method, f"{org.url}/synq/v1{path}", **kwargs) as resp:
        return resp.status, await resp.json()


async def flush(w: World) -> None:
    """Tell partners what each relay owes them (its signals' teller, driven by hand here as
    every background loop of this world is), then run every relay's federation queue once:
    offers, updates and results cross."""
    for org in w.orgs.values():
        await org.relay.signals.tell_owed()
    for org in w.orgs.values():
        await org.relay.sender.run_once()


EMIT = {"topic": "invoice.overdue", "text": "chase #7", "urgency": 0.8, "scope": "partners"}


async def test_two_organisations_one_completion(w: World) -> None:
    acme, globex = w.orgs[ACME], w.orgs[GLOBEX]
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    gina, hank = await globex.agent("gina"), await globex.agent("hank")
    for org, agent, threshold in ((acme, bob, 0.5), (globex, gina, 0.5), (globex, hank, 0.9)):
        await call(
            w,
            org,
            "PUT",
            "/subscriptions",
            agent,
            {"topics": ["invoice.*"], "threshold": threshold},
        )
    status, made = await call(w, acme, "POST", "/signals", alice, {**EMIT, "lease": 30})
    assert status == 201
    sid = made["id"]
    await flush(w)

    # Heard by threshold, here and at the partner: hank's threshold is above the urgency.
    _, heard = await call(w, acme, "GET", "/signals", bob)
    assert [s["id"] for s in heard["signals"]] == [sid]
    _, heard = await call(w, globex, "GET", "/signals?wait=5", gina)
    assert [(s["id"], s["owner"], s["emitter"]) for s in heard["signals"]] == [
        (sid, ACME, "alice@acme.test")
    ]
    _, heard = await call(w, globex, "GET", "/signals", hank)
    assert heard["signals"] == []

    # gina claims through her relay; the owner grants it; nobody else can.
    status, claimed = await call(w, globex, "POST", f"/signals/{sid}/claim", gina)
    assert status == 200, claimed
    token = claimed["claim"]["token"]
    status, err = await call(w, acme, "POST", f"/signals/{sid}/claim", bob)
    assert (status, err["error"]["code"]) == (409, "already_claimed")
    status, err = await call(w, globex, "POST", f"/signals/{sid}/claim", hank)
    assert (status, err["error"]["code"]) == (409, "already_claimed")
    _, heard = await call(w, globex, "GET", "/signals", gina)
    assert heard["signals"] == []  # taken: no longer offered at globex either
    status, err = await call(
        w, globex, "POST", f"/signals/{sid}/complete", hank, {"token": token, "body": "me"}
    )
    assert (status, err["error"]["code"]) == (409, "stale_claim")
    status, beat = await call(
        w, globex, "POST", f"/signals/{sid}/heartbeat", gina, {"token": token}
    )
    assert status == 200, beat
    status, done = await call(
        w, globex, "POST", f"/signals/{sid}/complete", gina, {"token": token, "body": "paid"}
    )
    assert (status, done["state"]) == (200, "done")
    await flush(w)

    mail = await w.inbox(acme, alice)
    assert [(m["from"], m["in_reply_to"], m["body"]) for m in mail] == [
        ("gina@globex.test", sid, "paid")
    ]
    _, shown = await call(w, acme, "GET", f"/signals/{sid}", alice)
    assert shown["state"] == "done"
    assert [(h["holder"], h["outcome"]) for h in shown["history"]] == [("gina@globex.test", "done")]
    _, replica = await call(w, globex, "GET", f"/signals/{sid}", gina)
    assert replica["state"] == "done"


async def test_a_lapsed_remote_worker_loses_the_signal_through_the_mcp_face(w: World) -> None:
    acme, globex = w.orgs[ACME], w.orgs[GLOBEX]
    alice = await acme.agent("alice")
    gina, hank = await globex.agent("gina"), await globex.agent("hank")
    _, made = await call(w, acme, "POST", "/signals", alice, {**EMIT, "lease": 10})
    sid = made["id"]
    await flush(w)
    async with mcp_client(f"{globex.url}/mcp", gina) as client:
        heard = await client.call_tool(
            "watch_signals", {"topics": ["invoice.**"], "threshold": 0.1, "wait": 5}
        )
        assert [s["id"] for s in heard.structured_content["signals"]] == [sid]
        claimed = await client.call_tool("claim_signal", {"id": sid})
        token = claimed.structured_content["claim"]["token"]
        # gina stops heartbeating (killed): past the lease the owner's sweep reopens it,
        # boosted, and tells globex.
        w.clock.advance(11)
        await acme.relay.signals.run_once()
        await flush(w)
        async with mcp_client(f"{globex.url}/mcp", hank) as other:
            heard = await other.call_tool("watch_signals", {"topics": ["invoice.*"]})
            (offered,) = heard.structured_content["signals"]
            assert offered["id"] == sid
            taken = await other.call_tool("claim_signal", {"id": sid})
            assert not taken.is_error
            late = await client.call_tool("complete_signal", {"id": sid, "token": token})
            assert late.is_error
            assert "stale_claim" in late.content[0].text  # type: ignore[union-attr]
            hank_token = taken.structured_content["claim"]["token"]
            done = await other.call_tool(
                "complete_signal", {"id": sid, "token": hank_token, "body": "done by hank"}
            )
            assert done.structured_content == {"id": sid, "state": "done"}
    await flush(w)
    mail = await w.inbox(acme, alice)
    assert [(m["from"], m["body"]) for m in mail] == [("hank@globex.test", "done by hank")]


async def test_forged_and_replayed_requests_are_refused(w: World) -> None:
    acme, globex, evil = w.orgs[ACME], w.orgs[GLOBEX], w.orgs["evil.test"]
    alice = await acme.agent("alice")
    _, made = await call(w, acme, "POST", "/signals", alice, EMIT)
    sid = made["id"]

    def request(org: Org, sender: str, op: str = "claim") -> str:
        draft = Draft(
            Address.parse(sender),
            (Address.parse("alice@acme.test"),),
            sg.REQUEST_CONTENT_TYPE,
            {"signal": sid},
            kind=f"signal.{op}",
            in_reply_to=sid,
            expires=w.clock.now() + sg.MAX_REQUEST_LIFETIME,
        )
        return org.relay.router.build(draft)[1]

    async def post(token: str, op: str = "claim") -> tuple[int, Any]:
        async with w.http.post(
            f"{acme.url}/synq/v1/federation/signals/{sid}/{op}",
            data=token,
            headers={"Content-Type": "application/jose"},
        ) as resp:
            return resp.status, await resp.json()

    # evil.test signs for an agent of globex.test: globex's key does not verify it.
    status, err = await post(request(evil, "gina@globex.test"))
    assert (status, err["error"]["code"]) == (422, "bad_signature")
    # evil.test for its own agent: not in the signal's scope (acme's partners are globex).
    status, err = await post(request(evil, "eve@evil.test"))
    assert (status, err["error"]["code"]) == (403, "forbidden")
    # A request for another operation than the route's.
    status, err = await post(request(globex, "gina@globex.test", "release"), "claim")
    assert (status, err["error"]["code"]) == (422, "invalid_envelope")
    genuine = request(globex, "gina@globex.test")
    status, ok = await post(genuine)
    assert status == 200, ok
    status, err = await post(genuine)
    assert (status, err["error"]["code"]) == (409, "conflict")


async def test_offers_to_a_partner_known_down_are_held_by_their_accept(w: World) -> None:
    """SPEC.md §9.3, §13.6: once acme's breaker for globex is open, the offer of a new signal
    is queued held by its accept, until the breaker's next probe: no pass of acme's sender
    has to take it to hold it."""
    acme, globex = w.orgs[ACME], w.orgs[GLOBEX]
    alice = await acme.agent("alice")
    sender = acme.relay.sender
    await globex.stop()
    await call(w, acme, "POST", "/signals", alice, EMIT)
    await acme.relay.signals.tell_owed()
    for probe in range(3):
        if probe:
            w.clock.advance(30)  # past the offer's backoff
        assert await sender.run_once() == 1
    until = sender.breaker.open_until(GLOBEX)
    assert until is not None
    assert not sender.breaker.allows(GLOBEX, w.clock.now())
    await call(w, acme, "POST", "/signals", alice, {**EMIT, "text": "chase #8"})
    await acme.relay.signals.tell_owed()
    [offer] = [q for q in await acme.relay.store.list_queue(GLOBEX) if q.attempts == 0]
    assert (offer.code, offer.next_attempt) == ("4.4.1", until)
    assert await sender.run_once() == 0


async def test_owner_down_fails_remote_claims_fast_local_work_goes_on(w: World) -> None:
    acme, globex = w.orgs[ACME], w.orgs[GLOBEX]
    alice = await acme.agent("alice")
    gina, hank = await globex.agent("gina"), await globex.agent("hank")
    _, made = await call(w, acme, "POST", "/signals", alice, EMIT)
    await flush(w)
    await call(w, globex, "PUT", "/subscriptions", hank, {"topics": ["invoice.*"]})
    _, heard = await call(w, globex, "GET", "/signals", hank)
    assert [s["id"] for s in heard["signals"]] == [made["id"]]
    await acme.stop()
    status, err = await call(w, globex, "POST", f"/signals/{made['id']}/claim", gina)
    assert (status, err["error"]["code"], err["error"]["status"]) == (
        503,
        "owner_unreachable",
        "4.4.1",
    )
    # Nobody at globex could take acme's signals now: not offered for OWNER_QUIET.
    _, heard = await call(w, globex, "GET", "/signals", hank)
    assert heard["signals"] == []
    # globex's own signals are its own to grant.
    _, local = await call(
        w, globex, "POST", "/signals", hank, {**EMIT, "scope": "local", "text": "ours"}
    )
    status, claimed = await call(w, globex, "POST", f"/signals/{local['id']}/claim", gina)
    assert status == 200, claimed
