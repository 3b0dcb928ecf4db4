"""The relay's MCP faces (SPEC.md "MCP mapping"), hosted in the aiohttp server by the ASGI
bridge (relay.server.asgi) like every SDK's Starlette glue.

* ``/mcp/<address>`` — **a remote MCP server as a local one**. For any reachable MCP-backed
  address (a local agent, or a partner's, whose agent card carries the MCP tools extension) the
  relay is a streamable HTTP MCP server standing for that agent's server. ``tools/list`` comes
  from the agent card; ``tools/call`` of a listed tool is checked against its input schema;
  every request (tools, resources, prompts, completion, logging, listen) becomes an
  ``application/mcp-request+json`` envelope from the caller's address, and what comes back —
  notifications, the server's requests of the client, the answer — is played out on the
  request's stream (:class:`Gateway`).
* ``/mcp`` — **the relay's own MCP face**: tools ``send_message``, ``check_inbox``,
  ``find_agents``, ``get_agent_card``, ``message_status`` acting as the calling local agent,
  each a call of the relay's mailbox (relay.delivery.mailbox), as the local API's routes are.
  The same server runs on stdio as ``synq mcp --agent NAME`` (:func:`serve_stdio`).

Both faces authenticate with the agent's bearer token, as an OAuth 2.1 resource server (MCP
2025-11-25 "Authorization" §2.6, RFC 6750): a request without a valid token gets ``401`` with
``WWW-Authenticate: Bearer … resource_metadata="…"`` naming the RFC 9728 protected-resource
metadata the relay serves at ``/.well-known/oauth-protected-resource/mcp[/<address>]``. A
streamable HTTP session is bound to the token that opened it. The caller's token never leaves
the relay: envelopes carry the relay's signature, and the adapter's client sends no
credentials to the servers behind it (§2.7 "Token Passthrough").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from datetime import timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web
from jsonschema.protocols import Validator
from mcp import types as mt
from mcp.server import Server
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, RequireAuthMiddleware
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.server.context import HandlerResult, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from opentelemetry.trace import SpanKind
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from adapters.mcp import translate
from relay import telemetry
from relay.core import catalog, idempotency
from relay.core import errors as E
from relay.core.address import MAILER_DAEMON, Address
from relay.core.draft import Draft, parse_expires
from relay.core.dsn import is_failure, parse_notify
from relay.core.envelope import KIND_DSN, KIND_MESSAGE, KIND_PATTERN, format_timestamp
from relay.core.ids import hash_token, uuid7
from relay.core.jsonutil import dumps
from relay.core.limits import (
    MAX_API_BODY_BYTES,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_INBOX_PAGE,
    MAX_LONG_POLL_SECONDS,
    MAX_RECIPIENTS,
)
from relay.delivery import views
from relay.delivery.signals import signal_view
from relay.runtime import Relay
from relay.server.asgi import AsgiHost
from relay.server.auth import agent_for_token, bearer_token, refuse_guessing
from relay.server.keys import RELAY
from relay.store.base import AgentRecord

log = logging.getLogger("synq.mcp.face")

#: How long ``/mcp/<address>`` waits for the answer to one ``tools/call``, and the lifetime of
#: the call envelope. A call that cannot reach its agent in this time bounces instead of
#: running later, when no client is waiting for it any more. (The remote adapter gives a tool
#: ``CALL_TIMEOUT`` = 300 s; the rest is room for federation and queues.)
GATEWAY_WAIT: Final = 600.0
#: How long a fetched agent card's tool list is reused by ``/mcp/<address>``. Stops every
#: ``tools/list`` and ``tools/call`` from costing a card fetch across federation.
CARD_TTL: Final = 30.0
#: Tool list entries remembered for ``/mcp/<address>``; bounds the memory callers can make the
#: relay spend by naming many addresses.
MAX_CARD_CACHE: Final = 1000
#: Concurrent streamable HTTP sessions per face, and how long an idle one lives. Each session
#: is a task and a little memory; stops a client opening sessions until the relay runs out.
MAX_SESSIONS: Final = 1000
SESSION_IDLE_TIMEOUT: Final = 600.0
#: Messages ``check_inbox`` returns at once (the local API allows ``MAX_INBOX_PAGE``; a model's
#: context is the tighter budget).
MAX_CHECK_INBOX: Final = 100
#: Scope of the tokens this resource server accepts (advertised in its metadata).
SCOPE: Final = "synq:agent"

#: The first MCP revision without sessions (2026-07-28): a closed request stream cancels.
SESSIONLESS: Final = "2026-07-28"

MCP_HOST: web.AppKey[AsgiHost] = web.AppKey("mcp_host")
#: What an anonymous gateway caller's access record holds in place of a token hash.
ANONYMOUS: Final = "anonymous"


# --- authentication ----------------------------------------------------------------------------


class AgentTokens(AuthenticationBackend):
    """Starlette authentication over the relay's agent tokens (stored as SHA-256 only): what the
    SDK's ``BearerAuthBackend`` does with a ``TokenVerifier``, except that it sees the client's
    address, so a token that names no agent is charged to that address as on every face
    (relay.server.auth). The refusal of an address with no attempt left comes earlier, in
    :func:`mcp_endpoint`, as a ``429`` like the API's."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        token = bearer_token(conn.headers.get("authorization", ""))
        if token is None:
            return None
        peer = conn.client.host if conn.client is not None else None
        # Through the router's agent cache, as the API authenticates (AGENT_CACHE_TTL): a
        # store read per request would sit on every call's path.
        agent = await agent_for_token(self.relay, token, peer)
        if agent is None:
            return None
        access = _access(self.relay, agent.name, token_hash=hash_token(token))
        return AuthCredentials(access.scopes), AuthenticatedUser(access)


def _access(relay: Relay, name: str, token_hash: str) -> AccessToken:
    address = f"{name}@{relay.domain}"
    # ``token`` holds the hash: the secret itself is not kept in memory past the check.
    return AccessToken(token=token_hash, client_id=address, scopes=[SCOPE], subject=address)


class _GatewayAuth:
    """``/mcp/<address>`` with the bearer rule of ``/mcp`` — except that, when the operator
    names an ``[mcp] anonymous_agent``, a request with no ``Authorization`` header at all acts
    as that agent (an invalid token is still refused)."""

    def __init__(self, app: StreamableHTTPASGIApp, relay: Relay) -> None:
        self.app = app
        self.relay = relay
        #: The bearer rule of each address called lately: its metadata URL is two URL parses
        #: and a build (some 50 µs), the same for every call to the address.
        self._guards: collections.OrderedDict[str, RequireAuthMiddleware] = (
            collections.OrderedDict()
        )

    def _guard(self, address: str) -> RequireAuthMiddleware:
        guard = self._guards.get(address)
        if guard is None:
            resource_metadata = AnyHttpUrl(metadata_url(self.relay, f"/mcp/{address}"))
            guard = self._guards[address] = RequireAuthMiddleware(self.app, [], resource_metadata)
            while len(self._guards) > MAX_CARD_CACHE:
                self._guards.popitem(last=False)
        else:
            self._guards.move_to_end(address)
        return guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        anonymous = self.relay.config.mcp.anonymous_agent
        has_header = any(name == b"authorization" for name, _ in scope["headers"])
        if anonymous and not has_header and not isinstance(scope.get("user"), AuthenticatedUser):
            scope["user"] = AuthenticatedUser(_access(self.relay, anonymous, token_hash=ANONYMOUS))
        address = scope.get("path_params", {}).get("address", "")
        await self._guard(address)(scope, receive, send)


def _caller(ctx: ServerRequestContext[Any, Any]) -> Address:
    request = ctx.request
    user = getattr(request, "user", None) if request is not None else None
    if not isinstance(user, AuthenticatedUser):
        raise MCPError(mt.INVALID_REQUEST, "not authenticated")
    return Address.parse(user.access_token.client_id)


#: The server span of one tool call a face serves (SPEC.md §14.3).
SERVED_SPAN: Final = "mcp.tools/call"


def _meta_context(ctx: ServerRequestContext[Any, Any]) -> Any:
    """The caller's trace from the request's ``_meta`` (MCP SEP-414), or None."""
    meta: Any = ctx.meta
    if meta is None:
        return None
    values = meta if isinstance(meta, Mapping) else meta.model_dump(by_alias=True)
    carrier = {
        k: v
        for k in (telemetry.TRACEPARENT, telemetry.TRACESTATE)
        if isinstance(v := values.get(k), str)
    }
    return telemetry.extract(carrier)


@contextlib.contextmanager
def _served(
    relay: Relay, ctx: ServerRequestContext[Any, Any], tool: str, face: str
) -> Iterator[None]:
    """The tool call as a server span: a child of the ``_meta`` trace when the client sent one,
    else of the HTTP request's span; what the call sends is a child of it."""
    with relay.telemetry.tracer.start_as_current_span(
        SERVED_SPAN,
        context=_meta_context(ctx),
        kind=SpanKind.SERVER,
        attributes={"mcp.method.name": "tools/call", "gen_ai.tool.name": tool, "synq.face": face},
    ):
        yield


def metadata_url(relay: Relay, path: str) -> str:
    return str(build_resource_metadata_url(AnyHttpUrl(f"{relay.public_url.rstrip('/')}{path}")))


def security_settings(relay: Relay) -> TransportSecuritySettings:
    """DNS-rebinding protection (MCP 2025-11-25 "Transports" §Security Warning): Host must name
    this relay — its public URL or its listen address — or loopback; a browser Origin must be
    the relay's own. The SDK turns this on by itself only for loopback hosts."""
    hosts = {"127.0.0.1:*", "localhost:*", "[::1]:*"}
    origins = {"http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"}
    public = urlsplit(relay.public_url)
    if public.hostname:
        hosts |= {public.netloc, f"{public.hostname}:*"}
        origins |= {f"{public.scheme}://{public.netloc}", f"{public.scheme}://{public.hostname}:*"}
    host, port = relay.config.listen_host_port
    if host not in ("", "0.0.0.0", "::"):  # noqa: S104 — comparing, not binding
        hosts.add(f"{host}:{port}")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted(hosts),
        allowed_origins=sorted(origins),
    )


# --- results -----------------------------------------------------------------------------------


def _json_result(value: Any) -> mt.CallToolResult:
    text = dumps(value).decode("utf-8")
    structured = value if isinstance(value, dict) else {"result": value}
    return mt.CallToolResult(
        content=[mt.TextContent(type="text", text=text)], structured_content=structured
    )


def _error_result(text: str) -> mt.CallToolResult:
    return mt.CallToolResult.model_validate(translate.error_result(text))


def _synq_error(exc: E.SynqError) -> mt.CallToolResult:
    return _error_result(f"{exc.code} ({exc.status.code}): {exc.message}")


# --- /mcp/<address>: remote tools ---------------------------------------------------------------


class _CardTools:
    """One address's tools as its card listed them, with their input validators compiled once
    (checking a JSON Schema against its metaschema costs more than validating a call)."""

    def __init__(self, fetched: float, tools: list[dict[str, Any]]) -> None:
        self.fetched = fetched
        self.tools = tools
        self.by_name = {t["name"]: t for t in tools}
        self._validators: dict[str, Validator | None] = {}

    def validator(self, name: str) -> Validator | None:
        if name not in self._validators:
            self._validators[name] = translate.compile_schema(self.by_name[name]["inputSchema"])
        return self._validators[name]


class Gateway:
    """The MCP servers behind MCP-backed addresses, reached by envelope (SPEC.md "MCP mapping",
    "Any MCP message"): every request a client makes crosses whole as an
    ``application/mcp-request+json`` envelope, and what comes back in the caller's inbox — the
    server's notifications, its requests of the client, the answer — is played out on the
    request's stream."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._cards: dict[str, _CardTools] = {}
        self._acks: set[asyncio.Task[None]] = set()
        #: (HTTP session, caller, JSON-RPC id) → (target, request envelope id, thread): what a
        #: client's ``notifications/cancelled`` names. Entries of requests cancelled or ended
        #: stay in ``_ended`` (bounded), since the SDK ends a cancelled handler before it hands
        #: the notification on.
        self._inflight: dict[tuple[str, str, str], tuple[Address, str, str]] = {}
        self._ended: collections.OrderedDict[tuple[str, str, str], tuple[Address, str, str]] = (
            collections.OrderedDict()
        )
        self._asks: set[asyncio.Task[None]] = set()

    async def tools_of(self, address: Address) -> list[dict[str, Any]]:
        return (await self._tools(address)).tools

    async def _tools(self, address: Address) -> _CardTools:
        key = str(address)
        now = self.relay.clock.monotonic()
        cached = self._cards.get(key)
        if cached is not None and now - cached.fetched < CARD_TTL:
            return cached
        try:
            card = await self.relay.mailbox.card(address)
        except E.SynqError as exc:
            raise MCPError(mt.INVALID_PARAMS, f"{address}: {exc.message}") from None
        tools = translate.tools_from_card(card)
        if tools is None:
            raise MCPError(mt.INVALID_PARAMS, f"{address} is not an MCP-backed address")
        if len(self._cards) >= MAX_CARD_CACHE:
            self._cards.pop(next(iter(self._cards)))
        entry = self._cards[key] = _CardTools(now, tools)
        return entry

    @staticmethod
    def target(ctx: ServerRequestContext[Any, Any]) -> Address:
        request = ctx.request
        params = getattr(request, "path_params", None) or {}
        try:
            return Address.parse(params.get("address", ""))
        except E.SynqError as exc:
            raise MCPError(mt.INVALID_PARAMS, exc.message) from None

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: mt.PaginatedRequestParams | None
    ) -> mt.ListToolsResult:
        tools = await self.tools_of(self.target(ctx))
        return mt.ListToolsResult(tools=[mt.Tool.model_validate(t) for t in tools])

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: mt.CallToolRequestParams
    ) -> HandlerResult:
        with _served(self.relay, ctx, params.name, "gateway"):
            return await self._call_tool(ctx, params)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: mt.CallToolRequestParams
    ) -> HandlerResult:
        address = self.target(ctx)
        tools = await self._tools(address)
        if params.name in tools.by_name:
            arguments = dict(params.arguments or {})
            validator = tools.validator(params.name)
            if validator is not None and (error := translate.schema_error(validator, arguments)):
                # Input validation errors are tool execution errors (2025-11-25, SEP-1303), so
                # the model can correct itself; nothing crossed.
                return _error_result(f"Invalid arguments for tool {params.name}: {error}")
        # A tool the card does not list crosses too: the card may be older than the server's
        # list, or cut at its budget, and the server's own answer to a tool it does not have
        # is what its client would get from it directly.
        return await self.carry(ctx, "tools/call")

    async def carry(self, ctx: ServerRequestContext[Any, Any], method: str) -> HandlerResult:
        """Send the request as an envelope and play out what comes back (module docstring)."""
        address = self.target(ctx)
        caller = _caller(ctx)
        relay = self.relay
        thread = f"mcp-{uuid7(relay.clock.now())}"
        rpc_id = str(uuid7(relay.clock.now()))
        message = translate.RpcMessage(
            method, dict(ctx.params or {}), id=rpc_id, protocol=ctx.protocol_version
        )
        try:
            submitted = await relay.mailbox.send(
                Draft(
                    caller,
                    (address,),
                    translate.MCP_REQUEST_CONTENT_TYPE,
                    translate.message_body(message),
                    thread=thread,
                    expires=relay.clock.now() + timedelta(seconds=GATEWAY_WAIT),
                ),
                via="mcp",
            )
        except E.SynqError as exc:
            if method == "tools/call":
                return _synq_error(exc)
            raise MCPError(translate.INTERNAL_ERROR, exc.message) from None
        key = self._key(ctx, caller, ctx.request_id)
        entry = (address, submitted.envelope.id, thread)
        self._inflight[key] = entry
        try:
            return await self._answer(ctx, caller, address, method, thread, entry[1])
        except asyncio.CancelledError:
            if ctx.protocol_version >= SESSIONLESS:
                # 2026-07-28 HTTP has no client notifications: a client that closes the
                # request's stream cancels it ("Transports"). The cancellation crosses, so a
                # listen stream or a long call of a vanished client ends at the server too.
                self._background(self._cancel_across(caller, entry, "the client closed the stream"))
            raise
        finally:
            self._inflight.pop(key, None)
            self._ended[key] = entry
            while len(self._ended) > MAX_CARD_CACHE:
                self._ended.popitem(last=False)

    @staticmethod
    def _key(
        ctx: ServerRequestContext[Any, Any], caller: Address, rpc_id: Any
    ) -> tuple[str, str, str]:
        request = ctx.request
        headers = getattr(request, "headers", None)
        session = headers.get("mcp-session-id", "") if headers is not None else ""
        return (str(session), str(caller), str(rpc_id))

    async def cancelled(
        self, ctx: ServerRequestContext[Any, Any], params: mt.CancelledNotificationParams
    ) -> None:
        """The client cancels a request (MCP 2025-11-25 "Cancellation"): the cancellation
        crosses to the server, as a ``notifications/cancelled`` envelope answering the request
        envelope. A cancellation that loses the race with the answer is dropped there."""
        if params.request_id is None:
            return
        caller = _caller(ctx)
        key = self._key(ctx, caller, params.request_id)
        entry = self._inflight.get(key) or self._ended.pop(key, None)
        if entry is None:
            return
        await self._cancel_across(caller, entry, params.reason or "cancelled by the client")

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _cancel_across(
        self, caller: Address, entry: tuple[Address, str, str], reason: str
    ) -> None:
        address, call_id, thread = entry
        body = translate.message_body(
            translate.RpcMessage("notifications/cancelled", {"reason": reason})
        )
        try:
            await self.relay.mailbox.send(
                Draft(
                    caller,
                    (address,),
                    translate.MCP_NOTIFICATION_CONTENT_TYPE,
                    body,
                    thread=thread,
                    in_reply_to=call_id,
                    expires=self.relay.clock.now() + timedelta(seconds=GATEWAY_WAIT),
                ),
                via="mcp",
            )
        except E.SynqError as exc:
            log.info("the cancellation of %s did not leave: %s", call_id, exc.message)

    async def _answer(
        self,
        ctx: ServerRequestContext[Any, Any],
        caller: Address,
        address: Address,
        method: str,
        thread: str,
        call_id: str,
    ) -> HandlerResult:
        """Wait for the answers to ``call_id`` in the caller's inbox: notifications and the
        server's requests are played out, the answer or a DSN ends the wait. Answers it used
        are acknowledged (:meth:`_ack_soon`)."""
        deadline = asyncio.get_running_loop().time() + GATEWAY_WAIT
        asks: set[asyncio.Task[None]] = set()
        try:
            return await self._wait(ctx, caller, address, method, thread, call_id, asks, deadline)
        finally:
            # The server's questions end with its request: a client that never answered
            # leaves no task behind (the server's side times out: CLIENT_ANSWER_TIMEOUT).
            for task in asks:
                task.cancel()

    async def _wait(
        self,
        ctx: ServerRequestContext[Any, Any],
        caller: Address,
        address: Address,
        method: str,
        thread: str,
        call_id: str,
        asks: set[asyncio.Task[None]],
        deadline: float,
    ) -> HandlerResult:
        agent = caller.local
        cursor: int | None = None
        loop = asyncio.get_running_loop()
        progress = _Progress(ctx)
        async with self.relay.mailbox.follow(agent) as reader:
            while True:
                # Acked rows included, read past a cursor: another reader of the inbox acking
                # an answer first cannot hide it from the call that waits for it.
                items = await reader.read(
                    wait=max(deadline - loop.time(), 0.0),
                    limit=MAX_INBOX_PAGE,
                    after=cursor,
                    include_acked=True,
                    thread=thread,
                )
                if not items:
                    text = (
                        f"no answer within {GATEWAY_WAIT:g} s; a late answer will be in the "
                        f"inbox of {agent}@{self.relay.domain}, thread {thread}"
                    )
                    if method == "tools/call":
                        return translate.error_result(text)
                    raise MCPError(translate.REQUEST_TIMEOUT_ERROR, text)
                for item in items:
                    cursor = item.seq
                    envelope = views.envelope_object(item)
                    if envelope.get("in_reply_to") != call_id or not _from_callee(
                        envelope, address, self.relay.domain
                    ):
                        # Not this call's, or not from whom it may come: left unread.
                        continue
                    self._ack_soon(agent, item.id)
                    result = await self._interpret(
                        ctx, caller, address, method, envelope, asks, progress
                    )
                    if result is not None:
                        return result

    def _ack_soon(self, agent: str, id: str) -> None:
        """Acknowledge an answer the call used, without holding the caller's result back for
        that commit: the result is what the call waits for; the ack only keeps the answer from
        being offered again by the inbox. Should the relay stop first, the answer stays unread
        in the inbox, as any unacknowledged message does."""
        task = asyncio.create_task(self._ack(agent, id))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _ack(self, agent: str, id: str) -> None:
        try:
            await self.relay.mailbox.ack_all(agent, [id])
        except E.SynqError as exc:
            log.info("answer %s stays unread in the inbox of %s: %s", id, agent, exc.message)

    async def _interpret(
        self,
        ctx: ServerRequestContext[Any, Any],
        caller: Address,
        address: Address,
        method: str,
        envelope: dict[str, Any],
        asks: set[asyncio.Task[None]],
        progress: _Progress,
    ) -> HandlerResult:
        body = envelope.get("body")
        content_type = envelope.get("content_type")
        if envelope.get("kind") == KIND_DSN and isinstance(body, dict):
            text = f"not delivered ({body.get('status')}): {body.get('diagnostic')}"
            if method == "tools/call":
                return translate.error_result(text)
            raise MCPError(translate.INTERNAL_ERROR, translate.clip(text))
        if content_type == translate.MCP_RESULT_CONTENT_TYPE:
            answer = translate.parse_answer(body)
            if answer is None:
                raise MCPError(translate.INTERNAL_ERROR, "the agent's answer is not valid")
            if answer.error is not None:
                error = mt.ErrorData.model_validate(answer.error)
                raise MCPError(error.code, error.message, error.data)
            return answer.result
        if content_type == translate.MCP_NOTIFICATION_CONTENT_TYPE:
            await self._notify(ctx, body, progress)
            return None
        if content_type == translate.MCP_REQUEST_CONTENT_TYPE:
            self._ask_soon(ctx, caller, address, envelope, asks)
            return None
        # Answers in the A2A shapes of SPEC.md "MCP mapping", "Answers".
        update = translate.progress_from_body(body)
        if update is not None:
            await progress.report(update.progress, update.total, update.message)
            return None
        result = translate.result_from_body(body)
        if result is not None:
            return result
        if envelope.get("kind") == KIND_MESSAGE:
            # An answer from an agent that is not an MCP server: its text is the result.
            text = body if isinstance(body, str) else dumps(body).decode("utf-8")
            return {"content": [{"type": "text", "text": text}]}
        return None  # another update of the task (e.g. an A2A artifact): keep waiting

    async def _notify(
        self, ctx: ServerRequestContext[Any, Any], body: Any, progress: _Progress
    ) -> None:
        """One server notification, on the request's own stream."""
        try:
            message = translate.parse_message(body, translate.SERVER_NOTIFICATIONS)
        except translate.CallRefused as exc:
            log.info("a notification was not played out: %s", exc.reason)
            return
        if message.method == "notifications/progress":
            params = message.params
            if isinstance(params.get("progress"), int | float):
                total = params.get("total")
                text = params.get("message")
                await progress.report(
                    float(params["progress"]),
                    float(total) if isinstance(total, int | float) else None,
                    text if isinstance(text, str) else None,
                )
            return
        params = message.params
        meta = params.get("_meta")
        if isinstance(meta, dict) and translate.SUBSCRIPTION_ID_META_KEY in meta:
            # Tagged with the listen request's id at the server's hop; this hop's is ours.
            params = {
                **params,
                "_meta": {**meta, translate.SUBSCRIPTION_ID_META_KEY: ctx.request_id},
            }
        try:
            notification = _SERVER_NOTIFICATION.validate_python(
                {"method": message.method, "params": params}
            )
        except ValidationError:
            log.info("a %s notification was not valid", message.method)
            return
        await ctx.session.send_notification(notification, related_request_id=ctx.request_id)

    def _ask_soon(
        self,
        ctx: ServerRequestContext[Any, Any],
        caller: Address,
        address: Address,
        envelope: dict[str, Any],
        asks: set[asyncio.Task[None]],
    ) -> None:
        """A server's request of its client (sampling, elicitation, roots) during the request:
        asked on the request's stream, answered by envelope, without stopping the wait. It ends
        with the request (the client left: the server's side times out)."""
        if len(self._asks) >= MAX_SESSIONS:
            log.info("a server request from %s was not asked: too many open", address)
            return
        task = asyncio.create_task(self._ask(ctx, caller, address, envelope))
        self._asks.add(task)
        asks.add(task)
        task.add_done_callback(self._asks.discard)
        task.add_done_callback(asks.discard)

    async def _ask(
        self,
        ctx: ServerRequestContext[Any, Any],
        caller: Address,
        address: Address,
        envelope: dict[str, Any],
    ) -> None:
        try:
            message = translate.parse_message(envelope.get("body"), translate.SERVER_METHODS)
        except translate.CallRefused as exc:
            log.info("a server request was not asked: %s", exc.reason)
            return
        answer: translate.RpcAnswer
        try:
            request = _SERVER_REQUEST.validate_python(
                {"method": message.method, "params": message.params or None}
            )
            result = await ctx.session.send_request(
                request,
                _RawResult,
                metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
            )
            answer = translate.RpcAnswer(
                message.id, result=result.model_dump(by_alias=True, mode="json", exclude_none=True)
            )
        except MCPError as exc:
            answer = translate.RpcAnswer(
                message.id,
                error=exc.error.model_dump(by_alias=True, mode="json", exclude_none=True),
            )
        except ValidationError as exc:
            answer = translate.RpcAnswer(
                message.id, error=translate.rpc_error(mt.INVALID_REQUEST, str(exc))
            )
        try:
            await self.relay.mailbox.send(
                Draft(
                    caller,
                    (address,),
                    translate.MCP_RESULT_CONTENT_TYPE,
                    translate.answer_body(answer),
                    thread=envelope.get("thread"),
                    in_reply_to=str(envelope.get("id")),
                    expires=self.relay.clock.now() + timedelta(seconds=GATEWAY_WAIT),
                ),
                via="mcp",
            )
        except E.SynqError as exc:
            log.info("the answer to %s did not leave: %s", envelope.get("id"), exc.message)

    def server(self) -> Server[Any]:
        server: Server[Any] = Server(
            "synq-relay-tools",
            version="1",
            instructions="An MCP server behind a Synq address, reached across the relay network.",
            on_list_tools=self.list_tools,
        )
        server.add_request_handler("tools/call", mt.CallToolRequestParams, self.call_tool)
        for method, params_type in _CARRIED.items():
            server.add_request_handler(method, params_type, self._carrier(method))
        server.add_notification_handler(
            "notifications/cancelled", mt.CancelledNotificationParams, self.cancelled
        )
        return server

    def _carrier(
        self, method: str
    ) -> Callable[[ServerRequestContext[Any, Any], Any], Awaitable[HandlerResult]]:
        async def carry(ctx: ServerRequestContext[Any, Any], params: Any) -> HandlerResult:
            return await self.carry(ctx, method)

        return carry


class _RawResult(BaseModel):
    """Any JSON-RPC result, kept whole."""

    model_config = ConfigDict(extra="allow")


_SERVER_NOTIFICATION: Final[TypeAdapter[mt.ServerNotification]] = TypeAdapter(mt.ServerNotification)
_SERVER_REQUEST: Final[TypeAdapter[mt.ServerRequest]] = TypeAdapter(mt.ServerRequest)
#: The requests ``/mcp/<address>`` carries besides ``tools/*``, with the params model the SDK
#: checks them against before they cross.
_CARRIED: Final[dict[str, type[BaseModel]]] = {
    "resources/list": mt.PaginatedRequestParams,
    "resources/templates/list": mt.PaginatedRequestParams,
    "resources/read": mt.ReadResourceRequestParams,
    "resources/subscribe": mt.SubscribeRequestParams,
    "resources/unsubscribe": mt.UnsubscribeRequestParams,
    "prompts/list": mt.PaginatedRequestParams,
    "prompts/get": mt.GetPromptRequestParams,
    "completion/complete": mt.CompleteRequestParams,
    "logging/setLevel": mt.SetLevelRequestParams,
    "subscriptions/listen": mt.SubscriptionsListenRequestParams,
}


# --- /mcp and synq mcp: the relay's own face ----------------------------------------------------

_STRING: Final = {"type": "string"}
OWN_TOOLS: Final = [
    mt.Tool(
        name="send_message",
        title="Send a message",
        description=(
            "Send a message to one or more Synq addresses (name@domain) as this agent. The relay "
            "signs it and delivers it — to partner organisations too. Returns the message id."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "to": {
                    "anyOf": [
                        {"type": "string"},
                        {
                            "type": "array",
                            "items": _STRING,
                            "minItems": 1,
                            "maxItems": MAX_RECIPIENTS,
                        },
                    ],
                    "description": "recipient address, or a list of addresses",
                },
                "body": {"description": "the message: text, or any JSON value"},
                "content_type": {
                    "type": "string",
                    "default": "text/plain",
                    "description": "media type of body, e.g. text/plain or application/json",
                },
                "thread": {"type": "string", "description": "conversation id to continue"},
                "in_reply_to": {"type": "string", "description": "id of the message answered"},
                "kind": {"type": "string", "pattern": KIND_PATTERN, "default": "message"},
                "expires": {"type": "string", "description": "RFC 3339 time; default 2 days"},
                "notify": {
                    "type": "array",
                    "items": {"enum": ["success", "delay", "failure", "never"]},
                    "minItems": 1,
                    "uniqueItems": True,
                    "description": (
                        "delivery reports wanted per recipient (RFC 3461 NOTIFY): success "
                        "(a receipt when it is delivered), delay, failure (the default); or "
                        "never alone. Reports arrive in the inbox, from mailer-daemon"
                    ),
                },
                "idempotency_key": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
                    "description": (
                        "a unique key for this message (a UUID, say): calling again with the "
                        "same key and arguments returns the first id and sends nothing twice"
                    ),
                },
            },
            "required": ["to", "body"],
            "additionalProperties": False,
        },
    ),
    mt.Tool(
        name="check_inbox",
        title="Check the inbox",
        description=(
            "Read this agent's unacknowledged messages, oldest first, waiting up to `wait` "
            "seconds for the first. With ack=true the returned messages are marked as read."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "wait": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": MAX_LONG_POLL_SECONDS,
                    "default": 0,
                },
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_CHECK_INBOX,
                    "default": 20,
                },
                "thread": {"type": "string", "description": "only this conversation"},
                "ack": {"type": "boolean", "default": False},
            },
            "additionalProperties": False,
        },
    ),
    mt.Tool(
        name="find_agents",
        title="Find agents",
        description=(
            "Search for agents that can do something, described in plain words (`query`), "
            "here and, with `federation` auto, at partner relays. Each result has the "
            "`address` to send_message to, a `score` 0-100, and what the agent can do. "
            "`filter` narrows by `tags`, `capabilities`, `type` or `publisher` (ARD filters)."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "query": {"type": "string", "default": ""},
                "filter": {
                    "type": "object",
                    "additionalProperties": {
                        "anyOf": [{"type": "string"}, {"type": "array", "items": _STRING}]
                    },
                },
                "federation": {"enum": ["auto", "referrals", "none"], "default": "auto"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
            },
            "additionalProperties": False,
        },
    ),
    mt.Tool(
        name="get_agent_card",
        title="Get an agent card",
        description="The A2A agent card of any address, here or at a partner: what it can do.",
        input_schema={
            "type": "object",
            "properties": {"address": _STRING},
            "required": ["address"],
            "additionalProperties": False,
        },
    ),
    mt.Tool(
        name="message_status",
        title="Message status",
        description="Delivery state of a message this agent sent, per recipient, with its events.",
        input_schema={
            "type": "object",
            "properties": {"id": _STRING},
            "required": ["id"],
            "additionalProperties": False,
        },
    ),
    mt.Tool(
        name="emit_signal",
        title="Emit a signal",
        description=(
            "Offer work to whoever can do it, instead of choosing a worker: agents subscribed to "
            "the topic hear it while its intensity (urgency, halving every half_life seconds) "
            "is at least their threshold, claim it and complete it; the result comes to your "
            "inbox in reply to the signal id."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "topic": {"type": "string", "description": "dotted name, e.g. invoice.overdue"},
                "text": {"type": "string", "description": "what is wanted"},
                "urgency": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "half_life": {"type": "number", "description": "seconds; default 600"},
                "lease": {"type": "number", "description": "seconds a claim lasts; default 60"},
                "scope": {
                    "anyOf": [{"enum": ["local", "partners"]}, {"type": "array", "items": _STRING}],
                    "description": "local (default), partners, or a list of partner domains",
                },
                "expires": {"type": "string", "description": "RFC 3339 time; default 1 day"},
                "content_type": _STRING,
                "body": {"description": "details of the work: text, or any JSON value"},
            },
            "required": ["topic", "urgency"],
            "additionalProperties": False,
        },
    ),
    mt.Tool(
        name="watch_signals",
        title="Watch signals",
        description=(
            "The open signals this agent hears, strongest first, waiting up to `wait` seconds "
            "for the first. Give topics (patterns: invoice.* one label, invoice.** any below) "
            "and threshold, or capabilities=true (the skills of this agent's card), to "
            "subscribe first."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "wait": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": MAX_LONG_POLL_SECONDS,
                    "default": 0,
                },
                "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
                "topics": {"type": "array", "items": _STRING},
                "threshold": {"type": "number", "minimum": 0, "maximum": 2},
                "capabilities": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
    ),
    mt.Tool(
        name="claim_signal",
        title="Claim a signal",
        description=(
            "Take a signal for one lease: returns a token for complete_signal. Call again with "
            "the token before the lease ends to extend it (a heartbeat); a lease that runs out "
            "gives the signal to others and the token stops working."
        ),
        input_schema={
            "type": "object",
            "properties": {"id": _STRING, "token": _STRING},
            "required": ["id"],
            "additionalProperties": False,
        },
    ),
    mt.Tool(
        name="complete_signal",
        title="Complete a signal",
        description="Finish a claimed signal; the body goes to the emitter as the result.",
        input_schema={
            "type": "object",
            "properties": {
                "id": _STRING,
                "token": _STRING,
                "body": {"description": "the result: text, or any JSON value"},
                "content_type": _STRING,
            },
            "required": ["id", "token"],
            "additionalProperties": False,
        },
    ),
    mt.Tool(
        name="release_signal",
        title="Release a signal",
        description="Give a claimed signal back, so that another agent can take it.",
        input_schema={
            "type": "object",
            "properties": {"id": _STRING, "token": _STRING},
            "required": ["id", "token"],
            "additionalProperties": False,
        },
    ),
]

Identify = Callable[[ServerRequestContext[Any, Any]], Awaitable[AgentRecord]]


class OwnFace:
    """The tools by which an MCP client acts as one local agent."""

    def __init__(self, relay: Relay, identify: Identify) -> None:
        self.relay = relay
        self.identify = identify
        self._validators = {t.name: translate.compile_schema(t.input_schema) for t in OWN_TOOLS}

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: mt.PaginatedRequestParams | None
    ) -> mt.ListToolsResult:
        return mt.ListToolsResult(tools=OWN_TOOLS)

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: mt.CallToolRequestParams
    ) -> mt.CallToolResult:
        with _served(self.relay, ctx, params.name, "relay"):
            return await self._call_tool(ctx, params)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: mt.CallToolRequestParams
    ) -> mt.CallToolResult:
        handler = self._handlers.get(params.name)
        if handler is None:
            raise MCPError(mt.INVALID_PARAMS, f"Unknown tool: {params.name}")
        arguments = dict(params.arguments or {})
        validator = self._validators[params.name]
        if validator is not None and (error := translate.schema_error(validator, arguments)):
            return _error_result(f"Invalid arguments for tool {params.name}: {error}")
        agent = await self.identify(ctx)
        try:
            return _json_result(await handler(self, agent, arguments))
        except E.SynqError as exc:
            return _synq_error(exc)

    async def send_message(self, agent: AgentRecord, args: dict[str, Any]) -> Any:
        relay = self.relay
        to_arg = args["to"]
        expires = args.get("expires")
        draft = Draft(
            Address(agent.name, relay.domain),
            tuple(Address.parse(a) for a in ([to_arg] if isinstance(to_arg, str) else to_arg)),
            args.get("content_type", "text/plain"),
            args["body"],
            kind=args.get("kind", KIND_MESSAGE),
            thread=args.get("thread"),
            in_reply_to=args.get("in_reply_to"),
            expires=None if expires is None else parse_expires(expires),
            notify=parse_notify(args.get("notify")),
        )
        key = args.get("idempotency_key")
        # The same key as the API's Idempotency-Key (SPEC.md §6.2): a tool call retried after a
        # lost answer (a broken session, a client restart) answers with the first message id.
        sent = await relay.mailbox.send(
            draft, via="mcp", key=None if key is None else idempotency.check_key(key)
        )
        return views.queued(sent.id)

    async def check_inbox(self, agent: AgentRecord, args: dict[str, Any]) -> Any:
        mailbox = self.relay.mailbox
        items = await mailbox.read(
            agent.name,
            wait=float(args.get("wait", 0)),
            limit=int(args.get("limit", 20)),
            thread=args.get("thread"),
        )
        if args.get("ack"):
            await mailbox.ack_all(agent.name, [item.id for item in items])
        return {"messages": [views.envelope_object(i) for i in items]}

    async def find_agents(self, agent: AgentRecord, args: dict[str, Any]) -> Any:
        """Capability search (SPEC.md §12.4) as this agent sees the catalog; results are ARD
        entries, each with the ``address`` a model can message next."""
        relay = self.relay
        query: dict[str, Any] = {"text": args.get("query", "")}
        if args.get("filter"):
            query["filter"] = args["filter"]
        # A malformed filter is a tool error naming it, as the other tools' bad arguments are.
        request = catalog.parse_search(
            {
                "query": query,
                "federation": args.get("federation", "auto"),
                "pageSize": args.get("limit", 10),
            }
        )
        viewer = catalog.Viewer.local(f"{agent.name}@{relay.domain}")
        wait = relay.search_rates.take(f"agent:{agent.name}", relay.clock.monotonic())
        if wait > 0:
            raise E.RateLimited(f"too many searches; retry in {wait:.0f} s", retry_after=wait)
        page = await relay.catalog.search(viewer, request)
        body: dict[str, Any] = {
            "agents": [
                {"address": r.get("metadata", {}).get("address", ""), **r} for r in page.results
            ]
        }
        if page.referrals is not None:
            body["referrals"] = page.referrals
        return body

    async def get_agent_card(self, agent: AgentRecord, args: dict[str, Any]) -> Any:
        return await self.relay.mailbox.card(Address.parse(args["address"]))

    async def message_status(self, agent: AgentRecord, args: dict[str, Any]) -> Any:
        status = await self.relay.mailbox.status(str(args["id"]), agent=agent.name)
        return views.status_to_wire(status)

    async def emit_signal(self, agent: AgentRecord, args: dict[str, Any]) -> Any:
        signals = self.relay.signals
        signal = await signals.emit(agent.name, args)
        view = signal_view(signal, self.relay.clock.now())
        return {"id": signal.id, "state": signal.state, "intensity": view["intensity"]}

    async def watch_signals(self, agent: AgentRecord, args: dict[str, Any]) -> Any:
        signals = self.relay.signals
        wanted = {k: args[k] for k in ("topics", "threshold", "capabilities") if k in args}
        if wanted:
            await signals.subscribe(agent.name, wanted)
        heard = await signals.feed(
            agent.name, wait=float(args.get("wait", 0)), limit=int(args.get("limit", 20))
        )
        now = self.relay.clock.now()
        return {"signals": [signal_view(h.signal, now) for h in heard]}

    async def claim_signal(self, agent: AgentRecord, args: dict[str, Any]) -> Any:
        signals = self.relay.signals
        if "token" in args:
            token = args["token"]
            until = await signals.heartbeat(agent.name, args["id"], token)
        else:
            token, until = await signals.claim(agent.name, args["id"])
        return {"claim": {"token": token, "expires": format_timestamp(until)}}

    async def complete_signal(self, agent: AgentRecord, args: dict[str, Any]) -> Any:
        signal = await self.relay.signals.complete(
            agent.name, args["id"], args["token"], args.get("content_type"), args.get("body")
        )
        return {"id": signal.id, "state": signal.state}

    async def release_signal(self, agent: AgentRecord, args: dict[str, Any]) -> Any:
        signal = await self.relay.signals.release(agent.name, args["id"], args["token"])
        return {"id": signal.id, "state": signal.state}

    _handlers: Final[
        dict[str, Callable[[OwnFace, AgentRecord, dict[str, Any]], Awaitable[Any]]]
    ] = {
        "send_message": send_message,
        "check_inbox": check_inbox,
        "find_agents": find_agents,
        "get_agent_card": get_agent_card,
        "message_status": message_status,
        "emit_signal": emit_signal,
        "watch_signals": watch_signals,
        "claim_signal": claim_signal,
        "complete_signal": complete_signal,
        "release_signal": release_signal,
    }

    def server(self) -> Server[Any]:
        return Server(
            "synq-relay",
            version="1",
            instructions=(
                "You are an agent with a Synq address. send_message reaches any address "
                "(name@domain), here or at partner organisations; check_inbox reads what others "
                "sent you; message_status says whether your messages arrived."
            ),
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
        )


def http_identify(relay: Relay) -> Identify:
    async def identify(ctx: ServerRequestContext[Any, Any]) -> AgentRecord:
        address = _caller(ctx)
        agent = await relay.store.get_agent(address.local)
        if agent is None:
            raise MCPError(mt.INVALID_REQUEST, f"agent {address} no longer exists")
        return agent

    return identify


async def serve_stdio(relay: Relay, agent: AgentRecord) -> None:
    """``synq mcp --agent NAME``: the own face on this process's stdin and stdout."""

    async def identify(ctx: ServerRequestContext[Any, Any]) -> AgentRecord:
        return agent

    server = OwnFace(relay, identify).server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


# --- hosting -----------------------------------------------------------------------------------


def build_asgi(relay: Relay) -> Starlette:
    """One Starlette application for both faces, with their session managers' lifespans."""
    security = security_settings(relay)

    def manager(server: Server[Any]) -> StreamableHTTPSessionManager:
        # SSE answers (json_response=False): a JSON answer cannot carry the progress
        # notifications that precede it (MCP 2025-11-25 "Transports" §Sending Messages).
        return StreamableHTTPSessionManager(
            app=server,
            json_response=False,
            security_settings=security,
            session_idle_timeout=SESSION_IDLE_TIMEOUT,
            max_request_body_size=MAX_API_BODY_BYTES,
            max_sessions=MAX_SESSIONS,
        )

    own = manager(OwnFace(relay, http_identify(relay)).server())
    gateway = manager(Gateway(relay).server())

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with own.run(), gateway.run():
            yield

    own_endpoint = RequireAuthMiddleware(
        StreamableHTTPASGIApp(own), [], AnyHttpUrl(metadata_url(relay, "/mcp"))
    )

    return Starlette(
        routes=[
            Route("/mcp", own_endpoint),
            Route("/mcp/{address}", _GatewayAuth(StreamableHTTPASGIApp(gateway), relay)),
        ],
        middleware=[Middleware(AuthenticationMiddleware, backend=AgentTokens(relay))],
        lifespan=lifespan,
    )


routes = web.RouteTableDef()


@routes.route("*", "/mcp")
@routes.route("*", "/mcp/{address}")
async def mcp_endpoint(request: web.Request) -> web.StreamResponse:
    """Streamable HTTP (MCP 2025-11-25 and 2026-07-28 "Transports"), served by the SDK — unless
    the request carries a token and its address has no failed attempt left: ``429``, before
    the token is looked up (relay.server.auth)."""
    if "Authorization" in request.headers:
        refuse_guessing(request.app[RELAY], request.remote)
    return await request.app[MCP_HOST].handle(request)


@routes.get("/.well-known/oauth-protected-resource/mcp")
@routes.get("/.well-known/oauth-protected-resource/mcp/{address}")
async def protected_resource(request: web.Request) -> web.Response:
    """RFC 9728 §3 protected-resource metadata for ``/mcp`` and ``/mcp/<address>``.

    Synq tokens are issued by the operator (``synq agent add``), not by an OAuth authorization
    server, so ``authorization_servers`` is absent: a client learns here that it must be given
    a bearer token in the ``Authorization`` header (RFC 6750 §2.1).
    """
    relay = request.app[RELAY]
    path = request.path.removeprefix("/.well-known/oauth-protected-resource")
    return web.json_response(
        {
            "resource": f"{relay.public_url.rstrip('/')}{path}",
            "bearer_methods_supported": ["header"],
            "scopes_supported": [SCOPE],
            "resource_name": f"Synq relay {relay.domain}",
        },
        headers={"Access-Control-Allow-Origin": "*"},
    )


def setup(app: web.Application, relay: Relay) -> None:
    """Add the MCP faces to the relay's aiohttp application."""
    host = AsgiHost(build_asgi(relay), "mcp")
    app[MCP_HOST] = host
    app.add_routes(routes)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await host.startup()
        yield
        await host.shutdown()

    app.cleanup_ctx.append(lifecycle)


def _from_callee(envelope: Mapping[str, Any], address: Address, here: str) -> bool:
    """Whether ``envelope`` may answer a call to ``address``: it comes from ``address``, or it
    is a DSN reporting a failure from ``mailer-daemon`` of that address's domain or of this
    relay (SPEC.md "MCP mapping", as the A2A face's replies). Anyone else who learned the
    call's thread and envelope id could otherwise answer it in the callee's name."""
    sender = envelope.get("from")
    if sender == str(address):
        return True
    if envelope.get("kind") != KIND_DSN or not isinstance(sender, str):
        return False
    try:
        reporter = Address.parse(sender)
    except E.SynqError:
        return False
    return (
        reporter.local == MAILER_DAEMON
        and reporter.domain in (address.domain, here)
        and is_failure(envelope.get("body"))
    )


class _Progress:
    """The progress one call has reported to its client. MCP requires each report of a request
    to increase (2025-11-25 "Progress": the progress value MUST increase with each
    notification), and envelopes keep no order (SPEC.md §9.1): two reports the agent's relay
    sent in separate transactions can arrive in either order. A report not above the last one
    passed on is dropped — the later one said more."""

    __slots__ = ("ctx", "last")

    def __init__(self, ctx: ServerRequestContext[Any, Any]) -> None:
        self.ctx = ctx
        self.last: float | None = None

    async def report(self, value: float, total: float | None, message: str | None) -> None:
        if self.last is not None and value <= self.last:
            return
        self.last = value
        await self.ctx.session.report_progress(value, total, message)
