"""Everything MCP carries, across two relays (SPEC.md "MCP mapping", "Any MCP message"): the
conformance fixture (interop/mcp/fixture.py, the mcp SDK) is ``fixture@globex.test`` over
streamable HTTP, and unmodified SDK clients talk to ``<acme>/mcp/fixture@globex.test``. Then the
faults: a client that never answers the server, an answer after the client left, a flood of
notifications, a cancellation that loses the race with the answer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, ClientSession
from mcp import types as mt
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from adapters.mcp import McpAdapter
from adapters.mcp.adapter import MAX_NOTIFICATIONS
from relay.core.address import Address
from relay.core.draft import Draft
from relay.delivery.views import envelope_object
from relay.store.base import inbox_channel
from tests.conftest import Agent
from tests.fedenv import Org, World, world
from tests.helpers import wait_until
from tests.mcpenv import (
    add_mcp_agent,
    await_message,
    mcp_client,
    running,
    stdio_endpoint,
    text_of,
)

FIXTURE = Path(__file__).resolve().parents[1] / "interop" / "mcp" / "fixture.py"


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, "acme.test", "globex.test") as env:
        yield env


@contextlib.asynccontextmanager
async def fixture_server() -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(FIXTURE), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/mcp"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def client(url: str, agent: Agent, **callbacks: Any) -> AsyncIterator[ClientSession]:
    """An SDK client (2025-11-25 handshake) that may answer the server's requests."""
    async with (
        httpx2.AsyncClient(headers=agent.auth, timeout=httpx2.Timeout(30, read=60)) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, **callbacks) as session,
    ):
        await session.initialize()
        yield session


async def test_resources_prompts_completion_and_logging_cross_two_relays(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    logs: list[str] = []

    async def on_log(params: mt.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    async with fixture_server() as url:
        await add_mcp_agent(globex, "fixture", url)
        gateway = f"{acme.url}/mcp/fixture@globex.test"
        async with running(w), client(gateway, alice, logging_callback=on_log) as session:
            caps = session.server_capabilities
            assert caps is not None
            assert caps.resources is not None
            assert caps.prompts is not None
            listed = {str(r.uri) for r in (await session.list_resources()).resources}
            assert {"test://static-text", "test://static-binary"} <= listed
            read = await session.read_resource("test://static-text")
            first = read.contents[0]
            assert isinstance(first, mt.TextResourceContents)
            assert first.text == "This is the content of the static text resource."
            templates = (await session.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == ["test://template/{id}/data"]
            # 2025-11-25 subscriptions (the SDK warns that 2026-07-28 replaced them).
            with pytest.warns(MCPDeprecationWarning):
                await session.subscribe_resource("test://watched-resource")
            with pytest.warns(MCPDeprecationWarning):
                await session.unsubscribe_resource("test://watched-resource")
            prompts = {p.name for p in (await session.list_prompts()).prompts}
            assert "test_prompt_with_arguments" in prompts
            prompt = await session.get_prompt(
                "test_prompt_with_arguments", {"arg1": "a", "arg2": "b"}
            )
            assert isinstance(prompt.messages[0].content, mt.TextContent)
            assert prompt.messages[0].content.text == "Prompt with arguments: arg1='a', arg2='b'"
            done = await session.complete(
                mt.PromptReference(type="ref/prompt", name="test_prompt_with_arguments"),
                {"name": "arg1", "value": "x"},
            )
            assert done.completion.values == []
            with pytest.warns(MCPDeprecationWarning):
                await session.set_logging_level("debug")
            result = await session.call_tool("test_tool_with_logging", {})
            # An error answer from the partner's server crosses as that error.
            with pytest.raises(MCPError):
                await session.read_resource("test://no-such-resource")
    assert text_of(result) == "Tool with logging executed successfully"
    assert logs == ["Tool execution started", "Tool processing data", "Tool execution completed"]


async def test_sampling_and_elicitation_are_answered_by_the_calling_client(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")

    async def sample(
        context: ClientRequestContext, params: mt.CreateMessageRequestParams
    ) -> mt.CreateMessageResult:
        return mt.CreateMessageResult(
            role="assistant", content=mt.TextContent(type="text", text="Paris"), model="m"
        )

    async def elicit(context: ClientRequestContext, params: mt.ElicitRequestParams) -> Any:
        return mt.ElicitResult(action="accept", content={"response": "yes"})

    async def roots(context: ClientRequestContext) -> mt.ListRootsResult:
        return mt.ListRootsResult(roots=[])

    async with fixture_server() as url:
        await add_mcp_agent(globex, "fixture", url)
        gateway = f"{acme.url}/mcp/fixture@globex.test"
        callbacks = {
            "sampling_callback": sample,
            "elicitation_callback": elicit,
            "list_roots_callback": roots,
        }
        async with running(w), client(gateway, alice, **callbacks) as session:
            sampled = await session.call_tool("test_sampling", {"prompt": "Capital of France?"})
            elicited = await session.call_tool("test_elicitation", {"message": "Sure?"})
    assert text_of(sampled) == "LLM response: Paris"
    assert text_of(elicited) == 'User response: action=accept, content={"response":"yes"}'
    assert not adapter_of(globex)._asks


def adapter_of(org: Any) -> McpAdapter:
    adapter = org.relay.dispatcher.adapters["mcp"]
    assert isinstance(adapter, McpAdapter)
    return adapter


async def test_a_client_that_never_answers_sampling_ends_with_the_timeout(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    asked = asyncio.Event()

    async def never(
        context: ClientRequestContext, params: mt.CreateMessageRequestParams
    ) -> mt.CreateMessageResult:
        asked.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with fixture_server() as url:
        await add_mcp_agent(globex, "fixture", url, McpAdapter(client_answer_timeout=1.0))
        gateway = f"{acme.url}/mcp/fixture@globex.test"
        async with running(w), client(gateway, alice, sampling_callback=never) as session:
            result = await session.call_tool("test_sampling", {"prompt": "?"})
            assert asked.is_set()
            # The session still serves: nothing of the unanswered request is left behind.
            after = await session.call_tool("test_simple_text", {})
    # The partner's server saw a clean JSON-RPC error, and its tool reported it.
    assert "did not answer sampling/createMessage within 1 s" in text_of(result)
    assert "CLIENT_ANSWER_TIMEOUT" in text_of(result)
    assert text_of(after) == "This is a simple text response for testing."
    assert not adapter_of(globex)._asks


async def test_an_answer_after_the_client_left_is_dropped_cleanly(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    await add_mcp_agent(globex, "tools", stdio_endpoint())
    async with running(w):
        await w.send(
            acme,
            alice,
            {
                "to": ["tools@globex.test"],
                "content_type": "application/mcp-result+json",
                "body": {"id": "nobody-waits-for-this", "result": {"model": "m"}},
            },
        )
        await wait_until(lambda: adapter_of(globex).late == 1, 30)
    assert not adapter_of(globex)._asks


async def test_a_flood_of_progress_is_bounded(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await add_mcp_agent(globex, "tools", stdio_endpoint())
    alice = await acme.agent("alice")
    seen: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        seen.append(p)

    async with running(w), mcp_client(f"{acme.url}/mcp/tools@globex.test", alice) as session:
        result = await session.call_tool(
            "slow", {"steps": MAX_NOTIFICATIONS * 3, "delay": 0}, progress_callback=on_progress
        )
    assert text_of(result) == f"done after {MAX_NOTIFICATIONS * 3} steps"
    assert 0 < len(seen) <= MAX_NOTIFICATIONS
    assert seen == sorted(seen)


async def _reply(org: Org, sender: str, request: dict[str, Any], body: dict[str, Any]) -> str:
    """An MCP reply to ``request`` from ``sender`` (an address of ``org``), written through the
    relay's own mailbox as the agent's adapter would; its envelope id."""
    content_type = "notification" if "method" in body else "result"
    submitted = await org.relay.mailbox.send(
        Draft(
            Address.parse(sender),
            (Address.parse(request["from"]),),
            f"application/mcp-{content_type}+json",
            body,
            thread=request["thread"],
            in_reply_to=request["id"],
        ),
        via="api",
    )
    return submitted.id


_COUNTED: dict[str, Any] = {
    "result": {
        "content": [{"type": "text", "text": "counted"}],
        "structuredContent": {"result": "counted"},
    }
}


@dataclasses.dataclass
class HangingCall:
    """alice's ``tools/call`` of ``hang`` at acme's MCP face for ``tools@acme.test``, in flight:
    its request envelope as the agent received it, and the progress alice's client saw."""

    call: asyncio.Task[mt.CallToolResult]
    request: dict[str, Any]
    seen: list[float]


@contextlib.asynccontextmanager
async def hanging_call(w: World) -> AsyncIterator[HangingCall]:
    """A call whose server never answers: the test writes its replies (:func:`_reply`)."""
    acme = w.orgs["acme.test"]
    await add_mcp_agent(acme, "tools", stdio_endpoint())
    alice = await acme.agent("alice")
    seen: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        seen.append(p)

    store = acme.relay.store
    async with (
        running(w),
        mcp_client(f"{acme.url}/mcp/tools@acme.test", alice) as session,
        store.notifier.listen(inbox_channel("tools")) as delivered,
    ):
        call = asyncio.create_task(session.call_tool("hang", {}, progress_callback=on_progress))
        assert await delivered.wait(30)
        [item] = await store.inbox("tools", limit=10, include_acked=True)
        yield HangingCall(call, envelope_object(item), seen)


async def test_a_progress_report_overtaken_in_transit_is_dropped(w: World) -> None:
    """Envelopes keep no order (SPEC.md §9.1) and MCP requires each progress report of a request
    to increase: the gateway passes on only reports above the last one. The server hangs; the
    call's replies are written to alice's inbox in the order 2, 1, 3, then the answer."""
    acme = w.orgs["acme.test"]
    async with hanging_call(w) as hung:
        for p in (2, 1, 3):
            progress = {"method": "notifications/progress", "params": {"progress": p, "total": 3}}
            await _reply(acme, "tools@acme.test", hung.request, progress)
        await _reply(acme, "tools@acme.test", hung.request, _COUNTED)
        result = await asyncio.wait_for(hung.call, 30)
    assert text_of(result) == "counted"
    assert hung.seen == [2.0, 3.0]


async def test_only_the_called_address_answers_a_call(w: World) -> None:
    """Another agent that names the call's thread and envelope id answers nothing: its
    envelopes stay unread in the caller's inbox, and the callee's answer ends the call."""
    acme = w.orgs["acme.test"]
    await acme.agent("bob")
    async with hanging_call(w) as hung:
        progress = {"method": "notifications/progress", "params": {"progress": 1, "total": 2}}
        forged_progress = await _reply(acme, "bob@acme.test", hung.request, progress)
        forged = await _reply(acme, "bob@acme.test", hung.request, {"result": {"content": []}})
        answer = await _reply(acme, "tools@acme.test", hung.request, _COUNTED)
        result = await asyncio.wait_for(hung.call, 30)
        # The answer's ack runs beside the result (Gateway._ack_soon): not looked at here.
        inbox = await acme.relay.store.inbox("alice", limit=10)
    assert text_of(result) == "counted"
    assert hung.seen == []
    assert [i.id for i in inbox if i.id != answer] == [forged_progress, forged]


async def test_a_cancellation_that_loses_the_race_with_the_answer_is_dropped(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await add_mcp_agent(globex, "tools", stdio_endpoint())
    alice = await acme.agent("alice")
    async with running(w), mcp_client(f"{acme.url}/mcp/tools@globex.test", alice) as session:
        request = await w.send(
            acme,
            alice,
            {
                "to": ["tools@globex.test"],
                "content_type": "application/mcp-request+json",
                "thread": "race",
                "body": {
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": "first"}},
                    "id": "r1",
                },
            },
        )
        answer = await final(w, alice, request["id"])
        assert answer["body"] == {
            "id": "r1",
            "result": {
                "content": [{"type": "text", "text": "first"}],
                "structuredContent": {"result": "first"},
                "isError": False,
            },
        }
        await w.send(
            acme,
            alice,
            {
                "to": ["tools@globex.test"],
                "content_type": "application/mcp-notification+json",
                "thread": "race",
                "in_reply_to": request["id"],
                "body": {"method": "notifications/cancelled", "params": {"reason": "late"}},
            },
        )
        await wait_until(lambda: adapter_of(globex).late == 1, 30)
        # The agent goes on serving.
        assert text_of(await session.call_tool("echo", {"text": "next"})) == "next"
    assert not adapter_of(globex)._running


async def final(w: World, agent: Agent, id: str) -> dict[str, Any]:
    org = w.orgs[agent.address.split("@")[1]]
    return await await_message(
        w,
        org,
        agent,
        lambda m: m.get("in_reply_to") == id and m["content_type"] == "application/mcp-result+json",
    )


async def test_the_card_lists_resources_and_prompts_as_well_as_tools(w: World) -> None:
    globex = w.orgs["globex.test"]
    async with fixture_server() as url:
        await add_mcp_agent(globex, "fixture", url)
        async with w.http.get(f"{globex.url}/agents/fixture/.well-known/agent-card.json") as resp:
            card = await resp.json()
    skills = {s["id"] for s in card["skills"]}
    assert {"test_simple_text", "resource:test://static-text", "prompt:test_simple_prompt"} <= (
        skills
    )
    assert "resource:test://template/{id}/data" in skills
    [ext] = [
        e for e in card["capabilities"]["extensions"] if e["uri"] == "urn:synq:ext:mcp-tools:1"
    ]
    params = ext["params"]
    assert "test://static-text" in {r["uri"] for r in params["resources"]}
    assert [t["uriTemplate"] for t in params["resourceTemplates"]] == ["test://template/{id}/data"]
    prompt = next(p for p in params["prompts"] if p["name"] == "test_prompt_with_arguments")
    assert [a["name"] for a in prompt["arguments"]] == ["arg1", "arg2"]


async def test_sessionless_revision_input_required_and_listen_across_two_relays(
    w: World,
) -> None:
    """2026-07-28: the input_required round trip crosses as plain request/answer pairs, and a
    listen stream the client leaves is cancelled at the partner's server (nothing stays open)."""
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")

    async def elicit(context: ClientRequestContext, params: mt.ElicitRequestParams) -> Any:
        return mt.ElicitResult(action="accept", content={"name": "Ada"})

    async with fixture_server() as url:
        await add_mcp_agent(globex, "fixture", url)
        gateway = f"{acme.url}/mcp/fixture@globex.test"
        async with (
            running(w),
            httpx2.AsyncClient(headers=alice.auth, timeout=httpx2.Timeout(30, read=60)) as http,
            Client(
                streamable_http_client(gateway, http_client=http),
                mode="auto",
                elicitation_callback=elicit,
            ) as session,
        ):
            assert session.protocol_version == "2026-07-28"
            result = await session.call_tool("test_input_required_result_elicitation", {})
            async with session.listen(tools_list_changed=True) as subscription:
                assert subscription.honored.tools_list_changed
                assert adapter_of(globex)._running, "the listen runs at globex"
            # Leaving the stream cancels the listen at the partner's server.
            await wait_until(lambda: not adapter_of(globex)._running, 30)
    assert text_of(result) == "Hello, Ada!"
