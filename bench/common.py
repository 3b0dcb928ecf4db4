"""What every part of the suite shares: processes on loopback, the relays' CLI, load and reads.

Every server the suite starts is its own process, listening on a port the OS chose (port 0) and
printing ``listening on <url>`` once it accepts connections; every loop is bounded in count or
time; every process is stopped by the suite. Traffic never leaves the loopback interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from relay.dnsserver import DNSServer

#: The project root: subprocesses run ``-m bench.…`` modules with it on their path.
ROOT = Path(__file__).resolve().parent.parent

#: How long a server may take to print that it listens.
START_TIMEOUT = 60.0

#: Starts of one relay, each on a fresh port, before its address being taken is an error
#: (``Federation.serve``).
START_ATTEMPTS = 5

#: The benchmark measures capacity, so it lifts the per-sender rate limits that a relay applies
#: by default (relay.core.ratelimit: ~50 messages/s per agent and per address).
UNTHROTTLED = """
[rate_limits]
sender_domain = { per_second = 1e9, burst = 1e9 }
sender = { per_second = 1e9, burst = 1e9 }
agent = { per_second = 1e9, burst = 1e9 }
"""

#: ~1 KB signed envelopes: a 512-character body makes a compact JWS of about 1 KB.
BODY = "x" * 512


def env_with_root() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class Proc:
    """A server process started by the suite; its stderr goes to ``log``."""

    proc: asyncio.subprocess.Process
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    async def stop(self, timeout: float = 30.0) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def start(
    argv: Sequence[str], cwd: Path, log_name: str = "server", env: dict[str, str] | None = None
) -> Proc:
    """Start a server process and read the URL it prints once listening."""
    log = cwd / f"{log_name}.log"
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=err, env=env
        )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
    except TimeoutError:
        line = ""
    if "listening on" not in line:
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            proc.kill()
        await proc.wait()
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{argv[-1]} did not start: {line!r}\n{tail}")
    return Proc(proc, line.rsplit(" ", 1)[1].strip(), log)


async def synq(cwd: Path, *argv: str) -> Any:
    """``synq --json ARGV`` in ``cwd``; its parsed output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "--json", *argv,
        cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"synq {' '.join(argv)} failed: {err.decode(errors='replace')}")
    return json.loads(out) if out.strip() else None


def unthrottle(cwd: Path) -> None:
    """Lift the per-sender rate limits (``UNTHROTTLED``) and the default mailbox quotas: a run
    of 100,000 envelopes to one agent would otherwise wait at its 10,000-message quota (4.2.2,
    SPEC.md §9.7) for the reader's acks, measuring the quota's backoff instead of the relay."""
    path = cwd / "synq.toml"
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^max_unacked = .*$", "max_unacked = 0", text)
    text = re.sub(r"(?m)^max_bytes = .*$", 'max_bytes = "0"', text)
    path.write_text(text + UNTHROTTLED, encoding="utf-8")


def serve_argv() -> list[str]:
    return [sys.executable, "-m", "relay.cli", "serve"]


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far, user + system, all its threads (Linux /proc,
    proc(5): fields 14 and 15 of ``stat``, in clock ticks)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        # The command name (field 2) may hold spaces: split after its closing parenthesis.
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _port_taken(exc: BaseException) -> bool:
    """Whether a relay failed to start because its listen address was taken (relay/cli.py's
    words for EADDRINUSE)."""
    return isinstance(exc, RuntimeError) and "already in use" in str(exc)


#: The relay's own listen address in a ``synq init`` configuration (its first ``listen``).
_LISTEN = re.compile(r'(?m)^listen = "127\.0\.0\.1:(\d+)"')


def move_port(cwd: Path) -> bool:
    """Move the relay of ``cwd`` to a fresh loopback port: its ``listen`` and every URL naming
    the old port (``public_url``). False when it listens on port 0 or elsewhere (nothing to
    move)."""
    path = cwd / "synq.toml"
    text = path.read_text(encoding="utf-8")
    found = _LISTEN.search(text)
    if found is None or found.group(1) == "0":
        return False
    old = f"127.0.0.1:{found.group(1)}"
    path.write_text(text.replace(old, f"127.0.0.1:{free_port()}"), encoding="utf-8")
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def workdir(path: Path) -> Path:
    """``path``, made if missing (a plain function: the async code calls it between awaits)."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# load -----------------------------------------------------------------------------------------


async def blast(
    url: str, token: str, n: int, concurrency: int, to: str = "bob@acme.test", batch: int = 1
) -> float:
    """POST n messages of ~1 KB (as signed envelopes) over ``concurrency`` connections: one per
    ``POST /synq/v1/messages`` when ``batch`` is 1, else ``batch`` per
    ``POST /synq/v1/messages/batch`` (the last batch smaller when ``batch`` does not divide n)."""
    payload = {"to": [to], "content_type": "text/plain", "body": BODY}
    headers = {"Authorization": f"Bearer {token}"}
    counter = itertools.count()
    batches = [min(batch, n - start) for start in range(0, n, batch)]
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def single() -> None:
            while next(counter) < n:
                async with http.post(f"{url}/synq/v1/messages", json=payload, headers=headers) as r:
                    if r.status != 202:
                        raise RuntimeError(f"send failed: {r.status} {await r.text()}")

        async def batched() -> None:
            while (i := next(counter)) < len(batches):
                body = {"messages": [payload] * batches[i]}
                async with http.post(
                    f"{url}/synq/v1/messages/batch", json=body, headers=headers
                ) as r:
                    if r.status != 202:
                        raise RuntimeError(f"batch send failed: {r.status} {await r.text()}")
                    answer = await r.json()
                refused = [res for res in answer["results"] if "id" not in res]
                if refused:
                    raise RuntimeError(f"{len(refused)} of a batch refused, e.g. {refused[0]}")

        worker = single if batch <= 1 else batched
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


async def drain_inbox(url: str, token: str, n: int, deadline: float = 3600.0) -> None:
    """Long-poll the inbox, page after page, until ``n`` messages have arrived."""
    headers = {"Authorization": f"Bearer {token}"}
    seen, after = 0, None
    give_up = time.monotonic() + deadline
    async with aiohttp.ClientSession() as http:
        while seen < n:
            if time.monotonic() > give_up:
                raise RuntimeError(f"only {seen} of {n} messages arrived in {deadline:.0f} s")
            params: dict[str, str] = {"limit": "500", "wait": "30", "all": "1"}
            if after is not None:
                params["after"] = str(after)
            async with http.get(f"{url}/synq/v1/inbox", params=params, headers=headers) as r:
                page = await r.json()
            seen += len(page["messages"])
            after = page["cursor"] if page["cursor"] is not None else after


async def round_robin(backends: list[str]) -> tuple[web.AppRunner, aiohttp.ClientSession, str]:
    """A minimal load balancer: each request to the next backend in turn."""
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
    turn = itertools.cycle(backends)

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")
        }
        async with http.request(
            request.method, next(turn) + request.path_qs, data=body, headers=headers
        ) as resp:
            return web.Response(
                status=resp.status, body=await resp.read(), content_type=resp.content_type
            )

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, http, f"http://127.0.0.1:{port}"


# two organisations ----------------------------------------------------------------------------


@dataclass
class Org:
    """One organisation's relay directory, its agents' tokens and its running processes."""

    domain: str
    cwd: Path
    tokens: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    url: str = ""
    balancer: tuple[web.AppRunner, aiohttp.ClientSession, str] | None = None

    @property
    def db(self) -> Path:
        return self.cwd / "synq.db"

    async def stop(self) -> None:
        for proc in self.procs:
            await proc.stop()
        self.procs.clear()
        if self.balancer is not None:
            await self.balancer[0].cleanup()
            await self.balancer[1].close()
            self.balancer = None


class Federation:
    """A loopback DNS server and the relay directories of several organisations, each
    publishing its signing key; ``serve`` starts an organisation's relay processes and publishes
    its relay URL. Used as ``async with Federation(base) as fed``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.dns = DNSServer(host="127.0.0.1", zones=["test"])
        self.orgs: dict[str, Org] = {}

    async def __aenter__(self) -> Federation:
        await self.dns.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for org in self.orgs.values():
            await org.stop()
        await self.dns.close()

    async def add(
        self,
        domain: str,
        agents: Sequence[str] = (),
        *,
        store: str | None = None,
        backed: dict[str, list[str]] | None = None,
        listen: str = "127.0.0.1:0",
    ) -> Org:
        """``synq init`` a relay directory for ``domain`` with inbox ``agents``; ``backed`` maps
        further agent names to ``synq agent add`` flags (``["--a2a", url]``)."""
        cwd = self.base / domain
        cwd.mkdir(parents=True)
        extra = ["--store", store] if store else []
        await synq(
            cwd, "init", "--domain", domain, "--dir", str(cwd), "--listen", listen,
            "--nameserver", self.dns.address, "--allow-private-addresses", *extra,
        )  # fmt: skip
        unthrottle(cwd)
        org = Org(domain, cwd)
        # One CLI process per agent (the CLI starts slowly), run side by side; SQLite's busy
        # timeout serialises their writes. ``synq dns`` after them: started together with the
        # first process to open a fresh store, it was refused the lock once in a loaded run.
        adds = [[name] for name in agents] + [[name, *f] for name, f in (backed or {}).items()]
        added = await asyncio.gather(*(synq(cwd, "agent", "add", *argv) for argv in adds))
        records = await synq(cwd, "dns")
        for argv, result in zip(adds, added, strict=True):
            org.tokens[argv[0]] = result["token"]
        for rec in records:
            if "._synqkey." in rec["name"]:
                self.dns.set_txt(rec["name"].rstrip("."), [rec["value"]], ttl=3600)
        self.orgs[domain] = org
        return org

    async def serve(self, org: Org, processes: int = 1) -> str:
        """Start ``processes`` relay processes for ``org`` (several behind a round-robin
        balancer) and publish the URL partners deliver to.

        A relay given a port at ``add`` (``listen``) may find it taken when it starts: the port
        was free when ``free_port`` looked, and the admin listener takes the next one too. Such a
        start is tried again on a fresh port (``START_ATTEMPTS``), the relay's ``listen`` and
        ``public_url`` moved to it first.
        """
        started: list[Proc] = []
        for attempt in range(1, START_ATTEMPTS + 1):
            names = [f"serve-{len(org.procs) + i}" for i in range(processes)]
            results = await asyncio.gather(
                *(start(serve_argv(), org.cwd, name) for name in names), return_exceptions=True
            )
            started = [r for r in results if isinstance(r, Proc)]
            failed = [r for r in results if isinstance(r, BaseException)]
            if not failed:
                break
            for proc in started:
                await proc.stop()
            if attempt == START_ATTEMPTS or not any(_port_taken(e) for e in failed):
                raise failed[0]
            if not move_port(org.cwd):
                raise failed[0]
        org.procs += started
        url = started[0].url
        if processes > 1:
            org.balancer = await round_robin([p.url for p in started])
            url = org.balancer[2]
        org.url = url
        self.publish(org.domain, url)
        return url

    def publish(self, domain: str, url: str) -> None:
        self.dns.set_txt(f"_synq.{domain}", [f"v=synq1; relay={url}"], ttl=3600)


@contextlib.asynccontextmanager
async def federation(base: Path) -> AsyncIterator[Federation]:
    async with Federation(base) as fed:
        yield fed
