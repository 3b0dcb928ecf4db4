"""The admin listener and the console's HTTP side (SPEC.md §14): who may read, who may act,
what a cross-site request gets, and that the buttons do what ``synq queue`` does. The page
itself, in a real browser, is tests/test_console_browser.py."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay.admintoken import ADMIN_TOKEN_PREFIX, check_admin_token, new_admin_token
from relay.cli import main
from relay.config import Config, RelaySection, load_config, render_config
from relay.core.address import Address
from relay.core.draft import Draft
from relay.core.errors import ConfigError
from relay.runtime import Relay
from relay.server.admin import CONSOLE, MAX_CONSOLE_STREAMS, SESSION_COOKIE, build_admin_app
from relay.server.console.state import Console
from tests.conftest import AgentFactory, make_config

Client = TestClient[Any, Any]


@pytest.fixture
def token(relay: Relay) -> str:
    return new_admin_token(relay.config.admin_token_path, replace=False)


@pytest.fixture
async def console(relay: Relay, aiohttp_client: Any) -> Client:
    c: Client = await aiohttp_client(
        build_admin_app(relay, sample=False), server_kwargs={"handler_cancellation": True}
    )
    return c


async def login(client: Client, token: str) -> str:
    """Sign in with the form; the page's CSRF token."""
    resp = await client.post("/console/login", data={"token": token}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    cookie = resp.cookies[SESSION_COOKIE]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/console"
    session = await (await client.get("/console/api/session")).json()
    csrf: str = session["csrf"]
    return csrf


async def queue_one(relay: Relay, make_agent: AgentFactory) -> str:
    """A message queued for globex.test (no partner: it just waits)."""
    alice = await make_agent("alice")
    draft = Draft(
        sender=Address.parse(alice.address),
        to=(Address.parse("bob@globex.test"),),
        content_type="text/plain",
        body="hi",
    )
    submitted = await relay.mailbox.send(draft, via="api")
    return submitted.envelope.id


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relay_listen", "admin_listen", "expected", "loopback"),
    [
        ("127.0.0.1:8443", None, "127.0.0.1:8444", True),
        ("0.0.0.0:8443", None, "127.0.0.1:8444", True),  # public relay, admin still loopback
        ("[::]:443", None, "127.0.0.1:444", True),
        ("127.0.0.1:0", None, "127.0.0.1:0", True),  # an OS-chosen port: the admin's too
        ("0.0.0.0:8443", "10.0.0.5:9000", "10.0.0.5:9000", False),  # only when written
        ("0.0.0.0:8443", "[::1]:9000", "[::1]:9000", True),
    ],
)
def test_admin_listen_defaults_to_loopback_next_to_the_relay(
    tmp_path: Path, relay_listen: str, admin_listen: str | None, expected: str, loopback: bool
) -> None:
    config = Config.model_validate(
        {
            "relay": {"domain": "acme.test", "listen": relay_listen},
            **({"admin": {"listen": admin_listen}} if admin_listen else {}),
            "base_dir": tmp_path,
        }
    )
    assert config.admin_listen == expected
    assert config.admin_is_loopback is loopback
    # What the config writer writes reads back the same.
    path = tmp_path / "synq.toml"
    path.write_text(render_config(config), encoding="utf-8")
    assert load_config(path).admin == config.admin


def test_admin_listen_must_be_host_port(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        Config(relay=RelaySection(domain="acme.test"), admin={"listen": "nowhere"})


# --- the token ----------------------------------------------------------------------------------


def test_the_token_is_kept_hashed_0600_and_replaced_only_on_rotate(tmp_path: Path) -> None:
    path = tmp_path / "admin-token.sha256"
    first = new_admin_token(path, replace=False)
    assert first.startswith(ADMIN_TOKEN_PREFIX)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first not in path.read_text()
    assert check_admin_token(path, first) is not None
    assert check_admin_token(path, first + "x") is None
    with pytest.raises(ConfigError, match="--rotate"):
        new_admin_token(path, replace=False)
    second = new_admin_token(path, replace=True)
    assert check_admin_token(path, first) is None
    assert check_admin_token(path, second) is not None


# --- reading ------------------------------------------------------------------------------------


async def test_metrics_and_health_need_no_token(console: Client) -> None:
    assert await (await console.get("/healthz")).json() == {"status": "ok"}
    text = await (await console.get("/metrics")).text()
    assert "synq_envelopes_accepted" in text


async def test_without_the_token_the_console_refuses(console: Client, token: str) -> None:
    resp = await console.get("/console", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/console/login")
    for path in ("/console/api/snapshot", "/console/api/session", "/console/api/events"):
        assert (await console.get(path)).status == 401, path
    bad = await console.get("/console/api/snapshot", headers={"Authorization": "Bearer nope"})
    assert bad.status == 401
    wrong = await console.post("/console/login", data={"token": "synq_admin_wrong"})
    assert wrong.status == 401
    page = await wrong.text()
    assert "That is not the admin token." in page
    assert page.index("</form>") < page.index("login-error")
    assert SESSION_COOKIE not in wrong.cookies


async def test_no_token_made_yet_means_no_way_in(console: Client) -> None:
    assert (await console.post("/console/login", data={"token": ""})).status == 401
    assert (await console.get("/console/api/snapshot")).status == 401


async def test_bearer_and_session_both_read(
    console: Client, relay: Relay, token: str, make_agent: AgentFactory
) -> None:
    id = await queue_one(relay, make_agent)
    resp = await console.get("/console/api/snapshot", headers={"Authorization": f"Bearer {token}"})
    snap = await resp.json()
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert [(d["domain"], d["depth"], d["breaker"]) for d in snap["destinations"]] == [
        ("globex.test", 1, "closed")
    ]
    assert [q["id"] for q in snap["queue"]] == [id]
    assert snap["agents"][0]["address"] == "alice@acme.test"
    assert snap["signals"] == []
    await login(console, token)
    page = await console.get("/console")
    assert page.status == 200
    assert "Synq console" in await page.text()
    found = await (await console.get("/console/api/messages", params={"q": "bob@globex"})).json()
    assert [m["id"] for m in found["messages"]] == [id]
    detail = await (await console.get("/console/api/message", params={"id": id})).json()
    assert detail["recipients"]["bob@globex.test"]["state"] == "queued"


async def test_a_rotated_token_ends_the_sessions(console: Client, relay: Relay, token: str) -> None:
    await login(console, token)
    assert (await console.get("/console/api/snapshot")).status == 200
    new_admin_token(relay.config.admin_token_path, replace=True)
    assert (await console.get("/console/api/snapshot")).status == 401


async def test_a_host_that_is_not_loopback_is_refused(console: Client, token: str) -> None:
    """DNS rebinding: a page at evil.example whose name now points at 127.0.0.1."""
    resp = await console.get(
        "/console/api/snapshot",
        headers={"Host": "evil.example", "Authorization": f"Bearer {token}"},
    )
    assert resp.status == 403


# --- acting -------------------------------------------------------------------------------------


async def test_actions_need_the_csrf_token_with_a_session(
    console: Client, relay: Relay, token: str, make_agent: AgentFactory
) -> None:
    id = await queue_one(relay, make_agent)
    csrf = await login(console, token)
    resp = await console.post("/console/api/queue/delete", json={"id": id})
    assert resp.status == 403
    resp = await console.post(
        "/console/api/queue/delete", json={"id": id}, headers={"X-CSRF-Token": "x" + csrf}
    )
    assert resp.status == 403
    assert [q.id for q in await relay.store.list_queue()] == [id]
    resp = await console.post(
        "/console/api/queue/retry", json={"id": id}, headers={"X-CSRF-Token": csrf}
    )
    assert await resp.json() == {"retried": 1}
    # The form field works as the header does (a form without script).
    resp = await console.post("/console/api/queue/delete", data={"id": id, "csrf_token": csrf})
    assert await resp.json() == {"deleted": 1}
    status = await relay.store.message_status(relay.domain, id)
    assert status is not None
    assert [e.event for e in status.events][-2:] == ["flushed", "deleted"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://127.0.0.1:1"},  # another port of the same host: same site
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
    ],
)
async def test_cross_site_actions_are_refused_even_with_the_cookie_and_csrf(
    console: Client, relay: Relay, token: str, make_agent: AgentFactory, headers: dict[str, str]
) -> None:
    id = await queue_one(relay, make_agent)
    csrf = await login(console, token)
    resp = await console.post(
        "/console/api/queue/delete", json={"all": True}, headers={"X-CSRF-Token": csrf, **headers}
    )
    assert resp.status == 403
    assert [q.id for q in await relay.store.list_queue()] == [id]
    login_again = await console.post("/console/login", data={"token": token}, headers=headers)
    assert login_again.status == 403


async def test_bearer_actions_are_what_synq_queue_does(
    console: Client, relay: Relay, token: str, make_agent: AgentFactory
) -> None:
    id = await queue_one(relay, make_agent)
    auth = {"Authorization": f"Bearer {token}"}
    resp = await console.post(
        "/console/api/queue/flush", json={"domain": "globex.test"}, headers=auth
    )
    assert await resp.json() == {"flushed": 1}
    missing = await console.post("/console/api/queue/retry", json={"id": "nope"}, headers=auth)
    assert missing.status == 404
    vague = await console.post("/console/api/queue/delete", json={}, headers=auth)
    assert vague.status == 400
    resp = await console.post("/console/api/queue/delete", json={"all": True}, headers=auth)
    assert await resp.json() == {"deleted": 1}
    assert await relay.store.list_queue() == []
    # The snapshot after an action is read afresh: the row is gone, its bounce listed.
    snap = await (await console.get("/console/api/snapshot", headers=auth)).json()
    assert snap["queued"] == 0
    [bounce] = snap["bounces"]
    assert (bounce["id"], bounce["recipient"], bounce["code"]) == (id, "bob@globex.test", "5.0.0")
    [partner] = snap["partners"]
    assert partner["domain"] == "globex.test"
    assert partner["failures"] == ["5.0.0 deleted from the queue by the operator"]


async def test_event_streams_are_bounded_and_carry_snapshots(
    console: Client, relay: Relay, token: str
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    streams = [
        await console.get("/console/api/events", headers=auth) for _ in range(MAX_CONSOLE_STREAMS)
    ]
    try:
        first = await asyncio.wait_for(streams[0].content.readuntil(b"\n\n"), 10)
        assert first.startswith(b"event: snapshot\ndata: {")
        over = await console.get("/console/api/events", headers=auth)
        assert over.status == 429
        assert "Retry-After" in over.headers
    finally:
        for s in streams:
            s.close()


async def test_samples_make_the_charts(relay: Relay, make_agent: AgentFactory) -> None:
    state = Console(relay)
    await state.sample()
    await queue_one(relay, make_agent)
    await state.sample()
    [point] = state.chart()
    assert (point["accepted"], point["depth"]) == (1.0, 1)


async def test_agents_show_their_adapter_health(relay: Relay, token: str, console: Client) -> None:
    """An MCP stdio server is ``idle`` until first used, ``up`` while its session lives."""
    from tests.mcpenv import stdio_endpoint

    endpoint = stdio_endpoint()
    await relay.store.create_agent("tools", "mcp", "h", endpoint, relay.clock.now())
    auth = {"Authorization": f"Bearer {token}"}

    async def health() -> str:
        state.invalidate()  # a fresh read, not the snapshot of half a second ago
        snap = await (await console.get("/console/api/snapshot", headers=auth)).json()
        [agent] = snap["agents"]
        assert agent["kind"] == "mcp"
        value: str = agent["health"]
        return value

    state = console.app[CONSOLE]
    assert await health() == "idle"
    await relay.mailbox.card(Address.parse("tools@acme.test"))  # starts the supervised server
    assert await health() == "up"


def test_synq_admin_token_prints_it_once_and_rotates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "synq.toml"
    path.write_text(render_config(make_config(tmp_path)), encoding="utf-8")
    assert main(["--config", str(path), "--json", "admin", "token"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["console"] == "http://127.0.0.1:0/console"
    stored = load_config(path).admin_token_path
    assert check_admin_token(stored, first["token"]) is not None
    assert main(["--config", str(path), "admin", "token"]) == 1
    assert "--rotate" in capsys.readouterr().err
    assert main(["--config", str(path), "admin", "token", "--rotate"]) == 0
    second = capsys.readouterr().out.splitlines()[0]
    assert check_admin_token(stored, first["token"]) is None
    assert check_admin_token(stored, second) is not None


async def test_sign_out_ends_the_session(console: Client, token: str) -> None:
    csrf = await login(console, token)
    assert (await console.post("/console/logout", allow_redirects=False)).status == 403
    resp = await console.post("/console/logout", data={"csrf_token": csrf}, allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/console/login")
    assert (await console.get("/console/api/snapshot")).status == 401
