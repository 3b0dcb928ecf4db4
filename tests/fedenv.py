"""Two (or more) relays in one event loop, a real DNS server on loopback publishing their
records, each relay's HTTP face on a real loopback socket. The federation queue is driven by
hand (``org.relay.sender.run_once()``) under one shared fake clock, so retries never wait.

Each relay's store comes from ``store_url(domain)`` (tests/pg.py ``store_urls``: its own SQLite
file, or its own fresh PostgreSQL database), so the same tests run on every backend."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from relay.config import Config, DiscoverySection, RelaySection, StoreSection
from relay.core import records
from relay.core.clock import FakeClock
from relay.core.ids import hash_token, new_token
from relay.core.jws import SigningKey
from relay.dnsserver import DNSServer
from relay.keyring import KeyEntry, write_key
from relay.runtime import Relay
from relay.server.app import build_app
from relay.telemetry import Telemetry
from tests.conftest import Agent


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Org:
    domain: str
    relay: Relay
    url: str
    port: int
    key: SigningKey
    server: TestServer | None = None
    agents: dict[str, Agent] = field(default_factory=dict)

    async def agent(self, name: str) -> Agent:
        token = new_token()
        await self.relay.store.create_agent(
            name, "inbox", hash_token(token), None, self.relay.clock.now()
        )
        self.agents[name] = Agent(name, f"{name}@{self.domain}", token)
        return self.agents[name]

    async def start(self) -> None:
        """Serve on this org's port (again, after ``stop``: a partner coming back)."""
        self.server = TestServer(build_app(self.relay), port=self.port, handler_cancellation=True)
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None


@dataclass
class World:
    dns: DNSServer
    clock: FakeClock
    http: aiohttp.ClientSession
    orgs: dict[str, Org]
    base: Path
    store_url: Callable[[str], str] = lambda _domain: "sqlite:///synq.db"

    def publish(self, org: Org, ttl: int = 60) -> None:
        self.dns.set_txt(
            records.relay_record_name(org.domain), [records.RelayRecord(org.url).to_txt()], ttl=ttl
        )
        self.dns.set_txt(
            records.key_record_name(org.key.selector, org.domain),
            [records.KeyRecord(org.key.public_key).to_txt()],
            ttl=ttl,
        )

    async def add_org(
        self, domain: str, telemetry: Telemetry | None = None, partners: Sequence[str] = ()
    ) -> Org:
        directory = self.base / domain
        directory.mkdir(parents=True)
        key = SigningKey.generate("s1")
        start = self.clock.now() - timedelta(days=1)
        write_key(
            directory / "keys", KeyEntry(key=key, created=start, activates=start, retires=None)
        )
        sock = bound_socket()
        port = sock.getsockname()[1]
        sock.close()
        url = f"http://127.0.0.1:{port}"
        config = Config(
            relay=RelaySection(domain=domain, listen=f"127.0.0.1:{port}", public_url=url),
            store=StoreSection(url=self.store_url(domain)),
            # The loopback DNS server shares the event loop (and, in a full run, the machine):
            # a generous limit, so that only a query a test drops on purpose times out.
            discovery=DiscoverySection(
                nameservers=[self.dns.address],
                allow_private_addresses=True,
                timeout=2.0,
                partners=list(partners),
            ),
            base_dir=directory,
        )
        relay = await Relay.open(config, clock=self.clock, telemetry=telemetry)
        org = Org(domain=domain, relay=relay, url=url, port=port, key=key)
        self.orgs[domain] = org
        self.publish(org)
        await org.start()
        return org

    async def send(self, org: Org, sender: Agent, payload: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(
            f"{org.url}/synq/v1/messages", json=payload, headers=sender.auth
        ) as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == 202, body
            return body

    async def inbox(self, org: Org, agent: Agent, **params: Any) -> list[dict[str, Any]]:
        async with self.http.get(
            f"{org.url}/synq/v1/inbox", params={"limit": 500, **params}, headers=agent.auth
        ) as resp:
            assert resp.status == 200
            messages: list[dict[str, Any]] = (await resp.json())["messages"]
            return messages

    async def status(self, org: Org, agent: Agent, id: str) -> dict[str, Any]:
        async with self.http.get(f"{org.url}/synq/v1/messages/{id}", headers=agent.auth) as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body


@asynccontextmanager
async def world(
    base: Path, *domains: str, store_url: Callable[[str], str] | None = None
) -> AsyncIterator[World]:
    async with (
        DNSServer(host="127.0.0.1", zones=["test"]) as dns_server,
        aiohttp.ClientSession() as http,
    ):
        clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))
        w = World(dns=dns_server, clock=clock, http=http, orgs={}, base=base)
        if store_url is not None:
            w.store_url = store_url
        try:
            for domain in domains:
                await w.add_org(domain)
            yield w
        finally:
            for org in w.orgs.values():
                await org.stop()
                await org.relay.close()
