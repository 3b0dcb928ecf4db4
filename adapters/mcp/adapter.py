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

An ``application/mcp-request+json`` envelope (any client request, SPEC.md "MCP mapping", "Any
MCP message") is checked and the server reached as above; the request then runs in the
background (:meth:`McpAdapter._carry` returns once it is written to the server) so that the
caller's answers to the server's own requests (sampling, elicitation, roots:
``application/mcp-result+json``) and its cancellation (``application/mcp-notification+json``)
can be delivered while it runs. What the server says
meanwhile travels back through a bounded queue (:class:`_Exchange`); the answer ends it.

The adapter remembers which agents each server was used for; when the dispatcher finds they
were removed (``release``, relay/delivery/dispatch.py ``Holder``), a stdio server is stopped
with its supervisor, and an HTTP session left, once no remaining agent uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
from mcp import ClientSession
from opentelemetry import trace
from opentelemetry.trace import NoOpTracer, SpanKind, Status, StatusCode, Tracer

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
    declared_features,
    describe,
    http_session,
    list_tools,
    send_request,
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
#: The client span of one tool call the relay makes for a delivery (SPEC.md §14.3).
CALL_SPAN: Final = "mcp.tools/call"
#: Progress envelopes sent for one call. Each is signed and stored like any envelope, so this
#: stops one chatty server from turning one call into an unbounded stream of envelopes; the
#: final result is always sent.
MAX_PROGRESS_UPDATES: Final = 100
#: Bytes of tool descriptions and schemas one agent card carries. Partners read cards of at most
#: ``MAX_WELL_KNOWN_BYTES`` (64 KiB); tools past this budget are left out (``truncated``) but can
#: still be called — the adapter checks them against the live list.
MAX_CARD_TOOLS_BYTES: Final = 48 * 1024
#: Notifications (progress, log messages, list changes) carried back for one request. Each is a
#: signed, stored envelope: a server that floods its client costs at most this many; the rest
#: are dropped and counted in the log, and the answer is always sent.
MAX_NOTIFICATIONS: Final = 200
#: Notifications waiting to be signed for one request. The server's messages arrive faster than
#: envelopes are stored; past this many waiting, new ones are dropped (never unbounded memory).
MAX_QUEUED_NOTIFICATIONS: Final = 32
#: How long a server's request of its client (sampling, elicitation, roots) waits for the
#: caller's answer. Past it the server gets the JSON-RPC error -32001 (request timeout), as an
#: SDK client that does not answer in time gives, and its call goes on or fails as it decides.
CLIENT_ANSWER_TIMEOUT: Final = 120.0
#: Server requests waiting for their callers' answers, all agents together; past it a server's
#: request is answered with an error at once. Stops servers from pinning unbounded futures.
MAX_OPEN_ASKS: Final = 1000
#: Carried requests running at once (each a task, answered in the background: see
#: :meth:`McpAdapter._carry`). Past it a delivery waits for a slot, which holds the dispatcher.
MAX_RUNNING_REQUESTS: Final = 256
#: The longest a delivery of a carried request waits for the request to be written to the
#: server before it returns anyway (the request goes on in the background either way). Only the
#: client's own steps lie in between: the session is reached before.
SEND_WAIT: Final = 5.0


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
        #: Started by the first report: a call that reports no progress ends without one.
        self._task: asyncio.Task[None] | None = None

    async def push(self, progress: float, total: float | None, message: str | None) -> None:
        self._pending = (progress, total, message)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

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
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


class _Exchange:
    """One carried request's traffic back to its caller (:class:`adapters.mcp.client.Exchange`):
    notifications go out in order through a bounded queue, one envelope at a time; the server's
    requests of the client go out as ``application/mcp-request+json`` and wait for the answer
    the caller sends back (:meth:`McpAdapter._answered`)."""

    def __init__(self, adapter: McpAdapter, caller: str, reply: Replier) -> None:
        self.adapter = adapter
        self.caller = caller
        self.reply = reply
        self.sent = 0
        self.dropped = 0
        self._queue: asyncio.Queue[translate.RpcMessage] = asyncio.Queue(MAX_QUEUED_NOTIFICATIONS)
        #: The sender task, started by the first notification: most requests (a tool call that
        #: reports no progress) have none, and then their answer goes out without a task being
        #: started, cancelled and awaited around it.
        self._task: asyncio.Task[None] | None = None

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        if self.sent + self._queue.qsize() >= MAX_NOTIFICATIONS:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(translate.RpcMessage(method, params))
        except asyncio.QueueFull:
            self.dropped += 1
            return
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                body = translate.message_body(message)
                await self.reply(
                    Reply(KIND_TASK_UPDATE, translate.MCP_NOTIFICATION_CONTENT_TYPE, body)
                )
                self.sent += 1
            except Exception as exc:
                self.dropped += 1
                log.info("a notification for %s was not sent: %s", self.caller, describe(exc))
            finally:
                self._queue.task_done()

    async def ask(self, method: str, params: dict[str, Any]) -> translate.RpcAnswer:
        asks = self.adapter._asks
        if len(asks) >= MAX_OPEN_ASKS:
            return translate.RpcAnswer(
                None,
                error=translate.rpc_error(
                    translate.INTERNAL_ERROR, "too many requests wait for clients (MAX_OPEN_ASKS)"
                ),
            )
        rpc_id = str(uuid.uuid4())
        key = (self.caller, rpc_id)
        future: asyncio.Future[translate.RpcAnswer] = asyncio.get_running_loop().create_future()
        asks[key] = future
        try:
            await self._queue.join()  # what the server said before asking arrives first
            body = translate.message_body(translate.RpcMessage(method, params, id=rpc_id))
            await self.reply(Reply(KIND_TASK_UPDATE, translate.MCP_REQUEST_CONTENT_TYPE, body))
            async with asyncio.timeout(self.adapter.client_answer_timeout):
                return await future
        except TimeoutError:
            waited = self.adapter.client_answer_timeout
            return translate.RpcAnswer(
                rpc_id,
                error=translate.rpc_error(
                    translate.REQUEST_TIMEOUT_ERROR,
                    f"the client did not answer {method} within {waited:g} s "
                    "(CLIENT_ANSWER_TIMEOUT)",
                ),
            )
        finally:
            asks.pop(key, None)

    async def close(self) -> None:
        """Send what is queued (before the answer, so the order holds), then stop."""
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.dropped:
            log.info("%d notifications for %s were dropped", self.dropped, self.caller)


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
        tracer: Tracer | None = None,
        client_answer_timeout: float = CLIENT_ANSWER_TIMEOUT,
    ) -> None:
        self.cwd = cwd
        self.client_answer_timeout = client_answer_timeout
        #: The relay's tracer: a client span per call. The MCP SDK writes the current span's
        #: ``traceparent`` into the request's ``_meta`` (SEP-414), so the server continues it.
        self.tracer: Tracer = tracer or NoOpTracer()
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self.restart_initial = restart_initial
        self.restart_max = restart_max
        self._stdio: dict[str, StdioServer] = {}
        self._http: dict[str, HttpServer] = {}
        #: Endpoint → the agents it was used for (delivery, card). A supervised server or kept
        #: session lives while one of them exists (:meth:`release`).
        self._users: dict[str, set[str]] = {}
        #: Endpoint → the kept session in the sessionless revision, for callers that speak it.
        self._modern: dict[tuple[str, frozenset[str]], HttpServer] = {}
        #: (caller, request id) → the server's request of that caller waiting for its answer.
        self._asks: dict[tuple[str, str], asyncio.Future[translate.RpcAnswer]] = {}
        #: (caller, request envelope id) → the scope of the carried request, for cancellation.
        self._running: dict[tuple[str, str], anyio.CancelScope] = {}
        self._carried: set[asyncio.Task[None]] = set()
        #: Answers and cancellations that came after what they answer had ended (dropped).
        self.late = 0
        self._request_slots = asyncio.Semaphore(MAX_RUNNING_REQUESTS)
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

    def health(self, endpoint: str) -> str:
        """A stdio server's state under its supervisor (``StdioServer.health``); ``idle`` for
        one not started yet (servers start at their first delivery or card), ``unknown`` for
        a streamable HTTP server, which is reached per call and has no state between calls.
        Read-only, for the operator's console."""
        if endpoint.startswith(STDIO_PREFIX):
            server = self._stdio.get(endpoint)
            return server.health if server is not None else "idle"
        return "unknown"

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
        skills = [translate.tool_skill(t) for t in listed]
        # Resources, templates and prompts after the tools, in the same budget: a reader of the
        # card sees all the server offers (SPEC.md "MCP mapping", cards).
        for key, keep, skill in (
            ("resources", translate.RESOURCE_FIELDS, translate.resource_skill),
            ("resourceTemplates", translate.TEMPLATE_FIELDS, translate.template_skill),
            ("prompts", translate.PROMPT_FIELDS, translate.prompt_skill),
        ):
            entries = tools.catalog.get(key, []) if tools is not None else []
            kept: list[dict[str, Any]] = []
            for entry in entries:
                wire = {k: entry[k] for k in keep if k in entry}
                cost = len(dumps(wire))
                if cost > budget:
                    truncated = True
                    continue
                budget -= cost
                kept.append(wire)
                skills.append(skill(wire))
            if kept:
                params[key] = kept
        if truncated:
            params["truncated"] = True
        if tools is None:
            params["unavailable"] = True
        card["skills"] = skills
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
        if envelope.content_type == translate.MCP_REQUEST_CONTENT_TYPE:
            await self._carry(agent, envelope, reply)
            return
        if envelope.content_type == translate.MCP_RESULT_CONTENT_TYPE:
            self._answered(envelope)
            return
        if envelope.content_type == translate.MCP_NOTIFICATION_CONTENT_TYPE:
            self._notified(envelope)
            return
        # A refused call (translate.CallRefused) is an AttemptFailed with its 5.x.x status: it
        # reaches the dispatcher as it is, which bounces the envelope with a DSN.
        call = translate.parse_call(
            envelope.content_type, envelope.body, envelope.id, envelope.thread
        )
        endpoint = self._used_by(agent)
        attributes = {
            "mcp.method.name": "tools/call",
            "gen_ai.tool.name": call.tool,
            "synq.id": envelope.id,
        }
        with self.tracer.start_as_current_span(
            CALL_SPAN, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            try:
                if endpoint.startswith(STDIO_PREFIX):
                    await self._deliver_stdio(endpoint, call, reply)
                else:
                    await self._deliver_http(endpoint, call, reply)
            except AttemptFailed as exc:
                span.set_status(Status(StatusCode.ERROR, exc.status.code))
                raise

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

    # --- any MCP request (SPEC.md "MCP mapping", "Any MCP message") ------------------------------

    async def _carry(self, agent: AgentRecord, envelope: Envelope, reply: Replier) -> None:
        """Take one ``application/mcp-request+json`` envelope: check it, reach the server (a
        server that cannot be reached keeps the envelope in the inbox, as for a tool call), then
        run the request in the background and return, so the dispatcher can hand over the
        caller's answers to what the server asks meanwhile (sampling, elicitation, roots) and
        its cancellation. The request answers with one ``application/mcp-result+json`` reply."""
        message = translate.parse_message(envelope.body, translate.CLIENT_METHODS)
        endpoint = self._used_by(agent)
        server: StdioServer | HttpServer
        if endpoint.startswith(STDIO_PREFIX):
            server = self._server(endpoint)
            try:
                await server.live()
            except Unavailable as exc:
                raise AttemptFailed(st.NO_ANSWER, str(exc)) from None
        else:
            server = self._http_for(endpoint, message)
            try:
                await server.live()
            except Unavailable as exc:
                if not server.modern:
                    raise AttemptFailed(
                        st.NO_ANSWER, f"cannot reach the MCP server: {exc}"
                    ) from None
                # A server without the sessionless revision: the handshake revision serves.
                server = self._http_server(endpoint)
                try:
                    await server.live()
                except Unavailable as again:
                    raise AttemptFailed(
                        st.NO_ANSWER, f"cannot reach the MCP server: {again}"
                    ) from None
        await self._request_slots.acquire()
        caller = str(envelope.sender)
        exchange = _Exchange(self, caller, reply)
        scope = anyio.CancelScope()
        self._running[(caller, envelope.id)] = scope
        sending = asyncio.Event()
        task = asyncio.create_task(
            self._run_request(server, message, exchange, scope, envelope.id, sending)
        )
        self._carried.add(task)
        task.add_done_callback(self._carried.discard)
        # Return once the request is written to the server: what the dispatcher does next
        # (settling this delivery, a store commit) then overlaps the server's work instead of
        # delaying the request's way out on the event loop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SEND_WAIT):
                await sending.wait()

    def _http_for(self, endpoint: str, message: translate.RpcMessage) -> HttpServer:
        """The session for a request: the handshake revision's kept one, or — for a caller that
        spoke the sessionless revision — one of that revision declaring the caller's client
        capabilities (at most one per combination of sampling, elicitation, roots)."""
        if message.protocol is None or message.protocol < "2026":
            return self._http_server(endpoint)
        declare = declared_features(message.params)
        server = self._modern.get((endpoint, declare))
        if server is None:
            server = HttpServer(
                endpoint, connect_timeout=self.connect_timeout, modern=True, declare=declare
            )
            self._modern[(endpoint, declare)] = server
        return server

    async def _run_request(
        self,
        server: StdioServer | HttpServer,
        message: translate.RpcMessage,
        exchange: _Exchange,
        scope: anyio.CancelScope,
        envelope_id: str,
        sending: asyncio.Event,
    ) -> None:
        answer: translate.RpcAnswer | AttemptFailed | None = None
        # A client span per carried request, named by its method (SPEC.md §14.3): the SDK
        # writes its traceparent into the request's _meta, so the server continues the trace.
        span = self.tracer.start_span(
            f"mcp.{message.method}",
            kind=SpanKind.CLIENT,
            attributes={"mcp.method.name": message.method, "synq.id": envelope_id},
        )
        try:
            with scope, trace.use_span(span, end_on_exit=False):
                if isinstance(server, HttpServer):
                    answer = await server.request(message, self.call_timeout, exchange, sending)
                else:
                    live = await server.live()
                    sending.set()
                    answer = await send_request(live.session, message, self.call_timeout, exchange)
            if answer is None:
                answer = translate.failed_answer(
                    message.method, message.id, "cancelled by the client"
                )
        except (Unavailable, translate.CallRefused) as exc:
            answer = translate.failed_answer(message.method, message.id, str(exc))
        except AttemptFailed as exc:
            answer = exc
        except Exception as exc:
            log.exception("MCP request %s failed", envelope_id)
            answer = AttemptFailed(st.TRANSIENT, f"the request failed: {describe(exc)}")
        finally:
            sending.set()
            self._running.pop((exchange.caller, envelope_id), None)
            self._request_slots.release()
            if isinstance(answer, AttemptFailed):
                span.set_status(Status(StatusCode.ERROR, answer.status.code))
            span.end()
        if isinstance(answer, AttemptFailed):
            log.info("MCP request %s (%s) failed: %s", envelope_id, message.method, answer.reason)
            answer = translate.failed_answer(message.method, message.id, answer.reason)
        body = translate.answer_body(answer)
        size = len(dumps(body))
        if size > translate.MAX_TOOL_RESULT_BYTES:
            body = translate.answer_body(
                translate.failed_answer(
                    message.method,
                    message.id,
                    f"the result of {message.method} is {size} bytes; the limit is "
                    f"{translate.MAX_TOOL_RESULT_BYTES} (MAX_TOOL_RESULT_BYTES)",
                )
            )
        try:
            await exchange.close()
            await exchange.reply(Reply(KIND_TASK_UPDATE, translate.MCP_RESULT_CONTENT_TYPE, body))
        except Exception as exc:
            log.warning("the answer to %s was not sent: %s", envelope_id, describe(exc))

    def _answered(self, envelope: Envelope) -> None:
        """A caller's answer to a server's request. One nobody waits for any more (the request
        timed out, the call ended, the relay restarted) is dropped: the row is settled."""
        answer = translate.parse_answer(envelope.body)
        if answer is None or answer.id is None:
            raise translate.CallRefused(translate.BAD_CALL, "not an answer {id, result|error}")
        future = self._asks.get((str(envelope.sender), answer.id))
        if future is None or future.done():
            self.late += 1
            log.info("a late answer from %s (%s) was dropped", envelope.sender, answer.id)
            return
        future.set_result(answer)

    def _notified(self, envelope: Envelope) -> None:
        """A caller's notification: ``notifications/cancelled`` for the request its envelope
        answers (``in_reply_to``) cancels that request at the server, if it still runs; one
        that lost the race with the answer is dropped."""
        translate.parse_message(envelope.body, translate.CLIENT_NOTIFICATIONS)
        scope = self._running.get((str(envelope.sender), envelope.in_reply_to or ""))
        if scope is not None:
            scope.cancel()
        else:
            self.late += 1

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
            for key in [k for k in self._modern if k[0] == endpoint]:
                with contextlib.suppress(Exception):
                    await self._modern.pop(key).close()
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
        for task in list(self._carried):
            task.cancel()
        sessions = list(self._http.values()) + list(self._modern.values())
        self._http, self._modern = {}, {}
        for session in sessions:
            with contextlib.suppress(Exception):
                await session.close()
