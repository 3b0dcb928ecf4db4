"""Client sessions with the MCP servers behind local agents.

Two kinds of endpoint (``AgentRecord.endpoint``):

* ``stdio:<command>`` — a **supervised** process. :class:`StdioServer` starts it on first use,
  keeps one ``ClientSession`` (MCP 2025-11-25, initialize handshake) open for every delivery,
  refreshes the tool list when the server sends ``notifications/tools/list_changed``, and when
  the process exits (crash, garbage, an oversized line) restarts it after a backoff that grows
  from ``RESTART_INITIAL`` to ``RESTART_MAX``. While it is down, deliveries fail for now
  (:class:`Unavailable`), so envelopes wait in the agent's inbox.
* ``http(s)://…`` — a streamable HTTP server, spoken to over one **kept session**
  (:class:`HttpServer`): opened (initialize, ``tools/list``) on first use and reused by every
  delivery, so a call costs one ``tools/call`` request, not a handshake, a listing and a
  teardown — on a kept connection, not a new one (adapters/keepalive.py). The tool list is listed again when the server sends ``list_changed``, when it is
  older than ``HTTP_TOOLS_TTL``, and before a call is refused by it (a tool added since is never
  refused because of a stale list). A server that is down fails the connect step, before any
  call crossed, so the envelope waits and is retried. A server that forgot the session (it
  restarted, or expired it) answers ``404`` (MCP 2025-11-25 "Transports" §Session Management):
  a new session is opened and the call sent again on it — the 404 says the server did not
  process it.

A call that has **crossed** to the server (the request was written) is never retried: MCP tool
calls carry no idempotency key, so a timeout or a server exiting mid-call ends in a failed reply
(an ``AttemptFailed`` returned as the call's outcome, never raised to the dispatcher), at most
once — not in a second execution. Whether a call crossed is decided per request by the HTTP
transport (:class:`_Attempt`): only a refused connection or a ``404`` for the session count as
not crossed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import anyio
import httpx2
from jsonschema.protocols import Validator
from mcp import ClientSession
from mcp import types as mt
from mcp.client.session import ClientRequestContext, IncomingMessage
from mcp.client.streamable_http import MCP_SESSION_ID, streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.types import CLIENT_CAPABILITIES_META_KEY
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from adapters.keepalive import Drains, kept_alive
from adapters.mcp import translate
from adapters.mcp.stdio import (
    MAX_STDIO_MESSAGE_BYTES,
    STDERR_DRAIN,
    StdioProcess,
    stdio_transport,
)
from relay.core import status as st
from relay.core.errors import AttemptFailed

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
#: Resources, resource templates and prompts kept of each for an agent card (its first page).
MAX_CATALOG: Final = 200
#: Largest HTTP response body or SSE event read from an HTTP MCP server: the same bound as one
#: stdio line.
MAX_HTTP_MESSAGE_BYTES: Final = MAX_STDIO_MESSAGE_BYTES
#: How long an HTTP server's tool list is trusted before it is listed again, for its agent card
#: and for checking calls. A safety net for servers that do not announce ``list_changed``; a
#: call the list would refuse is checked against a fresh listing first.
HTTP_TOOLS_TTL: Final = 60.0
#: How long an idle pooled connection to an HTTP server is kept for the next call. Below the
#: keep-alive timeouts servers commonly use (uvicorn's and Node.js's default: 5 s), so the relay
#: does not write a call onto a connection the server is closing at that moment: such a call
#: might have run, so it could not be sent again, and would fail.
HTTP_KEEPALIVE_EXPIRY: Final = 2.0
#: New sessions one delivery may open when the kept one turns out to be gone (refused
#: connection, or ``404`` for the session). One suffices after a server restart; a server that
#: drops every new session too is down for now, and the envelope is retried later.
MAX_SESSION_RENEWALS: Final = 1

CLIENT_INFO: Final = mt.Implementation(name="synq-relay", version="1")


class Unavailable(Exception):
    """The server cannot take a call now; nothing crossed. The envelope is retried."""


@dataclass
class ToolSet:
    """One server's tools as last listed, with their argument validators compiled once."""

    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    _validators: dict[str, Validator | None] = field(default_factory=dict)
    #: The server's resources, resource templates and prompts as last listed (first page of
    #: each, at most ``MAX_CATALOG`` entries), for its agent card: ``resources``,
    #: ``resourceTemplates``, ``prompts``.
    catalog: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

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
    tools = ToolSet.of(listed)
    tools.catalog = await list_catalog(session)
    return tools


async def list_catalog(session: ClientSession) -> dict[str, list[dict[str, Any]]]:
    """The first page of the server's resources, resource templates and prompts, where it
    declares them (for its card). A server that fails to list them lists nothing here: the card
    is a summary, and the requests themselves still cross."""
    caps = session.server_capabilities
    catalog: dict[str, list[dict[str, Any]]] = {}
    wanted: list[tuple[str, str]] = []
    if caps is not None and caps.resources is not None:
        wanted += [
            ("resources/list", "resources"),
            ("resources/templates/list", "resourceTemplates"),
        ]
    if caps is not None and caps.prompts is not None:
        wanted.append(("prompts/list", "prompts"))
    for method, key in wanted:
        request = _CLIENT_REQUEST.validate_python({"method": method, "params": {}})
        try:
            page = await session.send_request(request, _RawResult)
        except (MCPError, ValidationError) as exc:
            log.info("the server's %s failed: %s", method, describe(exc))
            continue
        items = _dump(page).get(key)
        if isinstance(items, list):
            catalog[key] = [i for i in items[:MAX_CATALOG] if isinstance(i, dict)]
    return catalog


async def call_tool(
    session: ClientSession, call: translate.ToolCall, timeout: float, on_progress: ProgressFnT
) -> dict[str, Any]:
    """``tools/call`` with progress; the ``CallToolResult`` as JSON, or AttemptFailed."""
    try:
        result = await session.call_tool(
            call.tool, call.arguments, read_timeout_seconds=timeout, progress_callback=on_progress
        )
    except MCPError as exc:
        if exc.error.code == mt.REQUEST_TIMEOUT:
            raise AttemptFailed(
                st.NO_ANSWER, f"the tool did not answer within {timeout:g} s"
            ) from None
        if exc.error.code == mt.CONNECTION_CLOSED:
            raise AttemptFailed(
                st.BAD_CONNECTION, "the server closed the connection during the call"
            ) from None
        # A JSON-RPC error answer to tools/call (MCP 2025-11-25 "Tools" §Error Handling:
        # protocol errors) is the server's answer: report it as a failed result.
        raise AttemptFailed(
            st.PERMANENT, f"the server answered error {exc.error.code}: {exc.error.message}"
        ) from None
    except RuntimeError as exc:
        # The SDK's check of structured content against the tool's output schema.
        raise AttemptFailed(st.MEDIA_ERROR, f"the server's result is not valid: {exc}") from None
    dumped: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dumped


# --- any request, and what the server says while it runs ---------------------------------------


class Exchange(Protocol):
    """What the server says to its client while one carried request runs (SPEC.md "MCP mapping",
    "Any MCP message"): its notifications, and its own requests of the client (sampling,
    elicitation, roots), which the caller must answer."""

    async def notify(self, method: str, params: dict[str, Any]) -> None: ...

    async def ask(self, method: str, params: dict[str, Any]) -> translate.RpcAnswer: ...


#: The exchange of the request being sent. The SDK runs a server's messages that arrive on a
#: request's own response stream (streamable HTTP) in the context that sent the request, so the
#: session-wide callbacks below find, through this variable, the request they belong to.
#: Messages outside any request (a stdio server, the standalone stream) see None.
EXCHANGE: ContextVar[Exchange | None] = ContextVar("synq_mcp_exchange", default=None)


class _RawResult(BaseModel):
    """Any JSON-RPC result, kept whole: the relay carries results, it does not reinterpret."""

    model_config = ConfigDict(extra="allow")


_CLIENT_REQUEST: Final[TypeAdapter[mt.ClientRequest]] = TypeAdapter(mt.ClientRequest)
_LIST_CHANGED: Final = (
    mt.ToolListChangedNotification,
    mt.ResourceListChangedNotification,
    mt.PromptListChangedNotification,
)
_NO_CLIENT: Final = "no client is waiting for this request's answers"


def _dump(model: BaseModel) -> dict[str, Any]:
    dumped: dict[str, Any] = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dumped


async def _ask(method: str, params: dict[str, Any], model: type[BaseModel]) -> Any:
    exchange = EXCHANGE.get()
    if exchange is None:
        return mt.ErrorData(code=mt.INVALID_REQUEST, message=_NO_CLIENT)
    answer = await exchange.ask(method, params)
    if answer.error is not None:
        return mt.ErrorData.model_validate(answer.error)
    try:
        return model.model_validate(answer.result or {})
    except ValidationError as exc:
        return mt.ErrorData(
            code=mt.INVALID_PARAMS, message=translate.clip(f"the client's answer: {exc}", 300)
        )


async def _on_sampling(
    context: ClientRequestContext, params: mt.CreateMessageRequestParams
) -> mt.CreateMessageResult | mt.ErrorData:
    answer = await _ask("sampling/createMessage", _dump(params), mt.CreateMessageResult)
    assert isinstance(answer, mt.CreateMessageResult | mt.ErrorData)
    return answer


async def _on_elicitation(
    context: ClientRequestContext, params: mt.ElicitRequestParams
) -> mt.ElicitResult | mt.ErrorData:
    answer = await _ask("elicitation/create", _dump(params), mt.ElicitResult)
    assert isinstance(answer, mt.ElicitResult | mt.ErrorData)
    return answer


async def _on_roots(context: ClientRequestContext) -> mt.ListRootsResult | mt.ErrorData:
    answer = await _ask("roots/list", {}, mt.ListRootsResult)
    assert isinstance(answer, mt.ListRootsResult | mt.ErrorData)
    return answer


async def forward_notification(message: IncomingMessage) -> None:
    """Carry a server notification that belongs to a carried request back to its caller.
    Progress has its own path (the request's progress callback)."""
    exchange = EXCHANGE.get()
    if exchange is None or isinstance(message, Exception):
        return
    data = _dump(message)
    method = data.get("method")
    if method in translate.SERVER_NOTIFICATIONS and method != "notifications/progress":
        await exchange.notify(str(method), dict(data.get("params") or {}))


#: The client capabilities a kept session can declare for its callers.
CLIENT_FEATURES: Final = frozenset({"sampling", "elicitation", "roots"})


def session_callbacks(declare: frozenset[str] = CLIENT_FEATURES) -> dict[str, Any]:
    """The client side of sampling, elicitation and roots for a kept session: declared (the
    SDK declares a capability exactly when its callback is given), so a server asks, and
    answered by the caller of the request that is running (:data:`EXCHANGE`)."""
    callbacks: dict[str, tuple[str, Any]] = {
        "sampling": ("sampling_callback", _on_sampling),
        "elicitation": ("elicitation_callback", _on_elicitation),
        "roots": ("list_roots_callback", _on_roots),
    }
    return dict(callbacks[feature] for feature in sorted(declare & CLIENT_FEATURES))


def declared_features(params: dict[str, Any]) -> frozenset[str]:
    """Which of :data:`CLIENT_FEATURES` a 2026-07-28 request's ``_meta`` declares."""
    meta = params.get("_meta")
    caps = meta.get(CLIENT_CAPABILITIES_META_KEY) if isinstance(meta, dict) else None
    if not isinstance(caps, dict):
        return frozenset()
    return frozenset(f for f in CLIENT_FEATURES if caps.get(f) is not None)


async def send_request(
    session: ClientSession,
    rpc: translate.RpcMessage,
    timeout: float,
    exchange: Exchange | None,
) -> translate.RpcAnswer:
    """Send one carried request; its JSON-RPC result or error. AttemptFailed when there is no
    answer (timeout, the connection broke) or the answer does not fit the method."""
    params = dict(rpc.params)
    meta = params.get("_meta")
    if isinstance(meta, dict):
        # The caller's progress token names its own hop; this hop gets the session's own.
        params["_meta"] = {k: v for k, v in meta.items() if k != "progressToken"} or None
        if params["_meta"] is None:
            del params["_meta"]
    try:
        request = _CLIENT_REQUEST.validate_python({"method": rpc.method, "params": params})
    except ValidationError as exc:
        raise translate.CallRefused(
            translate.BAD_CALL, f"not a valid {rpc.method} request: {exc}"
        ) from None

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if exchange is not None:
            numbers: dict[str, Any] = {"progress": progress}
            if total is not None:
                numbers["total"] = total
            if message is not None:
                numbers["message"] = message
            await exchange.notify("notifications/progress", numbers)

    token = EXCHANGE.set(exchange)
    try:
        raw = await session.send_request(
            request,
            _RawResult,
            request_read_timeout_seconds=timeout,
            progress_callback=on_progress,
        )
    except MCPError as exc:
        if exc.error.code == mt.REQUEST_TIMEOUT:
            raise AttemptFailed(
                st.NO_ANSWER, f"the server did not answer within {timeout:g} s"
            ) from None
        if exc.error.code == mt.CONNECTION_CLOSED:
            raise AttemptFailed(
                st.BAD_CONNECTION, "the server closed the connection during the request"
            ) from None
        return translate.RpcAnswer(rpc.id, error=_dump(exc.error))
    except ValidationError as exc:
        raise AttemptFailed(st.MEDIA_ERROR, f"the server's answer is not valid: {exc}") from None
    finally:
        EXCHANGE.reset(token)
    return translate.RpcAnswer(rpc.id, result=_dump(raw))


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

    @property
    def health(self) -> str:
        """``up`` (a live session), ``restarting`` (waiting out the restart backoff after a
        failure), ``starting`` (started, not yet answering) or ``down`` (never started, or the
        supervisor stopped): what the operator's console shows (SPEC.md §14.2)."""
        if self._usable() is not None:
            return "up"
        if self._backing_off:
            return "restarting"
        if self._task is not None and not self._task.done():
            return "starting"
        return "down"

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
            stderr = ""
            try:
                await self._run_once()
            except Exception as exc:
                self.last_error = describe(exc)
                process = self._process
                if process is not None and process.returncode is not None:
                    self.last_error = process.describe_exit()
                    # Died before initialising: its stderr is the only account of why. For the
                    # log only; ``last_error`` may reach a sender in a DSN.
                    stderr = process.stderr_report()
            # A server that stayed up longer than the longest backoff starts the count afresh;
            # one that keeps dying soon after start waits longer each time.
            failures = 1 if loop.time() - started > self.restart_max else failures + 1
            self._live = None
            self._notify()
            self.restarts += 1
            delay = min(self.restart_initial * 2 ** max(failures - 1, 0), self.restart_max)
            log.warning(
                "MCP server %r stopped (%s)%s; restarting in %.1f s",
                self.command,
                self.last_error,
                f"; stderr: {stderr}" if stderr else "",
                delay,
            )
            self._backing_off = True
            self._notify()
            await asyncio.sleep(delay)
            self._backing_off = False

    async def _run_once(self) -> None:
        async def on_message(message: IncomingMessage) -> None:
            # MCP 2025-11-25 "Tools" §List Changed Notification: list the tools again (and the
            # resources and prompts the card shows, when those change).
            if isinstance(message, _LIST_CHANGED):
                self._tools_stale.set()
            await forward_notification(message)

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
            with anyio.move_on_after(STDERR_DRAIN):
                await process.stderr_done.wait()
            tail = process.stderr_report()
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
        task = self._task
        if task is not None:
            self._scope.cancel()
            # asyncio.wait, not ``await task``: the supervisor's own end is not an error here,
            # but the caller being cancelled (the relay shutting down mid-release) must still
            # reach the caller rather than be swallowed with it.
            await asyncio.wait({task})
            self._task = None
        self._live = None


# --- HTTP: one kept session per endpoint --------------------------------------------------------


@dataclass
class _Attempt:
    """What the HTTP transport saw of one ``tools/call``. The SDK sends each request from the
    caller's context (its streams carry ``contextvars``), so the transport finds the attempt in
    :data:`_ATTEMPT` and records the fate of the first request made under it, the call itself.

    ``state``: None (no request was made: the session had already closed), ``"sending"`` (it
    may have reached the server), ``"unsent"`` (the connection was refused: nothing was
    written), ``"gone"`` (``404`` for our session id: the server did not process it), ``"sent"``
    (any other answer or failure)."""

    state: str | None = None
    #: Set once the request is written to the connection: from then on only the server
    #: stands between the call and its answer.
    sending: asyncio.Event | None = None

    @property
    def crossed(self) -> bool:
        return self.state not in (None, "unsent", "gone")


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("synq_mcp_attempt", default=None)


def _signal_sent(request: httpx2.Request, sent: asyncio.Event) -> None:
    """Set ``sent`` when the connection has written ``request``'s body, as httpcore's request
    trace reports it (its ``trace`` extension; a trace already there still gets every event)."""
    inner = request.extensions.get("trace")

    async def trace(name: str, info: dict[str, Any]) -> None:
        if name.endswith(".send_request_body.complete"):
            sent.set()
        if inner is not None:
            await inner(name, info)

    request.extensions["trace"] = trace


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
    """Bounds JSON answers, and tells which requests reached the server (see :class:`_Attempt`)
    and whether the server forgot the session."""

    def __init__(self, limit: int, keepalive_expiry: float | None = None) -> None:
        limits = httpx2.Limits(keepalive_expiry=keepalive_expiry)
        self.inner = httpx2.AsyncHTTPTransport(limits=limits)
        self.limit = limit
        #: A request carrying our session id was answered 404: the session is gone.
        self.session_gone = False
        #: The rest of SSE answers the SDK leaves once it has its response, read in the
        #: background so the connection serves the next call (adapters/keepalive.py).
        self.drains = Drains()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        attempt = _ATTEMPT.get()
        if attempt is not None and attempt.state is not None:
            attempt = None  # a later request of the same call (the call's fate is known)
        if attempt is not None:
            attempt.state = "sending"
            if attempt.sending is not None:
                _signal_sent(request, attempt.sending)
        try:
            response = await self.inner.handle_async_request(request)
        except (httpx2.ConnectError, httpx2.ConnectTimeout):
            if attempt is not None:
                attempt.state = "unsent"
            raise
        except BaseException:
            if attempt is not None:
                attempt.state = "sent"
            raise
        if response.status_code == 404 and MCP_SESSION_ID in request.headers:
            # MCP 2025-11-25 "Transports" §Session Management: the server answers 404 to a
            # session id it no longer knows, and the client must start a new session.
            self.session_gone = True
            if attempt is not None:
                attempt.state = "gone"
        elif attempt is not None:
            attempt.state = "sent"
        if response.headers.get("content-type", "").startswith("application/json"):
            assert isinstance(response.stream, httpx2.AsyncByteStream)
            response.stream = _BoundedStream(response.stream, self.limit)
        kept_alive(response, self.drains)
        return response

    async def aclose(self) -> None:
        await self.drains.aclose()
        await self.inner.aclose()


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def describe(exc: BaseException) -> str:
    leaves = [e for e in _leaves(exc) if not isinstance(e, asyncio.CancelledError)]
    first = leaves[0] if leaves else exc
    text = str(first) or type(first).__name__
    return translate.clip(text, 300)


def _http_client(transport: _BoundedTransport, connect_timeout: float) -> httpx2.AsyncClient:
    """The relay's HTTP client for one MCP server. It sends no credentials: no caller's token
    is ever passed through (MCP 2025-11-25 "Authorization" §Token Passthrough)."""
    return httpx2.AsyncClient(
        transport=transport,
        timeout=httpx2.Timeout(connect_timeout, read=CALL_TIMEOUT + 30),
        trust_env=False,
        headers={"User-Agent": "Synq-MCP/1"},
    )


@contextlib.asynccontextmanager
async def http_session(url: str, connect_timeout: float) -> AsyncIterator[ClientSession]:
    """A one-off streamable HTTP session with the server at ``url``, initialized (``synq agent
    add`` checks a server with it)."""
    async with (
        _http_client(_BoundedTransport(MAX_HTTP_MESSAGE_BYTES), connect_timeout) as http,
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


@dataclass
class _HttpLive:
    """One open session; its streams belong to the task that opened it (:meth:`HttpServer._keep`)."""

    session: ClientSession
    transport: _BoundedTransport
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False

    @property
    def usable(self) -> bool:
        return not (self.ended or self.stop.is_set() or self.transport.session_gone)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shared future's failure as seen: its waiters may all have given up."""
    if not future.cancelled():
        future.exception()


class HttpServer:
    """The kept session with one streamable HTTP MCP server (see the module docstring).

    The session's transport and ``ClientSession`` are anyio contexts that must be left by the
    task that entered them, so one keeper task per session holds them open; deliveries share the
    session (requests are independent JSON-RPC ids, each on its own POST).
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        modern: bool = False,
        declare: frozenset[str] = CLIENT_FEATURES,
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        #: Speak the sessionless revision (2026-07-28: ``server/discover``, per-request ``_meta``)
        #: instead of the ``initialize`` handshake: for callers that spoke it to their gateway.
        self.modern = modern
        #: The client capabilities this session declares: all, for the handshake revision's one
        #: session shared by every caller; the caller's own, for a sessionless one (each request
        #: carries them, and a server asks only for what its client declared).
        self.declare = declare
        #: Sessions opened so far (a new one after each loss).
        self.sessions = 0
        #: The last tool listing, kept while the server cannot be reached (for its card).
        self.tools: ToolSet | None = None
        self._tools_at = -math.inf
        self._tools_stale = False
        self._live: _HttpLive | None = None
        self._opening: asyncio.Future[_HttpLive] | None = None
        self._keepers: dict[asyncio.Task[None], anyio.CancelScope] = {}

    # --- the session ------------------------------------------------------------------------------

    async def live(self) -> _HttpLive:
        """The open session, opening one if there is none. Unavailable when that fails."""
        live = self._live
        if live is not None and live.usable:
            return live
        if live is not None:
            self._discard(live)
        opening = self._opening
        if opening is None:
            opening = asyncio.get_running_loop().create_future()
            opening.add_done_callback(_retrieve)
            self._opening = opening
            scope = anyio.CancelScope()
            keeper = asyncio.create_task(self._keep(opening, scope), name=f"synq-mcp {self.url}")
            self._keepers[keeper] = scope
            keeper.add_done_callback(self._forget)
        # Shielded: one waiter giving up (its delivery cancelled) must not cancel the opening
        # the other waiters share.
        return await asyncio.shield(opening)

    def _forget(self, keeper: asyncio.Task[None]) -> None:
        self._keepers.pop(keeper, None)

    async def _keep(self, opened: asyncio.Future[_HttpLive], scope: anyio.CancelScope) -> None:
        """Open a session, hand it out through ``opened``, hold it until it is discarded or
        fails. Stopped by cancelling ``scope`` (an anyio scope, so the transport's own
        shutdown runs), never the task."""
        transport = _BoundedTransport(MAX_HTTP_MESSAGE_BYTES, HTTP_KEEPALIVE_EXPIRY)
        live: _HttpLive | None = None

        async def on_message(message: IncomingMessage) -> None:
            # MCP 2025-11-25 "Tools" §List Changed Notification: list the tools again (and the
            # resources and prompts the card shows, when those change).
            if isinstance(message, _LIST_CHANGED):
                self._tools_stale = True
            await forward_notification(message)

        try:
            with scope:
                async with (
                    _http_client(transport, self.connect_timeout) as http,
                    streamable_http_client(
                        self.url, http_client=http, max_sse_event_size=MAX_HTTP_MESSAGE_BYTES
                    ) as (read, write),
                    ClientSession(
                        read,
                        write,
                        message_handler=on_message,
                        client_info=CLIENT_INFO,
                        **session_callbacks(self.declare),
                    ) as session,
                ):
                    with anyio.fail_after(self.connect_timeout):
                        if self.modern:
                            await session.discover()
                        else:
                            await session.initialize()
                        tools = await list_tools(session)
                    live = _HttpLive(session, transport)
                    self._set_tools(tools)
                    self.sessions += 1
                    self._live = live
                    if self._opening is opened:
                        self._opening = None
                    opened.set_result(live)
                    await live.stop.wait()
        except (Exception, BaseExceptionGroup) as exc:
            if not opened.done():
                opened.set_exception(Unavailable(describe(exc)))
            else:
                log.info("MCP session with %s ended: %s", self.url, describe(exc))
        finally:
            if self._opening is opened:
                self._opening = None
            if not opened.done():
                opened.set_exception(Unavailable("the relay is closing the session"))
            if live is not None:
                live.ended = True
                if self._live is live:
                    self._live = None

    def _discard(self, live: _HttpLive) -> None:
        """Stop using ``live``; its keeper leaves it (DELETE, MCP 2025-11-25 "Transports"
        §Session Management) in the background."""
        live.stop.set()
        if self._live is live:
            self._live = None

    # --- tools ------------------------------------------------------------------------------------

    def _set_tools(self, tools: ToolSet) -> None:
        self.tools = tools
        self._tools_at = asyncio.get_running_loop().time()
        self._tools_stale = False

    def _tools_fresh(self) -> bool:
        age = asyncio.get_running_loop().time() - self._tools_at
        return self.tools is not None and not self._tools_stale and age < HTTP_TOOLS_TTL

    async def _relist(self, live: _HttpLive) -> ToolSet:
        with anyio.fail_after(self.connect_timeout):
            tools = await list_tools(live.session)
        self._set_tools(tools)
        return tools

    async def listing(self) -> ToolSet | None:
        """The server's tools now, or as last seen when it cannot be reached (None: never)."""
        if self._tools_fresh():
            return self.tools
        try:
            live = await self.live()
            if not self._tools_fresh():  # a session just opened has listed them
                await self._relist(live)
        except (Exception, BaseExceptionGroup) as exc:
            log.info("MCP server %s: cannot list tools now: %s", self.url, describe(exc))
        return self.tools

    # --- calls ------------------------------------------------------------------------------------

    async def call(
        self, call: translate.ToolCall, timeout: float, on_progress: ProgressFnT
    ) -> dict[str, Any] | AttemptFailed:
        """Check ``call`` against the tool list (:class:`translate.CallRefused` refuses it),
        then run it once: the result, or :class:`AttemptFailed` once it crossed. Unavailable when
        the server cannot be reached and nothing crossed (the envelope is retried)."""
        why = ""
        for _ in range(MAX_SESSION_RENEWALS + 1):
            live = await self.live()
            try:
                await self._check(live, call)
            except translate.CallRefused:
                raise
            except Exception as exc:  # the session broke while listing: nothing crossed
                why = f"listing the tools failed: {describe(exc)}"
                self._discard(live)
                continue
            attempt = _Attempt()
            token = _ATTEMPT.set(attempt)
            try:
                return await call_tool(live.session, call, timeout, on_progress)
            except AttemptFailed as exc:
                failed = exc
            except Exception as exc:  # the session's streams broke under the call
                failed = AttemptFailed(st.BAD_CONNECTION, f"the call failed: {describe(exc)}")
            finally:
                _ATTEMPT.reset(token)
            if attempt.crossed:
                return failed
            why = failed.reason
            self._discard(live)
        raise Unavailable(f"the MCP server dropped the session: {why}")

    async def request(
        self,
        message: translate.RpcMessage,
        timeout: float,
        exchange: Exchange | None,
        sending: asyncio.Event | None = None,
    ) -> translate.RpcAnswer | AttemptFailed:
        """Send one carried request, at most once, as :meth:`call` sends a tool call: its
        answer, or :class:`AttemptFailed` once it crossed; Unavailable when nothing crossed.
        ``sending`` is set once the request is written to the connection."""
        why = ""
        for _ in range(MAX_SESSION_RENEWALS + 1):
            live = await self.live()
            attempt = _Attempt(sending=sending)
            token = _ATTEMPT.set(attempt)
            try:
                return await send_request(live.session, message, timeout, exchange)
            except translate.CallRefused:
                raise
            except AttemptFailed as exc:
                failed = exc
            except Exception as exc:  # the session's streams broke under the request
                failed = AttemptFailed(st.BAD_CONNECTION, f"the request failed: {describe(exc)}")
            finally:
                _ATTEMPT.reset(token)
            if attempt.crossed:
                return failed
            why = failed.reason
            self._discard(live)
        raise Unavailable(f"the MCP server dropped the session: {why}")

    async def _check(self, live: _HttpLive, call: translate.ToolCall) -> None:
        if self._tools_fresh():
            assert self.tools is not None
            try:
                self.tools.check(call)
                return
            except translate.CallRefused:
                pass  # refused by a list that may be out of date: list again, then decide
        (await self._relist(live)).check(call)

    async def close(self) -> None:
        """Leave the session (its DELETE may take up to ``connect_timeout``), then stop."""
        if self._live is not None:
            self._discard(self._live)
        keepers = dict(self._keepers)
        if not keepers:
            return
        opening = self._opening
        if opening is not None and not opening.done():
            for scope in keepers.values():
                scope.cancel()
        _, slow = await asyncio.wait(keepers, timeout=self.connect_timeout)
        for keeper in slow:
            keepers[keeper].cancel()
        if slow:
            await asyncio.wait(slow)
