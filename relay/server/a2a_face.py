"""The relay's A2A face (SPEC.md "The A2A face"): an A2A agent for every address the relay
can reach.

For any address — a local inbox agent, a local agent backed by an A2A or MCP server, a
partner's agent across federation — the relay serves, rooted at ``/a2a/<address>``::

    GET  /a2a/<address>/.well-known/agent-card.json    the card, signed by this relay
    POST /a2a/<address>                                 JSON-RPC 2.0 (A2A 1.0 §9)
    *    /a2a/<address>/message:send, /tasks/…          HTTP+JSON (A2A 1.0 §11)
    GET  /a2a/jwks.json                                 the keys that verify the cards

so ``A2ACardResolver(client, "<relay>/a2a/bob@globex.example")`` and any unmodified A2A client
work as if the agent were local. A call becomes an envelope from the caller's local agent; the
answer is a task that advances as reply envelopes come back (relay/tasks/).

Hosting (SPEC.md "Hosting the SDKs"): the protocol bindings are a2a-sdk's own Starlette routes,
run inside this aiohttp server by :class:`~relay.server.asgi.AsgiHost`, so the face parses,
validates and answers exactly as any a2a-sdk agent does; what is the relay's — finding the
address, authenticating the caller, reading the body within limits — happens in aiohttp before
the request is handed over, and the SDK's transport-agnostic ``RequestHandler`` is implemented
here on the relay's store (:class:`FaceHandler`).

Authentication (A2A 1.0 §7): the card declares one HTTP bearer scheme, the token of a local
agent (``synq agent add``); the call acts as that agent. A relay configured with
``[a2a] anonymous_agent = NAME`` lets calls without credentials act as local agent NAME (for
conformance runs); its cards then declare no security requirement.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from a2a.server.context import ServerCallContext
from a2a.server.events import Event
from a2a.server.request_handlers import RequestHandler, validate_request_params
from a2a.server.routes import create_jsonrpc_routes, create_rest_routes
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils import errors as a2a
from a2a.utils.task import apply_history_length, validate_history_length, validate_page_size
from aiohttp import web
from starlette.applications import Starlette
from starlette.requests import Request
from yarl import URL

from adapters.a2a import cards, wire
from adapters.a2a import tasks as folding
from relay.core import errors as E
from relay.core import jsonutil
from relay.core.address import Address
from relay.core.limits import MAX_API_BODY_BYTES
from relay.server.asgi import AsgiHost
from relay.server.auth import agent_for_token, bearer_token, refuse_guessing
from relay.server.http import read_body
from relay.tasks.store import FIRST_EVENT_WAIT, MAX_BLOCKING_WAIT, Started, Tail, TaskStore

if TYPE_CHECKING:
    from relay.runtime import Relay
    from relay.server.a2a_grpc import GrpcFace

__all__ = ["A2A_FACE", "MAX_A2A_BODY_BYTES", "A2AFace", "FaceHandler"]

log = logging.getLogger("synq.a2a.face")

#: Largest request body the face reads. A call becomes one envelope, so a body larger than
#: an envelope can carry is refused before it is read (413): stops memory exhaustion by huge
#: bodies, which the ASGI bridge would otherwise stream into the SDK whole.
MAX_A2A_BODY_BYTES: Final = MAX_API_BODY_BYTES
#: ``Cache-Control: max-age`` of the cards the face serves (A2A 1.0 §8.6): clients may reuse a
#: card this long; the agent behind it may change its card, so not for longer.
CARD_MAX_AGE: Final = 60
#: Signatures of a partner's card checked at most (one per key selector is plenty; a card with
#: many costs the relay one DNS look-up each).
MAX_CARD_SIGNATURES: Final = 4

_SENDER: Final = "synq.sender"
_ADDRESS: Final = "synq.address"
#: In a call's state: the list the handler adds a SendMessage call's ``Started`` to once it has
#: produced the call's whole answer. The binding that writes the answer hands the list to
#: :meth:`TaskStore.answered_soon` only when the answer was written in full (SPEC.md "The A2A
#: face", "Retries"): a client cut off before that keeps its retry.
_ANSWERED: Final = "synq.answered"
_STARTED: Final = "synq.started"


class _ContextBuilder(DefaultServerCallContextBuilder):
    """The SDK's call context, plus who is calling and for which address (set by the relay's
    aiohttp handler in the ASGI scope's state before the SDK sees the request)."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        state = request.scope.get("state") or {}
        context.state[_SENDER] = state.get(_SENDER, "")
        context.state[_ADDRESS] = state.get(_ADDRESS, "")
        context.state[_ANSWERED] = state.get(_ANSWERED)
        return context


def _caller(context: ServerCallContext) -> tuple[str, Address]:
    owner = context.state.get(_SENDER)
    address = context.state.get(_ADDRESS)
    if not owner or not address:
        raise a2a.InternalError(message="the request reached the face without a caller")
    return str(owner), Address.parse(str(address))


def _answered(context: ServerCallContext) -> None:
    """The handler produced the whole answer of the call it started (see :data:`_ANSWERED`)."""
    answered = context.state.get(_ANSWERED)
    started = context.state.get(_STARTED)
    if isinstance(answered, list) and isinstance(started, Started):
        answered.append(started)


def _payload(event: StreamResponse) -> Event:
    """The SDK's event object inside a StreamResponse (its routes wrap it again)."""
    which = event.WhichOneof("payload")
    if which is None:
        raise a2a.InternalError(message="empty event in the task log")
    inner: Event = getattr(event, which)
    return inner


class FaceHandler(RequestHandler):
    """a2a-sdk's transport-agnostic request handler, on the relay's task store: what an
    a2a-sdk agent's DefaultRequestHandler does with an executor and an in-memory store, this
    does with envelopes and the relay's store (behaviours mirrored: A2A 1.0 §3.1 and a2a-sdk
    1.3's errors and messages)."""

    def __init__(self, tasks: TaskStore) -> None:
        self.tasks = tasks

    @validate_request_params
    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task:
        validate_history_length(params)
        owner, address = _caller(context)
        _row, task = await self.tasks.get(owner, address, params.id)
        return apply_history_length(task, params)

    @validate_request_params
    async def on_list_tasks(
        self, params: ListTasksRequest, context: ServerCallContext
    ) -> ListTasksResponse:
        validate_history_length(params)
        if params.HasField("page_size"):
            validate_page_size(params.page_size)
        owner, address = _caller(context)
        page = await self.tasks.list_tasks(owner, address, params)
        for task in page.tasks:
            if not params.include_artifacts:
                task.ClearField("artifacts")
            limited = apply_history_length(task, params)
            if limited is not task:
                task.CopyFrom(limited)
        return page

    @validate_request_params
    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task:
        owner, address = _caller(context)
        return await self.tasks.cancel(owner, address, params.id)

    async def _start(self, params: SendMessageRequest, context: ServerCallContext) -> Started:
        owner, address = _caller(context)
        started = await self.tasks.start(owner, address, params)
        context.state[_STARTED] = started
        return started

    @validate_request_params
    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Task | Message:
        answer = await self._message_send(params, context)
        _answered(context)
        return answer

    @validate_request_params
    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        async for event in self._message_stream(params, context):
            yield event
        _answered(context)

    async def _message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Task | Message:
        validate_history_length(params.configuration)
        started = await self._start(params, context)
        # A retried call (the same messageId) reads the task its first call started: a new
        # task's log from the start, as the first call read it; a follow-up the agent has
        # answered already is answered at once.
        found = None
        if not params.configuration.return_immediately and not started.settled:
            # Blocking (A2A 1.0 §3.2.2): until the task ends or waits for input, or a direct
            # message answers a new task — within MAX_BLOCKING_WAIT.
            deadline = asyncio.get_running_loop().time() + MAX_BLOCKING_WAIT
            async with Tail(self.tasks, started.task_id, started.version) as tail:
                first = True
                while (item := await tail.next(deadline)) is not None:
                    event = item[1]
                    if first and started.new and event.WhichOneof("payload") == "message":
                        return event.message
                    first = False
                    if folding.ends_stream(event):
                        # The task as the change that ended the wait left it, when that change
                        # was handed over in this process; else as the store holds it.
                        found = tail.current()
                        break
        found = found or await self.tasks.load(started.task_id)
        if found is None:
            raise a2a.TaskNotFoundError
        return apply_history_length(found[1], params.configuration)

    async def _message_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        validate_history_length(params.configuration)
        started = await self._start(params, context)
        config = params.configuration
        async with Tail(self.tasks, started.task_id, started.version) as tail:
            seen = started.version
            if started.new:
                # The agent's first event decides: a direct message, or the task (A2A 1.0
                # §3.1.2: a stream begins with a Task or is a single Message).
                loop = asyncio.get_running_loop()
                item = await tail.next(loop.time() + FIRST_EVENT_WAIT)
                if item is not None and item[1].WhichOneof("payload") == "message":
                    yield item[1].message
                    return
                if item is not None and item[1].WhichOneof("payload") == "task":
                    yield apply_history_length(item[1].task, config)
                    if folding.ends_stream(item[1]):
                        return
                    seen = item[0]
                else:
                    found = await self.tasks.load(started.task_id)
                    if found is None:
                        raise a2a.TaskNotFoundError
                    row, task = found
                    yield apply_history_length(task, config)
                    if task.status.state in wire.TERMINAL_STATES | wire.WAITING_STATES:
                        return
                    seen = row.version
            elif started.replay:
                # A retried follow-up: the task as it stands, then what comes next, if anything.
                found = await self.tasks.load(started.task_id)
                if found is None:
                    raise a2a.TaskNotFoundError
                row, task = found
                yield apply_history_length(task, config)
                if started.settled:
                    return
                seen = row.version
            async for event in self._follow(tail, seen, started.task_id):
                yield event

    async def _follow(self, tail: Tail, seen: int, task_id: str) -> AsyncIterator[Event]:
        """Stream the log after version ``seen`` until the task ends or waits for input."""
        while True:
            item = await tail.next()
            if item is None:
                continue
            version, event = item
            if version <= seen:
                continue
            if event.WhichOneof("payload") == "message":
                found = await self.tasks.load(task_id)
                if found is not None:
                    event = folding.stream_event(event, found[1])
            yield _payload(event)
            if folding.ends_stream(event):
                return

    @validate_request_params
    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        owner, address = _caller(context)
        row, task = await self.tasks.get(owner, address, params.id)
        if task.status.state in wire.TERMINAL_STATES:
            raise a2a.UnsupportedOperationError(
                message=(f"Task {row.id} is in terminal state: {TaskState.Name(task.status.state)}")
            )
        async with Tail(self.tasks, row.id, row.version) as tail:
            yield task
            async for event in self._follow(tail, row.version, row.id):
                yield event

    @validate_request_params
    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        owner, address = _caller(context)
        return await self.tasks.set_push(owner, address, params)

    @validate_request_params
    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        owner, address = _caller(context)
        for config in await self.tasks.push_configs(owner, address, params.task_id):
            if config.id == params.id:
                return config
        raise a2a.TaskNotFoundError

    @validate_request_params
    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        owner, address = _caller(context)
        configs = await self.tasks.push_configs(owner, address, params.task_id)
        return ListTaskPushNotificationConfigsResponse(configs=configs)

    @validate_request_params
    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        owner, address = _caller(context)
        await self.tasks.delete_push(owner, address, params.task_id, params.id)

    @validate_request_params
    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        raise a2a.UnsupportedOperationError(
            message="The agent does not support authenticated extended cards"
        )


class A2AFace:
    """The face's routes and its SDK host, on the relay's task store (relay/tasks/store.py; the
    runtime runs the reply tracker and the webhook pushes behind it)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.tasks = relay.task_store
        self.handler = FaceHandler(self.tasks)
        builder = _ContextBuilder()
        # JSON-RPC at the interface URL itself, and with a trailing slash: clients that treat
        # the URL as a base and post to "/" (the A2A TCK's) land there too.
        routes = [
            *create_jsonrpc_routes(self.handler, rpc_url="/a2a/{address}", context_builder=builder),
            *create_jsonrpc_routes(
                self.handler, rpc_url="/a2a/{address}/", context_builder=builder
            ),
            *create_rest_routes(
                self.handler, context_builder=builder, path_prefix="/a2a/{address}"
            ),
        ]
        app = Starlette(routes=routes)
        # A 307 to the other spelling would make a client re-send its POST, or fail on the
        # empty body; every spelling is routed above instead.
        app.router.redirect_slashes = False
        self.host = AsgiHost(app, "a2a")
        #: The gRPC listener (relay/server/a2a_grpc.py), while ``[a2a] grpc_listen`` is on.
        self.grpc: GrpcFace | None = None

    @property
    def grpc_target(self) -> str | None:
        """The gRPC interface's target (``host:port``) the cards name, or None while the
        listener is off. A wildcard bind (``0.0.0.0``, ``::``) is named by the public URL's
        host, the name clients reach the relay by."""
        if self.grpc is None or not self.grpc.bound:
            return None
        host, _, port = self.grpc.bound.rpartition(":")
        if host.strip("[]") in ("0.0.0.0", "::", ""):  # noqa: S104 (compared, not bound)
            public = URL(self.relay.public_url).raw_host or "localhost"
            host = f"[{public}]" if ":" in public else public
        return f"{host}:{port}"

    def install(self, app: web.Application) -> None:
        app[A2A_FACE] = self
        app.router.add_get("/a2a/jwks.json", self.jwks)
        app.router.add_get("/a2a/{address}/.well-known/agent-card.json", self.card)
        app.router.add_route("*", "/a2a/{address}", self.call)
        app.router.add_route("*", "/a2a/{address}/{tail:.*}", self.call)
        app.cleanup_ctx.append(self._lifecycle)

    async def _lifecycle(self, _app: web.Application) -> AsyncIterator[None]:
        await self.host.startup()
        try:
            listen = self.relay.config.a2a.grpc_listen
            if listen is not None:
                # Imported here: relay.server.a2a_grpc builds on this module.
                from relay.server.a2a_grpc import GrpcFace

                grpc = GrpcFace(self)
                await grpc.start(listen)
                self.grpc = grpc
            try:
                yield
            finally:
                if self.grpc is not None:
                    await self.grpc.stop()
                    self.grpc = None
                # The keys of answered calls are freed before the store closes.
                await self.tasks.drain()
        finally:
            await self.host.shutdown()

    # routes ------------------------------------------------------------------------------------

    async def jwks(self, request: web.Request) -> web.Response:
        """``GET /a2a/jwks.json`` → ``{"keys": [<Ed25519 JWK>…]}``: the ``jku`` of the cards'
        signatures (A2A 1.0 §8.4.2). The same keys DNS publishes for envelopes."""
        keys = [k.jwk_dict() for k in self.relay.keyring.published(self.relay.clock.now())]
        return web.Response(
            body=jsonutil.dumps({"keys": keys}),
            content_type="application/json",
            headers={"Cache-Control": f"public, max-age={CARD_MAX_AGE}"},
        )

    async def card(self, request: web.Request) -> web.Response:
        """``GET /a2a/<address>/.well-known/agent-card.json`` → the signed card, with ETag and
        Cache-Control (A2A 1.0 §8.6); ``If-None-Match`` is answered 304."""
        address = _address(request)
        body = jsonutil.dumps(await self.card_for(address))
        etag = 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": f"public, max-age={CARD_MAX_AGE}"}
        match = request.headers.get("If-None-Match", "")
        if match and any(t.strip().removeprefix("W/") == etag[2:] for t in match.split(",")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def card_for(self, address: Address) -> dict[str, Any]:
        relay = self.relay
        source = await relay.mailbox.card(address)
        if address.domain != relay.domain:
            await self._verify_partner_card(address, source)
        published = cards.publish_card(
            source,
            address,
            relay.public_url,
            require_token=relay.config.a2a.anonymous_agent is None,
            grpc_target=self.grpc_target,
        )
        return cards.sign_card(published, relay.signing_key(relay.clock.now()), relay.public_url)

    async def _verify_partner_card(self, address: Address, card: dict[str, Any]) -> None:
        """A partner's card that carries signatures must verify with the partner's keys from
        its DNS (as envelopes do); an unsigned one is taken as its relay served it."""
        kids = cards.card_kids(card)[:MAX_CARD_SIGNATURES]
        if not kids and not card.get("signatures"):
            return
        keys = {}
        for kid in dict.fromkeys(kids):
            with contextlib.suppress(E.SynqError):
                keys[kid] = await self.relay.discovery.public_key(address.domain, kid)
        try:
            cards.verify_card(card, keys)
        except E.BadSignature as exc:
            raise E.DiscoveryError(
                f"the card of {address} from its relay does not verify: {exc.message}"
            ) from None

    async def call(self, request: web.Request) -> web.StreamResponse:
        """Every JSON-RPC and HTTP+JSON call: find the address, authenticate the caller, read
        the body within limits, then hand the request to the SDK's routes."""
        address = _address(request)
        owner = await self.admit(address, request.headers.get("Authorization", ""), request.remote)
        body = None
        if request.method in ("POST", "PUT", "PATCH"):
            body = await read_body(request, MAX_A2A_BODY_BYTES, "A2A request")
        answered: list[Started] = []
        state = {_SENDER: owner, _ADDRESS: str(address), _ANSWERED: answered}
        response = await self.host.handle(request, state=state, body=body)
        # The host returns once the application's response is written to the end (a client
        # that hung up cancels this handler instead): a SendMessage answered in full. Its key
        # is freed in the background, as the gRPC binding does: the connection's next request
        # need not wait for that write.
        for started in answered:
            self.tasks.answered_soon(started)
        return response

    async def admit(self, address: Address, authorization: str, peer: str | None) -> str:
        """The local agent a call to ``address`` acts as, whatever the binding (the HTTP
        ``Authorization`` header, or gRPC's ``authorization`` metadata): 404 for a local
        address with no agent, then the caller's bearer token (A2A 1.0 §7.1, RFC 6750 §2.1)."""
        relay = self.relay
        if address.domain == relay.domain and await relay.store.get_agent(address.local) is None:
            raise E.NotFound(f"no agent {address}")
        return await self._authenticate(authorization, peer)

    async def _authenticate(self, header: str, peer: str | None) -> str:
        """The local agent the call acts as (A2A 1.0 §7.1: HTTP bearer, RFC 6750 §2.1)."""
        relay = self.relay
        if not header.strip():
            anonymous = relay.config.a2a.anonymous_agent
            if anonymous is None:
                raise E.Unauthenticated("this A2A endpoint needs a local agent's bearer token")
            record = await relay.store.get_agent(anonymous)
            if record is None or record.kind != "inbox":
                # Misconfigured: replies would have no inbox to come back to.
                raise E.Unauthenticated(
                    f"the relay's anonymous A2A agent {anonymous!r} is not a local inbox agent"
                )
            return anonymous
        token = bearer_token(header)
        if token is None:
            raise E.Unauthenticated("use the Bearer scheme with a local agent's token")
        # As the API authenticates: failed tokens limited per address (relay.server.auth).
        refuse_guessing(relay, peer)
        agent = await agent_for_token(relay, token, peer)
        if agent is None:
            raise E.Unauthenticated("the bearer token is not valid")
        if agent.kind != "inbox":
            # The dispatcher hands that agent's inbox to its server: the replies a task waits
            # for would be delivered there too.
            raise E.Forbidden(
                f"{agent.name} is backed by an {agent.kind} server; only inbox agents call "
                "through the A2A face"
            )
        return agent.name


A2A_FACE: web.AppKey[A2AFace] = web.AppKey("a2a_face", A2AFace)


def _address(request: web.Request) -> Address:
    try:
        return Address.parse(request.match_info["address"])
    except E.InvalidAddress:
        raise E.NotFound("no such address") from None
