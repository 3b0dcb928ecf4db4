"""Run the A2A TCK against the scenario agent directly and through two Synq relays.

    python -m interop.a2a.run_tck PATH-TO-A2A-TCK-CHECKOUT [--tck-python PY] [--keep DIR]

The A2A TCK (github a2aproject/a2a-tck, branch ``1.0-dev``) is not on PyPI: give the path of a
checkout. Unless ``--tck-python`` names a Python that has it installed, a virtual environment
is made for it in the work directory (``pip install -e <checkout>``, from PyPI).

What runs, all on loopback:

* a DNS server publishing the two relays' records (``_synq`` TXT and key records);
* the TCK scenario agent (``interop/a2a/tck_agent.py``, a2a-sdk 1.3), serving JSON-RPC,
  HTTP+JSON and gRPC;
* relay ``globex.test`` (``synq serve``) with the agent registered as ``tck@globex.test``
  (``synq agent add tck --a2a URL``);
* relay ``acme.test`` (``synq serve``) whose A2A face serves ``tck@globex.test`` at
  ``/a2a/tck@globex.test``, with ``[a2a] anonymous_agent`` set so the TCK, which sends no
  credentials, acts as a local agent, and ``[a2a] grpc_listen`` on so its card offers gRPC
  (``grpc_default_address`` names the agent for the TCK's gRPC client, which sends no tenant).

The TCK runs twice — against the agent's own URL, and against acme's face, so that every TCK
request crosses the federation to globex and back — and the two scores are printed side by
side with every test whose outcome differs, then the MUST requirements of both runs (the
TCK's ``compatibility.json``) with every one whose verdict differs on any transport. Reports
are kept under the work directory (``reports-direct/``, ``reports-relayed/``). Exit status 0
when both runs completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import venv
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.dnsserver import DNSServer

#: How long a process may take to say it is listening.
START_TIMEOUT = 60.0
#: How long one TCK run may take (a run takes about two minutes here).
TCK_TIMEOUT = 1800.0
#: The agent's address at globex, served by acme's face.
TCK_ADDRESS = "tck@globex.test"
#: Every binding the TCK has: the agent and the relay's face serve all three.
TRANSPORTS = "jsonrpc,http_json,grpc"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proc:
    """A child process whose first line says where it listens; the rest is logged to a file."""

    name: str
    argv: list[str]
    cwd: Path
    log: Path
    proc: asyncio.subprocess.Process | None = None
    url: str = ""
    _drain: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=self.cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        with self.log.open("ab") as out:
            while True:
                line = await asyncio.wait_for(self.proc.stdout.readline(), START_TIMEOUT)
                if not line:
                    raise RuntimeError(f"{self.name} exited; see {self.log}")
                out.write(line)
                if b"listening on" in line:
                    self.url = line.decode().rsplit(" ", 1)[1].strip()
                    break
        self._drain = asyncio.create_task(self._copy(self.proc.stdout))
        return self.url

    async def _copy(self, stream: asyncio.StreamReader) -> None:
        with self.log.open("ab") as out:
            while chunk := await stream.read(65536):
                out.write(chunk)
                out.flush()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await self._drain


def synq(config: Path | None, *argv: str) -> Any:
    """Run the ``synq`` command (``--json``) of this installation and return its output."""
    cmd = [sys.executable, "-m", "relay.cli", "--json"]
    if config is not None:
        cmd += ["--config", str(config)]
    done = subprocess.run([*cmd, *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"synq {' '.join(argv)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout) if done.stdout.strip() else None


@dataclass
class Side:
    domain: str
    config: Path
    proc: Proc


def configure_face(config: Path, agent: str, address: str) -> None:
    """The face as the TCK needs it: its calls, which carry no credentials, act as local agent
    ``agent``; the gRPC binding is on (loopback, a free port), so its cards list it; and gRPC
    calls without a tenant (the TCK's client does not send the card's) are for ``address``."""
    lines = config.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("[a2a]"))
    lines[at + 1 : at + 1] = [
        f'anonymous_agent = "{agent}"',
        'grpc_listen = "127.0.0.1:0"',
        f'grpc_default_address = "{address}"',
    ]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")


def configure_admin(config: Path, port: int) -> None:
    """The admin listener on a free port of its own. Its default, the relay's port + 1, is
    often taken here: Linux hands out odd ports to ``bind(0)`` (as :func:`free_port` does) and
    even ones to outgoing connections, so the port above a free one is where a busy machine's
    client sockets are."""
    lines = config.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("[admin]"))
    lines[at + 1 : at + 1] = [f'listen = "127.0.0.1:{port}"']
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")


async def start_relay(work: Path, domain: str, dns: DNSServer, *, anonymous: str | None) -> Side:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    directory = work / domain
    init = synq(
        None,
        "init",
        "--domain", domain,
        "--dir", str(directory),
        "--listen", f"127.0.0.1:{port}",
        "--public-url", url,
        "--nameserver", dns.address,
        "--allow-private-addresses",
    )  # fmt: skip
    config = Path(init["config"])
    configure_admin(config, free_port())
    if anonymous is not None:
        synq(config, "agent", "add", anonymous)
        configure_face(config, anonymous, TCK_ADDRESS)
    for record in init["dns"]:
        dns.set_txt(record["name"].rstrip("."), [record["value"]], ttl=300)
    proc = Proc(
        f"synq serve ({domain})",
        [sys.executable, "-m", "relay.cli", "--config", str(config), "serve"],
        directory,
        work / f"{domain}.log",
    )
    await proc.start()
    return Side(domain, config, proc)


def tck_python(tck: Path, work: Path, given: str | None) -> str:
    if given:
        return given
    env = work / "tck-venv"
    python = env / "bin" / "python"
    if not python.exists():
        print(f"installing the TCK into {env} …", flush=True)
        venv.create(env, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", str(tck)], check=True)
    return str(python)


@dataclass
class Score:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    xfailed: int = 0
    errors: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    #: The TCK's verdict per requirement (``compatibility.json``): id → (level, status,
    #: status per transport).
    requirements: dict[str, tuple[str, str, dict[str, str]]] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped, "
            f"{self.xfailed} xfailed, {self.errors} errors"
        )


def read_junit(path: Path) -> Score:
    score = Score()
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            outcome = "failed"
        elif case.find("error") is not None:
            outcome = "error"
        elif (skip := case.find("skipped")) is not None:
            outcome = "xfailed" if skip.get("type") == "pytest.xfail" else "skipped"
        else:
            outcome = "passed"
        score.outcomes[name] = outcome
        attr = {"error": "errors"}.get(outcome, outcome)
        setattr(score, attr, getattr(score, attr) + 1)
    return score


async def run_tck(python: str, tck: Path, sut: str, reports: Path) -> Score:
    print(f"TCK against {sut} …", flush=True)
    shutil.rmtree(tck / "reports", ignore_errors=True)
    proc = await asyncio.create_subprocess_exec(
        python, "run_tck.py", "--sut-host", sut, "--transport", TRANSPORTS,
        "--", "--webhook-host=127.0.0.1", "-q",
        cwd=tck, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), TCK_TIMEOUT)
    return keep_reports(tck, reports, out)


def keep_reports(tck: Path, reports: Path, output: bytes) -> Score:
    """Copy the run's reports out of the checkout (the next run overwrites them) and score it."""
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "output.txt").write_bytes(output)
    if (tck / "reports").is_dir():
        shutil.copytree(tck / "reports", reports, dirs_exist_ok=True)
    junit = reports / "junitreport.xml"
    if not junit.exists():
        raise RuntimeError(f"the TCK wrote no report; see {reports / 'output.txt'}")
    score = read_junit(junit)
    compatibility = reports / "compatibility.json"
    if compatibility.exists():
        score.requirements = read_requirements(compatibility)
    return score


def read_requirements(path: Path) -> dict[str, tuple[str, str, dict[str, str]]]:
    """The TCK's per-requirement verdicts: level (MUST, SHOULD, MAY), status, and the status
    on each transport."""
    found = json.loads(path.read_text(encoding="utf-8")).get("per_requirement", {})
    return {
        rid: (str(v.get("level", "")), str(v.get("status", "")), dict(v.get("transports", {})))
        for rid, v in found.items()
    }


def must_report(direct: Score, relayed: Score) -> list[str]:
    """The MUST requirements side by side: how many have each status, and every one whose
    verdict (overall or on a transport) differs."""
    if not direct.requirements or not relayed.requirements:
        return ["MUST requirements: no compatibility.json to compare"]

    def counts(score: Score) -> Counter[str]:
        return Counter(s for level, s, _ in score.requirements.values() if level == "MUST")

    left, right = counts(direct), counts(relayed)
    lines = ["MUST requirements (status: direct relayed):"]
    lines += [
        f"  {status:12}{left[status]:>8}{right[status]:>8}" for status in sorted(left | right)
    ]
    musts = sorted(
        rid
        for rid in set(direct.requirements) | set(relayed.requirements)
        if "MUST"
        in (direct.requirements.get(rid, ("",))[0], relayed.requirements.get(rid, ("",))[0])
    )
    differing = [
        rid for rid in musts if direct.requirements.get(rid) != relayed.requirements.get(rid)
    ]
    if differing:
        lines.append("  differing:")
        for rid in differing:
            d, r = direct.requirements.get(rid), relayed.requirements.get(rid)
            lines.append(f"    {rid}: {d[1:] if d else '-'} → {r[1:] if r else '-'}")
    else:
        lines.append("  every MUST requirement has the same verdict on every transport")
    return lines


@contextlib.asynccontextmanager
async def stack(work: Path) -> AsyncIterator[tuple[str, str]]:
    """Start everything; yield (the agent's URL, the relayed face URL for it)."""
    procs: list[Proc] = []
    async with DNSServer(host="127.0.0.1", zones=["test"]) as dns:
        try:
            agent = Proc(
                "TCK scenario agent",
                [sys.executable, "-m", "interop.a2a.tck_agent", "--port", "0", "--grpc"],
                Path.cwd(),
                work / "agent.log",
            )
            procs.append(agent)
            agent_url = await agent.start()
            globex = await start_relay(work, "globex.test", dns, anonymous=None)
            procs.append(globex.proc)
            acme = await start_relay(work, "acme.test", dns, anonymous="tck-client")
            procs.append(acme.proc)
            synq(globex.config, "agent", "add", "tck", "--a2a", agent_url)
            yield agent_url, f"{acme.proc.url}/a2a/{TCK_ADDRESS}"
        finally:
            for proc in reversed(procs):
                await proc.stop()


def transport_of(name: str) -> str:
    """The binding a TCK test ran over, from its parameters (``test_x[grpc]``); ``-`` for
    tests that run over none (the card's)."""
    params = name.rsplit("[", 1)[1].rstrip("]") if name.endswith("]") else ""
    for transport in TRANSPORTS.split(","):
        if transport in params.split("-"):
            return transport
    return "-"


def by_transport(score: Score) -> dict[str, Counter[str]]:
    table: dict[str, Counter[str]] = {}
    for name, outcome in score.outcomes.items():
        table.setdefault(transport_of(name), Counter())[outcome] += 1
    return table


def report(direct: Score, relayed: Score) -> str:
    lines = [
        "",
        f"{'':10}{'direct':>10}{'relayed':>10}",
        *(
            f"{what:10}{getattr(direct, what):>10}{getattr(relayed, what):>10}"
            for what in ("passed", "failed", "skipped", "xfailed", "errors")
        ),
        "",
        "by transport (passed/failed/skipped/other):",
    ]
    left, right = by_transport(direct), by_transport(relayed)

    def cell(counts: Counter[str]) -> str:
        other = sum(counts.values()) - counts["passed"] - counts["failed"] - counts["skipped"]
        return f"{counts['passed']}/{counts['failed']}/{counts['skipped']}/{other}"

    for transport in sorted(set(left) | set(right)):
        lines.append(
            f"{transport:10}{cell(left.get(transport, Counter())):>16}"
            f"{cell(right.get(transport, Counter())):>16}"
        )
    lines.append("")
    names = sorted(set(direct.outcomes) | set(relayed.outcomes))
    diffs = [
        (n, direct.outcomes.get(n, "-"), relayed.outcomes.get(n, "-"))
        for n in names
        if direct.outcomes.get(n) != relayed.outcomes.get(n)
    ]
    if diffs:
        lines.append("differences (test: direct → relayed):")
        lines += [f"  {n}: {d} → {r}" for n, d, r in diffs]
    else:
        lines.append("no differences: every test has the same outcome directly and relayed")
    lines += ["", *must_report(direct, relayed)]
    return "\n".join(lines)


def prepare(args: argparse.Namespace) -> tuple[Path, Path, str] | None:
    """The checkout, the work directory and the TCK's Python; None if the checkout is not one."""
    tck = Path(args.tck).resolve()
    if not (tck / "run_tck.py").exists():
        print(f"{tck} is not an A2A TCK checkout (no run_tck.py)", file=sys.stderr)
        return None
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="synq-tck-"))
    work.mkdir(parents=True, exist_ok=True)
    return tck, work, tck_python(tck, work, args.tck_python)


async def main_async(args: argparse.Namespace) -> int:
    prepared = prepare(args)
    if prepared is None:
        return 1
    tck, work, python = prepared
    async with stack(work) as (agent_url, relayed_url):
        direct = await run_tck(python, tck, agent_url, work / "reports-direct")
        print(f"direct:  {direct.line()}", flush=True)
        relayed = await run_tck(python, tck, relayed_url, work / "reports-relayed")
        print(f"relayed: {relayed.line()}", flush=True)
    print(report(direct, relayed))
    print(f"\nreports and logs: {work}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m interop.a2a.run_tck", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("tck", help="path of an a2a-tck checkout (branch 1.0-dev)")
    parser.add_argument("--tck-python", help="a Python with the TCK installed")
    parser.add_argument("--keep", metavar="DIR", help="work directory to keep (default: temp)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # SIGTERM ends the run like Ctrl-C, so the relays and the agent it started are stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 130


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
