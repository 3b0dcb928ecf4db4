"""Where the time of one relayed call goes: the protocols section's relayed calls, step by step.

The same two relays and agents as bench/protocols.py (``synq serve`` processes, an a2a-sdk
agent, an MCP server), but with tracing on: each relay's ``[telemetry] otlp_endpoint`` names an
OTLP/HTTP receiver inside this process, which decodes the exports (opentelemetry-proto) and keeps
the spans. The client sends a fresh sampled ``traceparent`` with every timed call, so all the
spans of one call — the A2A or MCP face's request, the accept, the queue waits, the federation
sends and receives, the dispatcher's hand-over, the agent call and the reply's way back
(SPEC.md §14.3) — share one trace id. Both relays run on this machine, so their span
timestamps (``time.time_ns``) are on one clock.

Each call is cut into consecutive steps between span boundaries (``STEPS``); their sum is the
face's request span, and "client ↔ face" is the rest of what the client measured (the SDK, its
HTTP request, the response's way back). The table gives each step's median over the calls and
its share of the relayed median; medians of parts do not add up exactly to the median of the
whole. Tracing costs something itself (``python -m bench --only tracing``), so the relayed p50
here is a little above the protocols section's.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import web

from bench.common import Federation, free_port, percentile, workdir
from bench.protocols import Latency, Traced, _agent, a2a_latency, mcp_latency

#: The span boundaries of one relayed call, in order; each step runs from one to the next.
#: (side, span, edge): ``a`` the calling relay (acme), ``g`` the agent's relay (globex); span
#: names as SPEC.md §14.3 gives them, ``face`` the face's HTTP server span, ``call`` the
#: adapter's client span to the agent, ``queue.out``/``queue.in`` the federation sender's and the
#: dispatcher's queue waits; ``1`` the request's envelope, ``2`` the reply's.
Mark = tuple[str, str, str]
STEPS: Final[tuple[tuple[str, Mark, Mark], ...]] = (
    ("face in: auth, parse, to the router", ("a", "face", "start"), ("a", "accept1", "start")),
    ("accept: check, build, sign, commit", ("a", "accept1", "start"), ("a", "accept1", "end")),
    ("sender woken (queue wait)", ("a", "accept1", "end"), ("a", "send1", "start")),
    ("transaction out, to the partner's handler", ("a", "send1", "start"), ("g", "recv1", "start")),
    ("partner: verify, judge, commit", ("g", "recv1", "start"), ("g", "recv1", "end")),
    ("dispatcher woken, leased", ("g", "recv1", "end"), ("g", "queue.in", "end")),
    ("lease to agent call", ("g", "queue.in", "end"), ("g", "call", "start")),
    ("agent call, to its answer's accept", ("g", "call", "start"), ("g", "accept2", "start")),
    ("reply accept: build, sign, commit", ("g", "accept2", "start"), ("g", "accept2", "end")),
    ("reply sender woken (queue wait)", ("g", "accept2", "end"), ("g", "send2", "start")),
    ("reply transaction out, to the handler", ("g", "send2", "start"), ("a", "recv2", "start")),
    ("caller's relay: verify, judge, commit", ("a", "recv2", "start"), ("a", "recv2", "end")),
    ("face answers (tracker woken, reply out)", ("a", "recv2", "end"), ("a", "face", "end")),
)
CLIENT_STEP: Final = "client <-> face (SDK, HTTP)"


@dataclass
class Span:
    name: str
    kind: int
    start: int
    end: int
    attributes: dict[str, str]


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver (OTLP specification, "OTLP/HTTP Request"): spans by
    service name (each relay's ``[telemetry] service_name``) and trace id."""

    spans: dict[str, dict[str, list[Span]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )

    async def traces(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource in message.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope in resource.scope_spans:
                for s in scope.spans:
                    attributes = {
                        a.key: a.value.string_value or str(a.value.int_value) for a in s.attributes
                    }
                    span = Span(
                        s.name, s.kind, s.start_time_unix_nano, s.end_time_unix_nano, attributes
                    )
                    self.spans[service][s.trace_id.hex()].append(span)
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")


@dataclass
class Breakdown:
    protocol: str
    direct: Latency
    relayed: Latency
    #: step → its duration in each call that had all its spans (seconds).
    steps: dict[str, list[float]]
    #: Calls whose trace lacked a span a step needs (left out of the steps).
    incomplete: int

    def p50(self, step: str) -> float:
        return percentile(self.steps[step], 50)


_SERVER: Final = 2  # opentelemetry.proto Span.SpanKind SPAN_KIND_SERVER
_CLIENT: Final = 3


def _marks(acme: Sequence[Span], globex: Sequence[Span], face: str) -> dict[str, Span] | None:
    """The spans ``STEPS`` names, for one call's trace; None when one is missing."""

    def one(spans: Sequence[Span], pick: Callable[[Span], bool]) -> Span | None:
        found = sorted((s for s in spans if pick(s)), key=lambda s: s.start)
        return found[0] if found else None

    def nth(spans: Sequence[Span], name: str, i: int) -> Span | None:
        found = sorted((s for s in spans if s.name == name), key=lambda s: s.start)
        return found[i] if len(found) > i else None

    picked = {
        "a.face": one(acme, lambda s: s.kind == _SERVER and re.match(face, s.name) is not None),
        "a.accept1": nth(acme, "synq.accept", 0),
        "a.send1": nth(acme, "synq.federation.send", 0),
        "a.recv2": nth(acme, "synq.federation.receive", 0),
        "g.recv1": nth(globex, "synq.federation.receive", 0),
        "g.queue.in": one(
            globex, lambda s: s.name == "synq.queue.wait" and "synq.to" in s.attributes
        ),
        "g.call": one(
            globex,
            lambda s: (
                s.kind == _CLIENT and (s.name.startswith("a2a.") or s.name.startswith("mcp."))
            ),
        ),
        "g.accept2": nth(globex, "synq.accept", 0),
        "g.send2": nth(globex, "synq.federation.send", 0),
    }
    if any(v is None for v in picked.values()):
        return None
    return {k: v for k, v in picked.items() if v is not None}


def _at(marks: dict[str, Span], mark: Mark) -> int:
    side, span, edge = mark
    s = marks[f"{side}.{span}"]
    return s.start if edge == "start" else s.end


def analyse(
    protocol: str,
    direct: Latency,
    relayed: Latency,
    trace_ids: Sequence[str],
    collector: Collector,
    face: str,
    acme: str = "acme.test",
    globex: str = "globex.test",
) -> Breakdown:
    steps: dict[str, list[float]] = {name: [] for name, _, _ in STEPS}
    steps[CLIENT_STEP] = []
    incomplete = 0
    for trace_id, total in zip(trace_ids, relayed.samples, strict=True):
        marks = _marks(collector.spans[acme][trace_id], collector.spans[globex][trace_id], face)
        if marks is None:
            incomplete += 1
            continue
        for name, begin, end in STEPS:
            steps[name].append((_at(marks, end) - _at(marks, begin)) / 1e9)
        served = (marks["a.face"].end - marks["a.face"].start) / 1e9
        steps[CLIENT_STEP].append(total - served)
    return Breakdown(protocol, direct, relayed, steps, incomplete)


def _trace_to(cwd: Path, endpoint: str) -> None:
    """Point the relay's ``[telemetry]`` at ``endpoint``, its service name its directory's."""
    path = cwd / "synq.toml"
    text = path.read_text(encoding="utf-8")
    text = re.sub(r'(?m)^otlp_endpoint = ""', f'otlp_endpoint = "{endpoint}"', text, count=1)
    text = re.sub(r'(?m)^service_name = "[^"]*"', f'service_name = "{cwd.name}"', text, count=1)
    path.write_text(text, encoding="utf-8")


async def run(calls: int, base: Path) -> list[Breakdown]:
    workdir(base)
    collector = Collector()
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/traces", collector.traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    endpoint = f"http://127.0.0.1:{port}"
    a2a_agent = await _agent("a2a", base)
    mcp_agent = await _agent("mcp", base)
    a2a_traced, mcp_traced = Traced(), Traced()
    try:
        async with Federation(base) as fed:
            acme = await fed.add("acme.test", ["alice"], listen=f"127.0.0.1:{free_port()}")
            globex = await fed.add(
                "globex.test",
                ["carol"],
                backed={"bob": ["--a2a", a2a_agent.url], "tools": ["--mcp-http", mcp_agent.url]},
                listen=f"127.0.0.1:{free_port()}",
            )
            for org in (acme, globex):
                _trace_to(org.cwd, endpoint)
            await fed.serve(acme)
            await fed.serve(globex)
            alice = acme.tokens["alice"]
            a2a_direct = await a2a_latency(a2a_agent.url, calls)
            a2a_relayed = await a2a_latency(
                f"{acme.url}/a2a/bob@globex.test", calls, alice, a2a_traced
            )
            mcp_direct = await mcp_latency(mcp_agent.url, calls)
            mcp_relayed = await mcp_latency(
                f"{acme.url}/mcp/tools@globex.test", calls, alice, mcp_traced
            )
        # Leaving the federation stopped the relays (SIGTERM): each flushed its batch
        # processor on the way out (Relay.close), so every span has been received.
    finally:
        await a2a_agent.stop()
        await mcp_agent.stop()
        await runner.cleanup()
    return [
        analyse("A2A", a2a_direct, a2a_relayed, a2a_traced.trace_ids, collector, r"POST /a2a/"),
        analyse("MCP", mcp_direct, mcp_relayed, mcp_traced.trace_ids, collector, r"POST /mcp/"),
    ]
