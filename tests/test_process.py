"""Real ``synq serve`` processes: durability across SIGKILL, log hygiene, cross-process wake-ups."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest

from relay.delivery.router import AGENT_CACHE_TTL
from tests.procs import Served, synq

pytestmark = pytest.mark.slow


async def init(tmp_path: Path) -> None:
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


async def test_accepted_message_survives_sigkill(tmp_path: Path) -> None:
    await init(tmp_path)
    alice = await synq("agent", "add", "alice", cwd=tmp_path)
    bob = await synq("agent", "add", "bob", cwd=tmp_path)
    relay = Served(tmp_path)
    async with aiohttp.ClientSession() as http:
        url = await relay.start()
        ids = []
        for i in range(20):
            async with http.post(
                f"{url}/synq/v1/messages",
                json={"to": ["bob@acme.test"], "body": f"m{i}"},
                headers={"Authorization": f"Bearer {alice['token']}"},
            ) as resp:
                assert resp.status == 202
                ids.append((await resp.json())["id"])
        relay.kill()
        await relay.wait_killed()

        url = await relay.start()
        try:
            async with http.get(
                f"{url}/synq/v1/inbox",
                params={"limit": 100},
                headers={"Authorization": f"Bearer {bob['token']}"},
            ) as resp:
                assert [m["id"] for m in (await resp.json())["messages"]] == ids
            # Bad credentials are refused, and the refusal never echoes the token.
            async with http.get(
                f"{url}/synq/v1/inbox", headers={"Authorization": "Bearer synq_guessing"}
            ) as resp:
                assert resp.status == 401
        finally:
            await relay.stop()
    assert "synq_guessing" not in relay.text
    assert str(alice["token"]) not in relay.text
    assert str(bob["token"]) not in relay.text


async def test_cli_send_wakes_a_long_poll_on_the_running_relay(tmp_path: Path) -> None:
    """The operator's ``synq send`` writes the store from another process; the serving relay
    notices the commit and wakes the waiting long poll."""
    await init(tmp_path)
    await synq("agent", "add", "alice", cwd=tmp_path)
    bob = await synq("agent", "add", "bob", cwd=tmp_path)
    relay = Served(tmp_path)
    url = await relay.start()
    try:
        async with aiohttp.ClientSession() as http:
            poll = asyncio.create_task(
                http.get(
                    f"{url}/synq/v1/inbox",
                    params={"wait": "30"},
                    headers={"Authorization": f"Bearer {bob['token']}"},
                )
            )
            # Only send once the poll is really waiting, so the wake-up path is what is tested.
            while True:
                async with http.get(f"{relay.admin_url}/metrics") as resp:
                    if "synq_inbox_waiters 1.0" in await resp.text():
                        break
            sent = await synq("send", "alice", "bob@acme.test", "from the cli", cwd=tmp_path)
            resp = await asyncio.wait_for(poll, 20)
            messages = (await resp.json())["messages"]
            resp.release()
            assert [m["id"] for m in messages] == [sent["id"]]
    finally:
        await relay.stop()


async def test_a_second_serve_on_a_busy_port_exits_at_once_and_leaves_the_first_alone(
    tmp_path: Path,
) -> None:
    await init(tmp_path)
    alice = await synq("agent", "add", "alice", cwd=tmp_path)
    await synq("agent", "add", "bob", cwd=tmp_path)
    first = Served(tmp_path)
    url = await first.start()
    try:
        # The same relay directory, now naming the port the first relay holds.
        port = url.rsplit(":", 1)[1]
        config = tmp_path / "synq.toml"
        config.write_text(
            config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
        )
        second = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "serve",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(second.communicate(), 20)
        finally:
            if second.returncode is None:  # it hung: do not leave it behind
                second.kill()
                await second.wait()
        assert second.returncode == 1
        assert out == b""
        lines = err.decode().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"synq: error: cannot listen on 127.0.0.1:{port}: ")
        assert "already in use" in lines[0]
        assert "[relay] listen" in lines[0]
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/synq/v1/messages",
                json={"to": ["bob@acme.test"], "body": "still here"},
                headers={"Authorization": f"Bearer {alice['token']}"},
            ) as resp,
        ):
            assert resp.status == 202
    finally:
        await first.stop()
    assert "locked" not in first.text


async def test_a_rotated_token_keeps_the_inbox_and_the_old_token_stops_working(
    tmp_path: Path,
) -> None:
    await init(tmp_path)
    alice = await synq("agent", "add", "alice", cwd=tmp_path)
    bob = await synq("agent", "add", "bob", cwd=tmp_path)
    relay = Served(tmp_path)
    url = await relay.start()
    inbox = f"{url}/synq/v1/inbox"
    old = {"Authorization": f"Bearer {bob['token']}"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/synq/v1/messages",
                json={"to": ["bob@acme.test"], "body": "before the rotation"},
                headers={"Authorization": f"Bearer {alice['token']}"},
            ) as resp:
                sent = (await resp.json())["id"]
            async with http.get(inbox, headers=old) as resp:  # the relay now knows the old token
                assert resp.status == 200
            rotated = await synq("agent", "token", "bob", "--rotate", cwd=tmp_path)
            new = {"Authorization": f"Bearer {rotated['token']}"}
            async with http.get(inbox, headers=new) as resp:
                assert [m["id"] for m in (await resp.json())["messages"]] == [sent]
            async with http.post(f"{inbox}/{sent}/ack", headers=new) as resp:
                assert resp.status == 200
            # The running relay trusts what it read about the old token for AGENT_CACHE_TTL
            # (SPEC.md §6.1); each accepted try is a one-second long poll on the empty inbox,
            # so this waits for the refusal without spinning.
            status = 200
            async with asyncio.timeout(AGENT_CACHE_TTL + 15):
                while status == 200:
                    async with http.get(inbox, params={"wait": "1"}, headers=old) as resp:
                        status = resp.status
            assert status == 401
            async with http.get(inbox, params={"all": "1"}, headers=new) as resp:
                assert [m["id"] for m in (await resp.json())["messages"]] == [sent]
    finally:
        await relay.stop()
    assert rotated["token"] not in relay.text
