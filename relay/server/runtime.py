"""One running relay: configuration, store, keys, clock and the services built on them.

``Relay`` owns the lifecycle of everything long-lived. The aiohttp application reaches it
through a typed ``AppKey`` (STYLE §4); tests build a ``Relay`` with their own clock and drive
the federation queue with ``relay.sender.run_once()`` instead of the background loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping
from datetime import datetime

import aiohttp
from yarl import URL

from relay import __version__
from relay.config import Config
from relay.core.clock import Clock, SystemClock
from relay.core.jws import SigningKey
from relay.delivery.adapters import AgentAdapter
from relay.delivery.dispatch import Dispatcher
from relay.delivery.router import Router
from relay.discovery.dnsclient import make_resolver
from relay.discovery.resolver import Discovery
from relay.discovery.ssrf import make_guarded_connector
from relay.federation.inbound import InboundHandler
from relay.federation.outbound import FederationSender
from relay.federation.transport import HttpTransport
from relay.keyring import Keyring, load_keyring
from relay.server.metrics import Metrics
from relay.store import open_store
from relay.store.base import Store

log = logging.getLogger("synq.relay")


class CheckedRelayResolver:
    """Relay URLs from discovery, passed through the same SSRF rules as every fetch: a
    partner's DNS must not point our sender at our own internal services."""

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery

    async def relay_url(self, domain: str) -> str:
        url = await self.discovery.relay_url(domain)
        self.discovery.policy.check_url(URL(url))
        return url


def default_adapters(config: Config) -> dict[str, AgentAdapter]:
    """The adapters a relay runs with, by agent kind (``AgentRecord.kind``)."""
    return {}


class Relay:
    def __init__(
        self,
        config: Config,
        store: Store,
        keyring: Keyring,
        clock: Clock | None = None,
        *,
        rng: random.Random | None = None,
        adapters: Mapping[str, AgentAdapter] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.keyring = keyring
        self.clock: Clock = clock or SystemClock()
        self.router = Router(store, self.domain, self.signing_key, self.clock)
        self.metrics = Metrics(lambda: store.notifier.listener_count("inbox:"))
        disc = config.discovery
        self.discovery = Discovery(
            disc.nameservers,
            self.clock,
            allow_private_addresses=disc.allow_private_addresses,
            allowed_networks=disc.allowed_networks,
            dns_timeout=disc.timeout,
        )
        self.inbound = InboundHandler(store, self.discovery, self.domain, self.clock)
        self._http = aiohttp.ClientSession(
            connector=make_guarded_connector(
                self.discovery.policy,
                make_resolver(disc.nameservers, timeout=disc.timeout),
                dns_timeout=disc.timeout,
            ),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": f"Synq/{__version__}"},
        )
        self.sender = FederationSender(
            store=store,
            resolver=CheckedRelayResolver(self.discovery),
            transport=HttpTransport(self._http, self.discovery.policy),
            router=self.router,
            clock=self.clock,
            rng=rng,
        )
        self.dispatcher = Dispatcher(
            store=store,
            router=self.router,
            clock=self.clock,
            adapters=adapters if adapters is not None else default_adapters(config),
            rng=rng,
        )
        self._background: list[asyncio.Task[None]] = []

    @property
    def domain(self) -> str:
        return self.config.relay.domain

    @property
    def public_url(self) -> str:
        return self.config.public_url

    def signing_key(self, now: datetime) -> SigningKey:
        return self.keyring.signing_key(now)

    @classmethod
    async def open(
        cls,
        config: Config,
        clock: Clock | None = None,
        adapters: Mapping[str, AgentAdapter] | None = None,
    ) -> Relay:
        """Load keys (refusing loose permissions) and open the store with migrations applied."""
        keyring = load_keyring(config.keys_dir)
        store = await open_store(
            config.store_url, domain=config.relay.domain, synchronous=config.store.synchronous
        )
        try:
            return cls(config=config, store=store, keyring=keyring, clock=clock, adapters=adapters)
        except BaseException:
            await store.close()
            raise

    async def start_background(self) -> None:
        """Start the federation queue runner (``synq serve`` does; tests drive it by hand).

        On a store that only this process serves (SQLite), leases left by a previous process
        that was killed mid-delivery are released first: that process is gone, and waiting for
        its leases to lapse would only delay the retry. (Resending is safe: receivers dedup.)
        """
        if not self.store.shared_by_processes:
            released = await self.store.release_leases()
            if released:
                log.info("released %d queue leases left by a previous run", released)
        self._background.append(
            asyncio.create_task(self.sender.run(), name="synq-federation-sender")
        )

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background.clear()
        await self.dispatcher.close()
        await self._http.close()
        await self.discovery.close()
        await self.store.close()
