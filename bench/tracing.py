"""What tracing costs (SPEC.md §14.3): relay→relay throughput with tracing off, on without
export, and on with OTLP/HTTP export, in one run.

Two relays in this process, on one event loop, each serving its HTTP face on a loopback port (the
harness of tests/fedenv.py: a loopback DNS server, real sockets, SQLite stores). A client posts
``n`` messages, ``c`` at a time, each with a ``traceparent`` header (the case where every span is
made: a client that traces), to an agent at the other relay; the sender's queue runs until
everything is ``sent``. Timed: from the first POST to the last envelope settled at the sender,
so every span of the path is in it — the HTTP server span, accept, queue wait, federation send
and, at the receiver, the HTTP span and the receive span.

The three modes, each in a fresh pair of relays, in rounds (mode by mode, ``ROUNDS`` times; the
best rate of each counts, as load from other processes only ever slows a run):

* ``off``: no ``[telemetry]``: OpenTelemetry's no-op tracer, which still carries the client's
  context into the envelope's ``trace``;
* ``on``: a recording tracer (its own ``TracerProvider``, sampling everything) whose spans go
  nowhere: the cost of making spans;
* ``export``: the same spans through a batch processor to an OTLP/HTTP collector — a separate
  process on loopback that reads and discards each request — as ``[telemetry] otlp_endpoint``
  configures it.

Everything runs in this process but the collector, so the rate is the CPU the relay spends per
message: the figure to compare, not the relay's full throughput (bench/throughput.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp

from bench.common import BODY, workdir
from relay.core.ratelimit import Rate
from relay.telemetry import Telemetry

MODES: Final = ("off", "on", "export")
ROUNDS: Final = 3
TRACEPARENT: Final = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

#: The collector process: an OTLP/HTTP receiver that reads each export and answers an empty
#: ExportTraceServiceResponse (an empty protobuf message is zero bytes).
_COLLECTOR: Final = """
import socket, sys
from aiohttp import web
async def traces(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")
app = web.Application(client_max_size=64 * 2**20)
app.router.add_post("/v1/traces", traces)
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(128)
print("PORT", sock.getsockname()[1], flush=True)
web.run_app(app, sock=sock, print=None, access_log=None)
"""


@dataclass
class TracingResult:
    n: int
    c: int
    #: mode → messages per second (best round).
    rates: dict[str, float] = field(default_factory=dict)

    def ratio(self, mode: str) -> float:
        return self.rates[mode] / self.rates["off"]


async def _collector() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _COLLECTOR, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"the OTLP collector did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def _telemetry(mode: str, endpoint: str, domain: str) -> Telemetry:
    if mode == "off":
        return Telemetry.off()
    if mode == "on":
        return Telemetry.build(service_name=f"bench-{domain}")
    return Telemetry.configured(
        endpoint, service_name=f"bench-{domain}", sample_ratio=1.0, domain=domain
    )


async def _one(mode: str, n: int, c: int, base: Path, endpoint: str) -> float:
    # The harness of the tests: two relays with a loopback DNS server, in this process.
    from tests.fedenv import world

    async with world(workdir(base)) as w:
        acme = await w.add_org("acme.test", telemetry=_telemetry(mode, endpoint, "acme.test"))
        globex = await w.add_org("globex.test", telemetry=_telemetry(mode, endpoint, "globex"))
        # Capacity, not the rate limits, is what is measured (bench.common.UNTHROTTLED): the
        # per-sender rates lifted, loopback exempt from the per-source limits.
        unlimited = Rate(per_second=1e9, burst=1e9)
        for org in (acme, globex):
            org.relay.rate_limits.reconfigure(unlimited, unlimited, unlimited)
            org.relay.sources.exempt = (ipaddress.ip_network("127.0.0.0/8"),)
        alice, bob = await acme.agent("alice"), await globex.agent("bob")
        url = f"{acme.url}/synq/v1/messages"
        headers = {**alice.auth, "traceparent": TRACEPARENT}
        payload = {"to": [bob.address], "body": BODY}
        sender = asyncio.create_task(acme.relay.sender.run())
        queue = iter(range(n))
        started = time.perf_counter()
        try:
            async with aiohttp.ClientSession() as http:

                async def client() -> None:
                    for _ in queue:
                        async with http.post(url, json=payload, headers=headers) as resp:
                            if resp.status != 202:
                                raise RuntimeError(f"send: HTTP {resp.status}")

                await asyncio.gather(*(client() for _ in range(c)))
            # The store has no "queue empty" wake-up; a 10 ms poll only bounds when the clock
            # stops, and the sender's loop does the work meanwhile.
            while await acme.relay.store.list_queue():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        # What the batch processor still holds is exported at close (Relay.close, in a thread);
        # not timed: it happens after the work, off the loop.
        return n / elapsed


async def run(n: int, c: int, base: Path) -> TracingResult:
    result = TracingResult(n=n, c=c)
    proc, endpoint = await _collector()
    try:
        for r in range(ROUNDS):
            for mode in MODES:
                rate = await _one(mode, n, c, base / f"{mode}-{r}", endpoint)
                result.rates[mode] = max(result.rates.get(mode, 0.0), rate)
    finally:
        proc.kill()
        await proc.wait()
    return result
