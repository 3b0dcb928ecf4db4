"""The MCP adapter: MCP servers as Synq agents (SPEC.md "MCP mapping").

For an agent registered with ``synq agent add NAME --mcp-stdio CMD`` or ``--mcp-http URL`` the
dispatcher hands each envelope from the agent's inbox to :meth:`McpAdapter.deliver`:

1. the envelope becomes a :class:`~adapters.mcp.translate.ToolCall` — or is refused (5.6.0);
2. the server's current tool list is consulted: an unknown tool is refused (5.5.1), arguments
   that fail the tool's input schema are refused with the schema error (5.5.4) — all before
   anything crosses to the server, and all bounced to the sender with a DSN;
3. ``tools/call`` runs with a progress token; each progress notification becomes a
   ``task.update`` envelope (at most ``MAX_PROGRESS_UPDATES``, newest first when the server is
   faster than the relay can sign and store);
4. the result, or the reason there is none (timeout, the server exited, a result over
   ``MAX_TOOL_RESULT_BYTES``), becomes the final ``task.update`` envelope.

A server that cannot be reached (down, restarting, slow to start) fails the delivery for now:
the envelope stays in the inbox and the dispatcher retries until it expires, then bounces it.

The adapter remembers which agents each server was used for; when the dispatcher finds they
were removed (``release``, relay/delivery/dispatch.py ``Holder``), a stdio server is stopped
with its supervisor, and an HTTP session left, once no remaining agent uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
from mcp import ClientSession

from adapters.mcp import translate
from adapters.mcp.client import (
    CALL_TIMEOUT,
    CONNECT_TIMEOUT,
    RESTART_INITIAL,
    RESTART_MAX,
    HttpServer,
    StdioServer,
    ToolSet,
    Unavailable,
    call_tool,
    describe,
    http_session,
    list_tools,
)
from adapters.mcp.stdio import StdioProcess, resolve_command, stdio_transport
from relay.core import status as st
from relay.core.address import Address
from relay.core.cards import inbox_agent_card
from relay.core.catalog import Profile, profile_from_card
from relay.core.envelope import KIND_TASK_UPDATE, Envelope
from relay.core.errors import AttemptFailed, ConfigError
from relay.core.jsonutil import dumps
from relay.delivery.adapters import Replier, Reply
from relay.store.base import AgentRecord

log = logging.getLogger("synq.mcp")

STDIO_PREFIX: Final = "stdio:"
#: Progress envelopes sent for one call. Each is signed and stored like any envelope, so this
#: stops one chatty server from turning one call into an unbounded stream of envelopes; the
#: final result is always sent.
MAX_PROGRESS_UPDATES: Final = 100
#: Bytes of tool descriptions and schemas one agent card carries. Partners read cards of at most
#: ``MAX_WELL_KNOWN_BYTES`` (64 KiB); tools past this budget are left out (``truncated``) but can
#: still be called — the adapter checks them against the live list.
MAX_CARD_TOOLS_BYTES: Final = 48 * 1024


class _ProgressSender:
    """Turns progress notifications into ``task.update`` replies, in order, one at a time.

    The SDK calls :meth:`push` from its receive path; waiting there for a signed, durable
    envelope would stall the session, so the newest pending report is kept and sent as soon as
    the previous one is stored (intermediate reports are coalesced, never reordered).
    """

    def __init__(self, call: translate.ToolCall, reply: Replier) -> None:
        self.call = call
        self.reply = reply
        self.sent = 0
        self._pending: tuple[float, float | None, str | None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run())

    async def push(self, progress: float, total: float | None, message: str | None) -> None:
        self._pending = (progress, total, message)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, None
            if pending is not None and self.sent < MAX_PROGRESS_UPDATES:
                self.sent += 1
                body = translate.progress_body(self.call, self.sent, *pending)
                await self.reply(Reply(KIND_TASK_UPDATE, translate.A2A_CONTENT_TYPE, body))
            if self._closing and self._pending is None:
                return

    async def close(self) -> None:
        """Send what is pending, then stop (before the result, so the order holds)."""
        self._closing = True
        self._wake.set()
        await self._task

    def cancel(self) -> None:
        self._task.cancel()


class McpAdapter:
    kind = "mcp"

    def __init__(
        self,
        *,
        cwd: Path | None = None,
        call_timeout: float = CALL_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        restart_initial: float = RESTART_INITIAL,
        restart_max: float = RESTART_MAX,
    ) -> None:
        self.cwd = cwd
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self.restart_initial = restart_initial
        self.restart_max = restart_max
        self._stdio: dict[str, StdioServer] = {}
        self._http: dict[str, HttpServer] = {}
        #: Endpoint → the agents it was used for (delivery, card). A supervised server or kept
        #: session lives while one of them exists (:meth:`release`).
        self._users: dict[str, set[str]] = {}
        #: Endpoint → the tools :meth:`check` just listed, for the catalog's first
        #: :meth:`describe`: ``synq agent add`` does not start the server a second time.
        self._checked: dict[str, ToolSet] = {}

    # --- endpoints ------------------------------------------------------------------------------

    def _server(self, endpoint: str) -> StdioServer:
        server = self._stdio.get(endpoint)
        if server is None:
            server = StdioServer(
                endpoint.removeprefix(STDIO_PREFIX),
                cwd=self.cwd,
                connect_timeout=self.connect_timeout,
                restart_initial=self.restart_initial,
                restart_max=self.restart_max,
            )
            self._stdio[endpoint] = server
        return server

    def _http_server(self, endpoint: str) -> HttpServer:
        server = self._http.get(endpoint)
        if server is None:
            server = HttpServer(endpoint, connect_timeout=self.connect_timeout)
            self._http[endpoint] = server
        return server

    async def check(self, endpoint: str) -> str:
        """Start (or connect to) the server once and list its tools (``synq agent add``).

        A stdio server is started exactly as the supervisor will start it under ``synq
        serve``: the same directory, the same minimal environment, and the program as the
        absolute path found now (:func:`~adapters.mcp.stdio.resolve_command`), which is what
        the returned endpoint holds. If it dies before answering, the error carries what it
        wrote to stderr."""
        process: StdioProcess | None = None
        try:
            if endpoint.startswith(STDIO_PREFIX):
                command = resolve_command(endpoint.removeprefix(STDIO_PREFIX))
                endpoint = STDIO_PREFIX + command
                with anyio.fail_after(self.connect_timeout):
                    async with (
                        stdio_transport(command, cwd=self.cwd) as (read, write, process),
                        ClientSession(read, write) as session,
                    ):
                        await session.initialize()
                        tools = await list_tools(session)
            else:
                parts = urlsplit(endpoint)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise ConfigError(f"not an http(s) URL: {endpoint!r}")
                async with http_session(endpoint, self.connect_timeout) as session:
                    tools = await list_tools(session)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        except TimeoutError:
            raise ConfigError(
                f"the MCP server at {endpoint} did not answer in time{self._started(process)}"
            ) from None
        except (Exception, BaseExceptionGroup) as exc:
            raise ConfigError(
                f"cannot reach the MCP server at {endpoint}: {describe(exc)}"
                + self._started(process)
            ) from None
        log.info("MCP server %s has %d tools", endpoint, len(tools.tools))
        self._checked[endpoint] = tools
        return endpoint

    def _started(self, process: StdioProcess | None) -> str:
        """For an error about a stdio server: how it ended, where it ran, what it wrote."""
        if process is None:
            return ""
        where = f" in {self.cwd}" if self.cwd is not None else ""
        text = f"; it ran{where}"
        if process.returncode is not None:
            text += f" and exited with status {process.returncode}"
        report = process.stderr_report()
        return text + (f"; its stderr: {report}" if report else "; its stderr was empty")

    async def tools(self, endpoint: str) -> ToolSet | None:
        """The server's tools now, or as last seen when it cannot be reached (None: never)."""
        if endpoint.startswith(STDIO_PREFIX):
            server = self._server(endpoint)
            try:
                return (await server.live()).tools
            except Unavailable:
                return server.tools
        return await self._http_server(endpoint).listing()

    async def describe(self, agent: AgentRecord) -> Profile | None:
        """The server's tools, for the discovery catalog (SPEC.md §12.1); None when they cannot
        be listed now and were never seen by this process (the catalog keeps what it had)."""
        endpoint = agent.endpoint or ""
        checked = self._checked.pop(endpoint, None)
        running = endpoint in self._stdio or endpoint in self._http
        # What check listed stands for the server only while this process runs none for it:
        # once one runs, its own list is newer.
        tools = checked if checked is not None and not running else await self.tools(endpoint)
        if tools is None:
            return None
        return profile_from_card(
            {"name": agent.name, "description": f"MCP server with {len(tools.tools)} tools"},
            tools.listing(),
        )

    # --- the agent card -------------------------------------------------------------------------

    async def card(self, agent: AgentRecord, address: str, public_url: str) -> dict[str, Any]:
        """An A2A card whose skills are the tools; the MCP tools extension carries each tool's
        input and output schema (SPEC.md "MCP mapping", cards)."""
        self._used_by(agent)
        addr = Address.parse(address)
        tools = await self.tools(agent.endpoint or "")
        card = inbox_agent_card(
            addr,
            public_url,
            description=f"MCP server at Synq address {addr}: its tools are its skills.",
        )
        listed: list[dict[str, Any]] = []
        budget = MAX_CARD_TOOLS_BYTES
        truncated = False
        for tool in tools.listing() if tools is not None else []:
            wire = translate.tool_to_wire(tool)
            cost = len(dumps(wire))
            if cost > budget:
                truncated = True
                continue
            budget -= cost
            listed.append(wire)
        params: dict[str, Any] = {
            "tools": listed,
            "mcpUrl": f"{public_url.rstrip('/')}/mcp/{addr}",
        }
        if truncated:
            params["truncated"] = True
        if tools is None:
            params["unavailable"] = True
        card["skills"] = [translate.tool_skill(t) for t in listed]
        card["defaultInputModes"] = [translate.MCP_CALL_CONTENT_TYPE, translate.A2A_CONTENT_TYPE]
        card["defaultOutputModes"] = [translate.A2A_CONTENT_TYPE]
        card["capabilities"]["extensions"].append(
            {
                "uri": translate.MCP_TOOLS_EXTENSION,
                "description": "MCP tools with their input and output schemas",
                "required": False,
                "params": params,
            }
        )
        return card

    # --- delivery ------------------------------------------------------------------------------

    async def deliver(self, agent: AgentRecord, envelope: Envelope, reply: Replier) -> None:
        # A refused call (translate.CallRefused) is an AttemptFailed with its 5.x.x status: it
        # reaches the dispatcher as it is, which bounces the envelope with a DSN.
        call = translate.parse_call(
            envelope.content_type, envelope.body, envelope.id, envelope.thread
        )
        endpoint = self._used_by(agent)
        if endpoint.startswith(STDIO_PREFIX):
            await self._deliver_stdio(endpoint, call, reply)
        else:
            await self._deliver_http(endpoint, call, reply)

    async def _deliver_stdio(self, endpoint: str, call: translate.ToolCall, reply: Replier) -> None:
        server = self._server(endpoint)
        try:
            live = await server.live()
        except Unavailable as exc:
            raise AttemptFailed(st.NO_ANSWER, str(exc)) from None
        live.tools.check(call)
        await self._call(live.session, call, reply)

    async def _deliver_http(self, endpoint: str, call: translate.ToolCall, reply: Replier) -> None:
        progress = _ProgressSender(call, reply)
        try:
            outcome = await self._http_server(endpoint).call(call, self.call_timeout, progress.push)
        except Unavailable as exc:
            progress.cancel()
            raise AttemptFailed(st.NO_ANSWER, f"cannot reach the MCP server: {exc}") from None
        except BaseException:
            progress.cancel()
            raise
        await progress.close()
        await self._send_outcome(call, outcome, reply)

    async def _call(self, session: ClientSession, call: translate.ToolCall, reply: Replier) -> None:
        progress = _ProgressSender(call, reply)
        try:
            outcome: dict[str, Any] | AttemptFailed = await call_tool(
                session, call, self.call_timeout, progress.push
            )
        except AttemptFailed as exc:
            outcome = exc
        except BaseException:
            progress.cancel()
            raise
        await progress.close()
        await self._send_outcome(call, outcome, reply)

    async def _send_outcome(
        self, call: translate.ToolCall, outcome: dict[str, Any] | AttemptFailed, reply: Replier
    ) -> None:
        if isinstance(outcome, AttemptFailed):
            log.info("MCP call %s (%s) failed: %s", call.task_id, call.tool, outcome.reason)
            body = translate.failure_body(call, outcome.status, outcome.reason)
        else:
            body = translate.result_body(call, outcome)
            size = len(dumps(body))
            if size > translate.MAX_TOOL_RESULT_BYTES:
                body = translate.failure_body(
                    call,
                    st.TOO_BIG,
                    f"the result of {call.tool} is {size} bytes; the limit is "
                    f"{translate.MAX_TOOL_RESULT_BYTES} (MAX_TOOL_RESULT_BYTES)",
                )
        await reply(Reply(KIND_TASK_UPDATE, translate.A2A_CONTENT_TYPE, body))

    # --- agents that come and go ------------------------------------------------------------------

    def _used_by(self, agent: AgentRecord) -> str:
        endpoint = agent.endpoint or ""
        self._users.setdefault(endpoint, set()).add(agent.name)
        return endpoint

    def agents_held(self) -> set[str]:
        """The agents a server is supervised or a session kept for (the dispatcher's
        ``Holder``)."""
        return set().union(*self._users.values()) if self._users else set()

    async def release(self, agents: Collection[str]) -> None:
        """These agents were removed (``synq agent remove``): stop each server, or leave each
        session, that no remaining agent uses. A stopped supervisor restarts nothing."""
        gone = set(agents)
        for endpoint, users in list(self._users.items()):
            removed = users & gone
            if not removed:
                continue
            users -= removed
            if users:
                continue
            del self._users[endpoint]
            server: StdioServer | HttpServer | None = self._stdio.pop(endpoint, None)
            if server is None:
                server = self._http.pop(endpoint, None)
            if server is None:
                continue
            try:
                await server.close()
            except Exception as exc:
                log.warning("closing the MCP server %s failed: %s", endpoint, describe(exc))
            log.info(
                "MCP server %s stopped: agent %s was removed",
                endpoint,
                ", ".join(sorted(removed)),
            )

    async def close(self) -> None:
        self._users = {}
        servers, self._stdio = list(self._stdio.values()), {}
        for server in servers:
            with contextlib.suppress(Exception):
                await server.close()
        sessions, self._http = list(self._http.values()), {}
        for session in sessions:
            with contextlib.suppress(Exception):
                await session.close()
