"""One running relay: configuration, store, keys, clock and the services built on them.

``Relay`` owns the lifecycle of everything long-lived: it builds the services, runs their
background loops (:meth:`Relay.start_background`: the federation sender, the local dispatcher,
the A2A face's reply tracker, the held-mail service, the retention sweeps, the keys watch) and
closes them (:meth:`Relay.close`). The aiohttp
application reaches it through a typed ``AppKey`` (relay/server/keys.py); handlers reach the
agent operations through ``relay.mailbox`` (relay/delivery/mailbox.py). Tests build a ``Relay``
with their own clock and drive each queue by hand (``relay.sender.run_once()``,
``relay.reply_tracker.run_once()``) instead of the background loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import aiohttp

from relay import __version__
from relay.config import Config
from relay.core.catalog import SearchRequest, Viewer
from relay.core.clock import Clock, SystemClock
from relay.core.errors import ConfigError, SynqError
from relay.core.jws import SigningKey
from relay.core.policy import Policy
from relay.core.ratelimit import RateLimits, TokenBuckets
from relay.delivery.adapters import AgentAdapter
from relay.delivery.catalog import CatalogService, FederatedSearch, SearchPage
from relay.delivery.custody import Custody
from relay.delivery.dispatch import Dispatcher
from relay.delivery.mailbox import Mailbox
from relay.delivery.quota import HeldMail, MailboxQuotas
from relay.delivery.retention import RetentionService
from relay.delivery.router import Router
from relay.delivery.signals import Signals
from relay.discovery.dnsclient import make_resolver
from relay.discovery.resolver import Discovery
from relay.discovery.ssrf import AddressPolicy, GuardedResolver, make_guarded_connector
from relay.federation.inbound import InboundHandler
from relay.federation.outbound import FederationSender
from relay.federation.search import PARTIAL_HEADER, PartnerSearch, SearchRequestVerifier
from relay.federation.signals import SignalFederation
from relay.federation.transport import HttpTransport
from relay.keyring import Keyring, keys_fingerprint, load_keyring
from relay.metrics import Metrics
from relay.store import open_store
from relay.store.base import Outcome, Store
from relay.telemetry import Telemetry

if TYPE_CHECKING:
    from aiohttp import web

    from relay.tasks.push import PushSender
    from relay.tasks.replies import ReplyTracker
    from relay.tasks.store import TaskStore

log = logging.getLogger("synq.relay")

#: The ARD routes' question to a partner-authentication scheme (Relay.partner_auth).
PartnerAuth = Callable[["web.Request"], Awaitable[str | None]]

#: How often a serving relay looks at its keys directory for new or changed key files (a stat
#: per file, no read). A key written by ``synq keys rotate`` is published in the well-known
#: document within this time even if nobody sends SIGHUP.
KEYS_WATCH_INTERVAL = 10.0


def default_adapters(
    config: Config,
    signer: Callable[[datetime], SigningKey] | None = None,
    clock: Clock | None = None,
    telemetry: Telemetry | None = None,
) -> dict[str, AgentAdapter]:
    """The adapters a relay runs with, by agent kind (``AgentRecord.kind``). ``signer``: the
    relay's current signing key, for the agent cards adapters publish; ``telemetry``: the
    relay's tracer, for a span per call to an agent."""
    # Imported here, as the store dialects are: commands that never build a relay (init, dns)
    # do not pay for the a2a-sdk client at start-up.
    from adapters.a2a import A2AAdapter
    from adapters.mcp import McpAdapter

    tracer = (telemetry or Telemetry.off()).tracer
    a2a = A2AAdapter(
        signer=signer,
        clock=clock,
        tracer=tracer,
        resolve=grpc_resolver(config),
        # Plaintext gRPC only where http is allowed (SPEC.md §7.6 rule 1).
        allow_plaintext_grpc=config.discovery.allow_private_addresses,
    )
    # stdio MCP servers start in the relay's directory, so ``--mcp-stdio "python tool.py"``
    # means the same file whether ``synq agent add`` or ``synq serve`` starts it.
    return {"mcp": McpAdapter(cwd=config.base_dir.resolve(), tracer=tracer), "a2a": a2a}


def grpc_resolver(
    config: Config,
) -> Callable[[str], Awaitable[list[ipaddress.IPv4Address | ipaddress.IPv6Address]]]:
    """The permitted addresses of an A2A agent's gRPC target (adapters/a2a/channels.py): the
    guarded resolution of well-known fetches (SPEC.md §7.6), with ``[discovery]``'s name
    servers and address policy, so a card cannot point the relay's gRPC client at its own
    network either. Refusals leave as DiscoveryError."""
    disc = config.discovery
    policy = AddressPolicy.build(
        allow_private=disc.allow_private_addresses, allowed_networks=disc.allowed_networks
    )
    guarded: list[GuardedResolver] = []

    async def resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        if not guarded:
            # Made on first use: reading the system's resolver configuration is not worth
            # doing for relays without gRPC agents.
            dns_resolver = make_resolver(disc.nameservers, timeout=disc.timeout)
            guarded.append(GuardedResolver(policy, dns_resolver, lifetime=disc.timeout))
        found = await guarded[0].resolve(host, 0, socket.AF_UNSPEC)
        return [ipaddress.ip_address(entry["host"]) for entry in found]

    return resolve


def _ended_task_states() -> list[str]:
    """The A2A task states in which a face task has ended (the retention of ``tasks``), by the
    names the task store records."""
    from a2a.types import TaskState

    from adapters.a2a.wire import TERMINAL_STATES

    return sorted(TaskState.Name(state) for state in TERMINAL_STATES)


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
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.keyring = keyring
        self.clock: Clock = clock or SystemClock()
        #: This relay's tracer (relay/telemetry.py): its own provider, never the process's, so
        #: that two relays in one process keep their traces apart. ``[telemetry]`` by default.
        tel = config.telemetry
        self.telemetry = telemetry or Telemetry.configured(
            tel.otlp_endpoint,
            service_name=tel.service_name,
            sample_ratio=tel.sample_ratio,
            domain=config.relay.domain,
        )
        tracer = self.telemetry.tracer
        # Trust and abuse resistance (SPEC.md §11): one policy, one set of rate-limit tables and
        # one custody path (its gate bounding the writes in flight), shared by local submission
        # and federation; reload() swaps the policy and rates in place.
        self.custody = Custody(store, self.clock, domain=self.domain)
        self.router = Router(
            store, self.domain, self.signing_key, self.clock, self.custody, tracer=tracer
        )
        self.policy: Policy = config.partner_policy()
        limits = config.rate_limits
        self.rate_limits = RateLimits.build(
            limits.sender_domain.rate, limits.sender.rate, limits.agent.rate
        )
        self.router.policy = self.policy
        self.router.agent_rates = self.rate_limits.agent
        #: Per source address (SPEC.md §10.3): the HTTP server's middleware and listener, the
        #: bearer-token checks of every face, and the federation receiver share these tables.
        self.sources = config.source_limits()
        # Mailbox quotas (SPEC.md §9.7): one set of defaults for local submission (held mail)
        # and federation (4.2.2 per recipient); reload() swaps them.
        self.quotas = MailboxQuotas(store, config.quotas.quota)
        self.router.quotas = self.quotas
        self._keys_seen = keys_fingerprint(config.keys_dir)
        self.metrics = Metrics(lambda: store.notifier.listener_count("inbox:"))
        disc = config.discovery
        self.discovery = Discovery(
            disc.nameservers,
            self.clock,
            allow_private_addresses=disc.allow_private_addresses,
            allowed_networks=disc.allowed_networks,
            dns_timeout=disc.timeout,
        )
        self.inbound = InboundHandler(
            store,
            self.discovery,
            self.domain,
            self.clock,
            policy=self.policy,
            rates=self.rate_limits,
            custody=self.custody,
            unverified=self.sources.unverified,
            router=self.router,
            quotas=self.quotas,
            tracer=tracer,
        )
        self._http = self._guarded_session({"User-Agent": f"Synq/{__version__}"})
        # Webhooks are URLs a client names: posted under the same SSRF rules as partners'
        # documents (relay/discovery/ssrf.py), on a session of their own, apart from the
        # connection pool and the User-Agent of the federation sender.
        self._push_http = self._guarded_session(None)
        self.sender = FederationSender(
            store=store,
            # The relay URL a partner's DNS names is held to the SSRF rules by the transport,
            # before it connects (relay.federation.transport), like every URL it is given.
            resolver=self.discovery,
            transport=HttpTransport(self._http, self.discovery.policy),
            router=self.router,
            clock=self.clock,
            rng=rng,
            tracer=tracer,
        )
        # A partner that reaches us is up: its held backlog goes at once (SPEC.md §9.3).
        self.inbound.on_contact = self.sender.contacted
        # New mail to a partner known to be down is held by its accept (SPEC.md §9.3).
        self.router.holds = self.sender.hold_for
        self.sender.on_settled = self._count_outcomes
        self.custody.on_held = self._count_held
        self.dispatcher = Dispatcher(
            store=store,
            router=self.router,
            clock=self.clock,
            adapters=adapters
            if adapters is not None
            else default_adapters(config, self.signing_key, self.clock, self.telemetry),
            rng=rng,
            tracer=tracer,
        )
        metrics = self.metrics
        self.mailbox = Mailbox(
            store=store,
            router=self.router,
            clock=self.clock,
            public_url=self.public_url,
            adapters=self.dispatcher.adapters,
            cards=self.discovery,
            on_accepted=lambda via, count: metrics.accepted.labels(via=via).inc(count),
            on_acked=metrics.inbox_acks.inc,
        )

        #: The discovery catalog (SPEC.md §12): kept current from the agents, searched by the ARD
        #: routes, the MCP face and ``synq find``.
        self.catalog = CatalogService(
            store,
            self.clock,
            self.domain,
            self.public_url,
            self.dispatcher.adapters,
            lambda: self.policy,
            partners=self.partner_registries,
        )
        #: Searches per caller (``[rate_limits] search``, default relay.core.catalog.SEARCH_RATE):
        #: per local agent, per partner domain, per source address of anonymous callers.
        self.search_rates = TokenBuckets(limits.search.rate)
        #: Who a request to the ARD routes speaks for when it comes from a partner relay: the
        #: request → the asking domain, None when it does not claim to be a partner, and
        #: BadPartnerSignature when its claim does not verify (SPEC.md §12.6). None: the
        #: routes verify the request's HTTP Message Signature with ``search_verifier``.
        self.partner_auth: PartnerAuth | None = None
        #: Federated search (SPEC.md §12.6): partners' signed requests verified with the keys
        #: their DNS publishes, and this relay's own requests to ``[discovery] partners``.
        self.search_verifier = SearchRequestVerifier(self.discovery, self.clock)
        self.partner_search = PartnerSearch(
            domain=self.domain,
            signer=self.signing_key,
            resolver=self.discovery,
            session=self._http,
            policy=self.discovery.policy,
            partners=config.discovery.partners,
            clock=self.clock,
            deadline=config.discovery.search_deadline,
        )
        self.catalog.federated = self._federated

        # The A2A face's tasks. Imported here, as the adapters are: the a2a-sdk modules they
        # need are not worth loading for commands that never build a relay (init, dns).
        from relay.tasks.push import PushSender
        from relay.tasks.replies import ReplyTracker
        from relay.tasks.store import TaskStore

        self.push_sender: PushSender = PushSender(self._push_http, self.discovery.policy.check_url)
        self.task_store: TaskStore = TaskStore(store, self.mailbox, self.clock, self.push_sender)
        self.reply_tracker: ReplyTracker = ReplyTracker(self.task_store)
        #: Mail held for full mailboxes goes in once they have room (relay/delivery/quota.py).
        self.held_mail = HeldMail(store, self.router, self.clock, self.quotas)
        #: Signals: work offered by urgency, taken by lease (relay/delivery/signals.py).
        self.signals = Signals(
            store,
            self.mailbox,
            self.clock,
            emit_rate=config.signals.emit_rate.rate,
            max_open=config.signals.max_open,
        )
        # Across organisations (SPEC.md §13.6): offers and updates out through the queue,
        # replicas in through the inbound handler, requests to owners answered at once.
        self.signal_federation = SignalFederation(
            signals=self.signals,
            router=self.router,
            keys=self.discovery,
            session=self._http,
            url_policy=self.discovery.policy,
            clock=self.clock,
            partners=lambda: self.config.discovery.partners,
            policy=lambda: self.policy,
            on_accepted=lambda via, count: metrics.accepted.labels(via=via).inc(count),
        )
        self.signals.partners = self.signal_federation
        self.signals.owner_link = self.signal_federation
        self.inbound.on_signal = self.signal_federation.receive
        #: What the relay no longer needs goes after its retention (relay/delivery/retention.py).
        self.retention = RetentionService(
            store, self.clock, config.retention.policy, task_states=_ended_task_states()
        )
        self._background: list[asyncio.Task[None]] = []

    def _count_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """``synq_federation_outbound_recipients`` by outcome: what the console's charts of
        sent, deferred and bounced recipients plot (SPEC.md §14.2)."""
        counter = self.metrics.federation_outcomes
        for outcome in outcomes:
            label = "deferred" if outcome.state == "queued" else outcome.state
            counter.labels(outcome=label).inc()

    def _count_held(self, count: int) -> None:
        """Remote recipients held by their accept (SPEC.md §9.3) count as ``deferred`` in
        ``synq_federation_outbound_recipients``, as those the sender holds itself do."""
        self.metrics.federation_outcomes.labels(outcome="deferred").inc(count)

    @property
    def federated(self) -> FederatedSearch | None:
        """The hook a search with ``federation: "auto"`` hands its local page to, to merge the
        partners' results (SPEC.md §12.6); None: such a search is local."""
        return self.catalog.federated

    @federated.setter
    def federated(self, hook: FederatedSearch | None) -> None:
        self.catalog.federated = hook

    async def _federated(
        self, viewer: Viewer, request: SearchRequest, page: SearchPage
    ) -> SearchPage:
        """``federation: "auto"`` (SPEC.md §12.6): the partners' first pages merged into the
        local one by score (local first among equals), the partners left out named in
        ``Synq-Partial``. Only a local agent's or the operator's search fans out, and only its
        first page: a page token is this registry's, partners answer the first page."""
        if viewer.kind not in ("local", "operator") or request.offset:
            return page
        answer = await self.partner_search.search(request.partner_body())
        if not answer.results and not answer.left_out:
            return page
        merged = sorted(
            [*page.results, *answer.results], key=lambda item: -int(item.get("score", 0))
        )[: request.page_size]
        headers = dict(page.headers)
        if answer.left_out:
            headers[PARTIAL_HEADER] = ", ".join(answer.left_out)
        return SearchPage(merged, page.page_token, page.referrals, headers)

    async def partner_registries(self) -> list[tuple[str, str]]:
        """(domain, registry URL) of each ``[discovery] partners`` whose relay resolves now: its
        relay base URL (SPEC.md §7.4) + ``/ard``. One that does not resolve is left out."""
        found: list[tuple[str, str]] = []
        for domain in self.config.discovery.partners:
            try:
                base = await self.discovery.relay_url(domain)
            except SynqError as exc:
                log.info("partner registry %s not resolved: %s", domain, exc.message)
                continue
            found.append((domain, base.rstrip("/") + "/ard"))
        return found

    def _guarded_session(self, headers: dict[str, str] | None) -> aiohttp.ClientSession:
        """A client session whose every connection goes through the SSRF guard and our own
        resolver; no proxy variables from the environment, no cookies kept between peers."""
        disc = self.config.discovery
        return aiohttp.ClientSession(
            connector=make_guarded_connector(
                self.discovery.policy,
                make_resolver(disc.nameservers, timeout=disc.timeout),
                dns_timeout=disc.timeout,
            ),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers=headers,
        )

    @property
    def domain(self) -> str:
        return self.config.relay.domain

    @property
    def public_url(self) -> str:
        return self.config.public_url

    def signing_key(self, now: datetime) -> SigningKey:
        return self.keyring.signing_key(now)

    def reload(self, config: Config | None = None) -> None:
        """Reread the keys directory and, given a freshly loaded ``config``, take its policy,
        rate limits and per-source limits (``synq serve`` does this on SIGHUP). All or nothing: when anything is
        invalid, ConfigError is raised and the relay keeps what it had.

        Nothing queued is touched: envelopes already in custody stay queued and are delivered
        as before; the new policy applies to what arrives from now on. Rate-limit buckets keep
        their levels, and open connections their counts. ``[retention]`` and ``[quotas]``
        apply from the next sweep and the next message, ``[store] max_size`` from the next write
        (a store refusing writes at its cap takes them again at once when it is raised). The
        rest of ``[relay]``, ``[store]`` and ``[discovery]`` take effect on restart.
        """
        new = config or self.config
        keyring = load_keyring(new.keys_dir)
        keyring.signing_key(self.clock.now())  # refuse a keys directory that cannot sign now
        policy = new.partner_policy()
        self.keyring = keyring
        self._keys_seen = keys_fingerprint(new.keys_dir)
        if config is None:
            return
        store = self.config.store.model_copy(update={"max_size": config.store.max_size})
        restart_only = ("relay", "discovery")
        if store != config.store or any(
            getattr(config, s) != getattr(self.config, s) for s in restart_only
        ):
            log.warning("changes to [relay], [store] and [discovery] take effect on restart")
        if config.store.max_size != self.config.store.max_size:
            self.store.set_max_size(config.store.max_size or None)
        self.config = self.config.model_copy(
            update={
                "keys": config.keys,
                "policy": config.policy,
                "rate_limits": config.rate_limits,
                "limits": config.limits,
                "retention": config.retention,
                "quotas": config.quotas,
                "signals": config.signals,
                "store": store,
            }
        )
        self.retention.policy = config.retention.policy
        self.quotas.default = config.quotas.quota
        self.signals.emit_rates.reconfigure(config.signals.emit_rate.rate)
        self.signals.max_open = config.signals.max_open
        self.policy = self.router.policy = self.inbound.policy = policy
        limits = config.rate_limits
        self.rate_limits.reconfigure(
            limits.sender_domain.rate, limits.sender.rate, limits.agent.rate
        )
        self.sources.reconfigure(config.source_limits())
        self.search_rates.reconfigure(limits.search.rate)

    # --- the operator's queue commands (SPEC.md §9.6) -------------------------------------------
    # One implementation for ``synq queue`` and the console's buttons (relay/server/admin.py).

    async def flush_queue(self, *, domain: str | None = None, id: str | None = None) -> int:
        """Make queued rows (of ``domain``, or of message ``id``) due now, recording
        ``flushed``; they go even while the breaker is open (SPEC.md §9.3). The count."""
        return await self.store.flush(self.clock.now(), domain=domain, id=id)

    async def delete_queued(self, *, id: str | None = None, domain: str | None = None) -> int:
        """Drop queued rows without a DSN (``postsuper -d``): every one when neither ``id``
        nor ``domain`` is given. The count."""
        return await self.store.delete_queued(self.clock.now(), id=id, domain=domain)

    def reload_keys_if_changed(self) -> bool:
        """Reload the keyring if a key file was added, changed or removed since the last load.
        True when it was reloaded; a directory that no longer loads is logged and skipped."""
        seen = keys_fingerprint(self.config.keys_dir)
        if seen == self._keys_seen:
            return False
        self._keys_seen = seen
        try:
            keyring = load_keyring(self.config.keys_dir)
            keyring.signing_key(self.clock.now())
        except ConfigError as exc:
            log.warning(
                "keys directory changed but cannot be loaded; keeping the old keys: %s", exc
            )
            return False
        self.keyring = keyring
        log.info("keys reloaded: %s", ", ".join(e.selector for e in keyring.entries))
        return True

    async def _watch_keys(self) -> None:
        while True:
            await asyncio.sleep(KEYS_WATCH_INTERVAL)
            self.reload_keys_if_changed()

    @classmethod
    async def open(
        cls,
        config: Config,
        clock: Clock | None = None,
        adapters: Mapping[str, AgentAdapter] | None = None,
        telemetry: Telemetry | None = None,
    ) -> Relay:
        """Load keys (refusing loose permissions) and open the store with migrations applied."""
        keyring = load_keyring(config.keys_dir)
        cap = {"max_size": config.store.max_size} if config.store.max_size else {}
        store = await open_store(
            config.store_url,
            domain=config.relay.domain,
            synchronous=config.store.synchronous,
            **cap,
        )
        try:
            return cls(
                config=config,
                store=store,
                keyring=keyring,
                clock=clock,
                adapters=adapters,
                telemetry=telemetry,
            )
        except BaseException:
            await store.close()
            raise

    async def start_background(self) -> None:
        """Start the background loops: the federation queue runner, the local dispatcher, the
        A2A face's reply tracker, the held-mail service, the retention sweeps and the keys
        watch (``synq serve`` does; tests drive the queues by hand).

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
        self._background.append(asyncio.create_task(self._watch_keys(), name="synq-keys-watch"))
        # Local delivery to adapter-backed agents (A2A, MCP): without it their inboxes fill
        # and nothing is handed over.
        self._background.append(
            asyncio.create_task(self.dispatcher.run(), name="synq-local-dispatcher")
        )
        # Replies to the A2A face's tasks: without it a task never moves past "submitted".
        self._background.append(
            asyncio.create_task(self.reply_tracker.run(), name="synq-a2a-tracker")
        )
        # Mail held for full mailboxes: without it, it would wait for its expiry and bounce.
        self._background.append(asyncio.create_task(self.held_mail.run(), name="synq-held-mail"))
        # The catalog: without it a changed card or tool list would not be searched.
        self._background.append(asyncio.create_task(self.catalog.run(), name="synq-catalog"))
        # Retention: without it the store grows with every message (SPEC.md §8.5).
        self._background.append(asyncio.create_task(self.retention.run(), name="synq-retention"))
        # Signals: lapsed leases and expiries written (so feeds wake), results resent.
        self._background.append(asyncio.create_task(self.signals.run(), name="synq-signals"))

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background.clear()
        self.reply_tracker.close()
        await self.push_sender.close()
        await self.dispatcher.close()
        await self._push_http.close()
        await self._http.close()
        await self.discovery.close()
        await self.store.close()
        # Flushing may wait on the collector: in a thread, off the event loop.
        await asyncio.to_thread(self.telemetry.shutdown)
