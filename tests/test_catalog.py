"""Discovery (SPEC.md §12): the pure rules as tables, the catalog on every store backend, and
the ARD routes, the MCP face's find_agents and ``synq find`` on a live relay — with the rule
that nothing ``private`` ever leaves the relay checked on each of them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay import cli
from relay.config import render_config
from relay.core import catalog as cat
from relay.core.catalog import CatalogRecord, InvalidArgument, Profile, Skill, Tool, Viewer
from relay.core.ids import hash_token, new_token
from relay.core.policy import Policy
from relay.runtime import Relay
from relay.server.app import build_app
from relay.store import Store, open_store
from tests import pg
from tests.a2a_peers import Peer, card_json, scripted_app
from tests.conftest import Agent, make_config
from tests.mcpenv import mcp_client, stdio_endpoint, text_of

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# --- pure: who sees what ------------------------------------------------------------------------

POLICY = Policy.build(
    "acme.test",
    deny=["evil.test"],
    agents={"payroll": (["alice@acme.test", "globex.test"], []), "hr": (["alice@acme.test"], [])},
)
VIEWERS = {
    "anonymous": Viewer.anonymous(),
    "alice": Viewer.local("alice@acme.test"),
    "bob": Viewer.local("bob@acme.test"),
    "globex": Viewer.partner("globex.test"),
    "evil": Viewer.partner("evil.test"),
    "operator": Viewer.operator(),
}
#: visibility → the callers that see an agent without rules of its own.
SEEN_BY = {
    "private": set(),
    "local": {"alice", "bob", "operator"},
    "partners": {"alice", "bob", "globex", "operator"},
    "public": {"anonymous", "alice", "bob", "globex", "operator"},
}


@pytest.mark.parametrize("visibility", cat.VISIBILITIES)
@pytest.mark.parametrize("who", sorted(VIEWERS))
@pytest.mark.parametrize(
    ("agent", "narrowed_to"),
    [
        ("free", None),  # no rules of its own
        ("payroll", {"alice", "globex", "operator"}),  # allow list: an address and a domain
        ("hr", {"alice", "operator"}),  # allow list: one address
    ],
)
def test_visibility_matrix(
    visibility: str, who: str, agent: str, narrowed_to: set[str] | None
) -> None:
    viewer = VIEWERS[who]
    expected = who in SEEN_BY[visibility] and (narrowed_to is None or who in narrowed_to)
    assert cat.visible(visibility, agent, viewer, POLICY) is expected
    # The store's form of the same rule agrees.
    scope = cat.scope(viewer, POLICY)
    assert (visibility in scope.visibilities and agent not in scope.hidden) is expected


def test_a_denied_domain_sees_nothing_and_an_open_policy_hides_nothing() -> None:
    assert cat.scope(Viewer.partner("evil.test"), POLICY) == cat.Scope((), ())
    assert cat.scope(Viewer.anonymous(), Policy.open("acme.test")) == cat.Scope(("public",), ())


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ([], "JSON object"),
        ({}, "query is required"),
        ({"query": {"text": 1}}, "query.text"),
        ({"query": {"text": "x", "other": 1}}, "unknown member"),
        ({"query": {"text": "x"}, "extra": 1}, "unknown member"),
        ({"query": {"text": "x" * (cat.MAX_QUERY_CHARS + 1)}}, "longer than"),
        ({"query": {"text": "x", "filter": []}}, "filter must be an object"),
        ({"query": {"text": "x", "filter": {"nope": "a"}}}, "unsupported field"),
        ({"query": {"text": "x", "filter": {"tags": [1]}}}, "strings"),
        ({"query": {"text": "x", "filter": {"tags": []}}}, "empty"),
        (
            {"query": {"text": "x", "filter": {f"metadata.k{i}": "v" for i in range(17)}}},
            "more than 16 keys",
        ),
        ({"query": {"text": "x", "filter": {"tags": ["t"] * 33}}}, "more than 32 values"),
        ({"query": {"text": "x"}, "federation": "all"}, "federation"),
        ({"query": {"text": "x"}, "pageSize": 0}, "pageSize"),
        ({"query": {"text": "x"}, "pageSize": 101}, "pageSize"),
        ({"query": {"text": "x"}, "pageSize": True}, "pageSize"),
        ({"query": {"text": "x"}, "pageToken": "garbage!"}, "pageToken"),
    ],
)
def test_malformed_searches_are_invalid_argument(body: Any, what: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        cat.parse_search(body)
    assert what in caught.value.message


def test_a_page_token_belongs_to_its_query() -> None:
    first = cat.parse_search({"query": {"text": "translate"}, "pageSize": 2})
    token = first.next_token(True)
    assert cat.parse_search({"query": {"text": "translate"}, "pageToken": token}).offset == 2
    with pytest.raises(InvalidArgument):
        cat.parse_search({"query": {"text": "other"}, "pageToken": token})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("translate invoices into German", ["translate", "invoices", "german"]),
        ('who can "help"? OR NEAR(x) *', ["near", "x"]),
        ("", []),
    ],
)
def test_terms_are_plain_words(text: str, expected: list[str]) -> None:
    assert cat.terms(text) == expected


RECORD = CatalogRecord(
    agent="tools",
    kind="mcp",
    visibility="public",
    tags=("finance",),
    profile=Profile(
        name="Tools",
        skills=(Skill("translate_invoice", "Invoices", "Translates invoice documents to German",
                      ("translation",), ("translate this invoice", "invoice to German")),),
        tools=(Tool("convert", "Converts currencies", ("amount", "currency")),),
    ),
)  # fmt: skip


def test_entries_of_an_mcp_backed_agent() -> None:
    a2a, mcp = cat.entries(RECORD, "acme.test", "https://relay.acme.test/")
    assert a2a["identifier"] == "urn:air:acme.test:agent:tools"
    assert a2a["type"] == cat.A2A_TYPE
    assert a2a["url"] == "https://relay.acme.test/a2a/tools@acme.test/.well-known/agent-card.json"
    assert a2a["capabilities"] == ["translate_invoice", "convert"]
    assert a2a["tags"] == ["finance", "translation"]
    assert a2a["representativeQueries"] == ["translate this invoice", "invoice to German"]
    assert a2a["metadata"]["address"] == "tools@acme.test"
    assert mcp["type"] == cat.MCP_TYPE
    assert mcp["url"] == "https://relay.acme.test/mcp/tools@acme.test"
    assert cat.matches(mcp, {"publisher": ("acme.test",), "capabilities": ("CONVERT",)})
    assert not cat.matches(a2a, {"type": (cat.MCP_TYPE,)})
    assert "amount" in cat.document(RECORD)
    assert "invoice" in cat.document(RECORD)


@pytest.mark.parametrize(
    ("matched", "limit", "expected"),
    [
        # every word beats some words; among equals the rarer word wins, then the older entry
        ([(0b01, "y", 1), (0b11, "x", 1)], 10, [("x", 100), ("y", 48)]),
        ([(1, "z", 3), (1, "y", 3), (1, "x", 3), (2, "w", 1)], 10,
         [("w", 53), ("x", 47), ("y", 47), ("z", 47)]),
        ([(1, "z", 3), (1, "y", 3), (1, "x", 3), (2, "w", 1)], 2, [("w", 53), ("x", 47)]),
        ([], 10, []),
    ],
)  # fmt: skip
def test_rank_by_coverage_then_rarity(
    matched: list[tuple[int, str, int]], limit: int, expected: list[tuple[str, int]]
) -> None:
    assert cat.rank(2, matched, 100, limit) == expected


# --- the store, every backend ---------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = (
        f"sqlite:///{tmp_path / 'relay.db'}"
        if request.param == "sqlite"
        else pg.database_url(request)
    )
    s = await open_store(url, domain="acme.test")
    try:
        yield s
    finally:
        await s.close()


async def test_store_ranks_a_plain_language_need_by_stem(store: Store) -> None:
    for name in ("tools", "weather", "secret"):
        await store.create_agent(name, "inbox", hash_token(new_token()), None, T0)
    assert await store.catalog_update("tools", T0, profile=RECORD.profile, visibility="public")
    assert not await store.catalog_update("tools", T0, profile=RECORD.profile)  # unchanged
    await store.catalog_update("weather", T0, description="Weather forecasts", tags=["weather"])
    await store.catalog_update(
        "secret", T0, description="Translates invoices", visibility="private"
    )
    need = cat.terms("translate invoices into German")
    scope = ["local", "partners", "public"]
    matched = await store.catalog_matches(need, scope, [], 10, 100)
    total = await store.catalog_count(scope, [])
    assert total == 2  # tools and weather; secret is private
    # Each word by its stem: "translate" ~ "Translates", "invoices" ~ "invoice".
    [(mask, key, size)] = matched
    assert (mask, size) == (0b111, 1)
    assert cat.rank(len(need), matched, total, 10) == [(key, 100)]
    both = await store.catalog_matches(["forecasts", "german"], scope, [], 10, 100)
    assert sorted((mask, size) for mask, _, size in both) == [(1, 1), (2, 1)]
    records = await store.catalog_records([key, 10**6])
    assert list(records) == [key]
    assert records[key].profile == RECORD.profile
    assert records[key].tags == ()
    assert await store.catalog_matches(["invoices"], ["public"], ["tools"], 10, 100) == []
    assert await store.catalog_count(["public"], ["tools"]) == 0
    # The private agent matches nothing, whatever the words.
    assert await store.catalog_matches(["secret", "invoices"], ["local"], [], 10, 100) == []
    assert [r.agent for r in await store.catalog_scope(["local"], [])] == ["weather"]
    # Removing the agent removes its entry and its index.
    await store.remove_agent("tools")
    assert await store.catalog_matches(["invoices"], ["public"], [], 10, 100) == []
    assert await store.catalog_get("tools") is None


async def test_store_groups_matches_by_term_set_within_limit_and_scan(store: Store) -> None:
    # a00…a11, keys in creation order: "invoices" in the even ones, "german" in every third.
    for i in range(12):
        name = f"a{i:02d}"
        await store.create_agent(name, "inbox", hash_token(new_token()), None, T0)
        words = [w for w, every in (("invoices", 2), ("german", 3)) if i % every == 0]
        await store.catalog_update(name, T0, description=" ".join(["Handles", *words]))
    scope = ["local"]
    every = await store.catalog_matches(["invoices", "german"], scope, [], 12, 100)
    names = {k: r.agent for k, r in (await store.catalog_records([k for _, k, _ in every])).items()}

    async def groups(limit: int, scan: int, hidden: list[str]) -> dict[int, tuple[int, list[str]]]:
        found = await store.catalog_matches(["invoices", "german"], scope, hidden, limit, scan)
        by_mask: dict[int, tuple[int, list[str]]] = {}
        for mask, key, size in found:
            assert by_mask.get(mask, (size, []))[0] == size  # one size per set
            by_mask.setdefault(mask, (size, []))[1].append(names[key])
        return {mask: (size, sorted(keys)) for mask, (size, keys) in by_mask.items()}

    # Bit 0 "invoices", bit 1 "german"; the ``limit`` oldest of each set, with the set's size.
    assert await groups(12, 100, []) == {
        0b11: (2, ["a00", "a06"]),
        0b01: (4, ["a02", "a04", "a08", "a10"]),
        0b10: (2, ["a03", "a09"]),
    }
    assert await groups(2, 100, []) == {
        0b11: (2, ["a00", "a06"]),
        0b01: (4, ["a02", "a04"]),
        0b10: (2, ["a03", "a09"]),
    }
    # ``scan`` keeps the oldest matches (a00 a02 a03 a04 a06), each with all the terms it
    # matches, even though a06 is not among the oldest five of "german" and "invoices" both.
    assert await groups(12, 5, []) == {
        0b11: (2, ["a00", "a06"]),
        0b01: (2, ["a02", "a04"]),
        0b10: (1, ["a03"]),
    }
    # Agents hidden from the caller take no place among them.
    assert await groups(12, 5, ["a00", "a03"]) == {
        0b11: (1, ["a06"]),
        0b01: (3, ["a02", "a04", "a08"]),
        0b10: (1, ["a09"]),
    }
    # A record read before and changed since is read as it is now.
    [key] = [k for k, name in names.items() if name == "a00"]
    assert (await store.catalog_records([key]))[key].description == "Handles invoices german"
    await store.catalog_update("a00", T0, description="Handles weather", tags=["weather"])
    now = (await store.catalog_records([key]))[key]
    assert (now.description, now.tags) == ("Handles weather", ("weather",))


# --- a live relay -----------------------------------------------------------------------------


async def _agent(relay: Relay, name: str, visibility: str, description: str) -> str:
    token = new_token()
    await relay.store.create_agent(name, "inbox", hash_token(token), None, relay.clock.now())
    await relay.store.catalog_update(
        name, relay.clock.now(), visibility=visibility, description=description,
        tags=["translation"],
    )  # fmt: skip
    return token


async def _partner_header(request: web.Request) -> str | None:
    """A partner-authentication scheme for tests: the header names the domain."""
    return request.headers.get("X-Test-Partner")


@pytest.fixture
async def live(
    tmp_path: Path, aiohttp_client: Any
) -> AsyncIterator[tuple[Relay, TestClient[Any, Any], dict[str, str]]]:
    config = make_config(tmp_path / "acme")
    config = config.model_copy(
        update={"policy": config.policy.model_copy(update={"deny": ["evil.test"]})}
    )
    relay = await Relay.open(config)
    relay.partner_auth = _partner_header
    tokens = {
        v: await _agent(relay, f"tr-{v}", v, f"Translates invoice documents to German ({v})")
        for v in cat.VISIBILITIES
    }
    client: TestClient[Any, Any] = await aiohttp_client(build_app(relay))
    try:
        yield relay, client, tokens
    finally:
        await relay.close()


CALLERS: dict[str, tuple[dict[str, str], set[str]]] = {
    "anonymous": ({}, {"public"}),
    "local": ({"Authorization": "Bearer {local}"}, {"local", "partners", "public"}),
    "partner": ({"X-Test-Partner": "globex.test"}, {"partners", "public"}),
    "denied partner": ({"X-Test-Partner": "evil.test"}, set()),
}


def _listed(text: str) -> set[str]:
    return {v for v in cat.VISIBILITIES if f"tr-{v}@acme.test" in text or f"agent:tr-{v}" in text}


@pytest.mark.parametrize("caller", sorted(CALLERS))
async def test_every_route_lists_what_the_caller_may_see_and_never_private(
    live: tuple[Relay, TestClient[Any, Any], dict[str, str]], caller: str
) -> None:
    _relay, client, tokens = live
    template, sees = CALLERS[caller]
    headers = {k: v.format(local=tokens["local"]) for k, v in template.items()}
    need = {"query": {"text": "who can translate invoices into German?"}, "federation": "none"}
    answers = {
        "search": await client.post("/ard/search", json=need, headers=headers),
        "explore": await client.post(
            "/ard/explore",
            json={"resultType": {"facets": [{"field": "identifier"}]}},
            headers=headers,
        ),
        "list": await client.get("/ard/agents", headers=headers),
    }
    for route, resp in answers.items():
        assert resp.status == 200, route
        assert _listed(await resp.text()) == sees, route
    for visibility in cat.VISIBILITIES:
        resp = await client.get(
            f"/ard/agents/urn:air:acme.test:agent:tr-{visibility}", headers=headers
        )
        assert resp.status == (200 if visibility in sees else 404), visibility
        if resp.status == 404:
            assert (await resp.json())["errorCode"] == "NOT_FOUND"
    # The manifest is public, whoever asks.
    manifest = await (await client.get("/.well-known/ard.json", headers=headers)).text()
    assert _listed(manifest) == {"public"}
    assert '"application/ai-registry+json"' in manifest


async def test_mcp_find_agents_lists_what_the_agent_may_see_and_never_private(
    live: tuple[Relay, TestClient[Any, Any], dict[str, str]],
) -> None:
    _, client, tokens = live
    # The agent listed ``local`` asks: it sees local, partners and public entries.
    asker = Agent("tr-local", "tr-local@acme.test", tokens["local"])
    async with mcp_client(str(client.make_url("/mcp")), asker) as session:
        result = await session.call_tool(
            "find_agents", {"query": "who can translate invoices into German?"}
        )
        assert not result.is_error
        found = result.structured_content["agents"]  # type: ignore[index]
        assert {a["address"] for a in found} == {
            f"tr-{v}@acme.test" for v in ("local", "partners", "public")
        }
        assert all(0 < a["score"] <= 100 for a in found)
        bad = await session.call_tool("find_agents", {"query": "x", "filter": {"nope": "1"}})
        assert bad.is_error
        assert "unsupported field" in text_of(bad)


async def test_search_answers_ranked_entries_with_addresses_and_pages(
    live: tuple[Relay, TestClient[Any, Any], dict[str, str]],
) -> None:
    _, client, tokens = live
    auth = {"Authorization": f"Bearer {tokens['local']}"}
    body = {
        "query": {"text": "translate invoices into German"},
        "pageSize": 2,
        "federation": "none",
    }
    first = await (await client.post("/ard/search", json=body, headers=auth)).json()
    assert len(first["results"]) == 2
    assert "pageToken" in first
    for item in first["results"]:
        assert 0 < item["score"] <= 100
        assert item["source"].endswith("/ard")
        assert item["metadata"]["address"].endswith("@acme.test")
    rest = await (
        await client.post(
            "/ard/search", json={**body, "pageToken": first["pageToken"]}, headers=auth
        )
    ).json()
    assert len(rest["results"]) == 1
    assert "pageToken" not in rest
    filtered = {"query": {"text": "translate", "filter": {"type": cat.MCP_TYPE}}}
    assert (await (await client.post("/ard/search", json=filtered, headers=auth)).json())[
        "results"
    ] == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("post", "/ard/search", {"query": {"text": 5}}, 400, "INVALID_ARGUMENT"),
        ("post", "/ard/search", {"query": {"text": "x" * 600}}, 400, "INVALID_ARGUMENT"),
        (
            "post",
            "/ard/search",
            {"query": {"text": "x"}, "pageSize": 1000},
            400,
            "INVALID_ARGUMENT",
        ),
        ("post", "/ard/search", "not json", 400, "INVALID_ARGUMENT"),
        ("post", "/ard/search", {"query": {"text": "x" * 70_000}}, 413, "INVALID_ARGUMENT"),
        ("post", "/ard/explore", {"resultType": {}}, 400, "INVALID_ARGUMENT"),
        ("get", "/ard/agents?pageSize=0", None, 400, "INVALID_ARGUMENT"),
        ("get", "/ard/agents?filter=type%20%3D%20x", None, 400, "INVALID_ARGUMENT"),
        ("get", "/ard/agents/urn:air:acme.test:agent:nobody", None, 404, "NOT_FOUND"),
        ("get", "/ard/agents/urn:air:other.test:agent:tr-public", None, 404, "NOT_FOUND"),
    ],
)
async def test_bad_requests_get_ards_error_object(
    live: tuple[Relay, TestClient[Any, Any], dict[str, str]],
    method: str, path: str, body: Any, status: int, code: str,
) -> None:  # fmt: skip
    _, client, _ = live
    kwargs: dict[str, Any] = {}
    if isinstance(body, str):
        kwargs = {"data": body, "headers": {"Content-Type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}
    resp = await getattr(client, method)(path, **kwargs)
    assert resp.status == status
    assert (await resp.json())["errorCode"] == code


async def test_a_bad_token_is_401_and_searches_are_rate_limited(
    live: tuple[Relay, TestClient[Any, Any], dict[str, str]],
) -> None:
    _relay, client, tokens = live
    resp = await client.get("/ard/agents", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401
    assert (await resp.json())["errorCode"] == "UNAUTHENTICATED"
    auth = {"Authorization": f"Bearer {tokens['public']}"}
    # The bucket refills while the requests run (SEARCH_RATE per second), so a 429 comes within
    # twice the burst, never before the burst is spent.
    sent = 0
    while sent < 2 * cat.SEARCH_RATE.burst:
        sent += 1
        resp = await client.get("/ard/agents", headers=auth)
        if resp.status == 429:
            break
    assert resp.status == 429
    assert sent > cat.SEARCH_RATE.burst
    assert (await resp.json())["errorCode"] == "RATE_LIMIT_EXCEEDED"
    assert int(resp.headers["Retry-After"]) >= 1


async def test_referrals_name_the_partners_registries(tmp_path: Path) -> None:
    from relay.dnsserver import DNSServer  # a real DNS server publishing globex's relay

    async with DNSServer() as dns:
        dns.add_txt("_synq.globex.test", "v=synq1; relay=http://127.0.0.1:9/")
        config = make_config(
            tmp_path / "acme", nameservers=[dns.address], allow_private_addresses=True,
            partners=["globex.test", "nowhere.test"],
        )  # fmt: skip
        relay = await Relay.open(config)
        try:
            request = cat.parse_search({"query": {"text": "x"}, "federation": "referrals"})
            page = await relay.catalog.search(Viewer.local("alice@acme.test"), request)
            assert page.referrals == [
                {
                    "identifier": "urn:air:globex.test:registry:ard",
                    "displayName": "globex.test agent registry",
                    "type": cat.REGISTRY_TYPE,
                    "url": "http://127.0.0.1:9/ard",
                }
            ]
            anonymous = await relay.catalog.search(Viewer.anonymous(), request)
            assert anonymous.referrals == []
        finally:
            await relay.close()


def test_synq_find_and_agent_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path / "acme")
    path = tmp_path / "acme" / "synq.toml"
    path.write_text(render_config(config))
    base = ["--config", str(path)]
    assert cli.main([*base, "agent", "add", "translator", "--description",
                     "Translates invoice documents to German", "--tag", "finance",
                     "--query", "translate an invoice", "--query", "invoice into German"]) == 0  # fmt: skip
    assert cli.main([*base, "agent", "add", "hidden", "--description",
                     "Translates invoices", "--visibility", "private"]) == 0  # fmt: skip
    assert cli.main([*base, "agent", "set", "hidden", "--tag", "finance"]) == 0
    assert cli.main([*base, "agent", "set", "hidden", "--query", "only one"]) == 1
    capsys.readouterr()
    assert (
        cli.main([*base, "--json", "find", "who can translate invoices?", "--tag", "finance"]) == 0
    )
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["metadata"]["address"] for r in results] == ["translator@acme.test"]
    assert cli.main([*base, "find", "translate", "--type", "mcp"]) == 0
    assert "no agent found" in capsys.readouterr().out


# --- kept current, kept across restarts --------------------------------------------------------


async def test_a_changed_a2a_card_is_searched_after_the_next_refresh(tmp_path: Path) -> None:
    skills: list[dict[str, Any]] = []

    def card(url: str) -> dict[str, Any]:
        return {**card_json(url), "skills": skills}

    peer = Peer(scripted_app(lambda request, body: never_called(), card=card))
    await peer.start()
    relay = await Relay.open(make_config(tmp_path / "acme"))
    try:
        record = await relay.store.create_agent(
            "faulty", "a2a", hash_token(new_token()), peer.url, relay.clock.now()
        )
        assert await relay.catalog.refresh(record)
        need = cat.parse_search({"query": {"text": "translate invoices"}, "federation": "none"})
        assert (await relay.catalog.search(Viewer.operator(), need)).results == []
        skills.append({"id": "invoices", "name": "Invoices", "description":
                       "Translates invoice documents to German", "tags": ["finance"]})  # fmt: skip
        assert await relay.catalog.run_once() == 1
        found = (await relay.catalog.search(Viewer.operator(), need)).results
        assert found[0]["capabilities"] == ["invoices"]
        assert await relay.catalog.run_once() == 0  # unchanged: nothing written
        await peer.stop()
        assert await relay.catalog.run_once() == 0  # unreachable: what it said is kept
        assert (await relay.catalog.search(Viewer.operator(), need)).results == found
    finally:
        await relay.close()
        await peer.stop()


async def never_called() -> web.StreamResponse:
    raise AssertionError("the catalog never calls the agent's JSON-RPC endpoint")


async def test_an_mcp_tool_list_survives_a_restart_without_the_server(tmp_path: Path) -> None:
    config = make_config(tmp_path / "acme")
    relay = await Relay.open(config)
    try:
        adapter = relay.dispatcher.adapters["mcp"]
        endpoint = await adapter.check(stdio_endpoint())
        record = await relay.store.create_agent(
            "tools", "mcp", hash_token(new_token()), endpoint, relay.clock.now()
        )
        assert await relay.catalog.refresh(record)
    finally:
        await relay.close()
    # Restarted with no MCP adapter at all: the server is not reached.
    relay = await Relay.open(config, adapters={})
    try:
        entry = await relay.catalog.get(Viewer.operator(), "urn:air:acme.test:mcp:tools")
        assert "echo" in entry["capabilities"]
        assert entry["url"].endswith("/mcp/tools@acme.test")
    finally:
        await relay.close()
