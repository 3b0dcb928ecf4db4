"""A full store (SPEC.md §10.4): a relay whose SQLite file reaches its ``[store] max_size`` keeps
answering, refuses new mail ``503 store_unavailable`` (4.3.0), loses nothing it acknowledged, and
takes mail again as soon as there is room — a larger cap on reload, or space the retention purge
freed — without a restart. Everything goes through the real HTTP API of a relay on loopback.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay.config import Config, QuotasSection, RetentionSection, StoreSection
from relay.core.clock import FakeClock
from relay.core.envelope import format_timestamp
from relay.core.errors import ConfigError
from relay.core.ids import hash_token, new_token
from relay.runtime import Relay
from relay.server.app import build_app
from relay.store.sqlite import MIN_MAX_SIZE
from tests.conftest import Agent, make_config

Client = TestClient[Any, Any]

#: A cap small enough to reach in a few hundred messages.
CAP = 1024 * 1024
#: ~8 KB messages: the cap holds about a hundred of them.
BODY = "x" * 8000


def capped(directory: Path, max_size: int, **retention: Any) -> Config:
    config = make_config(directory)
    return config.model_copy(
        update={
            "store": StoreSection(url="sqlite:///synq.db", max_size=max_size),
            "retention": RetentionSection(**retention),
        }
    )


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    config = capped(tmp_path / "acme", CAP, acked="1m", settled="1m", events="1m")
    # The clock starts now: the relay's key (made by make_config) is valid from now on.
    r = await Relay.open(config, clock=FakeClock(datetime.now(UTC) + timedelta(seconds=1)))
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
async def client(relay: Relay, aiohttp_client: Any) -> Client:
    c: Client = await aiohttp_client(build_app(relay), server_kwargs={"handler_cancellation": True})
    return c


async def agent(relay: Relay, name: str) -> Agent:
    token = new_token()
    await relay.store.create_agent(name, "inbox", hash_token(token), None, relay.clock.now())
    return Agent(name, f"{name}@{relay.domain}", token)


async def send(client: Client, sender: Agent, to: Agent, **extra: Any) -> tuple[int, Any]:
    payload = {"to": [to.address], "body": BODY, **extra}
    async with client.post("/synq/v1/messages", json=payload, headers=sender.auth) as resp:
        return resp.status, await resp.json()


async def fill(client: Client, sender: Agent, to: Agent, **extra: Any) -> tuple[list[str], Any]:
    """Send until the store refuses; the ids that got 202, and the refusal."""
    accepted: list[str] = []
    for _ in range(2000):
        status, body = await send(client, sender, to, **extra)
        if status != 202:
            return accepted, (status, body)
        accepted.append(body["id"])
    raise AssertionError(f"the store took {len(accepted)} messages past its cap")


async def inbox_ids(client: Client, who: Agent) -> list[str]:
    ids: list[str] = []
    after: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"after": after} if after else {})}
        async with client.get("/synq/v1/inbox", params=params, headers=who.auth) as resp:
            assert resp.status == 200
            page = await resp.json()
        if not page["messages"]:
            return ids
        ids += [m["id"] for m in page["messages"]]
        after = page["cursor"]


async def assert_refused_as_full(refusal: Any) -> None:
    status, body = refusal
    assert status == 503
    assert (body["error"]["code"], body["error"]["status"]) == ("store_unavailable", "4.3.0")
    assert "full" in body["error"]["message"]


async def test_a_full_store_refuses_keeps_everything_and_recovers_when_the_cap_is_raised(
    relay: Relay, client: Client
) -> None:
    alice, bob = await agent(relay, "alice"), await agent(relay, "bob")
    accepted, refusal = await fill(client, alice, bob)
    assert len(accepted) > 20
    await assert_refused_as_full(refusal)

    # The relay keeps answering: health, reads, status of what it took.
    async with client.get("/healthz") as resp:
        assert resp.status == 200
    assert await inbox_ids(client, bob) == accepted  # nothing it acknowledged is lost
    async with client.get(f"/synq/v1/messages/{accepted[-1]}", headers=alice.auth) as resp:
        assert (await resp.json())["recipients"][bob.address]["state"] == "delivered"
    # Still full: refused again, not half-written.
    await assert_refused_as_full(await send(client, alice, bob))

    # SIGHUP with a larger cap: the next write goes through.
    larger = StoreSection(url=relay.config.store.url, max_size=4 * CAP)
    relay.reload(relay.config.model_copy(update={"store": larger}))
    status, body = await send(client, alice, bob)
    assert status == 202
    assert await inbox_ids(client, bob) == [*accepted, body["id"]]


async def test_a_full_store_recovers_when_retention_frees_space(
    relay: Relay, client: Client
) -> None:
    """Mail that was read and acked earlier is what the purge frees: the relay takes new mail
    again once it has run, with no restart and nothing unread lost."""
    alice, bob = await agent(relay, "alice"), await agent(relay, "bob")
    clock = relay.clock
    assert isinstance(clock, FakeClock)
    soon = format_timestamp(clock.now() + timedelta(minutes=5))
    read = []
    for _ in range(60):
        status, body = await send(client, alice, bob, expires=soon)
        assert status == 202
        read.append(body["id"])
    for id in read:
        async with client.post(f"/synq/v1/inbox/{id}/ack", headers=bob.auth) as resp:
            assert resp.status == 200
    unread, refusal = await fill(client, alice, bob)
    await assert_refused_as_full(refusal)

    # An hour later the acked envelopes have expired and passed their retention.
    clock.advance(3600)
    report = await relay.retention.sweep()
    assert report.deleted["envelopes"] == len(read)
    status, body = await send(client, alice, bob)
    assert status == 202
    assert await inbox_ids(client, bob) == [*unread, body["id"]]


async def test_a_cap_is_sqlite_only_and_not_absurdly_small(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_size caps an SQLite file"):
        StoreSection(url="postgresql://localhost/synq", max_size=CAP)
    with pytest.raises(ConfigError, match="at least"):
        await Relay.open(capped(tmp_path / "acme", MIN_MAX_SIZE - 1))


# a real full file system ----------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs of this test's own, under its temporary directory; skipped where the test
    cannot mount one (not root, or no CAP_SYS_ADMIN in a container)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_file_system_refuses_keeps_everything_and_recovers(
    small_fs: Path, aiohttp_client: Any
) -> None:
    config = make_config(small_fs / "acme")  # no cap: the disk itself fills
    relay = await Relay.open(config, clock=FakeClock(datetime.now(UTC) + timedelta(seconds=1)))
    try:
        client: Client = await aiohttp_client(build_app(relay))
        alice, bob = await agent(relay, "alice"), await agent(relay, "bob")
        accepted, refusal = await fill(client, alice, bob)
        assert len(accepted) > 20
        await assert_refused_as_full(refusal)
        async with client.get("/healthz") as resp:
            assert resp.status == 200
        assert await inbox_ids(client, bob) == accepted

        # The operator grows the volume; the relay takes mail again, no restart.
        grow = await asyncio.create_subprocess_exec("mount", "-o", "remount,size=8m", str(small_fs))
        assert await grow.wait() == 0
        status, body = await send(client, alice, bob)
        assert status == 202
        assert await inbox_ids(client, bob) == [*accepted, body["id"]]
    finally:
        await relay.close()


async def test_reload_takes_retention_and_quotas_at_once(relay: Relay) -> None:
    new = relay.config.model_copy(
        update={
            "retention": RetentionSection(acked="3h", interval="1m"),
            "quotas": QuotasSection(max_unacked=7, max_bytes="1MB"),
        }
    )
    relay.reload(new)
    assert relay.retention.policy.acked == timedelta(hours=3)
    assert relay.retention.policy.interval == timedelta(minutes=1)
    assert (relay.quotas.default.max_unacked, relay.quotas.default.max_bytes) == (7, 1024**2)
    assert relay.config.quotas == new.quotas
