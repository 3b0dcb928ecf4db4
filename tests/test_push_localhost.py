"""``localhost`` in URLs the relay is asked to fetch or post to (SSRF rules,
relay/discovery/ssrf.py): the loopback host of RFC 6761 §6.3, allowed exactly when private
addresses are (loopback test runs, such as the A2A TCK's webhook receiver at
``http://localhost:PORT``), never asked of DNS, and refused as before otherwise."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from a2a.types import TaskPushNotificationConfig
from a2a.utils import errors as a2a_errors
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from relay.discovery.dnsclient import make_resolver
from relay.discovery.errors import AddressRefused, MisconfiguredDomain
from relay.discovery.ssrf import AddressPolicy, GuardedResolver, is_localhost
from relay.dnsserver import DNSServer
from relay.runtime import Relay
from tests.conftest import make_config
from tests.test_a2a_bridge import Bridge, bridge, collect, message


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LocalHost", True),
        ("localhost.", True),
        ("tck.localhost", True),
        ("localhost.example.com", False),  # a DNS name like any other
        ("notlocalhost", False),
        ("127.0.0.1", False),  # a literal, judged as an address
    ],
)
def test_rfc6761_6_3_localhost_names(host: str, loopback: bool) -> None:
    assert is_localhost(host) is loopback


@pytest.mark.parametrize(
    ("url", "allow_private", "error"),
    [
        ("http://localhost:9999/hook", True, None),
        ("http://LOCALHOST:9999/hook", True, None),
        ("https://tck.localhost/hook", True, None),
        ("http://localhost:9999/hook", False, MisconfiguredDomain),  # http: https only
        ("https://localhost/hook", False, MisconfiguredDomain),
        ("https://a.localhost/hook", False, MisconfiguredDomain),
        ("https://user:pw@localhost/hook", True, MisconfiguredDomain),
    ],
)
def test_check_url_takes_localhost_only_with_private_addresses(
    url: str, allow_private: bool, error: type[Exception] | None
) -> None:
    policy = AddressPolicy.build(allow_private=allow_private)
    if error is None:
        assert policy.check_url(URL(url)) == URL(url)
    else:
        with pytest.raises(error):
            policy.check_url(URL(url))


@pytest.fixture
async def dns_server() -> AsyncIterator[DNSServer]:
    async with DNSServer(host="127.0.0.1", zones=["localhost", "test"]) as server:
        # A name server that claims localhost is somewhere else is not asked.
        server.set_a("localhost", "10.0.0.1")
        yield server


async def test_localhost_resolves_to_loopback_only_and_never_through_dns(
    dns_server: DNSServer,
) -> None:
    def resolver(allow_private: bool) -> GuardedResolver:
        policy = AddressPolicy.build(allow_private=allow_private)
        return GuardedResolver(policy, make_resolver([dns_server.address], timeout=1), lifetime=1)

    both = await resolver(True).resolve("localhost", 8080, socket.AF_UNSPEC)
    assert [(r["host"], r["port"]) for r in both] == [("127.0.0.1", 8080), ("::1", 8080)]
    v4 = await resolver(True).resolve("LOCALHOST.", 8080, socket.AF_INET)
    assert [r["host"] for r in v4] == ["127.0.0.1"]
    v6 = await resolver(True).resolve("tck.localhost", 8080, socket.AF_INET6)
    assert [r["host"] for r in v6] == ["::1"]
    with pytest.raises(AddressRefused):
        await resolver(False).resolve("localhost", 8080, socket.AF_UNSPEC)
    assert dns_server.query_count("localhost") == 0


async def test_a_push_url_naming_localhost_is_refused_without_private_addresses(
    tmp_path: Path,
) -> None:
    relay = await Relay.open(make_config(tmp_path / "acme"))
    try:
        config = TaskPushNotificationConfig(url="https://localhost:8443/hook", id="p1")
        with pytest.raises(a2a_errors.InvalidParamsError) as refused:
            relay.push_sender.normalise("task-1", config)
    finally:
        await relay.close()
    assert "localhost is this machine" in str(refused.value)


@pytest.fixture
async def b(tmp_path: Path) -> AsyncIterator[Bridge]:
    async with bridge(tmp_path) as env:
        yield env


async def test_a_webhook_at_localhost_gets_the_push_through_the_face(b: Bridge) -> None:
    """The relays of this test run with private addresses allowed (loopback), as a TCK run's
    relay does: its webhook receiver names itself ``http://localhost:PORT``."""
    received: list[Any] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        client = await b.client(streaming=False)
        request = message("tck-input-required-p")
        url = f"http://localhost:{server.port}/hook"
        config = TaskPushNotificationConfig(url=url, id="p1")
        request.configuration.task_push_notification_config.CopyFrom(config)
        await collect(client, request)
        await asyncio.wait_for(arrived.wait(), 10)
    finally:
        await server.close()
    assert set(received[0]) & {"task", "statusUpdate", "artifactUpdate"}
