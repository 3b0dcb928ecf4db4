"""How to host the a2a-sdk in the relay, measured: the two ways of SPEC.md "Hosting the SDKs".

* **AsgiHost** (what Synq runs): the SDK's own Starlette routes (JSON-RPC and HTTP+JSON
  dispatchers, SSE) inside the relay's aiohttp server through relay.server.asgi.AsgiHost;
* **direct**: an aiohttp route that parses the JSON-RPC request itself and calls the SDK's
  transport-agnostic request handler (the face's FaceHandler) — what the relay would have to
  write and keep in step with the SDK for every method, error code and binding.

    python bench/a2a_hosting.py [-n 2000] [-c 16] [-r 3]

Both serve the same relay, the same handler, in one aiohttp server on loopback. Each request is
a JSON-RPC ``SendMessage`` with ``returnImmediately`` to a local inbox agent (a task and an
envelope committed: the face's real work) or a ``GetTask`` (one store read: the hosting cost
nearly alone). Prints requests/s with ``c`` clients in parallel and the p50 latency of one
client, for both, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from a2a.server.context import ServerCallContext
from a2a.types import GetTaskRequest, SendMessageRequest, Task
from a2a.utils.errors import A2AError
from aiohttp import web
from aiohttp.test_utils import TestServer
from google.protobuf import json_format

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.config import Config, RelaySection, StoreSection
from relay.core import jsonutil
from relay.core.clock import SystemClock
from relay.core.ids import hash_token, new_token
from relay.core.jws import SigningKey
from relay.core.ratelimit import Rate
from relay.keyring import KeyEntry, write_key
from relay.runtime import Relay
from relay.server.a2a_face import A2A_FACE
from relay.server.app import build_app

ADDRESS = "bob@bench.test"


def direct_route(app: web.Application) -> None:
    """JSON-RPC straight from aiohttp to the request handler, for SendMessage and GetTask."""
    face = app[A2A_FACE]

    async def call(request: web.Request) -> web.Response:
        # The same authentication as the face.
        owner = await face._authenticate(request.headers.get("Authorization", ""), request.remote)
        body = jsonutil.loads(await request.read(), max_bytes=1 << 20, what="request")
        context = ServerCallContext(
            state={
                "headers": dict(request.headers),
                "synq.sender": owner,
                "synq.address": request.match_info["address"],
            }
        )
        try:
            if body["method"] == "SendMessage":
                params = json_format.ParseDict(body["params"], SendMessageRequest())
                answer = await face.handler.on_message_send(params, context)
                key = "task" if isinstance(answer, Task) else "message"
                result: Any = {key: json_format.MessageToDict(answer)}
            else:
                get = json_format.ParseDict(body["params"], GetTaskRequest())
                result = json_format.MessageToDict(await face.handler.on_get_task(get, context))
        except A2AError as exc:
            return web.json_response(
                {"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32000, "message": str(exc)}}
            )
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": result})

    app.router.add_post("/direct/{address}", call)


def send(n: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": n,
        "method": "SendMessage",
        "params": {
            "message": {"role": "ROLE_USER", "messageId": f"m{n}", "parts": [{"text": "hi"}]},
            "configuration": {"returnImmediately": True},
        },
    }


async def measure(
    http: httpx.AsyncClient, url: str, n: int, clients: int, make: Any
) -> tuple[float, float]:
    async def one(i: int) -> float:
        started = time.perf_counter()
        response = await http.post(url, json=make(i))
        data = response.json()
        assert "result" in data, data
        return time.perf_counter() - started

    for i in range(20):  # warm up
        await one(i)
    latencies = [await one(i) for i in range(min(n, 400))]
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return n / (time.perf_counter() - started), statistics.median(latencies)


async def main_async(n: int, clients: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        now = SystemClock().now()
        write_key(
            base / "keys",
            KeyEntry(key=SigningKey.generate("s1"), created=now, activates=now, retires=None),
        )
        config = Config(
            relay=RelaySection(domain="bench.test", listen="127.0.0.1:0"),
            store=StoreSection(url="sqlite:///synq.db", synchronous="NORMAL"),
            base_dir=base,
        )
        relay = await Relay.open(config)
        token = new_token()
        await relay.store.create_agent("alice", "inbox", hash_token(token), None, now)
        await relay.store.create_agent("bob", "inbox", hash_token(new_token()), None, now)
        relay.router.agent_rates.reconfigure(Rate(1e9, 1e9))  # measure capacity, not limits
        app = build_app(relay)
        direct_route(app)
        server = TestServer(app, handler_cancellation=True)
        await server.start_server()
        headers = {"Authorization": f"Bearer {token}", "A2A-Version": "1.0"}
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        try:
            async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as http:
                urls = {
                    "AsgiHost (SDK routes)": str(server.make_url(f"/a2a/{ADDRESS}")),
                    "direct (aiohttp → handler)": str(server.make_url(f"/direct/{ADDRESS}")),
                }
                first = (await http.post(next(iter(urls.values())), json=send(0))).json()
                task_id = first["result"]["task"]["id"]

                def get(i: int) -> dict[str, Any]:
                    return {
                        "jsonrpc": "2.0",
                        "id": i,
                        "method": "GetTask",
                        "params": {"id": task_id},
                    }

                print(
                    f"n={n} per round, {rounds} rounds alternating, medians; "
                    f"{clients} clients in parallel; p50 of one client alone"
                )
                for what, make in (("SendMessage", send), ("GetTask", get)):
                    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in urls}
                    for _ in range(rounds):  # alternate, so load drift hits both alike
                        for k, u in urls.items():
                            runs[k].append(await measure(http, u, n, clients, make))
                    figures = {
                        k: (
                            statistics.median(r for r, _ in v),
                            statistics.median(p for _, p in v),
                        )
                        for k, v in runs.items()
                    }
                    (a_rate, a_p50), (d_rate, d_p50) = figures.values()
                    for name, (rate, p50) in figures.items():
                        print(f"  {what:12} {name:28} {rate:8.0f} req/s   p50 {p50 * 1000:6.2f} ms")
                    print(
                        f"  {what:12} {'AsgiHost / direct':28} {a_rate / d_rate:8.2f} ×"
                        f"       p50 +{(a_p50 - d_p50) * 1000:.2f} ms"
                    )
        finally:
            await server.close()
            await relay.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="requests per measurement")
    parser.add_argument("-c", type=int, default=16, help="clients in parallel")
    parser.add_argument("-r", type=int, default=3, help="rounds per side")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.n, args.c, args.r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
