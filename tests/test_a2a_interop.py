"""Outside judges of the relay's A2A face, in every CI run:

* **the JavaScript SDK** (@a2a-js/sdk 1.3.0 from npm, interop/a2a/js/): an independent A2A 1.0
  implementation verifies the face's card signature and completes tasks through it over
  JSON-RPC (streaming) and HTTP+JSON;
* **a2a-proof** (PyPI), a third-party black-box contract tester: the same contract
  (interop/a2a/contract.yaml) must hold directly against the TCK scenario agent and through two
  relays to it.

(The A2A TCK itself is not on PyPI; ``python -m interop.a2a.run_tck`` runs it, README.md.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_a2a_bridge import Bridge, bridge

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "interop" / "a2a" / "js"
CONTRACT = ROOT / "interop" / "a2a" / "contract.yaml"


@pytest.fixture(scope="session")
def node() -> str:
    """Node.js with the JavaScript SDK installed from interop/a2a/js/package-lock.json."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js (node and npm) is needed for the JavaScript SDK interop test")
    if not (JS / "node_modules" / "@a2a-js" / "sdk" / "package.json").exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS,
            check=True,
            timeout=300,
        )
    return node


@pytest.fixture
async def b(tmp_path: Path) -> AsyncIterator[Bridge]:
    async with bridge(tmp_path) as env:
        yield env


async def run(
    *argv: str, timeout: float = 50, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_javascript_sdk_verifies_the_card_and_completes_tasks_through_the_face(
    b: Bridge, node: str
) -> None:
    code, out, err = await run(node, str(JS / "client.mjs"), b.url(), b.alice.token)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0] == {"card": "Synq TCK scenario agent", "verified": True}
    events = [(e["event"], e.get("state"), e.get("text")) for e in lines if "event" in e]
    assert events == [
        ("task", "TASK_STATE_SUBMITTED", None),
        ("statusUpdate", "TASK_STATE_WORKING", None),
        ("artifactUpdate", None, "Stream hello from TCK"),
        ("statusUpdate", "TASK_STATE_COMPLETED", None),
    ]
    assert {e["taskId"] for e in lines if "event" in e} == {lines[1]["taskId"]}
    assert {"getTask": "TASK_STATE_COMPLETED", "artifacts": 1} in lines
    assert {"rest": "TASK_STATE_COMPLETED", "text": "Hello from TCK"} in lines


async def proof(url: str, token: str, tmp_path: Path, name: str) -> dict[str, Any]:
    contract = tmp_path / f"{name}.yaml"
    contract.write_text(
        CONTRACT.read_text(encoding="utf-8").replace("http://127.0.0.1:9/", url), encoding="utf-8"
    )
    report = tmp_path / f"{name}.json"
    tool = Path(sys.executable).with_name("a2a-proof")
    code, out, err = await run(
        str(tool),
        "run",
        str(contract),
        "--format",
        "json",
        "-o",
        str(report),
        env={**os.environ, "SYNQ_TOKEN": token},
    )
    result: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    assert code == 0, f"{name}: {out}{err}"
    return result


async def test_a2a_proof_contract_holds_directly_and_through_two_relays(
    b: Bridge, tmp_path: Path
) -> None:
    direct = await proof(b.agent.url, b.alice.token, tmp_path, "direct")
    relayed = await proof(b.url(), b.alice.token, tmp_path, "relayed")
    names = [s["name"] for s in direct["scenarios"]]
    assert names == [s["name"] for s in relayed["scenarios"]]
    assert all(s["passed"] for s in relayed["scenarios"]), relayed["scenarios"]
