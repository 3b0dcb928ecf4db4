"""The A2A adapter: an existing A2A agent becomes a Synq address with an inbox (SPEC.md
"A2A mapping", "A2A agents as addresses").

``synq agent add NAME --a2a URL`` calls :meth:`A2AAdapter.check` (the card is fetched and
validated); from then on the relay's dispatcher hands every envelope in the agent's inbox to
:meth:`A2AAdapter.deliver`, which speaks to the agent with the a2a-sdk client:

* **streaming** when the agent's card says it streams (``SendStreamingMessage``, A2A 1.0
  §3.1.2): every event — the task, each status and artifact update, or a direct ``Message``
  answer — goes back to the sender as one envelope, in order, before the next is read;
* otherwise **polling** (A2A 1.0 §3.2.2 ``returnImmediately``): ``SendMessage`` answers at once
  and ``GetTask`` is polled with backoff until the task ends or waits for input, each changed
  snapshot going back as a ``task.update``.

Once the agent has taken the message (its first event arrived), a stream that breaks off is
followed by polling instead of redelivering, so the agent never gets the message twice because
of the relay. Failures before that are reported to the dispatcher as ``AttemptFailed``
(relay/core/errors.py) with these statuses:

==============================================  ==================================  =========
what happened                                   status                              outcome
==============================================  ==================================  =========
connection refused, reset, timeout              4.4.1 no answer                     retried
HTTP 5xx, 408, 429                              4.4.1 no answer                     retried
an answer that is not A2A (HTML, garbage JSON)  4.5.0 unexpected answer             retried
card unreachable and none cached                4.4.1                               retried
an A2A error answer (A2A 1.0 §5.4), other 4xx   5.x.x by kind (below)               bounced
a body that is no A2A message                   5.6.0                               bounced
==============================================  ==================================  =========

The adapter keeps no state beyond a short-lived cache of agent cards, the a2a-sdk client
built for each, and idle HTTP connections to agents, kept for the next delivery
(adapters/keepalive.py): routing and storage are the relay's (relay/delivery/adapters.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, Final, TypeVar

import grpc
import grpc.aio
import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.client.client import Client
from a2a.client.errors import A2AClientError, A2AClientTimeoutError
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils import errors as a2a_errors
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH, TransportProtocol
from opentelemetry.trace import NoOpTracer, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from adapters.a2a import cards
from adapters.a2a.channels import Resolve, open_channel
from adapters.a2a.wire import (
    TERMINAL_STATES,
    WAITING_STATES,
    WireError,
    message_for_agent,
    parse_signal,
    reply_of_event,
)
from adapters.keepalive import DrainingTransport, Drains
from relay.core import status as st
from relay.core.address import Address
from relay.core.cards import inbox_agent_card
from relay.core.catalog import Profile, profile_from_card
from relay.core.clock import Clock, SystemClock
from relay.core.envelope import KIND_SIGNAL, Envelope
from relay.core.errors import (
    AgentUnreachable,
    AttemptFailed,
    BadAgentCard,
    MalformedRequest,
    SynqError,
)
from relay.core.jws import SigningKey
from relay.delivery.adapters import Replier
from relay.store.base import AgentRecord

__all__ = [
    "AGENT_TIMEOUT",
    "CARD_TTL",
    "MAX_FOLLOW_SECONDS",
    "A2AAdapter",
]

log = logging.getLogger("synq.a2a")
T = TypeVar("T")

#: Longest wait for one answer from an agent: a connection, a response, the next streamed
#: event (an SSE stream that sends keep-alive comments counts as answering). A silent agent
#: costs one delivery slot for this long, then the envelope is retried.
AGENT_TIMEOUT: Final = 60.0
#: The client span of one delivery to an A2A agent (SPEC.md §14.3).
CALL_SPAN: Final = "a2a.send_message"
#: How long a fetched agent card is used before it is fetched again. Bounds the requests a
#: busy address makes to its agent's card; an agent that changes its card is seen this late.
CARD_TTL: Final = 300.0
#: How long one delivery follows the agent's task. Below the dispatcher's DELIVERY_TIMEOUT
#: (600 s), so the adapter reports the task's state itself rather than being cut off, which
#: would redeliver a message the agent has already taken.
MAX_FOLLOW_SECONDS: Final = 540.0
#: How long an idle connection to an agent is kept for the next delivery. Below the keep-alive
#: timeouts servers commonly use (uvicorn's and Node.js's default: 5 s), so a delivery is not
#: written onto a connection the agent is closing at that moment.
KEEPALIVE_EXPIRY: Final = 2.0
#: GetTask polling: first wait, growth, longest wait (A2A 1.0 §3.2.2 polling mode).
POLL_INITIAL: Final = 0.05
POLL_FACTOR: Final = 2.0
POLL_MAX: Final = 2.0

#: An agent's A2A error answers (A2A 1.0 §5.4) as the enhanced status the sender sees.
_REFUSALS: Final[dict[type[a2a_errors.A2AError], st.Status]] = {
    a2a_errors.ContentTypeNotSupportedError: st.MEDIA_ERROR,
    a2a_errors.InvalidParamsError: st.INVALID_PARAMETER,
    a2a_errors.InvalidRequestError: st.SYNTAX_ERROR,
    a2a_errors.JSONParseError: st.SYNTAX_ERROR,
    a2a_errors.MethodNotFoundError: st.SYNTAX_ERROR,
    a2a_errors.TaskNotFoundError: st.UNKNOWN_RECIPIENT,
    a2a_errors.UnsupportedOperationError: st.INVALID_PARAMETER,
    a2a_errors.VersionNotSupportedError: st.INVALID_PARAMETER,
    a2a_errors.ExtensionSupportRequiredError: st.INVALID_PARAMETER,
}


def card_url(endpoint: str) -> str:
    return endpoint.rstrip("/") + AGENT_CARD_WELL_KNOWN_PATH


def _normalise_endpoint(endpoint: str) -> str:
    url = URL(endpoint.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise MalformedRequest(f"{endpoint!r} is not an http(s) URL of an A2A agent")
    text = str(url.with_query(None).with_fragment(None)).rstrip("/")
    if text.endswith(AGENT_CARD_WELL_KNOWN_PATH):
        text = text[: -len(AGENT_CARD_WELL_KNOWN_PATH)]
    return text


class _Follow:
    """What one delivery has learnt of the agent's answer so far."""

    def __init__(self) -> None:
        self.task_id = ""
        self.state = TaskState.TASK_STATE_UNSPECIFIED
        self.message = False  # a direct Message answered: nothing to follow
        self.events = 0
        self.snapshot = b""

    def see(self, event: StreamResponse) -> None:
        self.events += 1
        which = event.WhichOneof("payload")
        if which == "message":
            self.message = True
        elif which == "task":
            self.task_id = event.task.id
            self.state = event.task.status.state
            self.snapshot = event.task.SerializeToString(deterministic=True)
        elif which == "status_update":
            self.task_id = self.task_id or event.status_update.task_id
            self.state = event.status_update.status.state
        elif which == "artifact_update":
            self.task_id = self.task_id or event.artifact_update.task_id

    @property
    def settled(self) -> bool:
        """Nothing more to wait for: a direct answer, an ended task, or one waiting for input."""
        return self.message or self.state in TERMINAL_STATES or self.state in WAITING_STATES


class A2AAdapter:
    kind = "a2a"

    def __init__(
        self,
        *,
        signer: Callable[[datetime], SigningKey] | None = None,
        clock: Clock | None = None,
        timeout: float = AGENT_TIMEOUT,
        follow_seconds: float = MAX_FOLLOW_SECONDS,
        http: httpx.AsyncClient | None = None,
        tracer: Tracer | None = None,
        resolve: Resolve | None = None,
        allow_plaintext_grpc: bool = False,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        #: The relay's tracer: a client span per delivery, whose ``traceparent`` every request
        #: to the agent carries (W3C Trace Context §3.2; SPEC.md §14.3).
        self.tracer: Tracer = tracer or NoOpTracer()
        self.signer = signer
        self.timeout = timeout
        self.follow_seconds = follow_seconds
        self._own_http = http is None
        #: The background reads of streams the a2a-sdk client leaves early (own client only).
        self.drains = Drains()
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
            trust_env=False,
            # The a2a-sdk client leaves a stream once it has the answer; its rest is read in
            # the background, so the next delivery reuses the connection (adapters/keepalive.py).
            transport=DrainingTransport(keepalive_expiry=KEEPALIVE_EXPIRY, drains=self.drains),
        )
        hooks = self.http.event_hooks
        hooks["request"] = [*hooks["request"], _inject_trace]
        self.http.event_hooks = hooks
        self._cards: dict[str, tuple[AgentCard, float]] = {}
        #: Endpoint → the a2a-sdk client built for the card it was built from (HTTP bindings
        #: only). Built once per card rather than once per delivery: a client over the relay's
        #: shared HTTP client holds nothing of its own (its ``close`` leaves the shared client
        #: open), so one serves every delivery, concurrent ones included, until the card changes.
        self._clients: dict[str, tuple[AgentCard, Client]] = {}
        #: The relay's guarded resolution for gRPC targets (adapters/a2a/channels.py; SPEC.md
        #: §7.6); without it, agents that offer only gRPC cannot be reached.
        self.resolve = resolve
        self.allow_plaintext_grpc = allow_plaintext_grpc

    # cards -------------------------------------------------------------------------------------

    async def fetch_card(self, endpoint: str) -> AgentCard:
        """Fetch and validate the agent's card, reading at most MAX_CARD_BYTES."""
        url = card_url(endpoint)
        try:
            async with self.http.stream("GET", url) as response:
                if response.status_code >= 500 or response.status_code in (408, 429):
                    raise AgentUnreachable(f"{url} answered HTTP {response.status_code}")
                if response.status_code != 200:
                    raise BadAgentCard(f"{url} answered HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > cards.MAX_CARD_BYTES:
                    raise BadAgentCard(
                        f"{url}: the agent card is larger than {cards.MAX_CARD_BYTES} bytes"
                    )
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > cards.MAX_CARD_BYTES:
                        raise BadAgentCard(
                            f"{url}: the agent card is larger than {cards.MAX_CARD_BYTES} bytes"
                        )
        except httpx.TimeoutException:
            raise AgentUnreachable(f"{url} did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise AgentUnreachable(f"cannot reach {url} ({type(exc).__name__})") from None
        card = cards.parse_card(bytes(body), url)
        self._cards[endpoint] = (card, self.clock.monotonic())
        return card

    async def _card(self, endpoint: str) -> AgentCard:
        """The agent's card: cached for CARD_TTL, fetched again after; when the agent cannot be
        reached the last card it gave is used (it is down, not changed)."""
        cached = self._cards.get(endpoint)
        if cached is not None and self.clock.monotonic() - cached[1] < CARD_TTL:
            return cached[0]
        try:
            return await self.fetch_card(endpoint)
        except AgentUnreachable:
            if cached is not None:
                return cached[0]
            raise

    async def check(self, endpoint: str) -> str:
        base = _normalise_endpoint(endpoint)
        card = await self.fetch_card(base)
        # An agent reached over gRPC: its target must pass the address policy now, so that
        # registration, not the first message, says so.
        client = await self._client(card)
        await client.close()
        return base

    async def card(self, agent: AgentRecord, address: str, public_url: str) -> dict[str, Any]:
        """The agent's own card, republished for its address and signed by the relay. While
        the agent cannot be reached and no card of it is cached (a relay restarted while the
        agent is down), the address's inbox card stands in: mail for it waits in its inbox."""
        addr = Address.parse(address)
        source: AgentCard | dict[str, Any]
        try:
            if not agent.endpoint:
                raise BadAgentCard(f"agent {address} has no A2A endpoint")
            source = await self._card(agent.endpoint)
        except SynqError as exc:
            log.info("card of %s unavailable, publishing its inbox card: %s", address, exc.message)
            source = inbox_agent_card(
                addr,
                public_url,
                description=(
                    f"Synq agent {addr}. Its A2A server cannot be reached now; "
                    "messages wait in its inbox until it is back."
                ),
            )
        published = cards.publish_card(source, addr, public_url)
        if self.signer is None:
            data: dict[str, Any] = cards.json_form(published)
            return data
        return cards.sign_card(published, self.signer(self.clock.now()), public_url)

    async def describe(self, agent: AgentRecord) -> Profile | None:
        """What the agent's own card says it can do (the discovery catalog, SPEC.md §12.1),
        fetched anew so that a changed card is seen; None when it cannot be had now."""
        if not agent.endpoint:
            return None
        try:
            card = await self.fetch_card(agent.endpoint)
        except SynqError as exc:
            log.info("card of %s unavailable for the catalog: %s", agent.name, exc.message)
            return None
        return profile_from_card(cards.json_form(card))

    # delivery ----------------------------------------------------------------------------------

    async def _client(self, card: AgentCard) -> Client:
        """An a2a-sdk client for the agent: over JSON-RPC or HTTP+JSON when its card offers
        either (the relay's HTTP client, as before gRPC was known), otherwise over its first
        gRPC interface, on a channel to the address the relay's policy permitted."""
        offered = [i for i in card.supported_interfaces if i.url]
        if not _grpc_only(card):
            config = ClientConfig(
                streaming=card.capabilities.streaming,
                httpx_client=self.http,
                supported_protocol_bindings=[
                    TransportProtocol.JSONRPC,
                    TransportProtocol.HTTP_JSON,
                ],
            )
            return ClientFactory(config).create(card)
        interface = next(i for i in offered if i.protocol_binding == TransportProtocol.GRPC)
        if self.resolve is None:
            raise AgentUnreachable("the relay has no resolver for gRPC agents")
        channel, _address = await open_channel(
            interface.url, self.resolve, allow_plaintext=self.allow_plaintext_grpc
        )
        config = ClientConfig(
            streaming=card.capabilities.streaming,
            supported_protocol_bindings=[TransportProtocol.GRPC],
            # The factory asks for a channel by the card's URL; it is the checked one.
            grpc_channel_factory=lambda _url: channel,
        )
        try:
            return ClientFactory(config).create(card)
        except BaseException:
            await channel.close()
            raise

    async def deliver(self, agent: AgentRecord, envelope: Envelope, reply: Replier) -> None:
        if not agent.endpoint:
            raise AttemptFailed(st.PERMANENT, f"agent {agent.name} has no A2A endpoint")
        try:
            card = await self._card(agent.endpoint)
        except SynqError as exc:
            raise AttemptFailed(
                exc.status if exc.status.is_permanent else st.NO_ANSWER, exc.message
            ) from None
        try:
            client, owned = await self._client_for(agent.endpoint, card)
        except SynqError as exc:
            raise AttemptFailed(
                exc.status if exc.status.is_permanent else st.NO_ANSWER, exc.message
            ) from None
        attributes = {"server.address": agent.endpoint, "synq.id": envelope.id}
        try:
            with self.tracer.start_as_current_span(
                CALL_SPAN, kind=SpanKind.CLIENT, attributes=attributes
            ) as span:
                try:
                    if envelope.kind == KIND_SIGNAL:
                        await self._signal(client, envelope, reply)
                    else:
                        await self._message(client, card, envelope, reply)
                except AttemptFailed as exc:
                    span.set_status(Status(StatusCode.ERROR, exc.status.code))
                    raise
        finally:
            if owned:
                with contextlib.suppress(Exception):
                    await client.close()

    async def _client_for(self, endpoint: str, card: AgentCard) -> tuple[Client, bool]:
        """The client for one delivery, and whether the delivery owns it (closes it after).
        Over HTTP the client built for this very card is reused (see ``_clients``); a card
        fetched anew gets a new client. A gRPC client owns its channel, opened to the address
        the relay's policy permits at this moment (adapters/a2a/channels.py), so it is built
        and closed per delivery, as the resolution is made per delivery."""
        if _grpc_only(card):
            return await self._client(card), True
        cached = self._clients.get(endpoint)
        if cached is not None and cached[0] is card:
            return cached[1], False
        client = await self._client(card)
        self._clients[endpoint] = (card, client)
        return client, False

    async def _message(
        self, client: Client, card: AgentCard, envelope: Envelope, reply: Replier
    ) -> None:
        try:
            message = message_for_agent(envelope)
        except WireError as exc:
            raise AttemptFailed(st.MEDIA_ERROR, str(exc)) from None
        streaming = card.capabilities.streaming
        request = SendMessageRequest(
            message=message,
            configuration=SendMessageConfiguration(return_immediately=not streaming),
        )
        follow = _Follow()
        deadline = asyncio.get_running_loop().time() + self.follow_seconds
        # The HTTP client's read timeout bounds the wait for each streamed event (AGENT_TIMEOUT);
        # a gRPC stream has none of its own, so the same bound is kept here.
        idle = self.timeout if _grpc_only(card) else None
        try:
            async with asyncio.timeout_at(deadline):
                async for event in _events(client.send_message(request), idle=idle):
                    follow.see(event)
                    await reply(reply_of_event(event))
        except TimeoutError:
            if not follow.events:
                raise AttemptFailed(
                    st.NO_ANSWER, f"the agent did not answer within {self.follow_seconds:g} s"
                ) from None
        except AttemptFailed as exc:
            if not follow.events or not follow.task_id:
                raise
            # The agent took the message and the stream broke off: follow its task instead.
            log.info("stream from the agent broke off (%s); polling its task", exc.reason)
        if follow.settled:
            return
        if not follow.task_id:
            raise AttemptFailed(
                st.REMOTE_PROTOCOL, "the agent answered with no task and no message"
            )
        await self._poll(client, follow, deadline, reply)

    async def _poll(self, client: Client, follow: _Follow, deadline: float, reply: Replier) -> None:
        """Follow the agent's task with GetTask until it ends or waits for input."""
        loop = asyncio.get_running_loop()
        delay = POLL_INITIAL
        last_error = ""
        while not follow.settled:
            if loop.time() >= deadline:
                await self._lost(follow, reply, last_error or "it was still running")
                return
            await asyncio.sleep(min(delay, max(deadline - loop.time(), 0)))
            delay = min(delay * POLL_FACTOR, POLL_MAX)
            try:
                async with asyncio.timeout(self.timeout):
                    task: Task = await _call(client.get_task(GetTaskRequest(id=follow.task_id)))
            except (AttemptFailed, TimeoutError) as exc:
                # The agent may be restarting: keep trying until the follow time is up.
                last_error = exc.reason if isinstance(exc, AttemptFailed) else "timeout"
                continue
            if task.SerializeToString(deterministic=True) == follow.snapshot:
                continue
            event = StreamResponse(task=task)
            follow.see(event)
            await reply(reply_of_event(event))

    async def _lost(self, follow: _Follow, reply: Replier, why: str) -> None:
        """Stop following: tell the sender in the task's own terms rather than redelivering a
        message the agent has already taken."""
        text = (
            f"the relay stopped following the agent's task after {self.follow_seconds:g} s: {why}"
        )
        status = TaskStatus(
            state=TaskState.TASK_STATE_FAILED,
            message=Message(
                role=Role.ROLE_AGENT,
                message_id=f"synq-lost-{follow.task_id}"[:128],
                parts=[Part(text=text)],
            ),
        )
        event = StreamResponse(
            status_update=TaskStatusUpdateEvent(task_id=follow.task_id, status=status)
        )
        await reply(reply_of_event(event))

    async def _signal(self, client: Client, envelope: Envelope, reply: Replier) -> None:
        try:
            signal = parse_signal(envelope)
        except WireError as exc:
            raise AttemptFailed(st.MEDIA_ERROR, str(exc)) from None
        if not signal.cancel_task:
            # The agent never told which task it made (it had not answered yet): nothing to
            # cancel there. The face has already marked its task canceled.
            return
        try:
            async with asyncio.timeout(self.timeout):
                task = await _call(client.cancel_task(CancelTaskRequest(id=signal.cancel_task)))
        except TimeoutError:
            raise AttemptFailed(st.NO_ANSWER, "the agent did not answer the cancel") from None
        except AttemptFailed as exc:
            if exc.status.is_permanent:
                # Not cancelable, or unknown to the agent: it has answered; nothing to retry.
                return
            raise
        await reply(reply_of_event(StreamResponse(task=task)))

    async def close(self) -> None:
        self._clients.clear()
        if self._own_http:
            await self.http.aclose()


_PROPAGATOR: Final = TraceContextTextMapPropagator()


async def _inject_trace(request: httpx.Request) -> None:
    """httpx request hook: the current span's ``traceparent`` (and ``tracestate``) as headers,
    so the agent's server continues the relay's trace. Nothing without a current span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    for name, value in carrier.items():
        request.headers[name] = value


def _failure(exc: BaseException) -> AttemptFailed:
    """An a2a-sdk client failure as the dispatcher's AttemptFailed (see the module table)."""
    if isinstance(exc, A2AClientTimeoutError):
        return AttemptFailed(st.NO_ANSWER, "the agent did not answer in time")
    for kind, status in _REFUSALS.items():
        if isinstance(exc, kind):
            return AttemptFailed(status, f"the agent refused: {exc.message[:300]}")
    if isinstance(exc, A2AClientError):
        cause = exc.__cause__
        if isinstance(cause, grpc.aio.AioRpcError):
            return _grpc_failure(cause)
        if isinstance(cause, httpx.HTTPStatusError):
            code = cause.response.status_code
            if code >= 500 or code in (408, 429):
                return AttemptFailed(st.NO_ANSWER, f"the agent answered HTTP {code}")
            return AttemptFailed(st.NOT_AUTHORIZED, f"the agent refused with HTTP {code}")
        if isinstance(cause, httpx.TimeoutException):
            return AttemptFailed(st.NO_ANSWER, "the agent did not answer in time")
        if isinstance(cause, httpx.HTTPError):
            return AttemptFailed(st.NO_ANSWER, f"cannot reach the agent ({type(cause).__name__})")
        return AttemptFailed(st.REMOTE_PROTOCOL, "the agent's answer is not A2A")
    if isinstance(exc, a2a_errors.A2AError):
        # InternalError and errors of kinds not listed: the agent answered, with a failure.
        return AttemptFailed(st.PERMANENT, f"the agent failed: {exc.message[:300]}")
    if isinstance(exc, httpx.TimeoutException):
        return AttemptFailed(st.NO_ANSWER, "the agent did not answer in time")
    if isinstance(exc, httpx.HTTPError):
        return AttemptFailed(st.NO_ANSWER, f"cannot reach the agent ({type(exc).__name__})")
    # The SDK's parsers raise assorted errors (ParseError, ValueError, KeyError) on bodies
    # that are JSON but not A2A.
    return AttemptFailed(st.REMOTE_PROTOCOL, "the agent's answer is not A2A")


def _grpc_only(card: AgentCard) -> bool:
    """The agent is reached over gRPC: its card offers no JSON-RPC or HTTP+JSON interface."""
    http = {TransportProtocol.JSONRPC, TransportProtocol.HTTP_JSON}
    return not any(i.protocol_binding in http for i in card.supported_interfaces if i.url)


#: gRPC statuses without an A2A error in their details, by what the HTTP bindings' statuses
#: of the same meaning give (gRPC's "HTTP to gRPC Status Code Mapping"): the agent is down,
#: overloaded or failing — retried; it refused the relay — bounced.
_GRPC_RETRIED: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _grpc_failure(cause: grpc.aio.AioRpcError) -> AttemptFailed:
    code = cause.code()
    if code in _GRPC_RETRIED:
        return AttemptFailed(st.NO_ANSWER, f"the agent answered gRPC {code.name}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return AttemptFailed(st.REMOTE_PROTOCOL, "the agent's gRPC server is no A2A service")
    return AttemptFailed(st.NOT_AUTHORIZED, f"the agent refused with gRPC {code.name}")


async def _events(
    stream: AsyncIterator[StreamResponse], *, idle: float | None = None
) -> AsyncIterator[StreamResponse]:
    """The client's event stream, its failures translated into ``AttemptFailed`` here, so no
    a2a-sdk, httpx or grpc exception leaves the adapter. ``idle``: the longest wait for the
    next event (TimeoutError past it)."""
    try:
        while True:
            async with asyncio.timeout(idle):
                try:
                    event = await anext(stream)
                except StopAsyncIteration:
                    return
            yield event
    except (asyncio.CancelledError, TimeoutError):
        raise
    except Exception as exc:
        raise _failure(exc) from None


async def _call(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except (asyncio.CancelledError, TimeoutError):
        raise
    except Exception as exc:
        raise _failure(exc) from None
