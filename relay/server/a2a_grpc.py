"""The A2A face's gRPC binding (A2A 1.0 §10; SPEC.md "The A2A face"): every address's face on
one ``grpc.aio`` listener of its own, ``[a2a] grpc_listen``.

gRPC runs on HTTP/2, which the relay's aiohttp listener does not speak, so the binding has a
listener of its own. One gRPC service (``lf.a2a.v1.A2AService``) serves every address: a call
names its address in the request's ``tenant`` field, which the face's cards put in their gRPC
interface (``supportedInterfaces[].tenant``), so an a2a-sdk client picked from a card sends it
on every request by itself (a call without one is for ``[a2a] grpc_default_address``, when set:
clients that ignore the card's tenant, such as the A2A TCK's). The rest is the other bindings'
path, unchanged:

1. the SDK's :class:`~a2a.server.request_handlers.GrpcHandler` parses the request and maps
   the handler's A2A errors to gRPC statuses with ``ErrorInfo`` details, as an a2a-sdk agent
   served over gRPC does;
1a. the call is held to its source address's share (SPEC.md §10.3), the same tables the HTTP
   listener's :func:`~relay.server.http.source_limits` uses, so one address's HTTP and gRPC
   calls count together: its calls in flight and its call rate; past either, the call ends
   ``RESOURCE_EXHAUSTED`` with a ``retry-after`` trailer (seconds), before anything else runs.
   Connections are not counted per address (grpc.aio has no hook between accept and HTTP/2):
   a connection makes no call without passing the limits above, and one left idle is closed
   after the HTTP listener's keep-alive time (``grpc.max_connection_idle_ms``);
2. before the handler runs, :class:`_FaceGrpcHandler` admits the call as the JSON-RPC and
   HTTP+JSON bindings do (:meth:`~relay.server.a2a_face.A2AFace.admit`): the address must
   exist, and the caller presents a local agent's bearer token in the ``authorization``
   metadata (gRPC carries HTTP/2 headers as metadata, so this is the very header; A2A 1.0
   §10.2). A refusal is a gRPC status: ``UNAUTHENTICATED``, ``PERMISSION_DENIED``,
   ``NOT_FOUND``, ``RESOURCE_EXHAUSTED`` (failed-token limiting), ``UNAVAILABLE``;
3. the call reaches the face's :class:`~relay.server.a2a_face.FaceHandler`: the same tasks,
   envelopes and store as the other bindings, so a task started over gRPC can be read over
   JSON-RPC and the other way round;
4. when the call ends with its answer sent in full (gRPC's done callback, the call neither
   cancelled nor failed), a SendMessage's idempotency key is freed
   (:meth:`~relay.tasks.store.TaskStore.answered_soon`; SPEC.md "The A2A face", "Retries"), as
   the HTTP bindings do once their response is written.

The listener is plaintext (h2c), as the admin listener is plain HTTP: TLS for it is a reverse
proxy's, or a loopback-only deployment's.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc
import grpc.aio
from a2a.server.context import ServerCallContext
from a2a.server.request_handlers import GrpcHandler
from a2a.types import a2a_pb2_grpc
from google.protobuf import message

from relay.core import errors as E
from relay.core.address import Address
from relay.core.ratelimit import SourceLimits
from relay.server.a2a_face import _ADDRESS, _ANSWERED, _SENDER, MAX_A2A_BODY_BYTES
from relay.server.http import DEFAULT_HTTP_LIMITS
from relay.tasks.store import Started

if TYPE_CHECKING:
    from relay.server.a2a_face import A2AFace

__all__ = ["MAX_GRPC_MESSAGE_BYTES", "GrpcFace", "grpc_status_of"]

T = TypeVar("T")

#: Largest request message the listener reads: the JSON bindings' MAX_A2A_BODY_BYTES. A call
#: becomes one envelope, so a larger message could not be sent on anyway; gRPC's own default
#: (4 MiB) would have the relay parse fifteen times that first.
MAX_GRPC_MESSAGE_BYTES: Final = MAX_A2A_BODY_BYTES
#: Calls the listener runs at once; more are refused with RESOURCE_EXHAUSTED by grpc itself.
#: Streams hold one each for as long as a task runs, so this bounds the relay's memory and
#: tasks per listener rather than its throughput.
MAX_CONCURRENT_GRPC_CALLS: Final = 1_000
#: How long a stopping listener lets running calls finish before it cancels them.
STOP_GRACE: Final = 5.0

#: A refusal's HTTP status (relay/core/errors.py) as the gRPC status of the same meaning
#: (the mapping of gRPC's "HTTP to gRPC Status Code Mapping", read the other way).
_STATUS_OF_HTTP: Final[dict[int, grpc.StatusCode]] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_status_of(exc: E.SynqError) -> grpc.StatusCode:
    """The gRPC status a refusal of the face is answered with."""
    code = _STATUS_OF_HTTP.get(exc.http_status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if exc.http_status < 500 else grpc.StatusCode.INTERNAL


def _metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name.lower() == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return ""


def _peer_host(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The caller's IP address from gRPC's peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``),
    for the failed-token limit; None when it is no IP (a Unix socket)."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host = rest.rpartition(":")[0].strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _address_of(request: message.Message, default: str | None) -> Address:
    """The address a call is for: its request's ``tenant`` (see the module docstring), or
    ``[a2a] grpc_default_address`` when it names none."""
    tenant = str(getattr(request, "tenant", "")) or default or ""
    if not tenant:
        raise E.NotFound(
            "name the address in the request's tenant, as the card's gRPC interface does"
        )
    try:
        return Address.parse(tenant)
    except E.InvalidAddress:
        raise E.NotFound("no such address") from None


class _FaceGrpcHandler(GrpcHandler):
    """The SDK's gRPC servicer, admitting each call as the face's other bindings do before
    the SDK's handling (parsing done, errors mapped) runs it."""

    def __init__(self, face: A2AFace) -> None:
        super().__init__(face.handler)
        self.face = face

    def _admitted(
        self,
        call: ServerCallContext,
        context: grpc.aio.ServicerContext[Any, Any],
        owner: str,
        address: str,
    ) -> None:
        """The SDK's call context for an admitted call; once gRPC has ended the call with its
        answer sent (neither cancelled nor failed), the SendMessage it answered is
        :meth:`~relay.tasks.store.TaskStore.answered_soon`."""
        answered: list[Started] = []
        call.state[_SENDER] = owner
        call.state[_ADDRESS] = address
        call.state[_ANSWERED] = answered

        def done(ended: grpc.aio.ServicerContext[Any, Any]) -> None:
            if not answered or ended.cancelled():
                return
            if ended.code() not in (None, grpc.StatusCode.OK):
                return
            for started in answered:
                self.face.tasks.answered_soon(started)

        # The stubs declare the callback as a nominal class; gRPC takes any callable.
        context.add_done_callback(done)  # type: ignore[arg-type]

    async def drain(self) -> None:
        """Wait for the key releases of calls that have ended (the listener stops before the
        store closes)."""
        await self.face.tasks.drain()

    async def _enter(
        self, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[SourceLimits, str] | None:
        """Hold the call to its source address's share (module docstring, step 1a): the
        tables and key to give its place back to when it ends (None: an exempt or unknown
        source), or the call is aborted ``RESOURCE_EXHAUSTED``."""
        relay = self.face.relay
        sources = relay.sources  # read per call: SIGHUP may replace the tables
        key = sources.key(_peer_host(context))
        if key is None:
            return None
        if not sources.in_flight.enter(key):
            limit = sources.in_flight.limit
            refusal = E.RateLimited(
                f"more than {limit} requests from this address at once", retry_after=1.0
            )
        else:
            wait = sources.requests.take(key, relay.clock.monotonic())
            if wait == 0.0:
                return sources, key
            sources.in_flight.leave(key)
            refusal = E.RateLimited(
                f"too many requests from this address; retry in {wait:.0f} s", retry_after=wait
            )
        relay.metrics.rejected.labels(code=refusal.code).inc()
        retry = str(math.ceil(refusal.retry_after or 1.0))
        return await context.abort(  # abort raises: the call ends here
            grpc_status_of(refusal), refusal.message, trailing_metadata=(("retry-after", retry),)
        )

    @staticmethod
    def _leave(held: tuple[SourceLimits, str] | None) -> None:
        if held is not None:
            sources, key = held
            sources.in_flight.leave(key)

    async def _admit(
        self, request: message.Message, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[str, str]:
        """(the calling agent, the address) of an admitted call; a refused one is aborted
        with the refusal's gRPC status."""
        try:
            address = _address_of(request, self.face.relay.config.a2a.grpc_default_address)
            owner = await self.face.admit(
                address, _metadata(context, "authorization"), _peer_host(context)
            )
            return owner, str(address)
        except E.SynqError as exc:
            if exc.http_status == 401:
                # RFC 6750 §3, as the HTTP bindings answer 401.
                await context.send_initial_metadata((("www-authenticate", 'Bearer realm="synq"'),))
            await context.abort(grpc_status_of(exc), exc.message)

    async def _handle_unary(
        self,
        request: message.Message,
        context: grpc.aio.ServicerContext[Any, Any],
        handler_func: Callable[[ServerCallContext], Awaitable[T]],
        default_response: T,
    ) -> T:
        held = await self._enter(context)
        try:
            owner, address = await self._admit(request, context)

            async def admitted(call: ServerCallContext) -> T:
                self._admitted(call, context, owner, address)
                return await handler_func(call)

            return await super()._handle_unary(request, context, admitted, default_response)
        finally:
            self._leave(held)

    async def _handle_stream(
        self,
        request: message.Message,
        context: grpc.aio.ServicerContext[Any, Any],
        handler_func: Callable[[ServerCallContext], AsyncIterable[T]],
    ) -> AsyncIterable[T]:
        held = await self._enter(context)
        try:
            owner, address = await self._admit(request, context)

            async def admitted(call: ServerCallContext) -> AsyncIterable[T]:
                self._admitted(call, context, owner, address)
                async for item in handler_func(call):
                    yield item

            async for item in super()._handle_stream(request, context, admitted):
                yield item
        finally:
            self._leave(held)


class GrpcFace:
    """The gRPC listener of the A2A face: started and stopped with the face (the relay's web
    application's lifecycle), bound to ``[a2a] grpc_listen``."""

    def __init__(self, face: A2AFace) -> None:
        self.face = face
        self.server: grpc.aio.Server | None = None
        #: ``host:port`` as bound (port 0 resolved), once started.
        self.bound = ""
        self._handler: _FaceGrpcHandler | None = None

    async def start(self, listen: str) -> str:
        """Bind ``listen`` (``host:port``; port 0 picks one) and serve; return ``host:port``
        as bound. Raises ConfigError, one line, when the address cannot be bound."""
        server = grpc.aio.server(
            maximum_concurrent_rpcs=MAX_CONCURRENT_GRPC_CALLS,
            options=[
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
                # One listener per relay process: a second relay on the same port must fail
                # to bind, not share it.
                ("grpc.so_reuseport", 0),
                # An idle connection is closed as the HTTP listener closes an idle keep-alive
                # one: connections are not counted per source here (module docstring, 1a).
                (
                    "grpc.max_connection_idle_ms",
                    int(DEFAULT_HTTP_LIMITS.keepalive_timeout * 1000),
                ),
            ],
        )
        self._handler = _FaceGrpcHandler(self.face)
        # The SDK's generated registration function carries no annotations.
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self._handler, server
        )
        host, _, _port = listen.rpartition(":")
        try:
            port = server.add_insecure_port(listen)
        except RuntimeError:
            port = 0
        if not port:
            raise E.ConfigError(f"cannot listen on {listen} for [a2a] grpc_listen")
        await server.start()
        self.server = server
        self.bound = f"{host}:{port}"
        return self.bound

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(STOP_GRACE)
            self.server = None
        if self._handler is not None:
            await self._handler.drain()
