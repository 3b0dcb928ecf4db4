"""The relay's own MCP face: ``/mcp`` over streamable HTTP with bearer-token authorization (MCP
2025-11-25 "Authorization", RFC 9728), and ``synq mcp --agent NAME`` on stdio with the SDK's
client over a real subprocess, as a desktop MCP client runs it."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.fedenv import World, world
from tests.mcpenv import add_mcp_agent, mcp_client, running, stdio_endpoint, text_of
from tests.procs import synq

OWN_TOOLS = {
    "send_message",
    "check_inbox",
    "find_agents",
    "get_agent_card",
    "message_status",
    "emit_signal",
    "watch_signals",
    "claim_signal",
    "complete_signal",
    "release_signal",
}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "probe", "version": "1"}},
}  # fmt: skip
REPO = Path(__file__).resolve().parent.parent
ACCEPT = {"Accept": "application/json, text/event-stream"}


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, "acme.test", "globex.test") as env:
        yield env


@pytest.mark.parametrize("path", ["/mcp", "/mcp/tools@globex.test"])
@pytest.mark.parametrize("token", [None, "synq_not-a-token"])
async def test_rfc9728_401_names_the_protected_resource_metadata(
    w: World, path: str, token: str | None
) -> None:
    acme = w.orgs["acme.test"]
    headers = {**ACCEPT, **({"Authorization": f"Bearer {token}"} if token else {})}
    async with w.http.post(f"{acme.url}{path}", json=INITIALIZE, headers=headers) as resp:
        assert resp.status == 401
        challenge = resp.headers["WWW-Authenticate"]
    metadata = f"{acme.url}/.well-known/oauth-protected-resource{path}"
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{metadata}"' in challenge
    async with w.http.get(metadata) as resp:
        assert resp.status == 200
        document = await resp.json()
    assert document["resource"] == f"{acme.url}{path}"
    assert document["bearer_methods_supported"] == ["header"]


async def test_own_face_over_http_acts_as_the_tokens_agent(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await add_mcp_agent(globex, "tools", stdio_endpoint())
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    async with running(w):
        async with mcp_client(f"{acme.url}/mcp", alice) as client:
            assert {t.name for t in (await client.list_tools()).tools} == OWN_TOOLS
            sent = await client.call_tool(
                "send_message", {"to": "bob@acme.test", "body": "hello bob", "thread": "t1"}
            )
            message_id = sent.structured_content["id"]  # type: ignore[index]
            status = await client.call_tool("message_status", {"id": message_id})
            assert status.structured_content["recipients"]["bob@acme.test"]["state"] == "delivered"  # type: ignore[index]
            # Capability search (SPEC.md §12): bob is listed to alice (``local``) by his name.
            agents = await client.call_tool("find_agents", {"query": "bob", "federation": "none"})
            found = agents.structured_content["agents"]  # type: ignore[index]
            assert [a["address"] for a in found] == ["bob@acme.test"]
            card = await client.call_tool("get_agent_card", {"address": "tools@globex.test"})
            assert "echo" in {s["id"] for s in card.structured_content["skills"]}  # type: ignore[index]
            bad = await client.call_tool("send_message", {"to": "nobody@acme.test", "body": "x"})
            assert bad.is_error
            assert "unknown_recipient" in text_of(bad)
            invalid = await client.call_tool("check_inbox", {"limit": 0})
            assert invalid.is_error
            assert "limit" in text_of(invalid)
        # Bob, with his own token and the 2026-07-28 revision (no session), reads and acks it.
        headers = {"Authorization": f"Bearer {bob.token}"}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(streamable_http_client(f"{acme.url}/mcp", http_client=http)) as modern,
        ):
            assert modern.protocol_version == "2026-07-28"
            inbox = await modern.call_tool("check_inbox", {"wait": 5, "ack": True})
            [message] = inbox.structured_content["messages"]  # type: ignore[index]
            assert (message["from"], message["body"], message["thread"]) == (
                "alice@acme.test", "hello bob", "t1",
            )  # fmt: skip
            empty = await modern.call_tool("check_inbox", {})
            assert empty.structured_content == {"messages": []}


async def test_a_session_is_bound_to_the_token_that_opened_it(w: World) -> None:
    acme = w.orgs["acme.test"]
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    async with w.http.post(
        f"{acme.url}/mcp", json=INITIALIZE, headers={**ACCEPT, **alice.auth}
    ) as resp:
        assert resp.status == 200
        session = resp.headers["Mcp-Session-Id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    headers = {
        **ACCEPT,
        **bob.auth,
        "Mcp-Session-Id": session,
        "Mcp-Protocol-Version": "2025-11-25",
    }
    async with w.http.post(f"{acme.url}/mcp", json=ping, headers=headers) as resp:
        assert resp.status == 404


async def test_the_gateway_answers_only_hosts_that_name_the_relay(w: World) -> None:
    """DNS-rebinding protection (MCP 2025-11-25 "Transports" §Security Warning)."""
    acme = w.orgs["acme.test"]
    alice = await acme.agent("alice")
    headers = {**ACCEPT, **alice.auth, "Host": "evil.example:80"}
    async with w.http.post(f"{acme.url}/mcp", json=INITIALIZE, headers=headers) as resp:
        assert resp.status == 421


async def test_anonymous_gateway_access_when_the_operator_allows_it(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await add_mcp_agent(globex, "tools", stdio_endpoint())
    await acme.agent("guest")
    acme.relay.config = acme.relay.config.model_copy(
        update={"mcp": acme.relay.config.mcp.model_copy(update={"anonymous_agent": "guest"})}
    )
    async with running(w), mcp_client(f"{acme.url}/mcp/tools@globex.test", None) as client:
        result = await client.call_tool("echo", {"text": "anyone"})
    assert text_of(result) == "anyone"
    # The own face never takes anonymous callers.
    async with w.http.post(f"{acme.url}/mcp", json=INITIALIZE, headers=ACCEPT) as resp:
        assert resp.status == 401


@pytest.mark.slow
async def test_synq_mcp_on_stdio_with_a_real_client_session(tmp_path: Path) -> None:
    await synq("init", "--domain", "acme.test", "--dir", str(tmp_path), cwd=tmp_path)
    for name in ("alice", "bob"):
        await synq("agent", "add", name, cwd=tmp_path)
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "relay.cli",
            "--config",
            str(tmp_path / "synq.toml"),
            "mcp",
            "--agent",
            "alice",
        ],
        cwd=str(REPO),
    )
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            init = await session.initialize()
            assert init.server_info.name == "synq-relay"
            assert {t.name for t in (await session.list_tools()).tools} == OWN_TOOLS
            sent = await session.call_tool(
                "send_message", {"to": ["bob@acme.test"], "body": {"n": 1},
                                 "content_type": "application/json"},
            )  # fmt: skip
            assert not sent.is_error, text_of(sent)
            message_id: str = sent.structured_content["id"]  # type: ignore[index]
            status = await session.call_tool("message_status", {"id": message_id})
            assert status.structured_content["recipients"]["bob@acme.test"]["state"] == "delivered"  # type: ignore[index]
            mine = await session.call_tool("check_inbox", {})
            assert mine.structured_content == {"messages": []}
    inbox: Any = await synq("inbox", "bob", cwd=tmp_path)
    [message] = inbox["messages"]
    assert (message["id"], message["from"], message["body"]) == (
        message_id, "alice@acme.test", {"n": 1},
    )  # fmt: skip
