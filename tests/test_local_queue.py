"""Mail for a local adapter-backed agent that is down (SPEC.md §9.5, §9.6): ``queued`` with the
deferral in the message's status, in ``synq queue list`` as ``local:<agent>``, retried by
``synq queue retry``, and ``delivered`` once the agent is back. A real MCP server on loopback
that goes away and comes back on the same port; every store backend."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.cli import main
from relay.config import render_config
from relay.server.console.state import Console
from tests import pg
from tests.fedenv import Org, World, world
from tests.mcpenv import add_mcp_agent, http_server


@pytest.fixture(params=pg.BACKENDS)
async def w(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    urls = pg.store_urls(request, request.param)
    async with world(tmp_path, "acme.test", store_url=urls) as env:
        yield env


async def synq(capsys: pytest.CaptureFixture[str], org: Org, *argv: str) -> tuple[int, str]:
    """``synq --config <org's config> ARGV`` in-process (in a thread: the command runs its own
    event loop), the operator's view of the store while the relay runs."""
    config = org.relay.config
    path = config.base_dir / "synq.toml"
    path.write_text(render_config(config), encoding="utf-8")
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["--config", str(path), *argv])
    return code, capsys.readouterr().out


async def test_mail_for_a_local_mcp_server_that_is_down_waits_in_the_queue_until_it_is_back(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    acme = w.orgs["acme.test"]
    alice = await acme.agent("alice")
    async with http_server() as server:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        await add_mcp_agent(acme, "tools", server.url)
    # The server is gone. The message is accepted all the same; the hand-over fails for now.
    sent = await w.send(
        acme,
        alice,
        {
            "to": ["tools@acme.test"],
            "content_type": "application/mcp-call+json",
            "body": {"tool": "echo", "arguments": {"text": "hello"}},
        },
    )
    dispatcher = acme.relay.dispatcher
    assert await dispatcher.run_once() == 1

    rec: dict[str, Any] = (await w.status(acme, alice, sent["id"]))["recipients"]["tools@acme.test"]
    assert rec["state"] == "queued"
    assert rec["code"].startswith("4.")
    assert "MCP server" in rec["reason"]
    assert rec["attempts"] == 1
    assert "next_attempt" in rec

    code, out = await synq(capsys, acme, "--json", "queue", "list")
    assert code == 0
    [row] = json.loads(out)
    assert (row["id"], row["recipient"], row["domain"]) == (
        sent["id"],
        "tools@acme.test",
        "local:tools",
    )
    assert (row["attempts"], row["code"]) == (1, rec["code"])
    code, out = await synq(capsys, acme, "queue", "list", "--domain", "local:tools")
    assert f"{sent['id']}  alice@acme.test -> tools@acme.test [local:tools]  attempts 1" in out
    # The console shows the hand-over as a destination of its own, with its failure; it is no
    # partner (SPEC.md §14.2).
    snap = await Console(acme.relay).snapshot()
    [dest] = snap["destinations"]
    assert (dest["domain"], dest["depth"], dest["code"]) == ("local:tools", 1, rec["code"])
    assert [q["id"] for q in snap["queue"]] == [sent["id"]]
    assert snap["queued"] == 1
    assert snap["partners"] == []
    code, out = await synq(capsys, acme, "status", sent["id"])
    assert f"tools@acme.test: queued {rec['code']}" in out
    assert "next " in out

    async with http_server(port):  # back, at the same URL
        code, out = await synq(capsys, acme, "--json", "queue", "retry", sent["id"])
        assert (code, json.loads(out)) == (0, {"retried": 1})
        # The command made it due on the system clock; the relay here runs on a fake one.
        [entry] = await acme.relay.store.list_queue("local:tools")
        w.clock.advance(max((entry.next_attempt - w.clock.now()).total_seconds(), 0.0))
        assert await dispatcher.run_once() == 1

    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["tools@acme.test"]
    assert rec["state"] == "delivered"
    assert "next_attempt" not in rec
    events = [
        e["event"]
        for e in (await w.status(acme, alice, sent["id"]))["events"]
        if e["recipient"] == "tools@acme.test"
    ]
    assert events == ["delivered", "deferred", "flushed", "delivered"]
    code, out = await synq(capsys, acme, "--json", "queue", "list")
    assert json.loads(out) == []
