"""Protocol overhead: an SDK client calling an SDK agent directly, and through two relays.

* **A2A**: an a2a-sdk client sends a message (``SendStreamingMessage``) to an a2a-sdk agent
  that answers with a Message (``bench.agents a2a``): directly at the agent's URL, then at
  acme's A2A face for ``bob@globex.test`` (``<acme>/a2a/bob@globex.test``, alice's token),
  where bob is registered at globex with ``synq agent add bob --a2a <agent URL>``. The relayed
  call is an envelope alice@acme → bob@globex (signed, committed, federated, committed), handed
  to the agent by globex's dispatcher, and the answer an envelope back the same way.
* **MCP**: an mcp SDK client calls the ``echo`` tool of an MCP server (``bench.agents mcp``)
  directly, then at acme's MCP face for ``tools@globex.test`` (``<acme>/mcp/tools@globex.test``),
  tools registered at globex with ``synq agent add tools --mcp-http <server URL>``.

Calls are sequential (one in flight: latency, not throughput), after a few warm-up calls that
fill the caches (cards, keys, relay URLs, connections). Each side reports p50 and p99.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import httpx2

from bench.common import (
    Federation,
    Proc,
    cpu_seconds,
    env_with_root,
    free_port,
    percentile,
    start,
    workdir,
)
from bench.throughput import OnServe

WARMUP = 5


@dataclass
class Latency:
    samples: list[float]
    #: CPU time per call of each watched process (label -> seconds): user + system, every
    #: thread, from /proc, over the measured calls only. Unlike the latency it hardly moves
    #: with the machine's load, so it compares two builds even on a busy machine.
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)

    def thirds(self) -> tuple[float, float]:
        """The p50 of the first third of the calls and of the last third, in call order."""
        third = max(len(self.samples) // 3, 1)
        return percentile(self.samples[:third], 50), percentile(self.samples[-third:], 50)


@dataclass
class Overhead:
    protocol: str
    direct: Latency
    relayed: Latency

    @property
    def added_p50(self) -> float:
        return self.relayed.p50 - self.direct.p50

    @property
    def ratio_p50(self) -> float:
        return self.relayed.p50 / self.direct.p50


def bridges_missing() -> str | None:
    """None when the relay has its A2A and MCP bridges, else which are not there yet."""
    absent = [m for m in ("adapters.a2a", "adapters.mcp") if importlib.util.find_spec(m) is None]
    return f"not present yet: {', '.join(absent)}" if absent else None


class Traced:
    """A fresh W3C ``traceparent`` for each timed call (sampled), sent as a header on every
    request of that call, so the relays' spans of one call share one trace id (bench/breakdown.py).
    ``trace_ids[i]`` is the trace of the i-th timed call; warm-up calls carry none."""

    def __init__(self) -> None:
        self.trace_ids: list[str] = []
        self.current: str | None = None

    def next(self) -> None:
        self.current = uuid.uuid4().hex
        self.trace_ids.append(self.current)

    async def hook(self, request: httpx.Request | httpx2.Request) -> None:
        if self.current is not None:
            request.headers["traceparent"] = f"00-{self.current}-{uuid.uuid4().hex[:16]}-01"


async def _timed(
    calls: int,
    call: Callable[[], Awaitable[None]],
    traced: Traced | None = None,
    watch: Mapping[str, int] | None = None,
) -> Latency:
    for _ in range(WARMUP):
        await call()
    watched = dict(watch or {})
    before = {label: cpu_seconds(pid) for label, pid in watched.items()}
    samples = []
    for _ in range(calls):
        if traced is not None:
            traced.next()
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    if traced is not None:
        traced.current = None
    cpu = {label: (cpu_seconds(pid) - before[label]) / calls for label, pid in watched.items()}
    return Latency(samples, cpu)


# A2A ------------------------------------------------------------------------------------------


async def a2a_latency(
    base_url: str,
    calls: int,
    token: str | None = None,
    traced: Traced | None = None,
    watch: Mapping[str, int] | None = None,
) -> Latency:
    from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
    from a2a.types import Message, Part, Role, SendMessageRequest

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    hooks = {"request": [traced.hook]} if traced is not None else {}
    async with httpx.AsyncClient(headers=headers, timeout=60, event_hooks=hooks) as http:
        card = await A2ACardResolver(http, base_url).get_agent_card()
        # Streaming, as the card offers and as the relay's own adapter calls agents: a2a-sdk
        # 1.3's blocking (non-streaming) SendMessage answers only after a fixed wait of some
        # 40 ms in the agent's request handler (measured here: p50 52 ms blocking against
        # 10.6 ms streaming, same agent), which would hide the relays' overhead.
        client = ClientFactory(ClientConfig(streaming=True, httpx_client=http)).create(card)

        async def call() -> None:
            request = SendMessageRequest(
                message=Message(
                    message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text="ping")]
                )
            )
            answered = False
            async for event in client.send_message(request):
                answered = answered or event.HasField("message") or event.HasField("task")
            if not answered:
                raise RuntimeError(f"no answer from {base_url}")

        try:
            return await _timed(calls, call, traced, watch)
        finally:
            await client.close()


# MCP ------------------------------------------------------------------------------------------


async def mcp_latency(
    url: str,
    calls: int,
    token: str | None = None,
    traced: Traced | None = None,
    watch: Mapping[str, int] | None = None,
) -> Latency:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(60, read=60),
            event_hooks={"request": [traced.hook]} if traced is not None else {},
        ) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()

        async def call() -> None:
            result = await session.call_tool("echo", {"text": "ping"})
            if result.is_error:
                raise RuntimeError(f"tool call failed at {url}: {result.content}")

        return await _timed(calls, call, traced, watch)


# both -----------------------------------------------------------------------------------------


async def _agent(kind: str, cwd: Path) -> Proc:
    return await start(
        [sys.executable, "-m", "bench.agents", kind], cwd, f"agent-{kind}", env=env_with_root()
    )


async def run(calls: int, base: Path, on_serve: OnServe | None = None) -> list[Overhead]:
    workdir(base)
    a2a_agent = await _agent("a2a", base)
    mcp_agent = await _agent("mcp", base)
    try:
        async with Federation(base) as fed:
            # Ports chosen here rather than by the relay (port 0): the A2A and MCP faces put
            # the relay's public URL, written at init, into the cards they serve.
            acme = await fed.add("acme.test", ["alice"], listen=f"127.0.0.1:{free_port()}")
            globex = await fed.add(
                "globex.test",
                ["carol"],
                backed={"bob": ["--a2a", a2a_agent.url], "tools": ["--mcp-http", mcp_agent.url]},
                listen=f"127.0.0.1:{free_port()}",
            )
            await fed.serve(acme)
            await fed.serve(globex)
            if on_serve is not None:
                await on_serve("calls-acme", acme.procs)
                await on_serve("calls-globex", globex.procs)
            alice = acme.tokens["alice"]
            relays = {"acme": acme.procs[0].pid, "globex": globex.procs[0].pid}
            a2a = Overhead(
                "A2A",
                await a2a_latency(a2a_agent.url, calls, watch={"agent": a2a_agent.pid}),
                await a2a_latency(
                    f"{acme.url}/a2a/bob@globex.test",
                    calls,
                    alice,
                    watch={**relays, "agent": a2a_agent.pid},
                ),
            )
            mcp = Overhead(
                "MCP",
                await mcp_latency(mcp_agent.url, calls, watch={"agent": mcp_agent.pid}),
                await mcp_latency(
                    f"{acme.url}/mcp/tools@globex.test",
                    calls,
                    alice,
                    watch={**relays, "agent": mcp_agent.pid},
                ),
            )
            return [a2a, mcp]
    finally:
        await a2a_agent.stop()
        await mcp_agent.stop()
