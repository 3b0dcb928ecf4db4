"""Shared fixtures: a configured relay directory, a running relay app on loopback, agents."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay.config import Config, DiscoverySection, RelaySection, StoreSection
from relay.core.clock import SystemClock
from relay.core.ids import hash_token, new_token
from relay.core.jws import SigningKey
from relay.keyring import KeyEntry, write_key
from relay.runtime import Relay
from relay.server.app import build_app


def make_config(directory: Path, domain: str = "acme.test", **discovery: Any) -> Config:
    """A relay directory with a config and one signing key (as ``synq init`` leaves it)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = SystemClock().now()
    write_key(
        directory / "keys",
        KeyEntry(key=SigningKey.generate("s1"), created=now, activates=now, retires=None),
    )
    return Config(
        relay=RelaySection(domain=domain, listen="127.0.0.1:0", public_url="http://127.0.0.1:9"),
        store=StoreSection(url="sqlite:///synq.db"),
        discovery=DiscoverySection(**discovery),
        base_dir=directory,
    )


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    r = await Relay.open(make_config(tmp_path / "acme"))
    try:
        yield r
    finally:
        await r.close()


@dataclass
class Agent:
    name: str
    address: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


AgentFactory = Callable[[str], Awaitable[Agent]]


@pytest.fixture
def make_agent(relay: Relay) -> AgentFactory:
    async def make(name: str) -> Agent:
        token = new_token()
        await relay.store.create_agent(name, "inbox", hash_token(token), None, relay.clock.now())
        return Agent(name, f"{name}@{relay.domain}", token)

    return make


@pytest.fixture
async def client(relay: Relay, aiohttp_client: Any) -> TestClient[Any, Any]:
    app = build_app(relay)
    c: TestClient[Any, Any] = await aiohttp_client(
        app, server_kwargs={"handler_cancellation": True}
    )
    return c
