"""The local agent API over real loopback HTTP (SPEC.md §6)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay.core import envelope as env_mod
from relay.core import jws
from relay.core.address import Address
from relay.core.clock import FakeClock, SystemClock
from relay.core.draft import Draft
from relay.core.envelope import encode
from relay.core.errors import InvalidEnvelope
from relay.core.ids import hash_token, new_token
from relay.core.limits import MAX_API_BODY_BYTES
from relay.delivery.router import AGENT_CACHE_TTL
from relay.runtime import Relay
from relay.server.app import build_app
from tests.conftest import AgentFactory, make_config
from tests.helpers import wait_until

Client = TestClient[Any, Any]


async def send(client: Client, token: str, payload: Any) -> tuple[int, Any]:
    resp = await client.post(
        "/synq/v1/messages", json=payload, headers={"Authorization": f"Bearer {token}"}
    )
    return resp.status, await resp.json()


async def inbox(client: Client, token: str, **params: Any) -> list[dict[str, Any]]:
    resp = await client.get(
        "/synq/v1/inbox", params=params, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 200
    messages: list[dict[str, Any]] = (await resp.json())["messages"]
    return messages


async def test_send_delivers_to_local_inbox_and_status_says_delivered(
    client: Client, make_agent: AgentFactory
) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    resp = await client.post(
        "/synq/v1/messages",
        json={"to": ["Bob@ACME.test"], "content_type": "text/plain", "body": "hi", "thread": "t1"},
        headers=alice.auth,
    )
    assert resp.status == 202
    data = await resp.json()
    assert data["status"] == "queued"
    assert resp.headers["Location"] == f"/synq/v1/messages/{data['id']}"

    messages = await inbox(client, bob.token)
    assert [(m["id"], m["from"], m["to"], m["body"], m["thread"]) for m in messages] == [
        (data["id"], "alice@acme.test", ["bob@acme.test"], "hi", "t1")
    ]
    status = await (await client.get(f"/synq/v1/messages/{data['id']}", headers=alice.auth)).json()
    assert status["recipients"]["bob@acme.test"]["state"] == "delivered"
    # Another agent cannot see alice's message status: 404, indistinguishable from missing.
    other = await client.get(f"/synq/v1/messages/{data['id']}", headers=bob.auth)
    assert other.status == 404


@pytest.mark.parametrize(
    ("headers", "message_part"),
    [
        ({}, "bearer token is required"),
        ({"Authorization": "Bearer synq_not-a-real-token"}, "not valid"),
        ({"Authorization": "Basic YWxpY2U6eA=="}, "bearer token is required"),
    ],
    ids=["missing", "unknown", "wrong-scheme"],
)
async def test_missing_or_invalid_token_is_401(
    client: Client, headers: dict[str, str], message_part: str
) -> None:
    resp = await client.get("/synq/v1/inbox", headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    err = (await resp.json())["error"]
    assert (err["code"], err["status"]) == ("unauthenticated", "5.7.8")
    assert message_part in err["message"]


BAD_SENDS = [
    pytest.param(b"{not json", 400, "malformed_request", "5.5.2", id="malformed-json"),
    pytest.param(
        b'{"to":["bob@acme.test"],"to":["x@acme.test"],"body":"x"}',
        400,
        "malformed_request",
        "5.5.2",
        id="duplicate-key",
    ),
    pytest.param(b"[]", 400, "malformed_request", "5.5.2", id="not-an-object"),
    pytest.param(
        b'{"to":["bob@acme.test"],"body":"x","colour":"red"}',
        422,
        "invalid_envelope",
        "5.6.0",
        id="unknown-field",
    ),
    pytest.param(
        b'{"to":["not an address"],"body":"x"}',
        400,
        "invalid_address",
        "5.1.3",
        id="invalid-address",
    ),
    pytest.param(b'{"to":[],"body":"x"}', 422, "invalid_envelope", "5.6.0", id="no-recipients"),
    pytest.param(b'{"to":["bob@acme.test"]}', 422, "invalid_envelope", "5.6.0", id="no-body"),
    pytest.param(
        b'{"to":["bob@acme.test"],"body":{"a":1},"content_type":"text/plain"}',
        422,
        "invalid_envelope",
        "5.6.0",
        id="text-body-not-string",
    ),
    pytest.param(
        b'{"to":["bob@acme.test","BOB@acme.test"],"body":"x"}',
        422,
        "invalid_envelope",
        "5.6.0",
        id="repeated-recipient",
    ),
    pytest.param(
        b'{"to":["nobody@acme.test"],"body":"x"}',
        422,
        "unknown_recipient",
        "5.1.1",
        id="unknown-recipient",
    ),
    pytest.param(
        b'{"to":["postmaster@acme.test"],"body":"x"}',
        422,
        "unknown_recipient",
        "5.1.1",
        id="reserved-recipient",
    ),
    pytest.param(
        b'{"to":["bob@acme.test"],"body":"x","expires":"2001-01-01T00:00:00Z"}',
        422,
        "invalid_envelope",
        "5.6.0",
        id="expired-expires",
    ),
    pytest.param(
        b'{"to":["bob@acme.test"],"body":"x","expires":"tomorrow"}',
        422,
        "invalid_envelope",
        "5.6.0",
        id="unparseable-expires",
    ),
    pytest.param(
        b'{"to":["bob@acme.test"],"body":"x","kind":"dsn"}',
        403,
        "forbidden",
        "5.7.1",
        id="kind-dsn",
    ),
]


@pytest.mark.parametrize(("raw", "http", "code", "status"), BAD_SENDS)
async def test_bad_send_gets_typed_error_and_nothing_is_accepted(
    client: Client, make_agent: AgentFactory, raw: bytes, http: int, code: str, status: str
) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    resp = await client.post(
        "/synq/v1/messages",
        data=raw,
        headers={**alice.auth, "Content-Type": "application/json"},
    )
    assert resp.status == http
    err = (await resp.json())["error"]
    assert (err["code"], err["status"]) == (code, status)
    assert err["message"]
    assert await inbox(client, bob.token) == []


async def test_unknown_recipient_refuses_the_whole_message(
    client: Client, make_agent: AgentFactory
) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    status, body = await send(
        client, alice.token, {"to": ["bob@acme.test", "ghost@acme.test"], "body": "x"}
    )
    assert status == 422
    assert body["error"]["details"]["recipients"] == ["ghost@acme.test"]
    assert await inbox(client, bob.token) == []


async def test_oversize_body_is_413(client: Client, make_agent: AgentFactory) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    big = json.dumps({"to": ["bob@acme.test"], "body": "x" * (MAX_API_BODY_BYTES + 10)})
    resp = await client.post(
        "/synq/v1/messages", data=big, headers={**alice.auth, "Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "too_large"
    assert await inbox(client, bob.token) == []


async def test_wrong_content_type_is_415(client: Client, make_agent: AgentFactory) -> None:
    alice = await make_agent("alice")
    resp = await client.post(
        "/synq/v1/messages", data="hi", headers={**alice.auth, "Content-Type": "text/plain"}
    )
    assert resp.status == 415
    assert (await resp.json())["error"]["code"] == "malformed_request"


async def test_ack_removes_from_unacked_but_keeps_history(
    client: Client, make_agent: AgentFactory
) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    _, first = await send(
        client, alice.token, {"to": ["bob@acme.test"], "body": "one", "thread": "t1"}
    )
    _, second = await send(
        client, alice.token, {"to": ["bob@acme.test"], "body": "two", "thread": "t2"}
    )
    resp = await client.post(f"/synq/v1/inbox/{first['id']}/ack", headers=bob.auth)
    assert resp.status == 200
    assert [m["id"] for m in await inbox(client, bob.token)] == [second["id"]]
    assert [m["id"] for m in await inbox(client, bob.token, all=1)] == [first["id"], second["id"]]
    assert [m["id"] for m in await inbox(client, bob.token, all=1, thread="t1")] == [first["id"]]
    # Acking again is harmless; acking an unknown id is 404.
    assert (await client.post(f"/synq/v1/inbox/{first['id']}/ack", headers=bob.auth)).status == 200
    resp = await client.post("/synq/v1/inbox/no-such-id/ack", headers=bob.auth)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    # Alice cannot ack bob's message.
    assert (
        await client.post(f"/synq/v1/inbox/{second['id']}/ack", headers=alice.auth)
    ).status == 404


async def test_inbox_paging_with_cursor(client: Client, make_agent: AgentFactory) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    ids = [
        (await send(client, alice.token, {"to": ["bob@acme.test"], "body": str(i)}))[1]["id"]
        for i in range(5)
    ]
    resp = await client.get("/synq/v1/inbox", params={"limit": 2}, headers=bob.auth)
    page = await resp.json()
    assert [m["id"] for m in page["messages"]] == ids[:2]
    resp = await client.get(
        "/synq/v1/inbox", params={"limit": 10, "after": page["cursor"]}, headers=bob.auth
    )
    assert [m["id"] for m in (await resp.json())["messages"]] == ids[2:]


@pytest.mark.parametrize(
    "params", [{"wait": "-1"}, {"wait": "61"}, {"wait": "x"}, {"limit": "0"}, {"limit": "100000"}]
)
async def test_bad_inbox_parameters_are_400(
    client: Client, make_agent: AgentFactory, params: dict[str, str]
) -> None:
    bob = await make_agent("bob")
    resp = await client.get("/synq/v1/inbox", params=params, headers=bob.auth)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "malformed_request"


async def test_long_poll_wakes_when_a_message_arrives(
    client: Client, relay: Relay, make_agent: AgentFactory
) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    poll = asyncio.create_task(inbox(client, bob.token, wait=30))
    await wait_until(lambda: relay.store.notifier.listener_count("inbox:bob") == 1)
    _, sent = await send(client, alice.token, {"to": ["bob@acme.test"], "body": "wake up"})
    messages = await asyncio.wait_for(poll, 10)
    assert [m["id"] for m in messages] == [sent["id"]]


async def test_client_disconnecting_mid_long_poll_loses_nothing(
    client: Client, relay: Relay, make_agent: AgentFactory
) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    poll = asyncio.create_task(inbox(client, bob.token, wait=30))
    await wait_until(lambda: relay.store.notifier.listener_count("inbox:bob") == 1)
    poll.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poll
    # The server notices the hang-up and frees the waiter rather than holding it for 30 s.
    await wait_until(lambda: relay.store.notifier.listener_count("inbox:") == 0)
    _, sent = await send(client, alice.token, {"to": ["bob@acme.test"], "body": "still here"})
    assert [m["id"] for m in await inbox(client, bob.token)] == [sent["id"]]


async def read_sse_events(resp: Any, count: int) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    event_id, data = "", ""
    while len(events) < count:
        line = (await resp.content.readline()).decode().rstrip("\n")
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            events.append((event_id, json.loads(data)))
            data = ""
    return events


async def test_sse_stream_delivers_and_resumes_with_last_event_id(
    client: Client, relay: Relay, make_agent: AgentFactory
) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    _, first = await send(client, alice.token, {"to": ["bob@acme.test"], "body": "one"})
    resp = await client.get("/synq/v1/inbox/stream", headers=bob.auth)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    [(first_seq, first_msg)] = await read_sse_events(resp, 1)
    assert first_msg["id"] == first["id"]
    _, second = await send(client, alice.token, {"to": ["bob@acme.test"], "body": "two"})
    [(_, second_msg)] = await read_sse_events(resp, 1)
    assert second_msg["id"] == second["id"]
    resp.close()
    await wait_until(lambda: relay.store.notifier.listener_count("inbox:") == 0)

    resumed = await client.get(
        "/synq/v1/inbox/stream", headers={**bob.auth, "Last-Event-ID": first_seq}
    )
    [(_, again)] = await read_sse_events(resumed, 1)
    assert again["id"] == second["id"]
    resumed.close()


async def test_agent_card_for_local_agents_only(client: Client, make_agent: AgentFactory) -> None:
    await make_agent("bob")
    resp = await client.get("/synq/v1/agents/bob@acme.test")
    assert resp.status == 200
    card = await resp.json()
    assert card["name"] == "bob@acme.test"
    assert card["supportedInterfaces"][0]["url"].endswith("/a2a/bob@acme.test")
    assert (await client.get("/synq/v1/agents/ghost@acme.test")).status == 404
    published = await client.get("/agents/bob/.well-known/agent-card.json")
    assert await published.json() == card
    assert (await client.get("/agents/ghost/.well-known/agent-card.json")).status == 404
    bad = await client.get("/synq/v1/agents/not-an-address")
    assert bad.status == 400
    assert (await bad.json())["error"]["code"] == "invalid_address"


async def test_health_metrics_and_unknown_routes(
    client: Client, relay: Relay, make_agent: AgentFactory
) -> None:
    alice, _ = await make_agent("alice"), await make_agent("bob")
    assert (await send(client, alice.token, {"to": ["bob@acme.test"], "body": "x"}))[0] == 202
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    # /metrics is the admin listener's alone (SPEC.md §6.8, §14.1): not on the public one.
    assert (await client.get("/metrics")).status == 404
    text = relay.metrics.render().decode()
    assert 'synq_envelopes_accepted_total{via="api"} 1.0' in text
    resp = await client.get("/no/such/route")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await client.delete("/synq/v1/messages")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "malformed_request"


async def test_store_failure_is_503_without_internal_detail(client: Client, relay: Relay) -> None:
    await relay.store.close()
    resp = await client.get("/healthz")
    assert resp.status == 503
    err = (await resp.json())["error"]
    assert (err["code"], err["status"]) == ("store_unavailable", "4.3.0")
    assert "sqlite" not in err["message"].lower()
    assert "Error" not in err["message"]


async def test_tokens_never_appear_in_logs(
    client: Client, make_agent: AgentFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice, bob = await make_agent("alice"), await make_agent("bob")
    await send(client, alice.token, {"to": ["bob@acme.test"], "body": "x"})
    await inbox(client, bob.token)
    await client.get("/synq/v1/inbox", headers={"Authorization": "Bearer synq_wrong"})
    await client.get("/synq/v1/inbox", headers={"Authorization": f"Bearer {alice.token}x"})
    assert caplog.records, "expected the relay to log something at DEBUG"
    for token in (alice.token, bob.token, "synq_wrong"):
        assert token not in caplog.text


# --- the agent cache (relay.delivery.router.AgentCache, SPEC.md §6.1) ---------------------------


@pytest.fixture
async def pinned(
    tmp_path: Path, aiohttp_client: Any
) -> AsyncIterator[tuple[Relay, Client, FakeClock]]:
    """A relay whose clock moves only when the test says, and its API on loopback."""
    config = make_config(tmp_path / "acme")
    # Started after the signing key was made, so that the key is already valid at its time.
    clock = FakeClock(SystemClock().now())
    relay = await Relay.open(config, clock=clock)
    try:
        c: Client = await aiohttp_client(build_app(relay))
        yield relay, c, clock
    finally:
        await relay.close()


async def add_agent(relay: Relay, name: str) -> dict[str, str]:
    token = new_token()
    await relay.store.create_agent(name, "inbox", hash_token(token), None, relay.clock.now())
    return {"Authorization": f"Bearer {token}"}


async def test_removed_agent_token_and_address_stop_at_once_in_this_process(
    pinned: tuple[Relay, Client, FakeClock],
) -> None:
    relay, client, _ = pinned
    alice, bob = await add_agent(relay, "alice"), await add_agent(relay, "bob")
    ok = await client.post(
        "/synq/v1/messages", json={"to": ["bob@acme.test"], "body": "x"}, headers=alice
    )
    assert ok.status == 202  # both now cached
    assert (await client.get("/synq/v1/inbox", headers=bob)).status == 200

    assert await relay.router.agents.remove("bob")
    assert (await client.get("/synq/v1/inbox", headers=bob)).status == 401
    refused = await client.post(
        "/synq/v1/messages", json={"to": ["bob@acme.test"], "body": "x"}, headers=alice
    )
    assert refused.status == 422
    assert (await refused.json())["error"]["details"]["recipients"] == ["bob@acme.test"]


async def test_removal_by_another_process_takes_effect_within_the_cache_ttl(
    pinned: tuple[Relay, Client, FakeClock],
) -> None:
    relay, client, clock = pinned
    alice, bob = await add_agent(relay, "alice"), await add_agent(relay, "bob")
    assert (await client.get("/synq/v1/inbox", headers=bob)).status == 200  # cached
    # Straight to the store, as `synq agent remove` in its own process does.
    assert await relay.store.remove_agent("bob")
    assert (await client.get("/synq/v1/inbox", headers=bob)).status == 200  # the bound, used
    # A send to bob is refused by the store (his inbox row has no agent), with the names.
    refused = await client.post(
        "/synq/v1/messages", json={"to": ["bob@acme.test"], "body": "x"}, headers=alice
    )
    assert refused.status == 422
    assert (await refused.json())["error"]["details"]["recipients"] == ["bob@acme.test"]
    clock.advance(AGENT_CACHE_TTL)
    assert (await client.get("/synq/v1/inbox", headers=bob)).status == 401


async def test_unknown_tokens_are_not_cached_so_a_new_agent_works_at_once(
    pinned: tuple[Relay, Client, FakeClock],
) -> None:
    relay, client, _ = pinned
    token = new_token()
    auth = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/synq/v1/inbox", headers=auth)).status == 401
    await relay.store.create_agent("late", "inbox", hash_token(token), None, relay.clock.now())
    assert (await client.get("/synq/v1/inbox", headers=auth)).status == 200
    alice = await add_agent(relay, "alice")
    sent = await client.post(
        "/synq/v1/messages", json={"to": ["late@acme.test"], "body": "x"}, headers=alice
    )
    assert sent.status == 202


@pytest.mark.parametrize(
    "fields",
    [
        {"content_type": "text/plain", "body": "hi"},
        {
            "content_type": "application/json",
            "body": {"n": [1, 2.5, None, "é"]},
            "kind": "task.update",
            "thread": "conv-42",
            "in_reply_to": "0195a3c0-5f1e-7c3a-9b2d-4e5f6a7b8c9d",
            "trace": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
        {"content_type": "application/json", "body": None},
    ],
    ids=["text", "every-field", "null-body"],
)
async def test_build_signs_the_very_bytes_of_a_validated_envelope(
    pinned: tuple[Relay, Client, FakeClock], fields: dict[str, Any]
) -> None:
    """A Draft is validated once, when it is made, so the router assembles the envelope without
    a second validation pass (relay.core.draft): what it signs must be byte for byte what the
    envelope model's own validation makes of the same fields."""
    relay, _, _ = pinned
    sender, to = Address.parse("alice@acme.test"), (Address.parse("bob@acme.test"),)
    args = dict(fields)
    content_type, body = args.pop("content_type"), args.pop("body")
    fast, fast_token = relay.router.build(Draft(sender, to, content_type, body, id="x1", **args))
    slow = env_mod.from_dict(fast.to_json_dict())
    assert encode(fast) == encode(slow)
    assert fast.to_json_dict() == slow.to_json_dict()
    assert jws.parse_compact(fast_token).payload == encode(slow)


async def test_draft_refuses_a_text_body_that_is_not_a_string_as_the_model_does(
    pinned: tuple[Relay, Client, FakeClock],
) -> None:
    relay, _, _ = pinned
    sender, to = Address.parse("alice@acme.test"), (Address.parse("bob@acme.test"),)
    with pytest.raises(InvalidEnvelope) as fast:
        Draft(sender, to, "text/plain", 42)
    valid, _ = relay.router.build(Draft(sender, to, "text/plain", "x"))
    with pytest.raises(InvalidEnvelope) as slow:
        env_mod.from_dict({**valid.to_json_dict(), "body": 42})
    assert fast.value.message == slow.value.message
