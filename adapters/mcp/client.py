"""Client sessions with the MCP servers behind local agents.

Two kinds of endpoint (``AgentRecord.endpoint``):

* ``stdio:<command>`` — a **supervised** process. :class:`StdioServer` starts it on first use,
  keeps one ``ClientSession`` (MCP 2025-11-25, initialize handshake) open for every delivery,
  refreshes the tool list when the server sends ``notifications/tools/list_changed``, and when
  the process exits (crash, garbage, an oversized line) restarts it after a backoff that grows
  from ``RESTART_INITIAL`` to ``RESTART_MAX``. While it is down, deliveries fail for now
  (:class:`Unavailable`), so envelopes wait in the agent's inbox.
* ``http(s)://…`` — a streamable HTTP server, spoken to with a **fresh session per delivery**
  (:func:`http_session`): initialize, ``tools/list``, ``tools/call``, close. A server that is
  down fails the connect step, before any call crossed, so the envelope waits and is retried;
  and each delivery sees the tool list as it is now (no listener has to stay connected to hear
  ``list_changed``).

A call that has **crossed** to the server (the request was written) is never retried: MCP tool
calls carry no idempotency key, so a timeout or a server exiting mid-call ends in a failed reply
(:class:`CallFailed`), at most once — not in a second execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import httpx2
from jsonschema.protocols import Validator
from mcp import ClientSession
from mcp import types as mt
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError

from adapters.mcp import translate
from adapters.mcp.stdio import MAX_STDIO_MESSAGE_BYTES, StdioProcess, stdio_transport
from relay.core import status as st
from relay.core.status import Status

log = logging.getLogger("synq.mcp")

#: Longest one ``tools/call`` may run before the relay gives up on it and sends a failed reply.
#: Below the dispatcher's ``DELIVERY_TIMEOUT`` (600 s), so a hung server costs one delivery slot
#: at most this long and always ends in a reply rather than in a retried (re-executed) call.
CALL_TIMEOUT: Final = 300.0
#: Longest start-up: process start or HTTP connect, ``initialize`` and ``tools/list``. A server
#: that hangs here is killed (stdio) or given up on for now (HTTP): the envelope is retried.
CONNECT_TIMEOUT: Final = 30.0
#: Restart backoff of a stdio server that exited: doubles from the first to the last value.
#: Stops a server that crashes at once from being restarted in a tight loop.
RESTART_INITIAL: Final = 1.0
RESTART_MAX: Final = 60.0
#: Most tools taken from one server, and most ``tools/list`` pages read to get them. Stops a
#: server (or its paginator that never ends) from growing the relay's memory or hanging a listing.
MAX_TOOLS: Final = 1000
MAX_TOOL_PAGES: Final = 50
#: Largest HTTP response body or SSE event read from an HTTP MCP server: the same bound as one
#: stdio line.
MAX_HTTP_MESSAGE_BYTES: Final = MAX_STDIO_MESSAGE_BYTES
#: How long an HTTP server's tool list (for its agent card) is reused before it is listed again.
HTTP_TOOLS_TTL: Final = 60.0

CLIENT_INFO: Final = mt.Implementation(name="synq-relay", version="1")


class Unavailable(Exception):
    """The server cannot take a call now; nothing crossed. The envelope is retried."""


class CallFailed(Exception):
    """The call crossed to the server and failed without a usable result."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class ToolSet:
    """One server's tools as last listed, with their argument validators compiled once."""

    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    _validators: dict[str, Validator | None] = field(default_factory=dict)

    @classmethod
    def of(cls, listed: list[mt.Tool]) -> ToolSet:
        tools = {}
        for tool in listed[:MAX_TOOLS]:
            tools[tool.name] = tool.model_dump(by_alias=True, mode="json", exclude_none=True)
        return cls(tools)

    def listing(self) -> list[dict[str, Any]]:
        return list(self.tools.values())

    def check(self, call: translate.ToolCall) -> None:
        """Refuse an unknown tool or arguments that fail its input schema, before crossing."""
        tool = self.tools.get(call.tool)
        if tool is None:
            known = ", ".join(sorted(self.tools)[:20]) or "none"
            raise translate.CallRefused(
                translate.UNKNOWN_TOOL, f"no tool {call.tool!r} here (tools: {known})"
            )
        if call.tool not in self._validators:
            schema = tool.get("inputSchema")
            self._validators[call.tool] = (
                translate.compile_schema(schema) if isinstance(schema, dict) else None
            )
        validator = self._validators[call.tool]
        if validator is not None:
            error = translate.schema_error(validator, call.arguments)
            if error is not None:
                raise translate.CallRefused(
                    translate.BAD_ARGUMENTS,
                    f"the arguments of {call.tool} do not match its input schema: {error}",
                )


async def list_tools(session: ClientSession) -> ToolSet:
    listed: list[mt.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        page = await session.list_tools(params=mt.PaginatedRequestParams(cursor=cursor))
        listed.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None or len(listed) >= MAX_TOOLS:
            break
    return ToolSet.of(listed)


async def call_tool(
    session: ClientSession, call: translate.ToolCall, timeout: float, on_progress: ProgressFnT
) -> dict[str, Any]:
    """``tools/call`` with progress; the ``CallToolResult`` as JSON, or CallFailed."""
    try:
        result = await session.call_tool(
            call.tool, call.arguments, read_timeout_seconds=timeout, progress_callback=on_progress
        )
    except MCPError as exc:
        if exc.error.code == mt.REQUEST_TIMEOUT:
            raise CallFailed(
                st.NO_ANSWER, f"the tool did not answer within {timeout:g} s"
            ) from None
        if exc.error.code == mt.CONNECTION_CLOSED:
            raise CallFailed(
                st.BAD_CONNECTION, "the server closed the connection during the call"
            ) from None
        # A JSON-RPC error answer to tools/call (MCP 2025-11-25 "Tools" §Error Handling:
        # protocol errors) is the server's answer: report it as a failed result.
        raise CallFailed(
            st.PERMANENT, f"the server answered error {exc.error.code}: {exc.error.message}"
        ) from None
    except RuntimeError as exc:
        # The SDK's check of structured content against the tool's output schema.
        raise CallFailed(st.MEDIA_ERROR, f"the server's result is not valid: {exc}") from None
    dumped: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dumped


# --- stdio: one supervised process per endpoint -------------------------------------------------


@dataclass
class _Live:
    session: ClientSession
    process: StdioProcess
    tools: ToolSet


class StdioServer:
    """One supervised stdio MCP server (see the module docstring)."""

    def __init__(
        self,
        command: str,
        *,
        cwd: Path | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        restart_initial: float = RESTART_INITIAL,
        restart_max: float = RESTART_MAX,
    ) -> None:
        self.command = command
        self.cwd = cwd
        self.connect_timeout = connect_timeout
        self.restart_initial = restart_initial
        self.restart_max = restart_max
        self.restarts = 0
        self.last_error = ""
        self.tools: ToolSet | None = None  # the last listing, kept while the server is down
        self._live: _Live | None = None
        self._changed = asyncio.Event()  # set on every state change; waiters re-check
        self._backing_off = False
        self._task: asyncio.Task[None] | None = None
        self._tools_stale = asyncio.Event()
        self._scope = anyio.CancelScope()
        self._process: StdioProcess | None = None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def live(self) -> _Live:
        """The running session; starts the server if needed. Unavailable while it is down."""
        if self._task is None or self._task.done():
            self._scope = anyio.CancelScope()
            self._task = asyncio.create_task(self._supervise(), name=f"synq-mcp {self.command}")
        if (live := self._usable()) is not None:
            return live
        if self._backing_off:
            raise Unavailable(f"the MCP server is restarting after: {self.last_error}")
        try:
            async with asyncio.timeout(self.connect_timeout + 5):
                while self._usable() is None and not self._backing_off:
                    await self._changed.wait()
        except TimeoutError:
            raise Unavailable("the MCP server did not start in time") from None
        if (live := self._usable()) is None:
            raise Unavailable(f"the MCP server failed to start: {self.last_error}")
        return live

    async def ready(self, timeout: float) -> _Live:
        """Wait (through any restart backoff) until the server is up; for callers that can wait."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    return await self.live()
                except Unavailable:
                    waiter = self._changed
                    if self._usable() is None:
                        await waiter.wait()

    def _usable(self) -> _Live | None:
        """The session, unless its process has already ended (the supervisor may not have
        noticed yet): a call written now would be lost, so it must not count as crossed."""
        live = self._live
        return live if live is not None and not live.process.ended.is_set() else None

    async def _supervise(self) -> None:
        # Stopped by cancelling this anyio scope, not the task: a native task.cancel() would
        # break through the shielded shutdown of the transport and leave the process behind.
        with self._scope:
            await self._supervise_loop()

    async def _supervise_loop(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            self._process = None
            try:
                await self._run_once()
            except Exception as exc:
                self.last_error = describe(exc)
                process = self._process
                if process is not None and process.returncode is not None:
                    self.last_error = process.describe_exit()
            # A server that stayed up longer than the longest backoff starts the count afresh;
            # one that keeps dying soon after start waits longer each time.
            failures = 1 if loop.time() - started > self.restart_max else failures + 1
            self._live = None
            self._notify()
            self.restarts += 1
            delay = min(self.restart_initial * 2 ** max(failures - 1, 0), self.restart_max)
            log.warning(
                "MCP server %r stopped (%s); restarting in %.1f s",
                self.command,
                self.last_error,
                delay,
            )
            self._backing_off = True
            self._notify()
            await asyncio.sleep(delay)
            self._backing_off = False

    async def _run_once(self) -> None:
        async def on_message(message: IncomingMessage) -> None:
            # MCP 2025-11-25 "Tools" §List Changed Notification: list the tools again.
            if isinstance(message, mt.ToolListChangedNotification):
                self._tools_stale.set()

        async with (
            stdio_transport(self.command, cwd=self.cwd) as (read, write, process),
            ClientSession(read, write, message_handler=on_message, client_info=CLIENT_INFO) as s,
            anyio.create_task_group() as tg,
        ):
            self._process = process
            try:
                with anyio.fail_after(self.connect_timeout):
                    await s.initialize()
                    tools = await list_tools(s)
            except TimeoutError:
                raise Unavailable(
                    process.exit_reason
                    or f"no answer to initialize within {self.connect_timeout:g} s"
                ) from None
            except MCPError:
                raise Unavailable(
                    process.exit_reason or "the server closed the connection"
                ) from None
            self.tools = tools
            self._live = _Live(s, process, tools)
            self._notify()
            tg.start_soon(self._refresh_tools, s)
            await process.ended.wait()
            tail = " | ".join(process.stderr_tail)
            log.warning(
                "MCP server %r ended: %s%s",
                self.command,
                process.exit_reason,
                f"; stderr: {tail}" if tail else "",
            )
            tg.cancel_scope.cancel()
        self.last_error = process.describe_exit()

    async def _refresh_tools(self, session: ClientSession) -> None:
        while True:
            await self._tools_stale.wait()
            self._tools_stale.clear()
            try:
                with anyio.fail_after(self.connect_timeout):
                    tools = await list_tools(session)
            except (MCPError, TimeoutError) as exc:
                log.warning(
                    "MCP server %r: listing the changed tools failed: %s", self.command, exc
                )
                continue
            self.tools = tools
            if self._live is not None:
                self._live.tools = tools

    async def close(self) -> None:
        if self._task is not None:
            self._scope.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._live = None


# --- HTTP: a session per delivery --------------------------------------------------------------


class _BoundedStream(httpx2.AsyncByteStream):
    """A response body that fails past ``MAX_HTTP_MESSAGE_BYTES`` (a JSON answer is read whole
    by the SDK; SSE events are bounded by its own ``max_sse_event_size``)."""

    def __init__(self, inner: httpx2.AsyncByteStream, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.inner:
            seen += len(chunk)
            if seen > self.limit:
                raise httpx2.ReadError(f"the response is larger than {self.limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class _BoundedTransport(httpx2.AsyncBaseTransport):
    def __init__(self, limit: int) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        if response.headers.get("content-type", "").startswith("application/json"):
            assert isinstance(response.stream, httpx2.AsyncByteStream)
            response.stream = _BoundedStream(response.stream, self.limit)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def never_connected(exc: BaseException) -> bool:
    """True when the failure is a refused or timed-out connection: no request reached the
    server, so retrying later cannot execute a call twice."""
    return any(isinstance(e, httpx2.ConnectError | httpx2.ConnectTimeout) for e in _leaves(exc))


def describe(exc: BaseException) -> str:
    leaves = [e for e in _leaves(exc) if not isinstance(e, asyncio.CancelledError)]
    first = leaves[0] if leaves else exc
    text = str(first) or type(first).__name__
    return translate.clip(text, 300)


@contextlib.asynccontextmanager
async def http_session(url: str, connect_timeout: float) -> AsyncIterator[ClientSession]:
    """A streamable HTTP session with the server at ``url``, initialized. The relay's HTTP
    client sends no credentials: no caller's token is ever passed through (MCP 2025-11-25
    "Authorization" §Token Passthrough)."""
    timeout = httpx2.Timeout(connect_timeout, read=CALL_TIMEOUT + 30)
    async with (
        httpx2.AsyncClient(
            transport=_BoundedTransport(MAX_HTTP_MESSAGE_BYTES),
            timeout=timeout,
            trust_env=False,
            headers={"User-Agent": "Synq-MCP/1"},
        ) as http,
        streamable_http_client(
            url, http_client=http, max_sse_event_size=MAX_HTTP_MESSAGE_BYTES
        ) as (
            read,
            write,
        ),
        ClientSession(read, write, client_info=CLIENT_INFO) as session,
    ):
        with anyio.fail_after(connect_timeout):
            await session.initialize()
        yield session
