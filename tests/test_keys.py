"""Key lifecycle (SPEC.md §4.3 rotation): states, retirement arithmetic, files, the ``synq keys``
command, a rotation across two live relays that refuses nothing, and SIGHUP on a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.cli import dns_records, main
from relay.core import jws
from relay.core.errors import ConfigError
from relay.core.jws import SigningKey
from relay.core.limits import MAX_CLOCK_SKEW, MAX_LIFETIME
from relay.keyring import (
    KeyEntry,
    Keyring,
    load_keyring,
    retire_key,
    rotate_key,
    write_key,
)
from tests.fedenv import Org, World, world
from tests.procs import synq

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


def entry(selector: str, activates: datetime, retires: datetime | None = None) -> KeyEntry:
    return KeyEntry(
        key=SigningKey.generate(selector),
        created=activates - 2 * H,
        activates=activates,
        retires=retires,
    )


# ---------------------------------------------------------------------------- pure arithmetic


def test_states_through_a_rotation() -> None:
    old, new = entry("s1", T0 - 24 * H), entry("s2", T0 + 48 * H)
    ring = Keyring([old, new])
    assert [ring.state(e, T0) for e in ring.entries] == ["signing", "pending"]
    assert ring.signing_key(T0) is old.key
    assert {k.selector for k in ring.published(T0)} == {"s1", "s2"}  # the new one at once
    later = T0 + 48 * H
    assert [ring.state(e, later) for e in ring.entries] == ["verifying", "signing"]
    assert ring.signing_key(later) is new.key
    retired = Keyring([entry("s1", T0 - 24 * H, retires=later + H), new])
    assert [retired.state(e, later + H) for e in retired.entries] == ["retired", "signing"]
    assert [k.selector for k in retired.published(later + H)] == ["s2"]


def test_threat_key_retired_while_its_envelopes_are_in_flight() -> None:
    old, new = entry("s1", T0 - 24 * H), entry("s2", T0 + 48 * H)
    ring = Keyring([old, new])
    # The last envelope s1 signs is created just before s2 takes over and may live
    # MAX_LIFETIME, plus a verifier's clock up to MAX_CLOCK_SKEW behind ours.
    expected = new.activates + MAX_LIFETIME + MAX_CLOCK_SKEW
    assert ring.retire_at("s1", T0, overlap=H) == expected
    # The overlap is a floor on top of that.
    assert ring.retire_at("s1", T0, overlap=timedelta(days=30)) == T0 + timedelta(days=30)


def test_retiring_the_only_signing_key_is_refused() -> None:
    ring = Keyring([entry("s1", T0 - 24 * H)])
    with pytest.raises(ConfigError, match="no newer key"):
        ring.retire_at("s1", T0, overlap=H)
    # An older key is no successor: retiring the newest would hand signing back to it.
    ring = Keyring([entry("s0", T0 - 48 * H), entry("s1", T0 - 24 * H)])
    with pytest.raises(ConfigError, match="no newer key"):
        ring.retire_at("s1", T0, overlap=H)


def test_a_key_that_never_signed_retires_at_once() -> None:
    ring = Keyring([entry("s1", T0 - 24 * H), entry("s2", T0 + 48 * H)])
    assert ring.retire_at("s2", T0, overlap=H) == T0


def test_retiring_twice_or_an_unknown_key_is_refused() -> None:
    ring = Keyring([entry("s1", T0 - 24 * H, retires=T0 - H), entry("s2", T0 - 2 * H)])
    with pytest.raises(ConfigError, match="already retired"):
        ring.retire_at("s1", T0, overlap=H)
    with pytest.raises(ConfigError, match="no key"):
        ring.retire_at("s9", T0, overlap=H)


# ---------------------------------------------------------------------------- files


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_rotate_and_retire_write_0600_files(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    write_key(keys, entry("s1", T0 - 24 * H))
    new = rotate_key(keys, T0, 48 * H)
    assert new.selector == "s20260303"  # named after the day it starts signing
    assert (new.created, new.activates, new.retires) == (T0, T0 + 48 * H, None)
    again = rotate_key(keys, T0, 48 * H)
    assert again.selector == "s20260303-2"
    retired = retire_key(keys, "s1", T0, H)
    assert retired.retires == new.activates + MAX_LIFETIME + MAX_CLOCK_SKEW
    assert {p.name for p in keys.iterdir()} == {"s1.json", "s20260303.json", "s20260303-2.json"}
    assert all(mode(p) == 0o600 for p in keys.iterdir())
    assert load_keyring(keys).get("s1").retires == retired.retires
    with pytest.raises(ConfigError, match="already used"):
        rotate_key(keys, T0, H, selector="s1")


@dataclass
class Cli:
    capsys: pytest.CaptureFixture[str]
    config: Path

    def __call__(self, *argv: str) -> tuple[int, Any, str]:
        code = main(["--json", "--config", str(self.config), *argv])
        captured = self.capsys.readouterr()
        return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    assert main(["init", "--domain", "acme.test", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    return Cli(capsys, tmp_path / "synq.toml")


def test_synq_keys_rotate_list_and_retire(cli: Cli) -> None:
    code, keys, _ = cli("keys", "list")
    assert code == 0
    [first] = keys
    assert first["state"] == "signing"

    code, new, _ = cli("keys", "rotate", "--overlap", "1h", "--selector", "next")
    assert code == 0
    assert new["state"] == "pending"
    assert new["dns"]["name"] == "next._synqkey.acme.test."
    assert new["dns"]["value"].startswith("v=synq1; k=ed25519; p=")
    # `synq dns` lists every published key, the pending one included.
    code, recs, _ = cli("dns")
    assert [r["name"] for r in recs][1:] == [
        f"{first['selector']}._synqkey.acme.test.",
        new["dns"]["name"],
    ]
    code, keys, _ = cli("keys", "list")
    assert [(k["selector"], k["state"]) for k in keys] == [
        (first["selector"], "signing"),
        ("next", "pending"),
    ]

    code, retired, _ = cli("keys", "rotate", "--retire", first["selector"])
    assert code == 0
    assert retired["state"] == "signing"  # it still signs until "next" activates
    until = datetime.fromisoformat(retired["retires"])
    assert until > datetime.fromisoformat(new["activates"]) + MAX_LIFETIME

    code, _, err = cli("keys", "rotate", "--retire", "next")  # never signed: retires at once
    assert code == 0
    code, _, err = cli("keys", "rotate", "--retire", first["selector"])
    assert code == 1
    assert "no newer key" in err


def test_overlap_comes_from_the_config(cli: Cli) -> None:
    text = cli.config.read_text().replace('overlap = "2d"', 'overlap = "90m"')
    cli.config.write_text(text)
    code, new, _ = cli("keys", "rotate")
    assert code == 0
    created, activates = (datetime.fromisoformat(new[k]) for k in ("created", "activates"))
    assert activates - created == timedelta(minutes=90)


def test_bad_overlap_is_a_usage_error(cli: Cli) -> None:
    with pytest.raises(SystemExit) as info:
        cli("keys", "rotate", "--overlap", "soon")
    assert info.value.code == 2


# ---------------------------------------------------------------------------- two live relays


def publish_keys(w: World, org: Org) -> None:
    """Publish in DNS exactly the key records ``synq dns`` lists, and withdraw the others."""
    relay = org.relay
    recs = dns_records(relay.config, relay.keyring.published(w.clock.now()))[1:]
    wanted = {r["name"].rstrip("."): r["value"] for r in recs}
    for path in relay.config.keys_dir.glob("*.json"):
        name = f"{path.stem}._synqkey.{org.domain}"
        if name not in wanted:
            w.dns.remove(name)
    for name, value in wanted.items():
        w.dns.set_txt(name, [value], ttl=60)


async def jwks_kids(w: World, org: Org) -> list[str]:
    async with w.http.get(f"{org.url}/.well-known/synq.json") as resp:
        return [k["kid"] for k in (await resp.json())["keys"]["keys"]]


async def kids_in_inbox(org: Org, agent: str) -> list[str]:
    items = await org.relay.store.inbox(agent, limit=100, include_acked=True)
    return [jws.parse_compact(i.token).kid for i in items]


async def rejected_by(w: World, org: Org) -> float:
    for line in org.relay.metrics.render().decode().splitlines():
        if line.startswith('synq_federation_inbound_envelopes_total{status="rejected"}'):
            return float(line.split()[-1])
    return 0.0


async def test_rotation_across_two_live_relays_rejects_no_envelope(tmp_path: Path) -> None:
    async with world(tmp_path, "acme.test", "globex.test") as w:
        acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
        alice, _ = await acme.agent("alice"), await globex.agent("bob")
        keys_dir = acme.relay.config.keys_dir
        ids: list[str] = []

        async def send(text: str) -> None:
            sent = await w.send(acme, alice, {"to": ["bob@globex.test"], "body": text})
            ids.append(sent["id"])

        async def deliver() -> None:
            await acme.relay.store.flush(w.clock.now())
            await acme.relay.sender.run_once()

        # globex is away: what acme signs now stays in its queue, in flight.
        await globex.stop()
        await send("old key, queued")
        await deliver()

        rotated = rotate_key(keys_dir, w.clock.now(), H, selector="s2")
        assert acme.relay.reload_keys_if_changed()  # what the running relay's watch does
        publish_keys(w, acme)
        assert await jwks_kids(w, acme) == ["s1", "s2"]

        w.clock.advance(30 * 60)
        await send("old key, new one published")
        w.clock.advance(30 * 60 + 1)
        assert w.clock.now() > rotated.activates
        await send("new key")

        # A day later globex is back: the queue drains, old and new signatures alike verify.
        w.clock.advance(24 * 3600)
        await globex.start()
        await deliver()
        assert await kids_in_inbox(globex, "bob") == ["s1", "s1", "s2"]

        retired = retire_key(keys_dir, "s1", w.clock.now(), H)
        assert retired.retires == rotated.activates + MAX_LIFETIME + MAX_CLOCK_SKEW
        acme.relay.reload()  # SIGHUP
        assert await jwks_kids(w, acme) == ["s1", "s2"]  # still published until then
        assert retired.retires is not None
        w.clock.set(retired.retires + timedelta(seconds=1))
        publish_keys(w, acme)  # the operator withdraws s1's record, as `synq dns` now says
        assert await jwks_kids(w, acme) == ["s2"]
        await send("after retirement")
        await deliver()

        assert await kids_in_inbox(globex, "bob") == ["s1", "s1", "s2", "s2"]
        for id_ in ids:
            status = await w.status(acme, alice, id_)
            assert status["recipients"]["bob@globex.test"]["state"] == "sent", status
        assert await rejected_by(w, globex) == 0
        assert await w.inbox(acme, alice) == []  # not one delivery-status envelope


async def test_threat_key_file_readable_by_others_is_refused_on_reload(tmp_path: Path) -> None:
    async with world(tmp_path, "acme.test") as w:
        relay = w.orgs["acme.test"].relay
        assert not relay.reload_keys_if_changed()
        loose = relay.config.keys_dir / "s9.json"
        loose.write_text("{}")
        os.chmod(loose, 0o644)
        assert not relay.reload_keys_if_changed()  # logged, and the relay keeps signing
        assert relay.signing_key(w.clock.now()).selector == "s1"
        with pytest.raises(ConfigError, match="chmod 600"):
            relay.reload()


# ---------------------------------------------------------------------------- a real process


@dataclass
class Process:
    proc: asyncio.subprocess.Process
    url: str

    async def log_line(self, *markers: str) -> str:
        """The next stderr line containing any of ``markers`` (read as it comes: no polling)."""
        assert self.proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stderr.readline(), 30)).decode()
            assert line, "the relay exited"
            if any(m in line for m in markers):
                return line


@asynccontextmanager
async def serving(cwd: Path) -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "serve",
        cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "listening on" in line, line
        yield Process(proc, line.rsplit(" ", 1)[1].strip())
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await proc.communicate()


@pytest.mark.slow
async def test_sighup_reloads_keys_and_policy_without_restart(tmp_path: Path) -> None:
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
    headers = {"Authorization": f"Bearer {alice['token']}"}
    async with serving(tmp_path) as relay, aiohttp.ClientSession() as http:

        async def kids() -> list[str]:
            async with http.get(f"{relay.url}/.well-known/synq.json") as resp:
                return [k["kid"] for k in (await resp.json())["keys"]["keys"]]

        async def send_to(address: str) -> int:
            async with http.post(
                f"{relay.url}/synq/v1/messages",
                json={"to": [address], "body": "x"},
                headers=headers,
            ) as resp:
                return resp.status

        [first] = await kids()
        await synq("keys", "rotate", "--overlap", "1h", "--selector", "next", cwd=tmp_path)
        assert relay.proc.stderr is not None
        relay.proc.send_signal(signal.SIGHUP)
        assert "reloaded: keys" in await relay.log_line("reloaded", "reload failed")
        assert await kids() == [first, "next"]

        assert await send_to("x@evil.test") == 202
        config = tmp_path / "synq.toml"
        config.write_text(config.read_text() + 'deny = ["evil.test"]\n')
        relay.proc.send_signal(signal.SIGHUP)
        assert "reloaded: keys" in await relay.log_line("reloaded", "reload failed")
        assert await send_to("x@evil.test") == 403

        config.write_text(config.read_text() + "colour = 1\n")
        relay.proc.send_signal(signal.SIGHUP)
        assert "reload failed" in await relay.log_line("reloaded", "reload failed")
        assert await send_to("x@evil.test") == 403  # still serving, with the last good policy
        assert await kids() == [first, "next"]
