"""The local agent API (SPEC.md §6, DESIGN §7). Every route here acts as one local agent,
identified by its bearer token."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Annotated, Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relay.core import errors as E
from relay.core import jsonutil
from relay.core.address import Address
from relay.core.cards import inbox_agent_card
from relay.core.envelope import (
    CONTENT_TYPE_PATTERN,
    ID_PATTERN,
    KIND_DSN,
    KIND_PATTERN,
    TRACEPARENT_PATTERN,
    format_timestamp,
    parse_timestamp,
)
from relay.core.ids import hash_token
from relay.core.jws import b64url_decode
from relay.core.limits import (
    DEFAULT_INBOX_PAGE,
    MAX_API_BODY_BYTES,
    MAX_BATCH_BODY_BYTES,
    MAX_BATCH_MESSAGES,
    MAX_ID_LENGTH,
    MAX_INBOX_PAGE,
    MAX_LONG_POLL_SECONDS,
    MAX_RECIPIENTS,
)
from relay.delivery.router import Prepared
from relay.server.http import read_body
from relay.server.keys import RELAY
from relay.store.base import AgentRecord, InboxItem, MessageStatus, inbox_channel

if TYPE_CHECKING:
    from relay.runtime import Relay

#: How often an idle SSE stream sends a comment line. Keeps proxies and NATs from dropping the
#: connection (many idle-timeout at 30–60 s) and lets the server notice a vanished client.
SSE_HEARTBEAT_SECONDS = 15.0

#: Messages of a batch built and signed between two yields to the event loop. Signing one
#: takes ~0.1 ms, so a full batch (MAX_BATCH_MESSAGES) would otherwise hold the loop for tens of
#: milliseconds, stalling every other request, heartbeat and delivery meanwhile.
BATCH_YIELD_EVERY: Final = 50

routes = web.RouteTableDef()


# --- helpers ------------------------------------------------------------------------------------


async def authenticate(request: web.Request) -> AgentRecord:
    """The agent whose bearer token (RFC 6750 §2.1) the request carries.

    Looked up through the router's agent cache (relay.delivery.router.AgentCache): a token
    stays valid for up to AGENT_CACHE_TTL seconds after another process removed its agent
    (SPEC.md §6.1); a removal in this process ends it at once."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise E.Unauthenticated()
    agent = await request.app[RELAY].router.agents.for_token(hash_token(token.strip()))
    if agent is None:
        raise E.Unauthenticated("the bearer token is not valid")
    return agent


async def read_json(request: web.Request, max_bytes: int = MAX_API_BODY_BYTES) -> Any:
    if request.content_length is not None and request.content_length > max_bytes:
        raise E.PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    ctype = request.content_type
    if ctype != "application/json":
        raise E.UnsupportedMediaType("Content-Type must be application/json")
    data = await read_body(request, max_bytes, "request body")
    return jsonutil.loads(data, max_bytes=max_bytes, what="request body")


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=jsonutil.dumps(data), content_type="application/json", headers=headers
    )


def _query_number(request: web.Request, name: str, default: float, lo: float, hi: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise E.MalformedRequest(f"{name} must be a number") from None
    if not lo <= value <= hi:
        raise E.MalformedRequest(f"{name} must be between {lo:g} and {hi:g}")
    return value


def _query_flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "0").lower() in ("1", "true", "yes")


def envelope_payload(item: InboxItem) -> bytes:
    """The envelope JSON exactly as signed: the JWS payload (SPEC.md §6: inbox entries)."""
    return b64url_decode(item.token.split(".")[1])


# --- sending ------------------------------------------------------------------------------------


class SendRequest(BaseModel):
    """The send request of SPEC.md §6.2. Every field carries the pattern of the envelope field it
    becomes (relay.core.envelope.Envelope), with the same error words: the router builds the
    envelope from it without validating it a second time (Router.build ``checked``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    to: Annotated[list[str], Field(min_length=1, max_length=MAX_RECIPIENTS)]
    content_type: Annotated[str, Field(pattern=CONTENT_TYPE_PATTERN)] = "text/plain"
    body: Any
    kind: Annotated[str, Field(pattern=KIND_PATTERN, max_length=MAX_ID_LENGTH)] = "message"
    thread: Annotated[str, Field(pattern=ID_PATTERN)] | None = None
    in_reply_to: Annotated[str, Field(pattern=ID_PATTERN)] | None = None
    expires: str | None = None
    trace: Annotated[str, Field(pattern=TRACEPARENT_PATTERN)] | None = None


def _parse_send(data: Any) -> SendRequest:
    if not isinstance(data, dict):
        raise E.MalformedRequest("the request body must be a JSON object")
    if "body" not in data:
        raise E.InvalidEnvelope("body: field required")
    try:
        return SendRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise E.InvalidEnvelope(f"{where}: {first['msg']}") from None


async def _prepare(relay: Relay, agent: AgentRecord, data: Any) -> Prepared:
    """One send request (the body of ``POST /synq/v1/messages``, or one member of a batch),
    checked in the order of SPEC.md §6.2 and built into a signed envelope; not yet stored."""
    req = _parse_send(data)
    if req.kind == KIND_DSN:
        raise E.Forbidden("only the relay's mailer-daemon sends delivery-status envelopes")
    to = [Address.parse(a) for a in req.to]
    if len(set(to)) != len(to):
        raise E.InvalidEnvelope("to: recipients must not repeat")
    expires = None
    if req.expires is not None:
        try:
            expires = parse_timestamp(req.expires)
        except ValueError as exc:
            raise E.InvalidEnvelope(f"expires: {exc}") from None
    # checked=True: SendRequest holds every field to the envelope's own patterns and the
    # addresses are parsed (normalised) and distinct, so the envelope is not validated again.
    return await relay.router.prepare(
        Address(agent.name, relay.domain),
        to,
        req.content_type,
        req.body,
        kind=req.kind,
        thread=req.thread,
        in_reply_to=req.in_reply_to,
        expires=expires,
        trace=req.trace,
        checked=True,
    )


@routes.post("/synq/v1/messages")
async def send_message(request: web.Request) -> web.Response:
    """Send as the token's agent.

    ``POST /synq/v1/messages {"to": ["bob@acme.test"], "content_type": "text/plain", "body": "hi"}``
    → ``202 {"id": "0190…", "status": "queued"}``. The envelope is durable before the answer.
    """
    relay = request.app[RELAY]
    agent = await authenticate(request)
    prepared = await _prepare(relay, agent, await read_json(request))
    # The store write is shielded by the custody gate: a client that hangs up cannot cancel it
    # half way; before it, nothing has been stored, so a cancellation loses nothing.
    (submitted,) = await relay.router.commit([prepared])
    relay.metrics.accepted.labels(via="api").inc()
    env_id = submitted.envelope.id
    return json_response(
        {"id": env_id, "status": "queued"},
        status=202,
        headers={"Location": f"/synq/v1/messages/{env_id}"},
    )


def _batch_messages(data: Any) -> list[Any]:
    if not isinstance(data, dict):
        raise E.MalformedRequest("the request body must be a JSON object")
    unknown = sorted(set(data) - {"messages"})
    if unknown:
        raise E.MalformedRequest(f"unknown member {unknown[0]!r}; a batch has only 'messages'")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise E.MalformedRequest("messages must be a JSON array of send requests")
    if not messages:
        raise E.MalformedRequest("messages must not be empty")
    if len(messages) > MAX_BATCH_MESSAGES:
        raise E.PayloadTooLarge(
            f"a batch holds at most {MAX_BATCH_MESSAGES} messages; this one has {len(messages)}"
        )
    return messages


def _error_entry(exc: E.SynqError) -> dict[str, Any]:
    wire = exc.to_wire()
    if isinstance(exc, E.RateLimited):
        # No per-message header exists, so the Retry-After delay-seconds (RFC 9110 §10.2.3)
        # the single endpoint would send travel in the error object.
        details = wire["error"].setdefault("details", {})
        details["retry_after"] = max(1, int(exc.retry_after + 0.999))
    return wire


@routes.post("/synq/v1/messages/batch")
async def send_batch(request: web.Request) -> web.Response:
    """Send several messages as the token's agent in one request (SPEC.md §6.2.1).

    ``POST /synq/v1/messages/batch {"messages": [{"to": […], "body": "hi"}, {"to": "x"}]}``
    → ``202 {"results": [{"id": "0190…", "status": "queued"}, {"error": {"code":
    "invalid_envelope", …}}]}``, one result per message in request order. Each message is
    checked on its own, exactly as ``POST /synq/v1/messages`` checks it (rate limit included,
    one charge per message); the accepted ones are committed together, in one store call,
    before the answer.
    """
    relay = request.app[RELAY]
    agent = await authenticate(request)
    messages = _batch_messages(await read_json(request, MAX_BATCH_BODY_BYTES))
    results: list[dict[str, Any] | None] = [None] * len(messages)
    pending: list[tuple[int, Prepared]] = []

    def refuse(i: int, exc: E.SynqError) -> None:
        results[i] = _error_entry(exc)
        # Counted as the single endpoint's refusals are (relay.server.app.count_errors).
        relay.metrics.rejected.labels(code=exc.code).inc()

    for i, data in enumerate(messages):
        try:
            pending.append((i, await _prepare(relay, agent, data)))
        except E.PeerError as exc:
            # A refusal of this message only. Anything else (the store failing a recipient
            # look-up) fails the whole request before anything is stored.
            refuse(i, exc)
        if i % BATCH_YIELD_EVERY == BATCH_YIELD_EVERY - 1:
            # Building and signing are CPU work; let other requests run between slices.
            await asyncio.sleep(0)
    outcomes = await relay.router.commit_each([p for _, p in pending])
    accepted = 0
    for (i, _), outcome in zip(pending, outcomes, strict=True):
        if isinstance(outcome, E.SynqError):
            refuse(i, outcome)
        else:
            results[i] = {"id": outcome.envelope.id, "status": "queued"}
            accepted += 1
    if accepted:
        relay.metrics.accepted.labels(via="api").inc(accepted)
    return json_response({"results": results}, status=202)


def status_to_wire(status: MessageStatus) -> dict[str, Any]:
    recipients: dict[str, Any] = {}
    for r in status.recipients:
        entry: dict[str, Any] = {"state": r.state, "attempts": r.attempts}
        if r.code:
            entry["code"] = r.code
        if r.reason:
            entry["reason"] = r.reason
        if r.next_attempt and r.state == "queued":
            entry["next_attempt"] = format_timestamp(r.next_attempt)
        entry["updated"] = format_timestamp(r.updated)
        recipients[r.address] = entry
    return {
        "id": status.id,
        "from": status.sender,
        "created": format_timestamp(status.created),
        "expires": format_timestamp(status.expires),
        "recipients": recipients,
        "events": [
            {
                k: v
                for k, v in {
                    "at": format_timestamp(ev.at),
                    "recipient": ev.recipient,
                    "event": ev.event,
                    "code": ev.code,
                    "reason": ev.reason,
                    "hop": ev.hop,
                }.items()
                if v is not None
            }
            for ev in status.events
        ],
    }


@routes.get("/synq/v1/messages/{id}")
async def message_status(request: web.Request) -> web.Response:
    """Per-recipient state of a message the token's agent sent. Another agent's message is
    answered 404 like a missing one, so ids cannot be probed."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    status = await relay.store.message_status(relay.domain, request.match_info["id"])
    if status is None or status.sender != f"{agent.name}@{relay.domain}":
        raise E.NotFound("no such message")
    return json_response(status_to_wire(status))


# --- inbox --------------------------------------------------------------------------------------


def _inbox_body(items: list[InboxItem]) -> bytes:
    # The payloads are already compact JSON objects: splice them instead of re-encoding.
    cursor = items[-1].seq if items else None
    head = b'{"messages":[' + b",".join(envelope_payload(i) for i in items) + b"]"
    return head + b',"cursor":' + jsonutil.dumps(cursor) + b"}"


@routes.get("/synq/v1/inbox")
async def read_inbox(request: web.Request) -> web.Response:
    """``GET /synq/v1/inbox?wait=30&limit=50`` → ``{"messages": [envelope…], "cursor": seq}``.

    Unacked messages, oldest first; waits up to ``wait`` seconds for the first one. With
    ``all=1`` acked ones too (history), ``thread=`` filters, ``after=<cursor>`` pages. Reading
    never consumes: a message stays until acked, so a client that vanishes mid-poll loses nothing.
    """
    relay = request.app[RELAY]
    agent = await authenticate(request)
    wait = _query_number(request, "wait", 0.0, 0.0, MAX_LONG_POLL_SECONDS)
    limit = int(_query_number(request, "limit", DEFAULT_INBOX_PAGE, 1, MAX_INBOX_PAGE))
    after = request.query.get("after")
    after_seq = int(_query_number(request, "after", 0, 0, 2**62)) if after is not None else None
    include_acked = _query_flag(request, "all")
    thread = request.query.get("thread") or None

    async def fetch() -> list[InboxItem]:
        return await relay.store.inbox(
            agent.name, limit=limit, include_acked=include_acked, thread=thread, after_seq=after_seq
        )

    loop = asyncio.get_running_loop()
    async with relay.store.notifier.listen(inbox_channel(agent.name)) as listener:
        items = await fetch()
        deadline = loop.time() + wait
        while not items and (remaining := deadline - loop.time()) > 0:
            await listener.wait(remaining)
            items = await fetch()
    return web.Response(body=_inbox_body(items), content_type="application/json")


@routes.post("/synq/v1/inbox/{id}/ack")
async def ack_message(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    agent = await authenticate(request)
    env_id = request.match_info["id"]
    if not await relay.store.ack(agent.name, env_id, relay.clock.now()):
        raise E.NotFound("no such message in this inbox")
    relay.metrics.inbox_acks.inc()
    return json_response({"id": env_id, "acked": True})


@routes.get("/synq/v1/inbox/stream")
async def stream_inbox(request: web.Request) -> web.StreamResponse:
    """Server-sent events (WHATWG HTML §9.2): one ``message`` event per unacked inbox entry,
    ``id:`` = its inbox sequence, so a reconnecting client sends ``Last-Event-ID`` and resumes
    exactly after the last event it saw."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    last = request.headers.get("Last-Event-ID") or request.query.get("after")
    try:
        after_seq = int(last) if last else None
    except ValueError:
        raise E.MalformedRequest("Last-Event-ID must be an inbox sequence number") from None
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        async with relay.store.notifier.listen(inbox_channel(agent.name)) as listener:
            while True:
                items = await relay.store.inbox(
                    agent.name, limit=MAX_INBOX_PAGE, after_seq=after_seq
                )
                for item in items:
                    await response.write(
                        b"event: message\nid: %d\ndata: " % item.seq
                        + envelope_payload(item)
                        + b"\n\n"
                    )
                    after_seq = item.seq
                if items:
                    continue
                if not await listener.wait(SSE_HEARTBEAT_SECONDS):
                    await response.write(b": keepalive\n\n")
    return response


# --- cards and health ---------------------------------------------------------------------------


async def local_card(request: web.Request, address: Address) -> dict[str, Any]:
    relay = request.app[RELAY]
    agent = await relay.store.get_agent(address.local)
    if agent is None:
        raise E.NotFound(f"no agent {address}")
    adapter = relay.dispatcher.adapters.get(agent.kind)
    if adapter is not None:
        return await adapter.card(agent, str(address), relay.public_url)
    return inbox_agent_card(address, relay.public_url)


@routes.get("/synq/v1/agents/{address}")
async def agent_card(request: web.Request) -> web.Response:
    """The agent card of any address: a local agent's own, or a partner's fetched from its
    relay (``/agents/<local>/.well-known/agent-card.json``). Public, as cards are."""
    relay = request.app[RELAY]
    address = Address.parse(request.match_info["address"])
    if address.domain == relay.domain:
        return json_response(await local_card(request, address))
    return json_response(await relay.discovery.agent_card(address.domain, address.local))


@routes.get("/agents/{local}/.well-known/agent-card.json")
async def published_card(request: web.Request) -> web.Response:
    """Where partners fetch a local agent's card (DESIGN §5)."""
    relay = request.app[RELAY]
    try:
        address = Address.parse(f"{request.match_info['local']}@{relay.domain}")
    except E.InvalidAddress:
        raise E.NotFound("no such agent") from None
    return json_response(await local_card(request, address))


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    await request.app[RELAY].store.ping()
    return json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[RELAY].metrics.render()
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )
