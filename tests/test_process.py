"""Real ``synq serve`` processes: durability across SIGKILL, log hygiene."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.slow


async def synq(*argv: str, cwd: Path) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        "--json",
        *argv,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out)
    return result


@asynccontextmanager
async def serve(
    cwd: Path, log: list[bytes]
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        "serve",
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    assert "listening on" in line, line
    url = line.rsplit(" ", 1)[1].strip()

    async def drain(stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            log.append(chunk)

    drains = [asyncio.create_task(drain(proc.stdout)), asyncio.create_task(drain(proc.stderr))]
    try:
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await asyncio.gather(*drains)


async def test_accepted_message_survives_sigkill(tmp_path: Path) -> None:
    await synq(
        "init",
        "--domain",
        "acme.test",
        "--dir",
        str(tmp_path),
        "--listen",
        "127.0.0.1:0",
        cwd=tmp_path,
    )
    alice = await synq("agent", "add", "alice", cwd=tmp_path)
    bob = await synq("agent", "add", "bob", cwd=tmp_path)
    log: list[bytes] = []
    async with aiohttp.ClientSession() as http:
        async with serve(tmp_path, log) as (proc, url):
            ids = []
            for i in range(20):
                async with http.post(
                    f"{url}/synq/v1/messages",
                    json={"to": ["bob@acme.test"], "body": f"m{i}"},
                    headers={"Authorization": f"Bearer {alice['token']}"},
                ) as resp:
                    assert resp.status == 202
                    ids.append((await resp.json())["id"])
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            assert proc.returncode == -signal.SIGKILL
        async with serve(tmp_path, log) as (_, url):
            async with http.get(
                f"{url}/synq/v1/inbox",
                params={"limit": 100},
                headers={"Authorization": f"Bearer {bob['token']}"},
            ) as resp:
                assert [m["id"] for m in (await resp.json())["messages"]] == ids
            # Bad credentials get logged as refusals but never echo the token.
            async with http.get(
                f"{url}/synq/v1/inbox", headers={"Authorization": "Bearer synq_guessing"}
            ) as resp:
                assert resp.status == 401
    text = b"".join(log).decode()
    assert "synq_guessing" not in text
    assert str(alice["token"]) not in text
    assert str(bob["token"]) not in text


async def test_cli_send_wakes_a_long_poll_on_the_running_relay(tmp_path: Path) -> None:
    """The operator's ``synq send`` writes the store from another process; the serving relay
    notices the commit and wakes the waiting long poll."""
    await synq(
        "init",
        "--domain",
        "acme.test",
        "--dir",
        str(tmp_path),
        "--listen",
        "127.0.0.1:0",
        cwd=tmp_path,
    )
    await synq("agent", "add", "alice", cwd=tmp_path)
    bob = await synq("agent", "add", "bob", cwd=tmp_path)
    log: list[bytes] = []
    async with aiohttp.ClientSession() as http, serve(tmp_path, log) as (_, url):
        poll = asyncio.create_task(
            http.get(
                f"{url}/synq/v1/inbox",
                params={"wait": "30"},
                headers={"Authorization": f"Bearer {bob['token']}"},
            )
        )
        sent = await synq("send", "alice", "bob@acme.test", "from the cli", cwd=tmp_path)
        resp = await asyncio.wait_for(poll, 20)
        messages = (await resp.json())["messages"]
        resp.release()
        assert [m["id"] for m in messages] == [sent["id"]]
