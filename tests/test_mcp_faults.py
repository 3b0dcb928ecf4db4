"""Faults of MCP servers behind a relay: garbage on stdout, exits at start and mid-call, an HTTP
server that is down, a client that hangs up mid-call, a tool list that changes.

The queues are driven by hand (``run_once``) under the shared fake clock where a test needs
retries and expiry without waiting; real processes throughout.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from adapters.mcp import McpAdapter
from adapters.mcp.client import HttpServer, Unavailable
from relay.core.catalog import Viewer
from relay.core.ids import hash_token, new_token
from relay.server.mcp import MCP_HOST
from tests.conftest import Agent
from tests.fedenv import Org, World, world
from tests.helpers import wait_until
from tests.mcpenv import (
    add_mcp_agent,
    await_message,
    http_server,
    mcp_client,
    running,
    stdio_endpoint,
    text_of,
)


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, "acme.test", "globex.test") as env:
        yield env


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {
        "to": ["tools@globex.test"],
        "content_type": "application/mcp-call+json",
        "body": {"tool": tool, "arguments": arguments},
    }


async def relay_round(w: World) -> None:
    """One pass of each queue: acme → globex, globex's agent, globex → acme."""
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await acme.relay.sender.run_once()
    await globex.relay.dispatcher.run_once()
    await globex.relay.sender.run_once()


def adapter_of(org: Org) -> McpAdapter:
    adapter = org.relay.dispatcher.adapters["mcp"]
    assert isinstance(adapter, McpAdapter)
    return adapter


async def final_answer(w: World, agent: Agent, call_id: str) -> dict[str, Any]:
    answers = [m for m in await w.inbox(w.orgs["acme.test"], agent) if m["in_reply_to"] == call_id]
    assert answers, "no answer"
    return answers[-1]


async def test_a_server_printing_garbage_at_start_still_serves(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    endpoint = stdio_endpoint("--garbage-at-start")
    await add_mcp_agent(globex, "tools", endpoint)
    alice = await acme.agent("alice")
    sent = await w.send(acme, alice, call("echo", text="through the noise"))
    await relay_round(w)
    answer = await final_answer(w, alice, sent["id"])
    assert answer["body"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
    live = await adapter_of(globex)._server(endpoint).ready(30)
    assert live.process.garbage_lines == 1


async def test_a_server_that_exits_mid_call_fails_that_call_and_is_restarted(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    endpoint = stdio_endpoint()
    await add_mcp_agent(globex, "tools", endpoint, McpAdapter(restart_initial=0.05))
    alice = await acme.agent("alice")
    crashed = await w.send(acme, alice, call("crash"))
    await relay_round(w)
    answer = await final_answer(w, alice, crashed["id"])
    task = answer["body"]["task"]
    # The call crossed to the server: it is not retried (it might have run), it failed.
    assert task["status"]["state"] == "TASK_STATE_FAILED"
    assert "closed the connection during the call" in task["status"]["message"]["parts"][0]["text"]
    server = adapter_of(globex)._server(endpoint)
    await server.ready(30)
    assert server.restarts == 1
    again = await w.send(acme, alice, call("echo", text="back"))
    await relay_round(w)
    assert (await final_answer(w, alice, again["id"]))["body"]["task"]["status"]["state"] == (
        "TASK_STATE_COMPLETED"
    )


async def test_a_server_that_cannot_start_keeps_mail_in_the_inbox_until_expiry(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await globex.relay.store.create_agent(
        "tools", "mcp", hash_token(new_token()), stdio_endpoint("--exit-at-start"), w.clock.now()
    )
    alice = await acme.agent("alice")
    expires = (w.clock.now().replace(microsecond=0)).isoformat().replace("+00:00", "Z")
    w.clock.advance(-3600)
    sent = await w.send(acme, alice, {**call("echo", text="x"), "expires": expires})
    await acme.relay.sender.run_once()
    assert await globex.relay.dispatcher.run_once() == 1  # deferred: the server is down
    [waiting] = await globex.relay.store.inbox("tools", limit=10)
    assert waiting.id == sent["id"]
    w.clock.advance(7200)
    assert await globex.relay.dispatcher.run_once() == 1  # expired: bounced
    await globex.relay.sender.run_once()
    [dsn] = await w.inbox(acme, alice)
    assert (dsn["kind"], dsn["in_reply_to"], dsn["body"]["status"]) == ("dsn", sent["id"], "5.4.7")
    assert "exit status 2" in dsn["body"]["diagnostic"]


async def test_an_http_server_that_is_down_gets_its_mail_when_it_is_back(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    async with http_server() as server:
        await add_mcp_agent(globex, "tools", server.url)
    port = urlsplit(server.url).port
    assert port is not None
    sent = await w.send(acme, alice, call("echo", text="are you there"))
    await acme.relay.sender.run_once()
    assert await globex.relay.dispatcher.run_once() == 1
    assert [i.id for i in await globex.relay.store.inbox("tools", limit=10)] == [sent["id"]]
    async with http_server(port):
        w.clock.advance(600)
        assert await globex.relay.dispatcher.run_once() == 1
        await globex.relay.sender.run_once()
    answer = await final_answer(w, alice, sent["id"])
    [part, _] = answer["body"]["task"]["artifacts"][0]["parts"]
    assert part["text"] == "are you there"


async def test_no_token_is_passed_through_to_the_server_behind_the_relay(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    async with http_server() as server, running(w):
        await add_mcp_agent(globex, "tools", server.url)
        async with mcp_client(f"{acme.url}/mcp/tools@globex.test", alice) as client:
            result = await client.call_tool("whoami", {})
    assert text_of(result) == "none"


async def test_a_client_that_disconnects_mid_call_leaves_nothing_behind(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await add_mcp_agent(globex, "tools", stdio_endpoint())
    alice = await acme.agent("alice")
    host = acme.server.app[MCP_HOST] if acme.server is not None else None
    assert host is not None
    progressed = asyncio.Event()

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progressed.set()

    async def call_and_hang_up() -> None:
        async with mcp_client(f"{acme.url}/mcp/tools@globex.test", alice) as client:
            await client.call_tool(
                "slow", {"steps": 40, "delay": 0.05}, progress_callback=on_progress
            )

    async with running(w):
        caller = asyncio.create_task(call_and_hang_up())
        await asyncio.wait_for(progressed.wait(), 30)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await wait_until(lambda: host.active == 0, timeout=15)
        # The SDK's client cancels the request it abandons (notifications/cancelled): the
        # cancellation crosses to globex and ends the call there; its answer says so and waits
        # in alice's inbox.
        final = await await_message(
            w, acme, alice, lambda m: m["content_type"] == "application/mcp-result+json"
        )
        assert final["body"]["result"]["isError"] is True
        assert final["body"]["result"]["content"][0]["text"] == "cancelled by the client"
        async with mcp_client(f"{acme.url}/mcp/tools@globex.test", alice) as client:
            assert text_of(await client.call_tool("echo", {"text": "next"})) == "next"


async def test_the_tool_list_is_refreshed_when_the_server_says_it_changed(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    endpoint = stdio_endpoint()
    await add_mcp_agent(globex, "tools", endpoint)
    alice = await acme.agent("alice")
    server = adapter_of(globex)._server(endpoint)
    await server.ready(30)
    assert server.tools is not None
    assert "late" not in server.tools.tools
    sent = await w.send(acme, alice, call("grow"))
    await relay_round(w)
    assert (await final_answer(w, alice, sent["id"]))["body"]["task"]["status"]["state"] == (
        "TASK_STATE_COMPLETED"
    )
    await wait_until(lambda: server.tools is not None and "late" in server.tools.tools, 15)
    async with w.http.get(f"{globex.url}/agents/tools/.well-known/agent-card.json") as resp:
        card = await resp.json()
    assert "late" in {s["id"] for s in card["skills"]}
    # The discovery catalog takes the new list at its next refresh (SPEC.md §12.1).
    await globex.relay.catalog.run_once()
    entry = await globex.relay.catalog.get(Viewer.operator(), "urn:air:globex.test:mcp:tools")
    assert {"late", "grow", "echo"} <= set(entry["capabilities"])


def http_server_of(org: Org, url: str) -> HttpServer:
    return adapter_of(org)._http_server(url)


async def test_an_http_server_is_called_over_one_kept_session(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    async with http_server() as server:
        await add_mcp_agent(globex, "tools", server.url)
        sent = [await w.send(acme, alice, call("count")) for _ in range(3)]
        await relay_round(w)
        await relay_round(w)
        answers = [await final_answer(w, alice, s["id"]) for s in sent]
    texts = sorted(a["body"]["task"]["artifacts"][0]["parts"][0]["text"] for a in answers)
    assert texts == ["1", "2", "3"]
    # One initialize for the three calls: the session is kept, not opened per delivery.
    assert http_server_of(globex, server.url).sessions == 1


async def test_a_restarted_http_server_gets_a_new_session_and_the_call_runs_once(
    w: World,
) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    async with http_server() as server:
        await add_mcp_agent(globex, "tools", server.url)
        first = await w.send(acme, alice, call("count"))
        await relay_round(w)
        assert (await final_answer(w, alice, first["id"]))["body"]["task"]["status"]["state"] == (
            "TASK_STATE_COMPLETED"
        )
    port = urlsplit(server.url).port
    assert port is not None
    async with http_server(port):
        # The kept session's id is unknown to the new process: it answers 404 (MCP 2025-11-25
        # "Transports" §Session Management), so the call did not run and is sent again on a
        # new session — within the same delivery, and once.
        again = await w.send(acme, alice, call("count"))
        await relay_round(w)
        answer = await final_answer(w, alice, again["id"])
    assert answer["body"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
    assert answer["body"]["task"]["artifacts"][0]["parts"][0]["text"] == "1"
    assert http_server_of(globex, server.url).sessions == 2


async def test_an_http_server_that_exits_mid_call_fails_that_call_and_does_not_rerun_it(
    w: World,
) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    async with http_server() as server:
        await add_mcp_agent(globex, "tools", server.url)
        warm = await w.send(acme, alice, call("echo", text="warm"))
        await relay_round(w)
        await final_answer(w, alice, warm["id"])
        crashed = await w.send(acme, alice, call("crash"))
        await relay_round(w)
    # The request reached the server over the kept session: it may have run, so it is answered
    # as failed rather than sent again on a new session.
    task = (await final_answer(w, alice, crashed["id"]))["body"]["task"]
    assert task["status"]["state"] == "TASK_STATE_FAILED"
    assert await globex.relay.store.inbox("tools", limit=10) == []
    port = urlsplit(server.url).port
    assert port is not None
    async with http_server(port):
        again = await w.send(acme, alice, call("count"))
        await relay_round(w)
        answer = await final_answer(w, alice, again["id"])
    assert answer["body"]["task"]["artifacts"][0]["parts"][0]["text"] == "1"


async def test_the_log_shows_the_stderr_of_a_server_that_dies_before_initialising(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "dying.py").write_text(
        "import sys\nprint('missing API key for the weather service', file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    adapter = McpAdapter(cwd=tmp_path, restart_initial=60)
    server = adapter._server(f"stdio:{sys.executable} dying.py")
    try:
        with caplog.at_level(logging.WARNING, "synq.mcp"), pytest.raises(Unavailable) as exc:
            await server.live()
    finally:
        await adapter.close()
    [record] = [r for r in caplog.records if "restarting" in r.getMessage()]
    assert "(exit status 1)); stderr: missing API key for the weather service;" in (
        record.getMessage()
    )
    # The reason a delivery fails (which a DSN carries to the sender, maybe at a partner)
    # says how the server ended, never what it wrote: that is for the operator's log alone.
    assert "exit status 1" in str(exc.value)
    assert "API key" not in str(exc.value)


async def test_a_removed_agents_crashing_server_is_stopped_not_restarted(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    adapter = McpAdapter(restart_initial=0.05)
    old = globex.relay.dispatcher.adapters["mcp"]
    globex.relay.dispatcher.adapters["mcp"] = adapter
    await old.close()
    endpoint = stdio_endpoint("--exit-at-start")
    for name in ("tools", "spare"):  # two agents on one server
        await globex.relay.store.create_agent(
            name, "mcp", hash_token(new_token()), endpoint, w.clock.now()
        )
    alice = await acme.agent("alice")
    for name in ("tools", "spare"):
        await w.send(acme, alice, {**call("echo", text="x"), "to": [f"{name}@globex.test"]})
    await acme.relay.sender.run_once()
    assert await globex.relay.dispatcher.run_once() == 2  # both deferred: the server is down
    server = adapter._server(endpoint)
    await wait_until(lambda: server.restarts >= 3, 15)  # and it keeps being restarted
    assert adapter.agents_held() == {"tools", "spare"}

    assert await globex.relay.router.agents.remove("tools")
    assert await globex.relay.dispatcher.release_removed() == 1
    assert adapter._server(endpoint) is server  # still serving "spare"

    assert await globex.relay.router.agents.remove("spare")
    assert await globex.relay.dispatcher.release_removed() == 1
    assert adapter.agents_held() == set()
    assert server._task is None  # the supervisor has ended: nothing restarts it
    assert await globex.relay.dispatcher.release_removed() == 0
