"""MCP servers behind real ``synq serve`` processes, as an operator runs them: registered with
``synq agent add --mcp-stdio``, started by the serving relay, removed with ``synq agent
remove``, and written for another SDK in another virtualenv."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.procs import Served, synq

pytestmark = pytest.mark.slow

#: The relay's own interpreter: it has the MCP SDK the probe server is written for.
VENV_BIN = Path(sys.executable).parent
#: What ``synq serve`` gets as PATH in these tests: the relay's virtualenv is not on it, as under
#: a systemd unit, so a bare ``python`` there would not be the one ``agent add`` checked.
SERVE_PATH = os.defpath

PROBE = '''\
"""An MCP server that records each start: pid, directory, program, environment."""
import json
import os
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

with Path("starts.jsonl").open("a") as log:
    start = {"pid": os.getpid(), "cwd": os.getcwd(), "executable": sys.executable}
    log.write(json.dumps({**start, "env": sorted(os.environ)}) + "\\n")

server = MCPServer(name="probe")


@server.tool()
def ping() -> str:
    """Answer pong."""
    return "pong"


server.run("stdio")
'''


def starts(relay_dir: Path) -> list[dict[str, Any]]:
    text = (relay_dir / "starts.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


async def exited(pid: int, timeout: float) -> None:
    """Wait until process ``pid`` (not a child of ours) has exited: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # it has exited (and been reaped) already
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(fd, gone.set)
    try:
        await asyncio.wait_for(gone.wait(), timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


@pytest.fixture
async def relay_dir(tmp_path: Path) -> Path:
    await synq("init", "--domain", "acme.test", "--dir", str(tmp_path), "--listen",
               "127.0.0.1:0", cwd=tmp_path)  # fmt: skip
    return tmp_path


async def add_probe(relay_dir: Path) -> dict[str, Any]:
    """``synq agent add tools --mcp-stdio "python probe.py"`` from a shell whose PATH has the
    relay's virtualenv first (as an activated virtualenv does)."""
    (relay_dir / "probe.py").write_text(PROBE)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{SERVE_PATH}"}
    added: dict[str, Any] = await synq(
        "agent", "add", "tools", "--mcp-stdio", "python probe.py", cwd=relay_dir, env=env
    )
    return added


async def call_tool(
    http: aiohttp.ClientSession, url: str, token: str, to: str, tool: str, **arguments: Any
) -> dict[str, Any]:
    """Send an MCP call envelope over the HTTP API and wait for its final answer."""
    auth = {"Authorization": f"Bearer {token}"}
    async with http.post(
        f"{url}/synq/v1/messages",
        json={
            "to": [to],
            "content_type": "application/mcp-call+json",
            "body": {"tool": tool, "arguments": arguments},
        },
        headers=auth,
    ) as resp:
        assert resp.status == 202, await resp.text()
        sent = (await resp.json())["id"]
    after = None
    async with asyncio.timeout(60):
        while True:
            params = {"wait": "10", "all": "1", **({"after": str(after)} if after else {})}
            async with http.get(f"{url}/synq/v1/inbox", params=params, headers=auth) as resp:
                page = await resp.json()
            for message in page["messages"]:
                task = message["body"].get("task") if isinstance(message["body"], dict) else None
                if message["in_reply_to"] == sent and task is not None:
                    return dict(task)
            after = page["cursor"] or after


async def test_a_stdio_server_runs_where_and_as_agent_add_checked_it(relay_dir: Path) -> None:
    added = await add_probe(relay_dir)
    # The program is stored as the path agent add found, so serve runs the same one.
    assert added["endpoint"] == f"stdio:{VENV_BIN / 'python'} probe.py"
    relay = Served(relay_dir, env={**os.environ, "PATH": SERVE_PATH})
    url = await relay.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/agents/tools/.well-known/agent-card.json") as resp,
        ):
            card = await resp.json()
        assert [s["id"] for s in card["skills"]] == ["ping"]
    finally:
        await relay.stop()
    checked, served = starts(relay_dir)
    assert served["pid"] != checked["pid"]
    assert served["cwd"] == checked["cwd"] == str(relay_dir)  # pytest hands out resolved paths
    assert served["executable"] == checked["executable"] == str(VENV_BIN / "python")
    # The same minimal environment (values are the starting process's): no relay secrets.
    assert served["env"] == checked["env"]
    allowed = {"HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LC_CTYPE"}
    assert set(served["env"]) <= allowed


async def test_agent_remove_stops_the_server_on_the_running_relay(relay_dir: Path) -> None:
    await add_probe(relay_dir)
    relay = Served(relay_dir, env={**os.environ, "PATH": SERVE_PATH})
    url = await relay.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/agents/tools/.well-known/agent-card.json") as resp,
        ):
            assert resp.status == 200  # the relay has started and supervises the server
        pid = starts(relay_dir)[-1]["pid"]
        await synq("agent", "remove", "tools", cwd=relay_dir)
        # The CLI wrote only the store; the relay notices and stops the server, and its
        # supervisor with it.
        await exited(pid, 30)
        await relay.wait_for_output("stopped: agent tools was removed")
    finally:
        await relay.stop()
    assert "restarting" not in relay.text
    assert len(starts(relay_dir)) == 2  # agent add's check and the relay's one start


LEGACY = '''\
"""A server written for the 1.x MCP SDK."""
from mcp.server.fastmcp import FastMCP

mcp = FastMCP("legacy")


@mcp.tool()
def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()


if __name__ == "__main__":
    mcp.run()
'''


@pytest.fixture(scope="session")
def mcp1_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the 1.x MCP SDK (one install per test session), its interpreter."""
    venv = tmp_path_factory.mktemp("mcp1-venv")
    made = subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        pytest.skip(f"cannot create a virtualenv: {made.stderr.strip()[-300:]}")
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "mcp<2"],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    if installed.returncode != 0:
        pytest.skip(f"cannot install mcp<2 from the package index: {installed.stderr[-300:]}")
    return venv / "bin" / "python"


@pytest.mark.timeout(300)
async def test_a_server_for_the_1x_sdk_runs_with_its_own_interpreter(
    relay_dir: Path, mcp1_python: Path
) -> None:
    (relay_dir / "legacy.py").write_text(LEGACY)
    alice = await synq("agent", "add", "alice", cwd=relay_dir)
    added = await synq(
        "agent", "add", "legacy", "--mcp-stdio", f"{mcp1_python} legacy.py", cwd=relay_dir
    )
    assert added["endpoint"] == f"stdio:{mcp1_python} legacy.py"
    relay = Served(relay_dir)
    url = await relay.start()
    try:
        async with aiohttp.ClientSession() as http:
            task = await call_tool(
                http, url, alice["token"], "legacy@acme.test", "shout", text="hello"
            )
    finally:
        await relay.stop()
    assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
    assert task["artifacts"][0]["parts"][0]["text"] == "HELLO"
