"""How much the ASGI bridge costs the MCP faces: the relay's ``/mcp`` face hosted in the relay's
aiohttp server (relay.server.asgi.AsgiHost, what Synq runs) beside the very same Starlette
application served by uvicorn on its own port (the alternative: a second web stack).

    python bench/mcp_hosting.py [-n 400] [-c 8]

Each side: one SDK client session (streamable HTTP, SSE answers), ``n`` ``tools/call`` of
``find_agents`` (one store read), sequentially and with ``c`` sessions in parallel. Prints calls/s
for both and their ratio. Same process, same relay, same event loop, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import time
from pathlib import Path

import httpx2
import uvicorn
from aiohttp import web
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from relay.config import Config, RelaySection, StoreSection
from relay.core.clock import SystemClock
from relay.core.ids import hash_token, new_token
from relay.core.jws import SigningKey
from relay.keyring import KeyEntry, write_key
from relay.runtime import Relay
from relay.server.app import build_app
from relay.server.mcp import build_asgi


async def calls_per_second(url: str, token: str, n: int, sessions: int) -> float:
    async def one_session(count: int) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            await session.call_tool("find_agents", {})  # warm up
            for _ in range(count):
                await session.call_tool("find_agents", {})

    started = time.perf_counter()
    await asyncio.gather(*(one_session(n // sessions) for _ in range(sessions)))
    return (n // sessions * sessions) / (time.perf_counter() - started)


def loopback_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def main_async(n: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        now = SystemClock().now()
        write_key(
            base / "keys",
            KeyEntry(key=SigningKey.generate("s1"), created=now, activates=now, retires=None),
        )
        aio_sock, uv_sock = loopback_socket(), loopback_socket()
        aio_port, uv_port = aio_sock.getsockname()[1], uv_sock.getsockname()[1]
        config = Config(
            relay=RelaySection(
                domain="bench.test", listen=f"127.0.0.1:{aio_port}",
                public_url=f"http://127.0.0.1:{aio_port}",
            ),
            store=StoreSection(url="sqlite:///synq.db", synchronous="NORMAL"),
            base_dir=base,
        )  # fmt: skip
        relay = await Relay.open(config)
        token = new_token()
        await relay.store.create_agent("bench", "inbox", hash_token(token), None, now)
        runner = web.AppRunner(build_app(relay), handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.SockSite(runner, aio_sock).start()
        server = uvicorn.Server(uvicorn.Config(build_asgi(relay), log_level="warning"))
        uv_task = asyncio.create_task(server.serve([uv_sock]))
        while not server.started:  # noqa: ASYNC110 — uvicorn offers no event to await
            await asyncio.sleep(0.01)
        try:
            for sessions in (1, concurrency):
                hosted = await calls_per_second(
                    f"http://127.0.0.1:{aio_port}/mcp", token, n, sessions
                )
                alone = await calls_per_second(
                    f"http://127.0.0.1:{uv_port}/mcp", token, n, sessions
                )
                print(
                    f"{sessions} session(s): aiohttp + AsgiHost {hosted:7.0f} calls/s   "
                    f"uvicorn {alone:7.0f} calls/s   ratio {hosted / alone:.2f}"
                )
        finally:
            server.should_exit = True
            await uv_task
            await runner.cleanup()
            await relay.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=400, help="tools/call per measurement")
    parser.add_argument("-c", type=int, default=8, help="parallel sessions in the second round")
    args = parser.parse_args()
    asyncio.run(main_async(args.n, args.c))


if __name__ == "__main__":
    main()
