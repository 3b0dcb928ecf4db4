"""Shared pieces of the MCP tests: two relays with their queues running, an MCP server behind
globex.test, and MCP clients (the SDK's, unmodified) that talk to the relays."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from adapters.mcp import McpAdapter
from relay.core.ids import hash_token, new_token
from tests.conftest import Agent
from tests.fedenv import Org, World

SERVER = Path(__file__).with_name("mcpserver.py")


def stdio_endpoint(*flags: str) -> str:
    return f"stdio:{sys.executable} {SERVER} stdio {' '.join(flags)}".rstrip()


@dataclass
class HttpServer:
    """``tests/mcpserver.py http`` in a subprocess on a port the OS chose."""

    proc: asyncio.subprocess.Process
    url: str

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


@contextlib.asynccontextmanager
async def http_server(port: int = 0) -> AsyncIterator[HttpServer]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SERVER), "http", "--port", str(port), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    assert line.startswith("PORT "), line
    server = HttpServer(proc, f"http://127.0.0.1:{int(line.split()[1])}/mcp")
    try:
        yield server
    finally:
        await server.stop()


async def add_mcp_agent(
    org: Org, name: str, endpoint: str, adapter: McpAdapter | None = None
) -> None:
    relay = org.relay
    if adapter is not None:
        old = relay.dispatcher.adapters.get("mcp")
        relay.dispatcher.adapters["mcp"] = adapter
        if old is not None:
            await old.close()
    checked = await relay.dispatcher.adapters["mcp"].check(endpoint)
    await relay.store.create_agent(name, "mcp", hash_token(new_token()), checked, relay.clock.now())


@contextlib.asynccontextmanager
async def running(w: World) -> AsyncIterator[None]:
    """Every relay's federation queue and local dispatcher running, as under ``synq serve``."""
    tasks = []
    for org in w.orgs.values():
        tasks.append(asyncio.create_task(org.relay.sender.run()))
        tasks.append(asyncio.create_task(org.relay.dispatcher.run()))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def mcp_client(url: str, agent: Agent | None) -> AsyncIterator[ClientSession]:
    """An unmodified SDK client (2025-11-25 handshake) with the agent's bearer token."""
    headers = agent.auth if agent is not None else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def await_message(
    w: World, org: Org, agent: Agent, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first message in the agent's inbox (acknowledged or not) that satisfies
    ``predicate``, long-polling past a cursor as new ones arrive."""
    cursor: int | None = None
    for _ in range(100):
        params: dict[str, Any] = {"wait": 5, "all": 1, "limit": 500}
        if cursor is not None:
            params["after"] = cursor
        async with w.http.get(
            f"{org.url}/synq/v1/inbox", params=params, headers=agent.auth
        ) as resp:
            page = await resp.json()
        for message in page["messages"]:
            if predicate(message):
                return dict(message)
        cursor = page["cursor"] if page["cursor"] is not None else cursor
    raise AssertionError(f"{agent.address} never got the message")


def text_of(result: Any) -> str:
    return " ".join(c.text for c in result.content if getattr(c, "type", "") == "text")
