"""The MCP bridge end to end: an MCP server behind globex.test, clients at acme.test.

Real relays on loopback sockets with their queues running, a real MCP server (the mcp SDK, in a
subprocess, stdio or streamable HTTP) and the SDK's own unmodified client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.mcp import McpAdapter
from adapters.mcp.translate import MAX_TOOL_RESULT_BYTES, MCP_TOOLS_EXTENSION
from tests.conftest import Agent
from tests.fedenv import World, world
from tests.mcpenv import add_mcp_agent, mcp_client, running, stdio_endpoint, text_of


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, "acme.test", "globex.test") as env:
        yield env


async def test_mcp_client_at_acme_calls_a_slow_tool_at_globex_and_sees_its_progress(
    w: World,
) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await add_mcp_agent(globex, "tools", stdio_endpoint())
    alice = await acme.agent("alice")
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total, message))

    async with running(w), mcp_client(f"{acme.url}/mcp/tools@globex.test", alice) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert {"echo", "add", "slow"} <= listed.keys()
        assert listed["add"].input_schema["properties"]["a"]["type"] == "integer"
        result = await client.call_tool(
            "slow", {"steps": 3, "delay": 0.05}, progress_callback=on_progress
        )
    assert not result.is_error
    assert text_of(result) == "done after 3 steps"
    assert result.structured_content == {"result": "done after 3 steps"}
    assert progress, "no progress crossed the relays"
    assert [p for p, _, _ in progress] == sorted(p for p, _, _ in progress)
    assert progress[-1][1] == 3.0
    assert progress[-1][2] is not None
    assert progress[-1][2].startswith("step ")


async def test_agent_card_lists_tools_as_skills_with_their_schemas(w: World) -> None:
    globex = w.orgs["globex.test"]
    await add_mcp_agent(globex, "tools", stdio_endpoint())
    async with w.http.get(f"{w.orgs['acme.test'].url}/synq/v1/agents/tools@globex.test") as resp:
        card = await resp.json()
    skills = {s["id"]: s for s in card["skills"]}
    assert {"echo", "add", "slow"} <= skills.keys()
    assert "application/mcp-call+json" in skills["add"]["inputModes"]
    [ext] = [e for e in card["capabilities"]["extensions"] if e["uri"] == MCP_TOOLS_EXTENSION]
    tools = {t["name"]: t for t in ext["params"]["tools"]}
    assert tools["add"]["inputSchema"]["required"] == ["a", "b"]
    assert tools["add"]["outputSchema"]["properties"]["result"]["type"] == "integer"
    assert ext["params"]["mcpUrl"] == f"{globex.url}/mcp/tools@globex.test"


async def test_an_a2a_message_with_a_data_part_calls_the_same_tool(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await add_mcp_agent(globex, "tools", stdio_endpoint())
    alice = await acme.agent("alice")
    message = {
        "messageId": "m-1",
        "role": "ROLE_USER",
        "contextId": "ctx-7",
        "parts": [{"data": {"tool": "slow", "arguments": {"steps": 2, "delay": 0.01}}}],
    }
    async with running(w):
        sent = await w.send(
            acme,
            alice,
            {"to": ["tools@globex.test"], "content_type": "application/a2a+json", "body": message,
             "thread": "ctx-7"},
        )  # fmt: skip
        replies = await _answers(w, acme, alice, sent["id"])
    updates, final = replies[:-1], replies[-1]
    assert updates
    assert all("statusUpdate" in m["body"] for m in updates)
    assert all(m["kind"] == "task.update" and m["thread"] == "ctx-7" for m in replies)
    task = final["body"]["task"]
    assert (task["id"], task["contextId"]) == (sent["id"], "ctx-7")
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    [artifact] = task["artifacts"]
    assert artifact["parts"][0]["text"] == "done after 2 steps"


async def _answers(w: World, org: Any, agent: Agent, call_id: str) -> list[dict[str, Any]]:
    """Replies to ``call_id`` in the agent's inbox, up to and including the final one
    (long-polling past a cursor: no busy loop while progress is all there is)."""
    seen: list[dict[str, Any]] = []
    cursor: int | None = None
    for _ in range(100):
        params: dict[str, Any] = {"wait": 5, "limit": 500}
        if cursor is not None:
            params["after"] = cursor
        async with w.http.get(
            f"{org.url}/synq/v1/inbox", params=params, headers=agent.auth
        ) as resp:
            page = await resp.json()
        cursor = page["cursor"] if page["cursor"] is not None else cursor
        seen += [m for m in page["messages"] if m.get("in_reply_to") == call_id]
        if seen and ("task" in seen[-1]["body"] or seen[-1]["kind"] == "dsn"):
            return seen
    raise AssertionError(f"no final answer to {call_id}: {seen}")


async def test_schema_failing_arguments_are_refused_before_crossing(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await add_mcp_agent(globex, "tools", stdio_endpoint())
    alice = await acme.agent("alice")
    async with running(w):
        # Through /mcp/<address>: refused at acme, a tool error the model can act on.
        async with mcp_client(f"{acme.url}/mcp/tools@globex.test", alice) as client:
            result = await client.call_tool("add", {"a": 1, "b": "two"})
        assert result.is_error
        assert "b: 'two' is not of type 'integer'" in text_of(result)
        # As an envelope: refused at globex before tools/call, bounced with the schema error.
        sent = await w.send(
            acme,
            alice,
            {"to": ["tools@globex.test"], "content_type": "application/mcp-call+json",
             "body": {"tool": "add", "arguments": {"a": 1}}},
        )  # fmt: skip
        [dsn] = await _answers(w, acme, alice, sent["id"])
    assert dsn["kind"] == "dsn"
    assert dsn["body"]["status"] == "5.5.4"
    assert "'b' is a required property" in dsn["body"]["diagnostic"]


async def test_unknown_tool(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await add_mcp_agent(globex, "tools", stdio_endpoint())
    alice = await acme.agent("alice")
    async with running(w):
        async with mcp_client(f"{acme.url}/mcp/tools@globex.test", alice) as client:
            # Not on the card: the call crosses, and the server's own answer comes back (the
            # mcp SDK's server answers an unknown tool with a tool error).
            refused = await client.call_tool("nope", {})
            assert refused.is_error
            assert "Unknown tool: nope" in text_of(refused)
        sent = await w.send(
            acme,
            alice,
            {"to": ["tools@globex.test"], "content_type": "application/mcp-call+json",
             "body": {"tool": "nope"}},
        )  # fmt: skip
        [dsn] = await _answers(w, acme, alice, sent["id"])
    assert dsn["body"]["status"] == "5.5.1"
    assert "no tool 'nope'" in dsn["body"]["diagnostic"]


async def test_a_hanging_server_times_out_into_a_failed_reply_and_frees_the_worker(
    w: World,
) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await add_mcp_agent(globex, "tools", stdio_endpoint(), McpAdapter(call_timeout=0.5))
    alice = await acme.agent("alice")
    async with running(w), mcp_client(f"{acme.url}/mcp/tools@globex.test", alice) as client:
        hung = await client.call_tool("hang", {})
        after = await client.call_tool("echo", {"text": "still here"})
    assert hung.is_error
    assert "did not answer within 0.5 s" in text_of(hung)
    assert text_of(after) == "still here"


async def test_an_enormous_result_is_bounded(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await add_mcp_agent(globex, "tools", stdio_endpoint())
    alice = await acme.agent("alice")
    async with running(w), mcp_client(f"{acme.url}/mcp/tools@globex.test", alice) as client:
        too_big = await client.call_tool("big", {"size": 300_000})
        # Larger than one stdio message may be: the connection is cut, the server restarted.
        huge = await client.call_tool("big", {"size": 5_000_000})
    assert too_big.is_error
    assert f"the limit is {MAX_TOOL_RESULT_BYTES} (MAX_TOOL_RESULT_BYTES)" in text_of(too_big)
    assert huge.is_error
    assert "closed the connection" in text_of(huge)
