"""Local send→inbox throughput of one relay, beside a bare aiohttp baseline, run side by side.

    python bench/local_throughput.py [-n 5000] [-c 32] [--json]

Both servers run as their own process on loopback. The relay figure is end to end: every
message is accepted with 202 (durable in SQLite), then the recipient's inbox is read until all
have arrived. The baseline is an aiohttp server answering the same JSON POST with 202 and doing
nothing else: the ratio shows what the relay's own work costs on top of HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

BASELINE_SERVER = """
import sys
from aiohttp import web
async def h(request):
    await request.read()
    return web.json_response({"id": "x", "status": "queued"}, status=202)
app = web.Application()
app.router.add_post("/synq/v1/messages", h)
async def main():
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print("listening on http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1], flush=True)
    import asyncio
    await asyncio.Event().wait()
import asyncio
asyncio.run(main())
"""


async def start(argv: list[str], cwd: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode()
    if "listening on" not in line:
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip()


async def cli(cwd: Path, *argv: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "--json", *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    result: dict[str, Any] = json.loads(out)
    return result


async def blast(url: str, token: str, n: int, concurrency: int) -> float:
    payload = {"to": ["bob@acme.test"], "content_type": "text/plain", "body": "x" * 512}
    headers = {"Authorization": f"Bearer {token}"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                async with http.post(f"{url}/synq/v1/messages", json=payload, headers=headers) as r:
                    if r.status != 202:
                        raise RuntimeError(f"send failed: {r.status} {await r.text()}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


async def drain_inbox(url: str, token: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    seen, after = 0, None
    async with aiohttp.ClientSession() as http:
        while seen < n:
            params: dict[str, str] = {"limit": "500", "wait": "5", "all": "1"}
            if after is not None:
                params["after"] = str(after)
            async with http.get(f"{url}/synq/v1/inbox", params=params, headers=headers) as r:
                page = await r.json()
            seen += len(page["messages"])
            after = page["cursor"] if page["cursor"] is not None else after


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=5000, help="messages (default 5000)")
    ap.add_argument("-c", type=int, default=32, help="concurrent client connections")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        base_proc, base_url = await start([sys.executable, "-c", BASELINE_SERVER], cwd)
        try:
            base_s = await blast(base_url, "x", args.n, args.c)
        finally:
            base_proc.kill()
            await base_proc.wait()

        await cli(cwd, "init", "--domain", "acme.test", "--dir", tmp, "--listen", "127.0.0.1:0")
        alice = await cli(cwd, "agent", "add", "alice")
        bob = await cli(cwd, "agent", "add", "bob")
        proc, url = await start([sys.executable, "-m", "relay.cli", "serve"], cwd)
        try:
            started = time.perf_counter()
            await blast(url, alice["token"], args.n, args.c)
            await drain_inbox(url, bob["token"], args.n)
            relay_s = time.perf_counter() - started
        finally:
            proc.terminate()
            await proc.wait()

    rows = {
        "baseline_aiohttp_post_per_s": args.n / base_s,
        "relay_send_to_inbox_per_s": args.n / relay_s,
    }
    rows["ratio_relay_to_baseline"] = (
        rows["relay_send_to_inbox_per_s"] / rows["baseline_aiohttp_post_per_s"]
    )
    if args.json:
        print(
            json.dumps(
                {"n": args.n, "concurrency": args.c, "cpus": os.cpu_count(), **rows}, indent=2
            )
        )
    else:
        print(f"local send→inbox, n={args.n}, concurrency={args.c}")
        print(
            f"  {'bare aiohttp POST (baseline)':32} {rows['baseline_aiohttp_post_per_s']:10.0f} req/s"
        )
        print(
            f"  {'relay send→inbox (SQLite FULL)':32} {rows['relay_send_to_inbox_per_s']:10.0f} msg/s"
        )
        print(f"  {'ratio relay / baseline':32} {rows['ratio_relay_to_baseline']:10.2f}")


if __name__ == "__main__":
    asyncio.run(main())
