"""Federation between two real relays on loopback, discovered through a real DNS server.

The sending relay's queue is driven by hand under a shared fake clock, so backoff and expiry
are tested without waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.core import records
from relay.core.envelope import format_timestamp
from relay.dnsserver import Fault
from tests import pg
from tests.conftest import Agent
from tests.fedenv import Org, World, world

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture(params=pg.BACKENDS)
async def w(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    urls = pg.store_urls(request, request.param)
    async with world(tmp_path, "acme.test", "globex.test", store_url=urls) as env:
        yield env


async def test_message_crosses_the_boundary_and_the_reply_comes_back(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")
    sent = await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "hello", "thread": "t1"})
    status = await w.status(acme, alice, sent["id"])
    assert status["recipients"]["bob@globex.test"]["state"] == "queued"

    assert await acme.relay.sender.run_once() == 1
    [got] = await w.inbox(globex, bob)
    assert (got["id"], got["from"], got["body"], got["thread"]) == (
        sent["id"],
        "alice@acme.test",
        "hello",
        "t1",
    )
    status = await w.status(acme, alice, sent["id"])
    rec = status["recipients"]["bob@globex.test"]
    assert (rec["state"], rec["code"], rec["attempts"]) == ("sent", "2.0.0", 1)
    assert any(ev["event"] == "sent" and ev.get("hop") == globex.url for ev in status["events"])

    reply = await w.send(
        globex,
        bob,
        {"to": ["alice@acme.test"], "body": "hi back", "thread": "t1", "in_reply_to": sent["id"]},
    )
    assert await globex.relay.sender.run_once() == 1
    [back] = await w.inbox(acme, alice)
    assert (back["id"], back["in_reply_to"], back["thread"]) == (reply["id"], sent["id"], "t1")


async def test_unknown_remote_recipient_bounces_with_a_dsn(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")
    sent = await w.send(acme, alice, {"to": ["bob@globex.test", "ghost@globex.test"], "body": "x"})
    assert await acme.relay.sender.run_once() == 2
    assert [m["id"] for m in await w.inbox(globex, bob)] == [sent["id"]]

    status = await w.status(acme, alice, sent["id"])
    assert status["recipients"]["bob@globex.test"]["state"] == "sent"
    ghost = status["recipients"]["ghost@globex.test"]
    assert (ghost["state"], ghost["code"]) == ("bounced", "5.1.1")

    [dsn] = await w.inbox(acme, alice)
    assert (dsn["kind"], dsn["from"], dsn["in_reply_to"]) == (
        "dsn",
        "mailer-daemon@acme.test",
        sent["id"],
    )
    assert dsn["content_type"] == "application/synq-dsn+json"
    assert dsn["body"]["final_recipient"] == "ghost@globex.test"
    assert (dsn["body"]["status"], dsn["body"]["action"]) == ("5.1.1", "failed")
    # Nothing more is queued: a bounce is final, and a DSN is local.
    assert await acme.relay.sender.run_once() == 0


async def test_partner_down_then_back_delivers_everything_once(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")
    await globex.stop()
    ids = [
        (await w.send(acme, alice, {"to": ["bob@globex.test"], "body": str(i)}))["id"]
        for i in range(30)
    ]
    for _attempt in range(1, 5):
        assert await acme.relay.sender.run_once() == 30
        status = await w.status(acme, alice, ids[0])
        rec = status["recipients"]["bob@globex.test"]
        assert (rec["state"], rec["code"]) == ("queued", "4.4.1")
        # Nothing is due until the backoff has passed.
        assert await acme.relay.sender.run_once() == 0
        w.clock.advance(3600)
    assert acme.relay.sender.breaker.open_until("globex.test") is not None

    await globex.start()
    w.clock.advance(3600)
    assert await acme.relay.sender.run_once() == 30
    # Retries are jittered per envelope, so arrival order is not send order (SPEC.md §9.1).
    assert sorted(m["id"] for m in await w.inbox(globex, bob)) == sorted(ids)
    # A second pass (and a flushed queue) sends nothing again.
    assert await acme.relay.store.flush(w.clock.now()) == 0
    assert await acme.relay.sender.run_once() == 0
    assert len(await w.inbox(globex, bob)) == 30


@pytest.fixture
def response(request: pytest.FixtureRequest) -> web.Response:
    """A fresh response per test: aiohttp sends a response object once, and every case runs
    once per store backend."""
    status, text = request.param
    return web.Response(status=status, text=text)


@pytest.mark.parametrize(
    ("response", "code"),
    [
        ((500, "boom"), "4.5.0"),
        ((503, "busy"), "4.4.5"),
        ((200, "<html>not json</html>"), "4.5.0"),
        ((200, '{"results": 5}'), "4.5.0"),
        ((200, '{"results": {}}'), "4.5.0"),
        ((404, "no"), "4.5.0"),
    ],
    ids=["500", "503", "garbage", "wrong-shape", "no-results", "404"],
    indirect=["response"],
)
async def test_partner_answering_errors_or_garbage_keeps_the_envelope_queued(
    w: World, response: web.Response, code: str
) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")

    async def bad(request: web.Request) -> web.Response:
        await request.read()
        return response

    app = web.Application()
    app.router.add_put("/synq/v1/federation/txn/{txn}", bad)
    async with TestServer(app) as liar:
        w.dns.set_txt(
            records.relay_record_name("globex.test"),
            [records.RelayRecord(str(liar.make_url("")).rstrip("/")).to_txt()],
            ttl=60,
        )
        sent = await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "x"})
        assert await acme.relay.sender.run_once() == 1
        rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@globex.test"]
        assert (rec["state"], rec["code"]) == ("queued", code)

    # The partner fixes its relay: after the DNS TTL and the backoff it is delivered, once.
    w.publish(globex)
    w.clock.advance(3600)
    assert await acme.relay.sender.run_once() == 1
    assert [m["id"] for m in await w.inbox(globex, bob)] == [sent["id"]]


async def test_expired_envelope_bounces_with_dsn(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    await globex.stop()
    expires = (w.clock.now() + timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    sent = await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "x", "expires": expires})
    assert await acme.relay.sender.run_once() == 1
    w.clock.advance(3600)
    assert await acme.relay.sender.run_once() == 1
    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@globex.test"]
    assert (rec["state"], rec["code"]) == ("bounced", "5.4.7")
    [dsn] = await w.inbox(acme, alice)
    assert dsn["kind"] == "dsn"
    assert dsn["body"]["status"] == "5.4.7"
    assert "4.4.1" in dsn["body"]["diagnostic"]


async def test_nxdomain_destination_bounces(w: World) -> None:
    acme = w.orgs["acme.test"]
    alice = await acme.agent("alice")
    sent = await w.send(acme, alice, {"to": ["bob@nowhere.test"], "body": "x"})
    assert await acme.relay.sender.run_once() == 1
    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@nowhere.test"]
    assert (rec["state"], rec["code"]) == ("bounced", "5.1.2")
    [dsn] = await w.inbox(acme, alice)
    assert dsn["body"]["final_recipient"] == "bob@nowhere.test"


async def test_dns_timeout_defers(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")
    w.dns.set_fault(Fault.DROP)
    sent = await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "x"})
    assert await acme.relay.sender.run_once() == 1
    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@globex.test"]
    assert (rec["state"], rec["code"]) == ("queued", "4.4.3")
    w.dns.clear_faults()
    w.clock.advance(3600)
    assert await acme.relay.sender.run_once() == 1
    assert [m["id"] for m in await w.inbox(globex, bob)] == [sent["id"]]


@contextlib.asynccontextmanager
async def partner_at_globex(w: World, handler: Handler) -> AsyncIterator[TestServer]:
    """A stand-in relay for globex.test answering transactions with ``handler``, published in
    the loopback DNS as globex's relay for as long as it runs."""
    app = web.Application()
    app.router.add_put("/synq/v1/federation/txn/{txn}", handler)
    async with TestServer(app) as server:
        w.dns.set_txt(
            records.relay_record_name("globex.test"),
            [records.RelayRecord(str(server.make_url("")).rstrip("/")).to_txt()],
            ttl=60,
        )
        yield server


async def test_many_envelopes_are_batched_into_transactions(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")
    ids = [
        (await w.send(acme, alice, {"to": ["bob@globex.test"], "body": str(i)}))["id"]
        for i in range(450)
    ]
    assert await acme.relay.sender.run_once() == 450
    # Its transactions went concurrently through globex's gate, which is dropped once unused:
    # destinations named once cannot accumulate in the sender.
    assert acme.relay.sender._per_destination == {}
    text = globex.relay.metrics.render().decode()
    assert 'synq_federation_inbound_envelopes_total{status="accepted"} 450.0' in text
    sent = acme.relay.metrics.render().decode()
    assert 'synq_federation_outbound_recipients_total{outcome="sent"} 450.0' in sent
    seen: list[str] = []
    cursor: Any = None
    while True:
        page = await w.inbox(globex, bob, **({"after": cursor} if cursor else {}))
        if not page:
            break
        seen += [m["id"] for m in page]
        cursor = await _cursor(w, globex, bob, cursor)
    # Each once; in any order: the transactions of one pass travel concurrently and commit in
    # the order they arrive (SPEC.md §9: no ordering guarantee).
    assert sorted(seen) == sorted(ids)
    assert len(set(seen)) == len(seen)


async def _cursor(w: World, org: Any, agent: Any, after: Any) -> Any:
    params = {"limit": 500, **({"after": after} if after else {})}
    async with w.http.get(f"{org.url}/synq/v1/inbox", params=params, headers=agent.auth) as resp:
        return (await resp.json())["cursor"]


async def test_well_known_document_is_served(w: World) -> None:
    acme = w.orgs["acme.test"]
    async with w.http.get(f"{acme.url}/.well-known/synq.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["domain"] == "acme.test"
    assert doc["relay"] == acme.url
    assert doc["keys"]["keys"][0]["x"] == acme.key.public_key.b64url


async def test_agent_card_of_a_partner_address_is_fetched_from_its_relay(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await globex.agent("bob")
    async with w.http.get(f"{acme.url}/synq/v1/agents/bob@globex.test") as resp:
        assert resp.status == 200
        card = await resp.json()
    assert card["name"] == "bob@globex.test"
    assert card["supportedInterfaces"][0]["url"] == f"{globex.url}/a2a/bob@globex.test"
    async with w.http.get(f"{acme.url}/synq/v1/agents/ghost@globex.test") as resp:
        assert resp.status == 404
    async with w.http.get(f"{acme.url}/synq/v1/agents/bob@nowhere.test") as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["status"] == "5.1.2"


async def test_partner_that_takes_only_small_transactions_gets_them_split(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")
    sizes: list[int] = []
    forwarded: list[int] = []

    async def small_only(request: web.Request) -> web.Response:
        body = await request.read()
        count = len(json.loads(body)["envelopes"])
        sizes.append(count)
        if count > 4:
            return web.Response(status=413, text="too large")
        forwarded.append(count)
        async with w.http.put(
            f"{globex.url}/synq/v1/federation/txn/{request.match_info['txn']}",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp:
            return web.Response(
                status=resp.status, body=await resp.read(), content_type="application/json"
            )

    async with partner_at_globex(w, small_only):
        ids = [
            (await w.send(acme, alice, {"to": ["bob@globex.test"], "body": str(i)}))["id"]
            for i in range(12)
        ]
        assert await acme.relay.sender.run_once() == 12
    assert sorted(m["id"] for m in await w.inbox(globex, bob)) == sorted(ids)
    assert sizes[0] == 12
    assert sum(forwarded) == 12
    assert max(forwarded) <= 4


@pytest.mark.parametrize(
    ("status", "code", "expect_state", "expect_code"),
    [
        ("rejected", "2.0.0", "queued", "4.5.0"),
        ("accepted", "5.1.1", "queued", "4.5.0"),
        ("rejected", "5.7.1", "bounced", "5.7.1"),
        ("rejected", "4.7.0", "queued", "4.7.0"),
    ],
    ids=["rejected-with-success-code", "accepted-with-failure-code", "refused", "rate-limited"],
)
async def test_results_are_read_strictly(
    w: World, status: str, code: str, expect_state: str, expect_code: str
) -> None:
    acme = w.orgs["acme.test"]
    alice = await acme.agent("alice")

    async def answer(request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        # Answer by index, as a receiver does for envelopes it could not read an id from.
        results = {f"#{i}": {"status": status, "code": code} for i in range(len(doc["envelopes"]))}
        return web.json_response({"results": results})

    async with partner_at_globex(w, answer):
        sent = await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "x"})
        assert await acme.relay.sender.run_once() == 1
    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@globex.test"]
    assert (rec["state"], rec["code"]) == (expect_state, expect_code)


async def test_an_answer_that_arrives_in_pieces_is_read_whole(w: World) -> None:
    """A partner's answer may reach the sender in several TCP segments or chunks: the sender
    reads to the end before parsing (a single read would cut the document short, and the
    sender would retry a transaction the partner already committed)."""
    acme = w.orgs["acme.test"]
    alice = await acme.agent("alice")

    async def answer(request: web.Request) -> web.StreamResponse:
        doc = json.loads(await request.read())
        results = {
            f"#{i}": {"status": "accepted", "code": "2.0.0"} for i in range(len(doc["envelopes"]))
        }
        body = json.dumps({"results": results}).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 7):
            await response.write(body[start : start + 7])
            await asyncio.sleep(0)  # a separate chunk on the wire, not a wait for a condition
        await response.write_eof()
        return response

    async with partner_at_globex(w, answer):
        sent = [
            (await w.send(acme, alice, {"to": ["bob@globex.test"], "body": str(i)}))["id"]
            for i in range(3)
        ]
        assert await acme.relay.sender.run_once() == 3
    for env_id in sent:
        rec = (await w.status(acme, alice, env_id))["recipients"]["bob@globex.test"]
        assert (rec["state"], rec["code"]) == ("sent", "2.0.0")


async def test_relay_host_on_a_refused_address_bounces_without_connecting() -> None:
    """A partner's DNS must not point our sender at internal services (SSRF): the guarded
    connector refuses the address before any packet is sent, and the refusal is permanent."""
    import aiohttp

    from relay.core.errors import AttemptFailed
    from relay.discovery.dnsclient import make_resolver
    from relay.discovery.ssrf import AddressPolicy, make_guarded_connector
    from relay.federation.transport import HttpTransport

    policy = AddressPolicy.build(allow_private=False)
    connector = make_guarded_connector(policy, make_resolver(["127.0.0.1:9"], timeout=0.2))
    async with aiohttp.ClientSession(connector=connector) as session:
        transport = HttpTransport(session, policy)
        # Loopback stands for any non-public address: refused by this policy, and harmless
        # to reach should the guard ever fail.
        for url in ("https://127.0.0.2:9", "https://[::1]:9"):
            with pytest.raises(AttemptFailed) as exc:
                await transport.put_transaction(url, "t1", b"{}")
            assert exc.value.status.code == "5.7.1"


#: A partner's whole-transaction answer → what the transport raises (SPEC.md §8.7): the failure
#: type, the status the sender records, and the partner's Retry-After hint when it gave one.
TRANSACTION_ANSWERS = [
    (429, {"Retry-After": "7"}, "AttemptFailed", "4.4.5", 7.0),
    (503, {"Retry-After": "120"}, "AttemptFailed", "4.4.5", 120.0),
    (503, {"Retry-After": "Wed, 21 Oct 2037 07:28:00 GMT"}, "AttemptFailed", "4.4.5", None),
    (429, {}, "AttemptFailed", "4.4.5", None),
    (500, {"Retry-After": "7"}, "AttemptFailed", "4.5.0", None),
    (404, {}, "AttemptFailed", "4.5.0", None),
    (413, {}, "TransactionTooLarge", "5.3.4", None),
]


@pytest.mark.parametrize(("http", "headers", "kind", "code", "retry_after"), TRANSACTION_ANSWERS)
async def test_a_failed_transaction_is_one_attempt_failure(
    http: int, headers: dict[str, str], kind: str, code: str, retry_after: float | None
) -> None:
    import aiohttp

    from relay.core.errors import AttemptFailed
    from relay.discovery.ssrf import AddressPolicy
    from relay.federation.transport import HttpTransport

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=http, headers=headers, text="no")

    app = web.Application()
    app.router.add_put("/synq/v1/federation/txn/{txn}", refuse)
    async with TestServer(app) as partner, aiohttp.ClientSession() as session:
        transport = HttpTransport(session, AddressPolicy.build(allow_private=True))
        with pytest.raises(AttemptFailed) as exc:
            await transport.put_transaction(str(partner.make_url("")), "t1", b"{}")
    assert type(exc.value).__name__ == kind
    assert (exc.value.status.code, exc.value.retry_after) == (code, retry_after)


@pytest.mark.parametrize(
    ("relay_url", "code"),
    [("https://127.0.0.1:9", "5.7.1"), ("http://relay.evil.test", "5.1.2")],
    ids=["private-literal", "plain-http"],
)
async def test_a_relay_url_the_ssrf_policy_refuses_bounces_the_message(
    tmp_path: Path, relay_url: str, code: str
) -> None:
    """The relay URL a partner's DNS names is held to the SSRF rules (SPEC.md §7.6) in one
    place, the transport, before any connection: the message bounces with the refusal's
    status and its sender gets the DSN."""
    from relay.core.address import Address
    from relay.core.clock import FakeClock, SystemClock
    from relay.core.draft import Draft
    from relay.core.ids import hash_token, new_token
    from relay.dnsserver import DNSServer
    from relay.runtime import Relay
    from tests.conftest import make_config

    async with DNSServer(host="127.0.0.1", zones=["test"]) as dns:
        dns.set_txt(
            records.relay_record_name("evil.test"), [records.RelayRecord(relay_url).to_txt()]
        )
        config = make_config(
            tmp_path / "acme", nameservers=[dns.address], allow_private_addresses=False
        )
        relay = await Relay.open(config, clock=FakeClock(SystemClock().now()))
        try:
            await relay.store.create_agent(
                "alice", "inbox", hash_token(new_token()), None, relay.clock.now()
            )
            alice, bob = Address.parse("alice@acme.test"), Address.parse("bob@evil.test")
            sent = await relay.mailbox.send(Draft(alice, (bob,), "text/plain", "hi"), via="api")
            await relay.sender.run_once()
            status = await relay.mailbox.status(sent.envelope.id, agent="alice")
            [recipient] = status.recipients
            assert (recipient.state, recipient.code) == ("bounced", code)
            [dsn] = await relay.mailbox.read("alice")
            assert dsn.id != sent.envelope.id
            assert await relay.store.list_queue() == []
        finally:
            await relay.close()


# --- a partner's outage and return (SPEC.md §9.3) ------------------------------------------


#: The seed of the sender's jitter where a test needs one run of it (see its use).
SEED = 1


async def open_breaker_on_globex(w: World, acme: Org, alice: Agent) -> str:
    """globex is down: three probes fail, each begun after the last failure was known, and
    acme's breaker opens. Returns the id of the message those probes carried."""
    await w.orgs["globex.test"].stop()
    first = (await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "first"}))["id"]
    for probe in range(3):
        if probe:
            w.clock.advance(30)  # past the row's backoff (20 s at the most before its third try)
        assert await acme.relay.sender.run_once() == 1
    assert not acme.relay.sender.breaker.allows("globex.test", w.clock.now())
    return str(first)


async def held_while_down(w: World, acme: Org, alice: Agent, count: int) -> list[str]:
    """``count`` messages to globex while acme's breaker is open: each is held by its accept
    (SPEC.md §9.3), so a pass of the sender finds none of them due."""
    ids = [
        (await w.send(acme, alice, {"to": ["bob@globex.test"], "body": f"m{i}"}))["id"]
        for i in range(count)
    ]
    assert await acme.relay.sender.run_once() == 0
    return [str(i) for i in ids]


@pytest.mark.parametrize("at_accept", [True, False], ids=["by its accept", "by the sender"])
async def test_breaker_holds_new_envelopes_without_counting_an_attempt(
    w: World, at_accept: bool
) -> None:
    """A message to a partner known to be down is held until the breaker's next probe, not an
    attempt: by its accept, before any pass of the sender; or, for a relay whose router asks
    no holds (as for rows accepted before the breaker opened), by the sender's next pass."""
    acme = w.orgs["acme.test"]
    alice = await acme.agent("alice")
    await open_breaker_on_globex(w, acme, alice)
    if not at_accept:
        acme.relay.router.holds = None
    deferred = _deferred(acme)
    held = (await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "held"}))["id"]
    status = await w.status(acme, alice, held)
    rec = status["recipients"]["bob@globex.test"]
    if at_accept:
        assert [e["event"] for e in status["events"]] == ["accepted", "held"]
    else:
        assert (rec.get("code"), [e["event"] for e in status["events"]]) == (None, ["accepted"])
        assert await acme.relay.sender.run_once() == 1
        status = await w.status(acme, alice, held)
        rec = status["recipients"]["bob@globex.test"]
    assert (rec["state"], rec["code"], rec["attempts"]) == ("queued", "4.4.1", 0)
    assert rec["reason"] == "globex.test is down; held until its next probe"
    assert [e["event"] for e in status["events"]][-1] == "held"
    assert status["events"][-1]["code"] == "4.4.1"
    # Held until the breaker's probe, which is a fifth of the outage so far away at the most.
    until = acme.relay.sender.breaker.open_until("globex.test")
    assert until is not None
    assert rec["next_attempt"] == format_timestamp(until)
    assert await acme.relay.sender.run_once() == 0
    # Counted once as deferred, whoever held it.
    assert _deferred(acme) == deferred + 1


def _deferred(org: Org) -> float:
    """``synq_federation_outbound_recipients{outcome="deferred"}`` of ``org``'s relay."""
    text = org.relay.metrics.render().decode()
    found = re.search(
        r'synq_federation_outbound_recipients_total\{outcome="deferred"\} (\S+)', text
    )
    return float(found.group(1)) if found else 0.0


async def test_first_success_after_an_outage_releases_the_whole_backlog(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")
    # Backoff and probe times are jittered: a fixed seed makes this run the one where the first
    # message's backoff ends after the probe time (checked below), whatever the machine.
    acme.relay.sender.rng = random.Random(SEED)
    first = await open_breaker_on_globex(w, acme, alice)
    held = await held_while_down(w, acme, alice, 5)
    await globex.start()
    # The breaker's probe time comes; the held envelopes are the probe, and they succeed.
    until = acme.relay.sender.breaker.open_until("globex.test")
    assert until is not None
    [waiting] = [e for e in await acme.relay.store.list_queue() if e.id == first]
    assert waiting.next_attempt > until
    w.clock.set(until)
    assert await acme.relay.sender.run_once() == 5
    # The first message waits out a backoff grown during the outage (not due yet): the success
    # released it, and the next pass takes it without the clock moving.
    assert await acme.relay.sender.run_once() == 1
    assert sorted(m["id"] for m in await w.inbox(globex, bob)) == sorted([first, *held])
    assert acme.relay.sender.breaker.allows("globex.test", w.clock.now())
    assert await acme.relay.store.list_queue() == []


async def test_the_first_success_releases_what_accepts_held(
    w: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Messages held by their accept (SPEC.md §9.3) wait for the breaker's probe; the first
    success, here of the oldest message flushed alone, releases them at once, and they are
    delivered. Their holds are logged once for the opening, not once per message."""
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")
    first = await open_breaker_on_globex(w, acme, alice)
    with (
        caplog.at_level(logging.INFO, logger="synq.federation.outbound"),
        caplog.at_level(logging.INFO, logger="synq.delivery"),
    ):
        held = await held_while_down(w, acme, alice, 3)
    until = acme.relay.sender.breaker.open_until("globex.test")
    assert [r.getMessage() for r in caplog.records if "held at accept" in r.getMessage()] == [
        f"globex.test is down: new recipients held at accept until {until}"
    ]
    # The events log (SPEC.md §14.4) has each one's accepted and held lines.
    lines = [
        (r.fields["id"], r.getMessage(), r.fields.get("code"))
        for r in caplog.records
        if r.name == "synq.delivery" and r.fields.get("to") == "bob@globex.test"
    ]
    assert lines == [(i, m, c) for i in held for m, c in (("accepted", None), ("held", "4.4.1"))]
    await globex.start()
    assert await acme.relay.store.flush(w.clock.now(), id=first) == 1
    assert await acme.relay.sender.run_once() == 1
    assert acme.relay.sender.breaker.allows("globex.test", w.clock.now())
    assert await acme.relay.sender.run_once() == 3
    assert sorted(m["id"] for m in await w.inbox(globex, bob)) == sorted([first, *held])
    assert await acme.relay.store.list_queue() == []


async def test_flush_while_the_breaker_is_open_sends_the_held_envelopes(w: World) -> None:
    """``synq queue flush`` makes held rows due before the probe time: they are sent although
    the breaker is open, and their success closes it and releases the rest."""
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")
    first = await open_breaker_on_globex(w, acme, alice)
    held = await held_while_down(w, acme, alice, 3)
    await globex.start()
    assert await acme.relay.store.flush(w.clock.now()) == 4
    assert await acme.relay.sender.run_once() == 4
    assert sorted(m["id"] for m in await w.inbox(globex, bob)) == sorted([first, *held])
    assert acme.relay.sender.breaker.allows("globex.test", w.clock.now())


async def test_a_partner_that_contacts_us_gets_its_backlog_at_once(w: World) -> None:
    """globex sends acme a transaction: it is up, whatever acme's breaker says. acme closes the
    breaker and releases everything queued for globex (Synapse does the same)."""
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")
    first = await open_breaker_on_globex(w, acme, alice)
    held = await held_while_down(w, acme, alice, 3)
    await globex.start()
    await w.send(globex, bob, {"to": ["alice@acme.test"], "body": "I am back"})
    assert await globex.relay.sender.run_once() == 1
    assert acme.relay.sender.breaker.allows("globex.test", w.clock.now())
    assert await acme.relay.sender.run_once() == 4
    assert sorted(m["id"] for m in await w.inbox(globex, bob)) == sorted([first, *held])


async def test_failed_transactions_in_flight_together_count_once(w: World) -> None:
    """One pass sends many transactions to a dead partner at once: one outage, one failed
    probe, and the breaker stays closed (it opens after three probes, not three transactions)."""
    acme = w.orgs["acme.test"]
    alice = await acme.agent("alice")
    await w.orgs["globex.test"].stop()
    acme.relay.sender.max_txn_envelopes = 1
    for i in range(12):
        await w.send(acme, alice, {"to": ["bob@globex.test"], "body": f"m{i}"})
    assert await acme.relay.sender.run_once() == 12
    assert acme.relay.sender.breaker.open_until("globex.test") is None
    assert acme.relay.sender.breaker.failing("globex.test")


async def test_a_partners_retry_after_is_honoured(w: World) -> None:
    acme = w.orgs["acme.test"]
    alice = await acme.agent("alice")

    async def busy(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=429, headers={"Retry-After": "900"}, text="slow down")

    async with partner_at_globex(w, busy):
        sent = await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "x"})
        assert await acme.relay.sender.run_once() == 1
    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@globex.test"]
    # Backoff alone would retry within 5 s; the partner asked for 15 minutes.
    assert rec["state"] == "queued"
    assert rec["next_attempt"] >= format_timestamp(w.clock.now() + timedelta(seconds=900))


async def test_a_partners_retry_in_hint_paces_the_retry(w: World) -> None:
    """A per-envelope 4.7.0 that says "retry in N s" is retried after N s (at least one), not
    after the backoff, which after an outage has grown to minutes (SPEC.md §9.3)."""
    acme = w.orgs["acme.test"]
    alice = await acme.agent("alice")

    async def throttled(request: web.Request) -> web.Response:
        await request.read()
        reason = "alice@acme.test is sending faster than this relay accepts; retry in 3 s"
        body = {"results": {"#0": {"status": "rejected", "code": "4.7.0", "reason": reason}}}
        return web.json_response(body)

    async with partner_at_globex(w, throttled):
        sent = await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "x"})
        for _try in range(4):  # a row whose own backoff would now be 20–40 s
            assert await acme.relay.sender.run_once() == 1
            rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@globex.test"]
            assert (rec["state"], rec["code"]) == ("queued", "4.7.0")
            assert rec["next_attempt"] == format_timestamp(w.clock.now() + timedelta(seconds=3))
            w.clock.advance(3)
