"""Federated search end to end (SPEC.md §12.6): two relays on loopback, a real DNS server
publishing their relay URLs and keys. An agent at acme finds, by a plain-language need, an
agent at globex it was never told about — through the HTTP API and the MCP face — and messages
it. The partner answers acme's signed request with what its visibility and policy show acme;
a partner that is down is left out and named, never an error."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.core import httpsig, jsonutil
from relay.core.policy import Policy
from relay.federation.search import PARTIAL_HEADER
from tests.conftest import Agent
from tests.fedenv import Org, World, world
from tests.mcpenv import mcp_client

ACME, GLOBEX, INITECH = "acme.test", "globex.test", "initech.test"
NEED = "who can translate invoices into German?"


async def describe(org: Org, name: str, visibility: str, description: str) -> Agent:
    agent = await org.agent(name)
    await org.relay.store.catalog_update(
        name,
        org.relay.clock.now(),
        visibility=visibility,
        description=description,
        tags=["translation"],
        queries=[description.lower(), f"ask {name}"],
    )
    return agent


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path) as env:
        await env.add_org(ACME, partners=[GLOBEX, INITECH])
        await env.add_org(GLOBEX, partners=[ACME])
        # initech publishes its records but its relay is down.
        initech = await env.add_org(INITECH)
        await initech.stop()
        yield env


async def search(w: World, org: Org, agent: Agent | None, body: dict[str, Any]) -> Any:
    headers = agent.auth if agent is not None else {}
    async with w.http.post(f"{org.url}/ard/search", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json(), resp.headers


def addresses(answer: dict[str, Any]) -> list[str]:
    return [r["metadata"]["address"] for r in answer["results"]]


async def test_an_agent_finds_a_partners_agent_by_its_need_and_messages_it(w: World) -> None:
    acme, globex = w.orgs[ACME], w.orgs[GLOBEX]
    alice = await acme.agent("alice")
    await describe(globex, "translator", "partners", "Translates invoice documents to German")
    await describe(globex, "ledger", "local", "Translates invoices to German for globex only")
    await describe(globex, "vault", "private", "Translates invoice documents to German, secretly")
    await describe(acme, "weather", "local", "Forecasts the weather for a city")

    answer, headers = await search(w, acme, alice, {"query": {"text": NEED}})
    assert addresses(answer)[0] == "translator@globex.test"
    # Only what globex shows a partner: never its local or private agents.
    assert not {"ledger@globex.test", "vault@globex.test"} & set(addresses(answer))
    (found,) = [r for r in answer["results"] if r["metadata"]["address"].endswith(GLOBEX)]
    assert found["source"] == f"{globex.url}/ard"
    assert 0 < found["score"] <= 100
    # initech is down: left out within the deadline and named, not an error.
    assert headers[PARTIAL_HEADER] == INITECH

    # Search → send is one step: the address is all it takes.
    async with w.http.post(
        f"{acme.url}/synq/v1/messages",
        json={"to": [found["metadata"]["address"]], "body": "please translate invoice 7"},
        headers=alice.auth,
    ) as resp:
        assert resp.status == 202
    await acme.relay.sender.run_once()
    translator = globex.agents["translator"]
    (message,) = await w.inbox(globex, translator)
    assert message["from"] == "alice@acme.test"
    assert message["body"] == "please translate invoice 7"

    # "none" searches acme alone; an anonymous caller is never federated.
    local_only, _ = await search(w, acme, alice, {"query": {"text": NEED}, "federation": "none"})
    assert "translator@globex.test" not in addresses(local_only)
    anonymous, _ = await search(w, acme, None, {"query": {"text": NEED}})
    assert addresses(anonymous) == []


async def test_the_mcp_face_finds_the_partners_agent(w: World) -> None:
    acme, globex = w.orgs[ACME], w.orgs[GLOBEX]
    alice = await acme.agent("alice")
    await describe(globex, "translator", "public", "Translates invoice documents to German")
    async with mcp_client(f"{acme.url}/mcp", alice) as client:
        result = await client.call_tool("find_agents", {"query": NEED})
        assert result.structured_content is not None
        found = [a["address"] for a in result.structured_content["agents"]]
        assert found[0] == "translator@globex.test"


async def test_a_partner_whose_policy_denies_the_asker_shows_it_nothing(w: World) -> None:
    acme, globex = w.orgs[ACME], w.orgs[GLOBEX]
    alice = await acme.agent("alice")
    await describe(globex, "translator", "public", "Translates invoice documents to German")
    relay = globex.relay
    relay.policy = Policy.build(GLOBEX, default="allow", allow=[], deny=[ACME], agents={})
    answer, _ = await search(w, acme, alice, {"query": {"text": NEED}})
    assert "translator@globex.test" not in addresses(answer)


async def test_a_forged_or_replayed_partner_request_is_refused(w: World) -> None:
    acme, globex = w.orgs[ACME], w.orgs[GLOBEX]
    await describe(globex, "translator", "partners", "Translates invoice documents to German")
    body = jsonutil.dumps({"query": {"text": NEED}, "federation": "none"})
    url = f"{globex.url}/ard/search"

    def signed(payload: bytes = body) -> dict[str, str]:
        return httpsig.sign_request(
            method="POST", url=url, body=payload, key=acme.key, domain=ACME,
            created=int(w.clock.now().timestamp()), nonce=secrets.token_urlsafe(18),
        )  # fmt: skip

    # A request signed with acme's published key: globex shows acme its partners' view.
    headers = signed()
    async with w.http.post(url, data=body, headers=headers) as resp:
        assert resp.status == 200
        assert "translator@globex.test" in str(await resp.json())
    # The same request again is a replay.
    async with w.http.post(url, data=body, headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["errorCode"] == "UNAUTHENTICATED"
    # A signature over another body does not verify (the digest no longer matches).
    async with w.http.post(url, data=body.replace(b"German", b"French"), headers=signed()) as resp:
        assert resp.status == 400
    # A stale one is refused once the clock has moved past its window.
    stale = signed()
    w.clock.advance(httpsig.MAX_SIGNATURE_LIFETIME + httpsig.MAX_SIGNATURE_SKEW + 1)
    async with w.http.post(url, data=body, headers=stale) as resp:
        assert resp.status == 401
    # Unsigned, the same search is anonymous: a `partners` agent is not listed.
    async with w.http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        assert "translator@globex.test" not in str(await resp.json())
