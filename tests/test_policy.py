"""Partner policy between two live relays: 5.7.1 on the wire (per recipient where that is what
differs), 403 on the local API, bounced with a DSN on the sender's side and in ``synq status``,
and reloads that drop nothing queued."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relay import cli
from relay.config import Config
from relay.core import envelope as env_mod
from relay.core import jws
from relay.core.ids import uuid7
from relay.runtime import Relay
from tests.fedenv import Org, World, world


def with_policy(relay: Relay, **policy: Any) -> Config:
    """The relay's config with another ``[policy]``, validated as a reloaded file would be."""
    data = relay.config.model_dump()
    data["policy"] = policy
    return Config.model_validate({**data, "base_dir": relay.config.base_dir})


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, "acme.test", "globex.test") as env:
        await env.orgs["acme.test"].agent("alice")
        await env.orgs["globex.test"].agent("bob")
        await env.orgs["globex.test"].agent("dave")
        yield env


async def send(w: World, org: Org, sender: str, to: list[str], **extra: Any) -> tuple[int, Any]:
    async with w.http.post(
        f"{org.url}/synq/v1/messages",
        json={"to": to, "body": "hi", **extra},
        headers=org.agents[sender].auth,
    ) as resp:
        return resp.status, await resp.json()


async def dsn_statuses(w: World, org: Org, agent: str) -> list[tuple[str, str]]:
    return [
        (m["body"]["final_recipient"], m["body"]["status"])
        for m in await w.inbox(org, org.agents[agent])
        if m["kind"] == "dsn"
    ]


async def synq_status(relay: Relay, id_: str, capsys: pytest.CaptureFixture[str]) -> str:
    """What ``synq status ID`` prints, through the command's own handler."""
    capsys.readouterr()
    assert await cli.status(argparse.Namespace(id=id_, json=False), relay) == 0
    return capsys.readouterr().out


async def test_threat_denied_domain_is_refused_5_7_1_and_bounces_with_a_dsn(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    globex.relay.reload(with_policy(globex.relay, deny=["acme.test"]))
    status, sent = await send(w, acme, "alice", ["bob@globex.test"])
    assert status == 202
    await acme.relay.sender.run_once()

    state = (await w.status(acme, acme.agents["alice"], sent["id"]))["recipients"]
    assert (state["bob@globex.test"]["state"], state["bob@globex.test"]["code"]) == (
        "bounced",
        "5.7.1",
    )
    assert "bob@globex.test: bounced 5.7.1" in await synq_status(acme.relay, sent["id"], capsys)
    assert await dsn_statuses(w, acme, "alice") == [("bob@globex.test", "5.7.1")]
    assert await w.inbox(globex, globex.agents["bob"]) == []
    # Refused before any work is spent on it: globex never looked acme's key up.
    assert w.dns.query_count("s1._synqkey.acme.test", "TXT") == 0


async def test_threat_unlisted_domain_in_a_closed_federation(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    globex.relay.reload(with_policy(globex.relay, default="deny", allow=["initech.test"]))
    await send(w, acme, "alice", ["bob@globex.test"])
    await acme.relay.sender.run_once()
    assert await dsn_statuses(w, acme, "alice") == [("bob@globex.test", "5.7.1")]
    globex.relay.reload(with_policy(globex.relay, default="deny", allow=["acme.test"]))
    await send(w, acme, "alice", ["bob@globex.test"])
    await acme.relay.sender.run_once()
    assert len(await w.inbox(globex, globex.agents["bob"])) == 1


async def test_threat_unwanted_sender_refused_per_recipient_rest_delivered(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    globex.relay.reload(
        with_policy(globex.relay, agents={"bob": {"allow": ["carol@acme.test", "globex.test"]}})
    )
    status, sent = await send(w, acme, "alice", ["bob@globex.test", "dave@globex.test"])
    assert status == 202
    await acme.relay.sender.run_once()

    state = (await w.status(acme, acme.agents["alice"], sent["id"]))["recipients"]
    assert (state["bob@globex.test"]["state"], state["bob@globex.test"]["code"]) == (
        "bounced",
        "5.7.1",
    )
    assert state["dave@globex.test"]["state"] == "sent"
    printed = await synq_status(acme.relay, sent["id"], capsys)
    assert "bob@globex.test: bounced 5.7.1" in printed
    assert "dave@globex.test: sent" in printed
    assert await dsn_statuses(w, acme, "alice") == [("bob@globex.test", "5.7.1")]
    assert await w.inbox(globex, globex.agents["bob"]) == []
    assert len(await w.inbox(globex, globex.agents["dave"])) == 1
    # A colleague at globex still reaches bob: the rule names a domain.
    status, _ = await send(w, globex, "dave", ["bob@globex.test"])
    assert status == 202


async def test_threat_local_send_against_policy_is_403_and_keeps_nothing(w: World) -> None:
    acme = w.orgs["acme.test"]
    await acme.agent("carol")
    acme.relay.reload(
        with_policy(acme.relay, deny=["evil.test"], agents={"carol": {"allow": ["globex.test"]}})
    )
    for to in (["x@evil.test"], ["carol@acme.test"], ["bob@globex.test", "x@evil.test"]):
        status, body = await send(w, acme, "alice", to)
        assert status == 403, body
        err = body["error"]
        assert (err["code"], err["status"]) == ("forbidden", "5.7.1")
        assert err["details"]["recipients"] == [a for a in to if a != "bob@globex.test"]
    assert await acme.relay.store.list_queue() == []
    assert await w.inbox(acme, acme.agents["carol"]) == []


async def test_policy_reload_drops_nothing_queued(w: World) -> None:
    """Envelopes accepted under the old policy are delivered; the new one governs new ones."""
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await globex.stop()
    ids = [
        (await send(w, acme, "alice", ["bob@globex.test"], body=str(i)))[1]["id"] for i in range(3)
    ]
    await acme.relay.sender.run_once()  # globex is away: all three deferred
    assert len(await acme.relay.store.list_queue()) == 3

    acme.relay.reload(with_policy(acme.relay, deny=["globex.test"]))
    assert len(await acme.relay.store.list_queue()) == 3
    assert (await send(w, acme, "alice", ["bob@globex.test"]))[0] == 403

    await globex.start()
    await acme.relay.store.flush(w.clock.now())
    await acme.relay.sender.run_once()
    assert sorted(m["id"] for m in await w.inbox(globex, globex.agents["bob"])) == sorted(ids)
    assert await acme.relay.store.list_queue() == []


# ---------------------------------------------------------------------------- bounces and rules


def signed(org: Org, **fields: Any) -> tuple[str, str]:
    now = env_mod.format_timestamp(org.relay.clock.now())
    later = env_mod.format_timestamp(org.relay.clock.now() + timedelta(hours=1))
    doc: dict[str, Any] = {
        "v": 1,
        "id": uuid7(org.relay.clock.now()),
        "created": now,
        "expires": later,
        "kind": "message",
        "content_type": "text/plain",
        "body": "x",
        **fields,
    }
    return doc["id"], jws.sign(json.dumps(doc).encode(), org.key)


async def put(w: World, org: Org, origin: str, *tokens: str) -> dict[str, Any]:
    async with w.http.put(
        f"{org.url}/synq/v1/federation/txn/t-{uuid7(w.clock.now())}",
        data=io.BytesIO(json.dumps({"origin": origin, "envelopes": list(tokens)}).encode()),
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200
        results: dict[str, Any] = (await resp.json())["results"]
        return results


async def test_threat_fake_bounce_bypassing_agent_rules(w: World) -> None:
    """Only a DSN about a message the recipient itself sent to that domain passes its agent
    rules; calling any envelope a bounce, or naming someone else's message, does not."""
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    acme.relay.reload(with_policy(acme.relay, agents={"alice": {"allow": ["acme.test"]}}))
    await acme.agent("erin")
    _, own = await send(w, acme, "alice", ["ghost@globex.test"])
    _, other = await send(w, acme, "erin", ["ghost@globex.test"])

    def dsn(in_reply_to: str, sender: str = "mailer-daemon@globex.test") -> tuple[str, str]:
        return signed(
            globex,
            **{"from": sender, "to": ["alice@acme.test"]},
            kind="dsn",
            content_type="application/synq-dsn+json",
            body={"original_id": in_reply_to},
            in_reply_to=in_reply_to,
        )

    real_id, real = dsn(own["id"])
    wrong_id, wrong = dsn(other["id"])  # erin's message, not alice's
    forged_id, forged = dsn(own["id"], sender="mallory@globex.test")
    plain_id, plain = signed(globex, **{"from": "bob@globex.test", "to": ["alice@acme.test"]})
    results = await put(w, acme, "globex.test", real, wrong, forged, plain)
    assert results[real_id]["status"] == "accepted"
    for refused in (wrong_id, forged_id, plain_id):
        assert (results[refused]["status"], results[refused]["code"]) == ("rejected", "5.7.1")
    assert [m["id"] for m in await w.inbox(acme, acme.agents["alice"])] == [real_id]


async def test_mixed_refusals_carry_the_per_recipient_map(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    globex.relay.reload(with_policy(globex.relay, agents={"bob": {"deny": ["acme.test"]}}))
    id_, token = signed(
        acme, **{"from": "alice@acme.test", "to": ["bob@globex.test", "ghost@globex.test"]}
    )
    result = (await put(w, globex, "acme.test", token))[id_]
    assert (result["status"], result["code"]) == ("rejected", "5.7.1")
    assert {a: r["code"] for a, r in result["recipients"].items()} == {
        "bob@globex.test": "5.7.1",
        "ghost@globex.test": "5.1.1",
    }
