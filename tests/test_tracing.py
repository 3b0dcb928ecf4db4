"""One trace from a client through two relays to the agent and back (SPEC.md §14.3).

Two relays on loopback, each with its own tracer (relay/telemetry.py) recording into an
in-memory exporter; a client with a tracer of its own starts the trace and sends its
``traceparent`` as an HTTP header. The agent at the far end is real: the a2a-sdk TCK agent, which
must see the trace in the ``traceparent`` header of the relay's requests, and the MCP test
server, which must see it in the call's ``_meta`` (MCP SEP-414). Every span the relays record
for the message and its replies must belong to the client's trace."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import Message, Part, Role, SendMessageRequest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from relay.core.ids import hash_token, new_token
from relay.telemetry import Telemetry, inject
from tests.a2a_peers import Peer, sdk_app
from tests.fedenv import Org, World, world
from tests.mcpenv import add_mcp_agent, await_message, stdio_endpoint

#: The spans a relay records for a message (HTTP server spans of unrelated requests, such as an
#: inbox long-poll, start traces of their own).
OWN_SPANS = re.compile(r"^(synq\.|a2a\.|mcp\.)")


def recording(exporter: InMemorySpanExporter, *more: SpanProcessor) -> Telemetry:
    return Telemetry.build(
        service_name="synq-test", processors=[SimpleSpanProcessor(exporter), *more]
    )


def client_tracer() -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("client"), exporter


def trace_ids(spans: tuple[ReadableSpan, ...]) -> set[str]:
    return {f"{s.context.trace_id:032x}" for s in spans if s.context is not None}


def own(spans: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, ...]:
    return tuple(s for s in spans if OWN_SPANS.match(s.name))


async def inject_hook(request: httpx.Request) -> None:
    carrier: dict[str, str] = {}
    inject(carrier)
    request.headers.update(carrier)


@contextlib.asynccontextmanager
async def traced_world(
    base: Path, *acme_processors: SpanProcessor
) -> AsyncIterator[tuple[World, Org, Org, InMemorySpanExporter, InMemorySpanExporter]]:
    async with world(base) as w:
        acme_spans, globex_spans = InMemorySpanExporter(), InMemorySpanExporter()
        acme = await w.add_org("acme.test", telemetry=recording(acme_spans, *acme_processors))
        globex = await w.add_org("globex.test", telemetry=recording(globex_spans))
        loops = [
            asyncio.create_task(loop())
            for org in (acme, globex)
            for loop in (org.relay.sender.run, org.relay.dispatcher.run)
        ]
        loops.append(asyncio.create_task(acme.relay.reply_tracker.run()))
        try:
            yield w, acme, globex, acme_spans, globex_spans
        finally:
            for task in loops:
                task.cancel()
            for task in loops:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class Ended(SpanProcessor):
    """Sets an event when a span of one name ends: a test waits on that, not on a poll."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.event = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def on_end(self, span: ReadableSpan) -> None:
        if span.name == self.name:
            self.loop.call_soon_threadsafe(self.event.set)


def names(spans: tuple[ReadableSpan, ...]) -> set[str]:
    return {s.name for s in spans}


async def test_one_trace_from_an_a2a_client_through_two_relays_to_an_a2a_agent_and_back(
    tmp_path: Path,
) -> None:
    tracer, client_spans = client_tracer()
    seen: list[str | None] = []

    def agent_app(url: str) -> web.Application:
        app = sdk_app(url)

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.method == "POST":
                seen.append(request.headers.get("traceparent"))
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.append(record)
        return app

    back = Ended("synq.federation.receive")
    async with traced_world(tmp_path, back) as (w, acme, globex, acme_spans, globex_spans):
        agent = Peer(agent_app)
        await agent.start()
        await globex.relay.store.create_agent(
            "tck", "a2a", hash_token(new_token()), agent.url, w.clock.now()
        )
        alice = await acme.agent("alice")
        http = httpx.AsyncClient(
            headers=alice.auth, timeout=30, event_hooks={"request": [inject_hook]}
        )
        try:
            face = f"{acme.url}/a2a/tck@globex.test"
            card = await A2ACardResolver(http, face).get_agent_card()
            client = ClientFactory(ClientConfig(streaming=True, httpx_client=http)).create(card)
            request = SendMessageRequest(
                message=Message(
                    role=Role.ROLE_USER, message_id="trace-1", parts=[Part(text="tck-stream-001")]
                )
            )
            with tracer.start_as_current_span("client send") as root:
                events = [e async for e in client.send_message(request)]
            assert events
            trace_id = f"{root.get_span_context().trace_id:032x}"

            # The reply crossed back: acme received it (its receive span is the reply's).
            if "synq.federation.receive" not in names(acme_spans.get_finished_spans()):
                await asyncio.wait_for(back.event.wait(), 20)
        finally:
            await http.aclose()
            await agent.stop()

    assert trace_ids(client_spans.get_finished_spans()) == {trace_id}
    # The agent was called with the trace: W3C traceparent header on the relay's requests.
    assert seen
    assert all(tp is not None and tp.split("-")[1] == trace_id for tp in seen), seen
    acme_own, globex_own = (
        own(acme_spans.get_finished_spans()),
        own(globex_spans.get_finished_spans()),
    )
    assert trace_ids(acme_own) == {trace_id}
    assert trace_ids(globex_own) == {trace_id}
    assert {"synq.accept", "synq.queue.wait", "synq.federation.send"} <= names(acme_own)
    assert "synq.federation.receive" in names(acme_own)  # the reply
    assert {
        "synq.federation.receive",
        "synq.queue.wait",
        "synq.deliver",
        "a2a.send_message",
        "synq.accept",  # the agent's reply, a child of the call that produced it
        "synq.federation.send",
    } <= names(globex_own)
    # The A2A face's request at acme continued the client's span.
    face_spans = [s for s in acme_spans.get_finished_spans() if s.name.startswith("POST /a2a")]
    assert face_spans
    assert {f"{s.context.trace_id:032x}" for s in face_spans if s.context} == {trace_id}


async def test_one_trace_from_an_api_client_through_two_relays_to_an_mcp_server_and_back(
    tmp_path: Path,
) -> None:
    tracer, _client_spans = client_tracer()
    async with traced_world(tmp_path) as (w, acme, globex, acme_spans, globex_spans):
        await add_mcp_agent(globex, "tools", stdio_endpoint())
        alice = await acme.agent("alice")
        with tracer.start_as_current_span("client send") as root:
            headers = dict(alice.auth)
            inject(headers)
            async with w.http.post(
                f"{acme.url}/synq/v1/messages",
                json={
                    "to": ["tools@globex.test"],
                    "content_type": "application/mcp-call+json",
                    "body": {"tool": "traceparent", "arguments": {}},
                },
                headers=headers,
            ) as resp:
                assert resp.status == 202, await resp.text()
                sent = await resp.json()
        trace_id = f"{root.get_span_context().trace_id:032x}"
        reply = await await_message(
            w, acme, alice, lambda m: m["in_reply_to"] == sent["id"] and "traceparent" in str(m)
        )
        # The envelope that left acme names the client's trace; so does the reply.
        assert reply["trace"].split("-")[1] == trace_id
        # The MCP server saw it in _meta (SEP-414): the tool answers with what it got.
        assert f"00-{trace_id}-" in str(reply["body"])

    acme_own, globex_own = (
        own(acme_spans.get_finished_spans()),
        own(globex_spans.get_finished_spans()),
    )
    assert trace_ids(acme_own) == {trace_id}
    assert trace_ids(globex_own) == {trace_id}
    assert {"synq.accept", "synq.federation.send", "synq.federation.receive"} <= names(acme_own)
    assert {"synq.federation.receive", "synq.deliver", "mcp.tools/call", "synq.accept"} <= names(
        globex_own
    )
    api = [s for s in acme_spans.get_finished_spans() if s.name == "POST /synq/v1/messages"]
    assert api
    assert api[0].parent is not None
    assert f"{api[0].parent.trace_id:032x}" == trace_id


async def test_spans_go_to_an_otlp_http_collector_when_one_is_configured(tmp_path: Path) -> None:
    """A collector on loopback: an OTLP/HTTP receiver is an HTTP server taking protobuf
    ``ExportTraceServiceRequest`` bodies at ``/v1/traces`` (OTLP specification)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    collector = web.Application()
    collector.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(collector, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with world(tmp_path) as w:
            telemetry = Telemetry.configured(
                f"http://127.0.0.1:{port}",
                service_name="synq-acme",
                sample_ratio=1.0,
                domain="acme.test",
            )
            acme = await w.add_org("acme.test", telemetry=telemetry)
            alice, bob = await acme.agent("alice"), await acme.agent("bob")
            traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            async with w.http.post(
                f"{acme.url}/synq/v1/messages",
                json={"to": [bob.address], "body": "hi"},
                headers={**alice.auth, "traceparent": traceparent},
            ) as resp:
                assert resp.status == 202
            # The batch processor exports from its own thread, over blocking HTTP.
            assert await asyncio.to_thread(telemetry.flush)
    finally:
        await runner.cleanup()

    spans = [
        span
        for message in received
        for resource in message.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    accept = [s for s in spans if s.name == "synq.accept"]
    assert accept
    assert accept[0].trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    services = {
        a.value.string_value
        for m in received
        for r in m.resource_spans
        for a in r.resource.attributes
        if a.key == "service.name"
    }
    assert services == {"synq-acme"}


async def test_the_mcp_face_continues_the_trace_of_the_calls_meta(tmp_path: Path) -> None:
    """An unmodified MCP client puts its span's ``traceparent`` in ``_meta`` (SEP-414); the
    relay's face serves the call in that trace, and the envelope it sends carries it on."""
    from tests.mcpenv import mcp_client

    tracer, _client_spans = client_tracer()
    async with traced_world(tmp_path) as (w, acme, globex, acme_spans, globex_spans):
        alice, bob = await acme.agent("alice"), await globex.agent("bob")
        async with mcp_client(f"{acme.url}/mcp", alice) as client:
            with tracer.start_as_current_span("client call") as root:
                sent = await client.call_tool(
                    "send_message", {"to": bob.address, "body": "over MCP"}
                )
        assert not sent.is_error
        trace_id = f"{root.get_span_context().trace_id:032x}"
        [message] = await w.inbox(globex, bob, wait=10)
        assert message["trace"].split("-")[1] == trace_id

    served = [s for s in acme_spans.get_finished_spans() if s.name == "mcp.tools/call"]
    assert [s.attributes["gen_ai.tool.name"] for s in served if s.attributes] == ["send_message"]
    assert trace_ids(tuple(served)) == {trace_id}
    assert trace_ids(own(globex_spans.get_finished_spans())) == {trace_id}
