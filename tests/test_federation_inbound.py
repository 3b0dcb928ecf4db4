"""Hostile and broken transactions against a real receiving relay (SPEC.md §8.3).

Each test is named after what it stops. Envelopes are built and signed here with the real
core, by a test "acme.test" whose key is published in the loopback DNS server.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.core import envelope as env_mod
from relay.core import jws, records
from relay.core.ids import uuid7
from relay.core.jws import SigningKey, b64url_decode, b64url_encode
from relay.core.limits import MAX_TXN_ENVELOPES
from tests import pg
from tests.fedenv import Org, World, world


@pytest.fixture(params=pg.BACKENDS)
async def w(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    urls = pg.store_urls(request, request.param)
    async with world(tmp_path, "acme.test", "globex.test", store_url=urls) as env:
        await env.orgs["globex.test"].agent("bob")
        yield env


def make_token(w: World, key: SigningKey, **fields: Any) -> str:
    now = w.clock.now()
    doc: dict[str, Any] = {
        "v": 1,
        "id": uuid7(now),
        "from": "alice@acme.test",
        "to": ["bob@globex.test"],
        "created": env_mod.format_timestamp(now),
        "expires": env_mod.format_timestamp(now + timedelta(hours=1)),
        "kind": "message",
        "content_type": "text/plain",
        "body": "hi",
    }
    doc.update(fields)
    return jws.sign(json.dumps(doc, separators=(",", ":")).encode(), key)


async def put(
    w: World, org: Org, txn_id: str, body: Any, raw: bytes | None = None
) -> tuple[int, Any]:
    data = io.BytesIO(raw if raw is not None else json.dumps(body).encode())
    async with w.http.put(
        f"{org.url}/synq/v1/federation/txn/{txn_id}",
        data=data,
        headers={"Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.json()


async def deliver(
    w: World, *tokens: str, origin: str = "acme.test", txn: str = "t1"
) -> dict[str, Any]:
    status, body = await put(
        w, w.orgs["globex.test"], txn, {"origin": origin, "envelopes": list(tokens)}
    )
    assert status == 200, body
    results: dict[str, Any] = body["results"]
    return results


async def bob_inbox(w: World) -> list[dict[str, Any]]:
    globex = w.orgs["globex.test"]
    return await w.inbox(globex, globex.agents["bob"])


def only(results: dict[str, Any]) -> tuple[str, str]:
    [result] = results.values()
    return result["status"], result["code"]


async def test_valid_envelope_is_accepted(w: World) -> None:
    token = make_token(w, w.orgs["acme.test"].key)
    assert only(await deliver(w, token)) == ("accepted", "2.0.0")
    assert len(await bob_inbox(w)) == 1


async def test_forged_signature_is_refused_5_7_7(w: World) -> None:
    token = make_token(w, w.orgs["acme.test"].key)
    head, payload, sig = token.split(".")
    doc = json.loads(b64url_decode(payload))
    doc["body"] = "send me your keys"
    forged = ".".join([head, b64url_encode(json.dumps(doc).encode()), sig])
    assert only(await deliver(w, forged)) == ("rejected", "5.7.7")
    assert await bob_inbox(w) == []


async def test_key_of_another_domain_is_refused(w: World) -> None:
    """globex's own key (published for globex.test) cannot sign for acme.test."""
    token = make_token(w, w.orgs["globex.test"].key)
    assert only(await deliver(w, token)) == ("rejected", "5.7.7")
    assert await bob_inbox(w) == []


async def test_self_chosen_key_under_unpublished_selector_is_refused(w: World) -> None:
    token = make_token(w, SigningKey.generate("evil"))
    results = await deliver(w, token)
    assert only(results) == ("rejected", "5.7.7")
    assert (
        "selector" in next(iter(results.values()))["reason"]
        or "key" in next(iter(results.values()))["reason"]
    )


async def test_envelope_from_a_domain_other_than_origin_is_refused_5_7_1(w: World) -> None:
    """No open relaying: a transaction from evil.test cannot carry acme.test's envelopes."""
    token = make_token(w, w.orgs["acme.test"].key)
    assert only(await deliver(w, token, origin="evil.test")) == ("rejected", "5.7.1")
    assert await bob_inbox(w) == []


async def test_replayed_envelope_is_a_duplicate_not_a_second_delivery(w: World) -> None:
    token = make_token(w, w.orgs["acme.test"].key)
    assert only(await deliver(w, token, txn="a")) == ("accepted", "2.0.0")
    assert only(await deliver(w, token, txn="b")) == ("duplicate", "2.0.0")
    assert only(await deliver(w, token, token, txn="c")) == ("duplicate", "2.0.0")
    assert len(await bob_inbox(w)) == 1


async def test_replayed_transaction_id_delivers_nothing_twice(w: World) -> None:
    tokens = [make_token(w, w.orgs["acme.test"].key) for _ in range(3)]
    first = await deliver(w, *tokens, txn="same")
    again = await deliver(w, *tokens, txn="same")
    assert {r["status"] for r in first.values()} == {"accepted"}
    assert {r["status"] for r in again.values()} == {"duplicate"}
    assert len(await bob_inbox(w)) == 3


async def test_expired_envelope_is_refused_5_4_7(w: World) -> None:
    now = w.clock.now()
    token = make_token(
        w,
        w.orgs["acme.test"].key,
        created=env_mod.format_timestamp(now - timedelta(hours=2)),
        expires=env_mod.format_timestamp(now - timedelta(hours=1)),
    )
    assert only(await deliver(w, token)) == ("rejected", "5.4.7")


async def test_envelope_dated_in_the_future_is_refused(w: World) -> None:
    now = w.clock.now()
    token = make_token(
        w,
        w.orgs["acme.test"].key,
        created=env_mod.format_timestamp(now + timedelta(hours=1)),
        expires=env_mod.format_timestamp(now + timedelta(hours=2)),
    )
    assert only(await deliver(w, token)) == ("rejected", "5.7.0")


async def test_unknown_recipient_is_refused_5_1_1_and_others_still_accepted(w: World) -> None:
    key = w.orgs["acme.test"].key
    ghost_only = make_token(w, key, to=["ghost@globex.test"])
    mixed = make_token(w, key, to=["bob@globex.test", "ghost@globex.test"])
    results = await deliver(w, ghost_only, mixed)
    assert (results[json.loads(b64url_decode(ghost_only.split(".")[1]))["id"]]["code"]) == "5.1.1"
    mixed_result = results[json.loads(b64url_decode(mixed.split(".")[1]))["id"]]
    assert mixed_result["status"] == "accepted"
    assert mixed_result["recipients"]["ghost@globex.test"]["code"] == "5.1.1"
    assert len(await bob_inbox(w)) == 1


async def test_envelope_for_no_local_recipient_is_refused_5_1_2(w: World) -> None:
    token = make_token(w, w.orgs["acme.test"].key, to=["carol@initech.test"])
    assert only(await deliver(w, token)) == ("rejected", "5.1.2")


async def test_unknown_field_and_garbage_tokens_are_refused_individually(w: World) -> None:
    key = w.orgs["acme.test"].key
    good = make_token(w, key)
    results = await deliver(w, "not-a-jws", make_token(w, key, colour="red"), good)
    assert results["#0"]["status"] == "rejected"
    statuses = sorted((r["status"], r["code"]) for r in results.values())
    assert statuses == [("accepted", "2.0.0"), ("rejected", "5.6.0"), ("rejected", "5.6.0")]
    assert len(await bob_inbox(w)) == 1


async def test_oversize_transaction_is_413(w: World) -> None:
    globex = w.orgs["globex.test"]
    token = make_token(w, w.orgs["acme.test"].key)
    status, body = await put(
        w, globex, "big", {"origin": "acme.test", "envelopes": [token] * (MAX_TXN_ENVELOPES + 1)}
    )
    assert (status, body["error"]["code"], body["error"]["status"]) == (413, "too_large", "5.3.4")
    status, body = await put(
        w,
        globex,
        "huge",
        None,
        raw=b'{"origin":"acme.test","envelopes":["' + b"a" * (5 * 1024 * 1024) + b'"]}',
    )
    assert status == 413
    assert await bob_inbox(w) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"[]",
        b'{"origin":"acme.test"}',
        b'{"origin":"acme.test","envelopes":[]}',
        b'{"origin":"not a domain","envelopes":["x"]}',
        b'{"origin":"acme.test","envelopes":[1]}',
        b'{"origin":"acme.test","envelopes":["x"],"extra":1}',
    ],
    ids=["truncated", "array", "no-envelopes", "empty", "bad-origin", "non-string", "extra-field"],
)
async def test_malformed_transaction_is_400(w: World, raw: bytes) -> None:
    status, body = await put(w, w.orgs["globex.test"], "t", None, raw=raw)
    assert (status, body["error"]["code"]) == (400, "malformed_request")


async def test_invalid_transaction_id_is_400(w: World) -> None:
    status, body = await put(
        w, w.orgs["globex.test"], "-bad", {"origin": "acme.test", "envelopes": ["x"]}
    )
    assert (status, body["error"]["code"]) == (400, "malformed_request")


async def test_unpublished_key_after_rotation_is_refused_but_dns_change_is_honoured(
    w: World,
) -> None:
    """Keys come from DNS at verification time: a key published later verifies later (after
    the negative-cache TTL), without the receiver ever calling the sender."""
    new_key = SigningKey.generate("s2")
    token = make_token(w, new_key)
    assert only(await deliver(w, token, txn="before")) == ("rejected", "5.7.7")
    w.dns.set_txt(
        records.key_record_name("s2", "acme.test"),
        [records.KeyRecord(new_key.public_key).to_txt()],
        ttl=60,
    )
    w.clock.advance(600)
    token = make_token(w, new_key)
    assert only(await deliver(w, token, txn="after")) == ("accepted", "2.0.0")
