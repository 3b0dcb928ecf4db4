"""Synq throughput, each figure beside a baseline measured in the same run.

    python bench/run.py [-n 5000] [-c 32] [--json]

Every server is its own process on loopback; the load generator is this process.

* ``baseline``: an aiohttp server answering the API's JSON POST with 202 and doing nothing else;
* ``local``: one relay, send → recipient's inbox (accepted with 202 = durable in SQLite);
* ``federated``: two relays and a loopback DNS server; alice@acme.test → bob@globex.test, end to
  end: accepted at acme (durable), signed, batched into transactions, verified and committed at
  globex, read from bob's inbox.

Ratios: local / baseline shows what the relay's own work costs on top of HTTP; federated /
local shows what crossing the boundary costs on top of local delivery.
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

from relay.dnsserver import DNSServer

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
    """Start a server process and read the URL it prints once listening."""
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


async def blast(url: str, token: str, n: int, concurrency: int, to: str = "bob@acme.test") -> float:
    """POST n messages of ~1 KB (as signed envelopes) over ``concurrency`` connections."""
    payload = {"to": [to], "content_type": "text/plain", "body": "x" * 512}
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
    """Long-poll the inbox, page after page, until ``n`` messages have arrived."""
    headers = {"Authorization": f"Bearer {token}"}
    seen, after = 0, None
    async with aiohttp.ClientSession() as http:
        while seen < n:
            params: dict[str, str] = {"limit": "500", "wait": "30", "all": "1"}
            if after is not None:
                params["after"] = str(after)
            async with http.get(f"{url}/synq/v1/inbox", params=params, headers=headers) as r:
                page = await r.json()
            seen += len(page["messages"])
            after = page["cursor"] if page["cursor"] is not None else after


async def federated(n: int, concurrency: int, base: Path) -> float:
    """Seconds for n envelopes alice@acme.test → bob@globex.test, end to end."""
    async with DNSServer(host="127.0.0.1", zones=["test"]) as dns:
        procs = []
        urls: dict[str, str] = {}
        tokens: dict[str, str] = {}
        try:
            for domain, agent in (("acme.test", "alice"), ("globex.test", "bob")):
                cwd = base / domain
                cwd.mkdir()
                await cli(
                    cwd, "init", "--domain", domain, "--dir", str(cwd), "--listen", "127.0.0.1:0",
                    "--nameserver", dns.address, "--allow-private-addresses",
                )  # fmt: skip
                tokens[agent] = (await cli(cwd, "agent", "add", agent))["token"]
                for rec in await cli(cwd, "dns"):
                    if "._synqkey." in rec["name"]:
                        dns.set_txt(rec["name"].rstrip("."), [rec["value"]], ttl=3600)
                proc, url = await start([sys.executable, "-m", "relay.cli", "serve"], cwd)
                procs.append(proc)
                urls[domain] = url
                dns.set_txt(f"_synq.{domain}", [f"v=synq1; relay={url}"], ttl=3600)
            started = time.perf_counter()
            await blast(urls["acme.test"], tokens["alice"], n, concurrency, to="bob@globex.test")
            await drain_inbox(urls["globex.test"], tokens["bob"], n)
            return time.perf_counter() - started
        finally:
            for proc in procs:
                proc.terminate()
                await proc.wait()


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

        fed_base = Path(tmp) / "federated"
        fed_base.mkdir()
        fed_s = await federated(args.n, args.c, fed_base)

    rows = {
        "baseline_aiohttp_post_per_s": args.n / base_s,
        "local_send_to_inbox_per_s": args.n / relay_s,
        "federated_relay_to_relay_per_s": args.n / fed_s,
    }
    local, fed = rows["local_send_to_inbox_per_s"], rows["federated_relay_to_relay_per_s"]
    rows["ratio_local_to_baseline"] = local / rows["baseline_aiohttp_post_per_s"]
    rows["ratio_federated_to_local"] = fed / local
    if args.json:
        doc = {"n": args.n, "concurrency": args.c, "cpus": os.cpu_count(), **rows}
        print(json.dumps(doc, indent=2))
        return
    print(f"Synq throughput: n={args.n}, concurrency={args.c}, {os.cpu_count()} CPUs, SQLite FULL")
    table = [
        ("bare aiohttp POST (baseline)", rows["baseline_aiohttp_post_per_s"], "req/s"),
        ("local send -> inbox", local, "msg/s"),
        ("relay -> relay, end to end", fed, "msg/s"),
        ("ratio local / baseline", rows["ratio_local_to_baseline"], ""),
        ("ratio relay->relay / local", rows["ratio_federated_to_local"], ""),
    ]
    for name, value, unit in table:
        print(
            f"  {name:32} {value:10.2f} {unit}" if not unit else f"  {name:32} {value:10.0f} {unit}"
        )


if __name__ == "__main__":
    asyncio.run(main())
