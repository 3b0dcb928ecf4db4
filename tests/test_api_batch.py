"""``POST /synq/v1/messages/batch`` over real loopback HTTP (SPEC.md §6.2.1): each message checked
as the single endpoint checks it, the accepted ones committed together before the answer."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay.config import Config
from relay.core.limits import MAX_BATCH_BODY_BYTES, MAX_BATCH_MESSAGES
from relay.runtime import Relay
from tests.conftest import AgentFactory

Client = TestClient[Any, Any]

BATCH = "/synq/v1/messages/batch"


async def post_batch(client: Client, auth: dict[str, str], body: Any) -> tuple[int, Any]:
    resp = await client.post(BATCH, json=body, headers=auth)
    return resp.status, await resp.json()


async def inbox_ids(client: Client, token: str) -> list[str]:
    resp = await client.get(
        "/synq/v1/inbox", params={"limit": "500"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 200
    return [m["id"] for m in (await resp.json())["messages"]]


#: Messages the single endpoint refuses, each with the error it answers.
BAD: list[tuple[Any, str]] = [
    ({"to": ["not an address"], "body": "x"}, "invalid_address"),
    ({"to": ["ghost@acme.test"], "body": "x"}, "unknown_recipient"),
    ({"to": ["bob@acme.test"], "body": "x", "kind": "dsn"}, "forbidden"),
    ({"to": ["bob@acme.test"], "body": 42}, "invalid_envelope"),  # text/* needs a string
    ({"to": ["bob@acme.test"], "body": "x", "colour": "red"}, "invalid_envelope"),
    ({"to": ["bob@acme.test", "BOB@acme.test"], "body": "x"}, "invalid_envelope"),
    ({"to": ["postmaster@acme.test"], "body": "x"}, "unknown_recipient"),
    ({"to": ["bob@acme.test"], "body": "x", "trace": "not-a-traceparent"}, "invalid_envelope"),
    ({"to": ["bob@acme.test"], "body": "x", "expires": "2000-01-01T00:00:00Z"}, "invalid_envelope"),
    ("not an object", "malformed_request"),
]


async def test_mixed_batch_keeps_the_good_and_answers_each_bad_as_the_single_endpoint(
    client: Client, relay: Relay, make_agent: AgentFactory
) -> None:
    alice, bob, carol = (
        await make_agent("alice"),
        await make_agent("bob"),
        await make_agent("carol"),
    )
    good = [
        {"to": ["bob@acme.test"], "body": "one", "thread": "t1"},
        {"to": ["carol@acme.test", "zed@globex.test"], "body": "two"},
        {"to": ["Bob@ACME.test"], "content_type": "application/json", "body": {"n": 3}},
    ]
    messages = [good[0], *(m for m, _ in BAD[:4]), good[1], *(m for m, _ in BAD[4:]), good[2]]
    status, answer = await post_batch(client, alice.auth, {"messages": messages})
    assert status == 202
    results = answer["results"]
    assert len(results) == len(messages)

    good_at = [0, 5, len(messages) - 1]
    ids = [results[i]["id"] for i in good_at]
    assert [results[i]["status"] for i in good_at] == ["queued"] * 3
    assert len(set(ids)) == 3
    bad_at = [i for i in range(len(messages)) if i not in good_at]
    for i, (message, code) in zip(bad_at, BAD, strict=True):
        assert set(results[i]) == {"error"}
        assert results[i]["error"]["code"] == code
        # The very error object POST /synq/v1/messages answers for the same message.
        single = await client.post("/synq/v1/messages", json=message, headers=alice.auth)
        assert single.status >= 400
        assert (await single.json())["error"] == results[i]["error"]

    # Durable and delivered: the local recipients' inboxes, the remote one's queue row.
    assert await inbox_ids(client, bob.token) == [ids[0], ids[2]]
    assert await inbox_ids(client, carol.token) == [ids[1]]
    assert [(q.id, q.recipient) for q in await relay.store.list_queue()] == [
        (ids[1], "zed@globex.test")
    ]
    state = await (await client.get(f"/synq/v1/messages/{ids[1]}", headers=alice.auth)).json()
    assert state["recipients"]["carol@acme.test"]["state"] == "delivered"
    assert state["recipients"]["zed@globex.test"]["state"] == "queued"
    # Counted per message, as the single endpoint counts: 3 accepted here, and each refusal
    # twice (once in the batch, once when the single endpoint was asked above).
    metrics = relay.metrics.render().decode()
    assert 'synq_envelopes_accepted_total{via="api"} 3.0' in metrics
    assert 'synq_requests_rejected_total{code="unknown_recipient"} 4.0' in metrics


async def test_batch_where_every_message_is_refused_stores_nothing(
    client: Client, relay: Relay, make_agent: AgentFactory
) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    status, answer = await post_batch(
        client, alice.auth, {"messages": [m for m, _ in BAD] + [{"to": ["x@y.test"]}]}
    )
    assert status == 202
    assert [r["error"]["code"] for r in answer["results"]] == [c for _, c in BAD] + [
        "invalid_envelope"  # no body
    ]
    assert await inbox_ids(client, bob.token) == []
    assert await relay.store.list_queue() == []


@pytest.mark.parametrize(
    ("body", "http", "code"),
    [
        ({"messages": []}, 400, "malformed_request"),
        ({}, 400, "malformed_request"),
        ({"messages": {"to": ["bob@acme.test"], "body": "x"}}, 400, "malformed_request"),
        ({"messages": [], "extra": 1}, 400, "malformed_request"),
        ([{"to": ["bob@acme.test"], "body": "x"}], 400, "malformed_request"),
        (
            {"messages": [{"to": ["bob@acme.test"], "body": "x"}] * (MAX_BATCH_MESSAGES + 1)},
            413,
            "too_large",
        ),
    ],
    ids=["empty", "no-messages", "not-a-list", "unknown-member", "not-an-object", "too-many"],
)
async def test_bad_batches_are_refused_whole_and_store_nothing(
    client: Client, make_agent: AgentFactory, body: Any, http: int, code: str
) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    status, answer = await post_batch(client, alice.auth, body)
    assert (status, answer["error"]["code"]) == (http, code)
    assert await inbox_ids(client, bob.token) == []


async def test_batch_of_the_largest_size_is_taken_whole(
    client: Client, make_agent: AgentFactory
) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    messages = [{"to": ["bob@acme.test"], "body": str(i)} for i in range(MAX_BATCH_MESSAGES)]
    status, answer = await post_batch(client, alice.auth, {"messages": messages})
    assert status == 202
    ids = [r["id"] for r in answer["results"]]
    assert sorted(await inbox_ids(client, bob.token)) == sorted(ids)


async def test_batch_body_over_its_limit_is_413(client: Client, make_agent: AgentFactory) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    body = json.dumps({"messages": [{"to": ["bob@acme.test"], "body": "x" * MAX_BATCH_BODY_BYTES}]})
    resp = await client.post(
        BATCH,
        data=io.BytesIO(body.encode()),
        headers={**alice.auth, "Content-Type": "application/json"},
    )
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "too_large"
    assert await inbox_ids(client, bob.token) == []


async def test_batch_message_over_the_envelope_limit_is_refused_alone(
    client: Client, make_agent: AgentFactory
) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    big = {"to": ["bob@acme.test"], "body": "x" * (300 * 1024)}
    status, answer = await post_batch(
        client, alice.auth, {"messages": [big, {"to": ["bob@acme.test"], "body": "small"}]}
    )
    assert status == 202
    assert answer["results"][0]["error"]["code"] == "too_large"
    assert await inbox_ids(client, bob.token) == [answer["results"][1]["id"]]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer synq_not-a-real-token"}, {"Authorization": "Basic eDp4"}],
    ids=["missing", "unknown", "wrong-scheme"],
)
async def test_batch_needs_a_valid_token(
    client: Client, make_agent: AgentFactory, headers: dict[str, str]
) -> None:
    bob = await make_agent("bob")
    status, answer = await post_batch(
        client, headers, {"messages": [{"to": ["bob@acme.test"], "body": "x"}]}
    )
    assert (status, answer["error"]["code"]) == (401, "unauthenticated")
    assert await inbox_ids(client, bob.token) == []


async def test_batch_needs_json(client: Client, make_agent: AgentFactory) -> None:
    alice = await make_agent("alice")
    resp = await client.post(BATCH, data="hi", headers={**alice.auth, "Content-Type": "text/plain"})
    assert resp.status == 415
    assert (await resp.json())["error"]["code"] == "malformed_request"


def with_agent_rate(relay: Relay, per_second: float, burst: float) -> Config:
    data = relay.config.model_dump()
    data["rate_limits"] = {"agent": {"per_second": per_second, "burst": burst}}
    return Config.model_validate({**data, "base_dir": relay.config.base_dir})


async def test_rate_limit_charges_each_message_of_a_batch(
    client: Client, relay: Relay, make_agent: AgentFactory
) -> None:
    alice, bob = await make_agent("alice"), await make_agent("bob")
    # 1 message per 1000 s, 3 saved up: the batch of 5 spends the 3 and no refill happens
    # during the test.
    relay.reload(with_agent_rate(relay, per_second=0.001, burst=3))
    messages = [{"to": ["bob@acme.test"], "body": str(i)} for i in range(5)]
    status, answer = await post_batch(client, alice.auth, {"messages": messages})
    assert status == 202
    results = answer["results"]
    assert [r.get("status") for r in results[:3]] == ["queued"] * 3
    for refused in results[3:]:
        err = refused["error"]
        assert (err["code"], err["status"]) == ("rate_limited", "4.7.0")
        assert err["details"]["retry_after"] >= 1  # the Retry-After of the single endpoint
    assert await inbox_ids(client, bob.token) == [r["id"] for r in results[:3]]
    # The same buckets as the single endpoint: it is out of tokens too.
    single = await client.post("/synq/v1/messages", json=messages[0], headers=alice.auth)
    assert single.status == 429
    assert "Retry-After" in single.headers


async def test_recipient_removed_behind_the_cache_fails_only_its_messages(
    client: Client, relay: Relay, make_agent: AgentFactory
) -> None:
    alice, bob, _carol = (
        await make_agent("alice"),
        await make_agent("bob"),
        await make_agent("carol"),
    )
    warm = [{"to": ["bob@acme.test"], "body": "w"}, {"to": ["carol@acme.test"], "body": "w"}]
    assert (await post_batch(client, alice.auth, {"messages": warm}))[0] == 202
    # Removed by another process (as ``synq agent remove`` is): this relay still has carol
    # cached, so the store is what finds her gone, at commit.
    assert await relay.store.remove_agent("carol")
    messages = [
        {"to": ["bob@acme.test"], "body": "a"},
        {"to": ["carol@acme.test"], "body": "b"},
        {"to": ["bob@acme.test", "carol@acme.test"], "body": "c"},
        {"to": ["bob@acme.test"], "body": "d"},
    ]
    status, answer = await post_batch(client, alice.auth, {"messages": messages})
    assert status == 202
    results = answer["results"]
    for refused in (results[1], results[2]):
        assert refused["error"]["code"] == "unknown_recipient"
        assert refused["error"]["details"]["recipients"] == ["carol@acme.test"]
    kept = [results[0]["id"], results[3]["id"]]
    assert (await inbox_ids(client, bob.token))[1:] == kept
