"""The local agent API (SPEC.md §6). Every route here acts as one local agent, identified by
its bearer token; what the agent does is the mailbox's (relay.delivery.mailbox), how the answer
looks is relay.delivery.views. This module only reads HTTP requests and writes HTTP answers."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relay.core import errors as E
from relay.core import idempotency, jsonutil
from relay.core.address import Address
from relay.core.draft import Draft, parse_expires
from relay.core.dsn import parse_notify
from relay.core.envelope import KIND_MESSAGE
from relay.core.limits import (
    DEFAULT_INBOX_PAGE,
    MAX_API_BODY_BYTES,
    MAX_BATCH_BODY_BYTES,
    MAX_BATCH_MESSAGES,
    MAX_INBOX_PAGE,
    MAX_LONG_POLL_SECONDS,
    MAX_RECIPIENTS,
)
from relay.delivery import views
from relay.server.auth import authenticate_bearer
from relay.server.http import query_number, read_body
from relay.server.keys import RELAY
from relay.store.base import AgentRecord

#: How often an idle SSE stream sends a comment line. Keeps proxies and NATs from dropping the
#: connection (many idle-timeout at 30–60 s) and lets the server notice a vanished client.
SSE_HEARTBEAT_SECONDS = 15.0

routes = web.RouteTableDef()


# --- helpers ------------------------------------------------------------------------------------


async def authenticate(request: web.Request) -> AgentRecord:
    """The agent whose bearer token (RFC 6750 §2.1) the request carries: ``401`` without one,
    ``429`` while the client's address has spent its failed attempts (relay.server.auth)."""
    header = request.headers.get("Authorization", "")
    return await authenticate_bearer(request.app[RELAY], header, request.remote)


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


def _query_flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "0").lower() in ("1", "true", "yes")


# --- sending ------------------------------------------------------------------------------------


class SendRequest(BaseModel):
    """The JSON shape of the send request of SPEC.md §6.2: its members and their JSON types.
    The envelope's own rules (patterns, repeats, a text body) are the Draft's
    (relay.core.draft), checked once when it is made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The bound is also the Draft's; here it stops a request making the relay parse more
    # addresses than an envelope can carry.
    to: Annotated[list[str], Field(max_length=MAX_RECIPIENTS)]
    content_type: str = "text/plain"
    body: Any
    kind: str = KIND_MESSAGE
    thread: str | None = None
    in_reply_to: str | None = None
    expires: str | None = None
    trace: str | None = None
    #: RFC 3461 NOTIFY: checked by relay.core.dsn.parse_notify, in the words every face uses.
    notify: Any = None


def _idempotency_key(request: web.Request) -> str | None:
    """The request's ``Idempotency-Key`` (SPEC.md §6.2), or None. Sent twice it is refused: two
    keys cannot both name one request."""
    values = request.headers.getall(idempotency.HEADER, [])
    if not values:
        return None
    if len(values) > 1:
        raise E.MalformedRequest(f"the {idempotency.HEADER} header must appear once")
    return idempotency.parse_header(values[0])


def _draft(sender: Address, data: Any) -> Draft:
    """One send request (the body of ``POST /synq/v1/messages``, or one member of a batch
    without its ``idempotency_key``) as the Draft it asks for."""
    if not isinstance(data, dict):
        raise E.MalformedRequest("the request body must be a JSON object")
    if "body" not in data:
        raise E.InvalidEnvelope("body: field required")
    try:
        req = SendRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise E.InvalidEnvelope(f"{where}: {first['msg']}") from None
    return Draft(
        sender,
        tuple(Address.parse(a) for a in req.to),
        req.content_type,
        req.body,
        kind=req.kind,
        thread=req.thread,
        in_reply_to=req.in_reply_to,
        expires=None if req.expires is None else parse_expires(req.expires),
        trace=req.trace,
        notify=parse_notify(req.notify),
    )


@routes.post("/synq/v1/messages")
async def send_message(request: web.Request) -> web.Response:
    """Send as the token's agent.

    ``POST /synq/v1/messages {"to": ["bob@acme.test"], "content_type": "text/plain", "body": "hi"}``
    → ``202 {"id": "0190…", "status": "queued"}``. The envelope is durable before the answer.
    ``"notify": ["success", "delay", "failure"]`` (or ``["never"]``; default ``["failure"]``)
    asks for delivery-status envelopes about each recipient (SPEC.md §6.2, §9.4).
    With ``Idempotency-Key: "k1"`` a retry gets that same answer, and no second envelope;
    ``409`` while the first request runs, ``422 idempotency_key_reused`` for another request.
    """
    relay = request.app[RELAY]
    agent = await authenticate(request)
    key = _idempotency_key(request)
    draft = _draft(Address(agent.name, relay.domain), await read_json(request))
    # The store write is shielded by the custody gate: a client that hangs up cannot cancel it
    # half way; before it, nothing has been stored, so a cancellation loses nothing.
    sent = await relay.mailbox.send(draft, via="api", key=key)
    env_id = sent.id
    return json_response(
        views.queued(env_id), status=202, headers={"Location": f"/synq/v1/messages/{env_id}"}
    )


#: The member of a batch's message that carries its idempotency key (SPEC.md §6.2.1).
BATCH_KEY_MEMBER = "idempotency_key"


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
    one charge per message, and its own ``idempotency_key`` as the single endpoint's header);
    the accepted ones are committed together, in one store call, before the answer.
    """
    relay = request.app[RELAY]
    agent = await authenticate(request)
    if idempotency.HEADER in request.headers:
        # One key cannot name many messages, and a replayed batch answer is not kept: a client
        # relying on the header would believe itself protected when it is not.
        raise E.MalformedRequest(
            f"a batch takes no {idempotency.HEADER} header; give each message its own "
            f"{BATCH_KEY_MEMBER!r} member"
        )
    messages = _batch_messages(await read_json(request, MAX_BATCH_BODY_BYTES))
    sender = Address(agent.name, relay.domain)
    results: list[dict[str, Any] | None] = [None] * len(messages)
    drafts: list[Draft] = []
    keys: list[str | None] = []
    positions: list[int] = []

    def refuse(i: int, exc: E.SynqError) -> None:
        results[i] = _error_entry(exc)
        # Counted as the single endpoint's refusals are (relay.server.app.count_errors).
        relay.metrics.rejected.labels(code=exc.code).inc()

    for i, data in enumerate(messages):
        try:
            key = None
            if isinstance(data, dict) and BATCH_KEY_MEMBER in data:
                data = dict(data)
                key = idempotency.check_key(data.pop(BATCH_KEY_MEMBER), BATCH_KEY_MEMBER)
            drafts.append(_draft(sender, data))
        except E.PeerError as exc:
            refuse(i, exc)
        else:
            keys.append(key)
            positions.append(i)
    # A refusal of one message comes back as its outcome; anything else (the store failing a
    # recipient look-up) fails the whole request before anything is stored.
    outcomes = await relay.mailbox.send_many(drafts, via="api", keys=keys)
    for i, outcome in zip(positions, outcomes, strict=True):
        if isinstance(outcome, E.SynqError):
            refuse(i, outcome)
        else:
            results[i] = views.queued(outcome.id)
    return json_response({"results": results}, status=202)


@routes.get("/synq/v1/messages/{id}")
async def message_status(request: web.Request) -> web.Response:
    """Per-recipient state of a message the token's agent sent. Another agent's message is
    answered 404 like a missing one, so ids cannot be probed."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    status = await relay.mailbox.status(request.match_info["id"], agent=agent.name)
    return json_response(views.status_to_wire(status))


# --- inbox --------------------------------------------------------------------------------------


@routes.get("/synq/v1/inbox")
async def read_inbox(request: web.Request) -> web.Response:
    """``GET /synq/v1/inbox?wait=30&limit=50`` → ``{"messages": [envelope…], "cursor": seq}``.

    Unacked messages, oldest first; waits up to ``wait`` seconds for the first one. With
    ``all=1`` acked ones too (history), ``thread=`` filters, ``after=<cursor>`` pages. Reading
    never consumes: a message stays until acked, so a client that vanishes mid-poll loses nothing.
    """
    relay = request.app[RELAY]
    agent = await authenticate(request)
    wait = query_number(request, "wait", 0.0, 0.0, MAX_LONG_POLL_SECONDS)
    limit = int(query_number(request, "limit", DEFAULT_INBOX_PAGE, 1, MAX_INBOX_PAGE))
    after = request.query.get("after")
    after_seq = int(query_number(request, "after", 0, 0, 2**62)) if after is not None else None
    include_acked = _query_flag(request, "all")
    thread = request.query.get("thread") or None

    items = await relay.mailbox.read(
        agent.name,
        wait=wait,
        limit=limit,
        after=after_seq,
        include_acked=include_acked,
        thread=thread,
    )
    return web.Response(body=views.inbox_body(items), content_type="application/json")


@routes.post("/synq/v1/inbox/{id}/ack")
async def ack_message(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    agent = await authenticate(request)
    env_id = request.match_info["id"]
    await relay.mailbox.ack(agent.name, env_id)
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
        async with relay.mailbox.follow(agent.name) as reader:
            while True:
                items = await reader.read(
                    wait=SSE_HEARTBEAT_SECONDS, limit=MAX_INBOX_PAGE, after=after_seq
                )
                if not items:
                    await response.write(b": keepalive\n\n")
                for item in items:
                    await response.write(
                        b"event: message\nid: %d\ndata: " % item.seq
                        + views.envelope_payload(item)
                        + b"\n\n"
                    )
                    after_seq = item.seq
    return response


# --- cards and health ---------------------------------------------------------------------------


@routes.get("/synq/v1/agents/{address}")
async def agent_card(request: web.Request) -> web.Response:
    """The agent card of any address: a local agent's own, or a partner's fetched from its
    relay (``/agents/<local>/.well-known/agent-card.json``). Public, as cards are."""
    relay = request.app[RELAY]
    address = Address.parse(request.match_info["address"])
    return json_response(await relay.mailbox.card(address))


@routes.get("/agents/{local}/.well-known/agent-card.json")
async def published_card(request: web.Request) -> web.Response:
    """Where partners fetch a local agent's card (SPEC.md §7.8)."""
    relay = request.app[RELAY]
    try:
        address = Address.parse(f"{request.match_info['local']}@{relay.domain}")
    except E.InvalidAddress:
        raise E.NotFound("no such agent") from None
    return json_response(await relay.mailbox.card(address))


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    await request.app[RELAY].store.ping()
    return json_response({"status": "ok"})
