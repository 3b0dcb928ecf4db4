"""Where a domain's relay listens and which keys sign for it: DNS first, well-known second.

DKIM's model (RFC 6376 §3.6): a verifier needs nothing from the sender but DNS answers, and
caches those answers for their TTL. ::

    relay_url("acme.test")        TXT _synq.acme.test          v=synq1; relay=https://…
    public_key("acme.test", "s1") TXT s1._synqkey.acme.test    v=synq1; k=ed25519; p=…
    well_known("acme.test")       GET https://acme.test/.well-known/synq.json  (SSRF-guarded)

When DNS has no Synq record for the name (NXDOMAIN, an empty answer, or only TXT records of
other protocols), the well-known document answers instead. When DNS has one, it is
authoritative: a malformed record is an error, not a reason to look elsewhere.

Records are chosen as SPF chooses (RFC 7208 §4.5): of the TXT records at the name, those whose
first tag is exactly ``v=synq1`` are Synq records and the others are ignored; more than one is
an error, because two relays or two keys for one name leave the choice to the reader. A record
split into several character-strings is joined first (RFC 7208 §3.3).

Caching (all times from the injected clock):

* answers for their DNS TTL, clamped to [:data:`MIN_TTL`, :data:`MAX_TTL`];
* negative answers (NXDOMAIN, no record) for min(SOA TTL, SOA MINIMUM) (RFC 2308 §5), clamped
  to [:data:`MIN_NEGATIVE_TTL`, :data:`MAX_NEGATIVE_TTL`];
* failures (timeout, SERVFAIL) for :data:`FAILURE_TTL` (RFC 2308 §7.1 allows up to five
  minutes), so a dead name server costs one timeout per name, not one per envelope;
* well-known documents for their ``Cache-Control: max-age`` or :data:`WELL_KNOWN_DEFAULT_TTL`,
  clamped like DNS answers.

Concurrent look-ups of one name share one query. The caches are bounded and evict the least
recently used entry (see :mod:`relay.discovery.cache`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, NoReturn, TypeAlias, TypeVar

from relay.core import jsonutil
from relay.core.address import normalize_domain
from relay.core.clock import Clock, SystemClock
from relay.core.errors import (
    ConfigError,
    DiscoveryError,
    InvalidAddress,
    NotFound,
    SynqError,
    UnknownKey,
)
from relay.core.jws import SELECTOR_RE, PublicKey
from relay.core.records import (
    KeyRecord,
    RecordError,
    RelayRecord,
    is_synq_record,
    key_record_name,
    parse_tags,
    relay_record_name,
)
from relay.discovery import dnsclient
from relay.discovery.cache import TTLCache
from relay.discovery.errors import MisconfiguredDomain, NoSuchDomain
from relay.discovery.ssrf import DEFAULT_HTTP_TIMEOUT, AddressPolicy, GuardedFetcher, SessionFactory
from relay.discovery.wellknown import (
    MAX_WELL_KNOWN_BYTES,
    WELL_KNOWN_CONTENT_TYPE,
    WELL_KNOWN_PATH,
    WellKnown,
    parse_well_known,
)

__all__ = [
    "DEFAULT_DNS_TIMEOUT",
    "DEFAULT_HTTP_TIMEOUT",
    "FAILURE_TTL",
    "MAX_CACHE_ENTRIES",
    "MAX_NEGATIVE_TTL",
    "MAX_TTL",
    "MAX_WELL_KNOWN_CACHE_ENTRIES",
    "MIN_NEGATIVE_TTL",
    "MIN_TTL",
    "WELL_KNOWN_DEFAULT_TTL",
    "Discovery",
]

DEFAULT_DNS_TIMEOUT: Final = dnsclient.DEFAULT_DNS_TIMEOUT

#: Shortest time a positive answer is kept, whatever TTL was published. Verification is on the
#: hot path of every inbound envelope: a partner publishing TTL 0 would otherwise make each of
#: its envelopes cost us a DNS query. One minute bounds that to one query per name per minute.
MIN_TTL: Final = 60.0

#: Longest time a positive answer is kept. A key its owner withdraws (after a compromise, say)
#: stops being trusted within this time, however long the TTL it was published with. General
#: resolvers cap at a day (Unbound's cache-max-ttl) or a week (BIND's max-cache-ttl); those
#: numbers are tuned for addresses, not for keys.
MAX_TTL: Final = 6 * 3600.0

#: Bounds of the negative TTL. The floor stops a partner sending envelopes from nonexistent
#: domains from turning each into a fresh query; the ceiling is far below RFC 2308 §5's "one to
#: three hours", so a domain that has just published its records receives mail within minutes.
MIN_NEGATIVE_TTL: Final = 5.0
MAX_NEGATIVE_TTL: Final = 300.0

#: How long a transient failure (timeout, SERVFAIL, unreachable well-known server) is
#: remembered. Long enough that a burst of envelopes waits on one timeout, short enough that
#: the next retry of a queue sees a recovered server.
FAILURE_TTL: Final = 30.0

#: Cache lifetime of a well-known document served without ``Cache-Control: max-age``.
#: Synapse caches ``.well-known/matrix/server`` for a day by default; ours carries keys, so an
#: hour, the value our own relays advertise.
WELL_KNOWN_DEFAULT_TTL: Final = 3600.0

#: Entries in the DNS answer cache. Each is one parsed TXT answer of at most a few hundred
#: bytes, so the bound is a few MiB; it exists because partners choose the names we look up.
MAX_CACHE_ENTRIES: Final = 10_000

#: Entries in the well-known cache: each may hold up to MAX_WELL_KNOWN_BYTES of document, so
#: fewer of them (at most ~64 MiB).
MAX_WELL_KNOWN_CACHE_ENTRIES: Final = 1_000

#: The tag that starts a Synq record (RFC 7208 §4.5 style: exactly this version, first).


@dataclass(frozen=True, slots=True)
class _Failure:
    """A cached failure, re-raised as a fresh exception on every hit."""

    error: type[SynqError]
    message: str

    def throw(self) -> NoReturn:
        raise self.error(self.message)

    @classmethod
    def of(cls, exc: SynqError) -> _Failure:
        return cls(type(exc), exc.message)


@dataclass(frozen=True, slots=True)
class _Txt:
    """The TXT records at one name, each joined from its character-strings."""

    name: str
    texts: tuple[bytes, ...]
    nxdomain: bool

    def synq_records(self) -> list[bytes]:
        # One rule for "is this a Synq record" everywhere: relay.core.records.
        return [t for t in self.texts if is_synq_record(t.decode("latin-1"))]


_T = TypeVar("_T")
_TxtOutcome: TypeAlias = _Txt | _Failure
_DocOutcome: TypeAlias = WellKnown | _Failure


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


class Discovery:
    """Resolves relay URLs, public keys and well-known documents of other domains, with caching.

    ``nameservers``: ``host:port`` strings, or None for the system resolver (production).
    ``allow_private_addresses``: let well-known fetches reach loopback and private networks and
    use ``http`` — for loopback tests and ``synq demo`` only (see :mod:`relay.discovery.ssrf`).
    ``allowed_networks``: networks reachable even when private addresses are not.
    ``well_known_urls``: domain → URL of its well-known document, replacing
    ``https://<domain>/.well-known/synq.json``; for demos and tests whose partners listen on a
    loopback port rather than 443. Overridden URLs pass the same SSRF checks.
    ``session_factory``: builds the HTTP session on the guarded connector it is given.

    Every method raises InvalidAddress (a peer error) for a ``domain`` that is not a DNS name,
    before asking anything. Call :meth:`close` (or use ``async with``) to release the session.
    """

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        clock: Clock | None = None,
        *,
        allow_private_addresses: bool = False,
        allowed_networks: Sequence[str] = (),
        dns_timeout: float = DEFAULT_DNS_TIMEOUT,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT,
        session_factory: SessionFactory | None = None,
        ssl_context: ssl.SSLContext | None = None,
        well_known_urls: Mapping[str, str] | None = None,
        max_cache_entries: int = MAX_CACHE_ENTRIES,
        max_well_known_entries: int = MAX_WELL_KNOWN_CACHE_ENTRIES,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._dns_timeout = dns_timeout
        self._dns = dnsclient.make_resolver(nameservers, timeout=dns_timeout)
        self.policy = AddressPolicy.build(
            allow_private=allow_private_addresses, allowed_networks=allowed_networks
        )
        self._fetcher = GuardedFetcher(
            self.policy,
            self._dns,
            max_bytes=MAX_WELL_KNOWN_BYTES,
            timeout=http_timeout,
            dns_timeout=dns_timeout,
            ssl_context=ssl_context,
            session_factory=session_factory,
        )
        try:
            self._well_known_urls = {
                normalize_domain(domain): url for domain, url in (well_known_urls or {}).items()
            }
        except InvalidAddress as exc:
            raise ConfigError(f"well_known_urls: {exc.message}") from None
        self._txt_cache: TTLCache[str, _TxtOutcome] = TTLCache(max_cache_entries)
        self._doc_cache: TTLCache[str, _DocOutcome] = TTLCache(max_well_known_entries)
        self._inflight: dict[tuple[str, str], asyncio.Task[Any]] = {}

    # ---------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Cancel look-ups in flight and release the HTTP session."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._fetcher.close()

    async def __aenter__(self) -> Discovery:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def clear_cache(self) -> None:
        """Forget every cached answer (``synq dns --check`` wants fresh ones)."""
        self._txt_cache.clear()
        self._doc_cache.clear()

    # ---------------------------------------------------------------- the three questions

    async def relay_url(self, domain: str) -> str:
        """The base URL of ``domain``'s relay, from ``_synq.<domain>`` or the well-known document.

        Raises NoSuchDomain or MisconfiguredDomain (permanent), AddressRefused (permanent, the
        well-known host is not reachable under our policy), DiscoveryError (transient).
        """
        domain = normalize_domain(domain)
        txt = await self._txt(relay_record_name(domain))
        records = txt.synq_records()
        if len(records) > 1:
            raise MisconfiguredDomain(f"{txt.name}: {len(records)} synq1 records (ambiguous)")
        if records:
            try:
                return RelayRecord.parse(_ascii(records[0])).relay_url
            except RecordError as exc:
                raise MisconfiguredDomain(f"{txt.name}: {exc}") from None
        try:
            doc = await self.well_known(domain)
        except NoSuchDomain:
            raise NoSuchDomain(
                f"{domain} publishes no {txt.name} record and no well-known document"
            ) from None
        return doc.relay

    async def public_key(self, domain: str, selector: str) -> PublicKey:
        """The key ``selector`` of ``domain``, from DNS or the well-known JWKS.

        Raises UnknownKey for every permanent failure — no record, a malformed, ambiguous or
        revoked one, no such ``kid`` in the JWKS — as a DKIM verifier returns PERMFAIL
        (RFC 6376 §6.1.2); DiscoveryError when the answer may come later (TEMPFAIL).
        """
        domain = normalize_domain(domain)
        if not SELECTOR_RE.fullmatch(selector):
            raise UnknownKey("the key selector is not one lower-case DNS label")
        txt = await self._txt(key_record_name(selector, domain))
        records = txt.synq_records()
        if len(records) > 1:
            raise UnknownKey(f"{txt.name}: {len(records)} synq1 key records (ambiguous)")
        if records:
            return _parse_key(txt.name, selector, records[0])
        try:
            doc = await self.well_known(domain)
        except DiscoveryError as exc:
            if exc.status.is_permanent:
                raise UnknownKey(
                    f"{domain} publishes no {txt.name} record and no usable well-known"
                    f" document ({exc.message})"
                ) from None
            raise
        key = doc.key(selector)
        if key is None:
            raise UnknownKey(f"{domain} publishes no key {selector!r} in DNS or its well-known")
        return key

    async def well_known(self, domain: str) -> WellKnown:
        """``domain``'s validated well-known document.

        Raises NoSuchDomain (the host does not exist, or answers 404/410), MisconfiguredDomain
        (bad document, content type, size, redirects), AddressRefused, DiscoveryError
        (transient: unreachable, 5xx, 408, 429, timeout).
        """
        domain = normalize_domain(domain)
        outcome = await self._cached(
            self._doc_cache, ("doc", domain), lambda: self._fetch_well_known(domain)
        )
        if isinstance(outcome, _Failure):
            outcome.throw()
        return outcome

    async def relay_document(self, domain: str) -> WellKnown:
        """The well-known document ``domain``'s relay serves for it at
        ``<relay URL>/.well-known/synq.json`` (every relay serves its own, SPEC.md §7.3), where
        a sender reads the relay's capabilities. Cached and failing as :meth:`well_known`."""
        domain = normalize_domain(domain)
        url = f"{await self.relay_url(domain)}{WELL_KNOWN_PATH}"
        outcome = await self._cached(
            self._doc_cache, ("doc", url), lambda: self._fetch_well_known(domain, url)
        )
        if isinstance(outcome, _Failure):
            outcome.throw()
        return outcome

    # ---------------------------------------------------------------- DNS

    async def _txt(self, name: str) -> _Txt:
        outcome = await self._cached(self._txt_cache, ("txt", name), lambda: self._query_txt(name))
        if isinstance(outcome, _Failure):
            outcome.throw()
        return outcome

    async def _query_txt(self, name: str) -> tuple[_TxtOutcome, float]:
        try:
            answer = await dnsclient.query(self._dns, name, "TXT", lifetime=self._dns_timeout)
        except DiscoveryError as exc:
            return _Failure.of(exc), FAILURE_TTL
        if answer.rrset is None:
            ttl = _clamp(answer.ttl, MIN_NEGATIVE_TTL, MAX_NEGATIVE_TTL)
            return _Txt(name, (), answer.nxdomain), ttl
        texts = tuple(b"".join(rdata.strings) for rdata in answer.rrset)
        return _Txt(name, texts, False), _clamp(answer.ttl, MIN_TTL, MAX_TTL)

    # ---------------------------------------------------------------- well-known

    def _well_known_url(self, domain: str) -> str:
        return self._well_known_urls.get(domain, f"https://{domain}{WELL_KNOWN_PATH}")

    async def _fetch_well_known(
        self, domain: str, url: str | None = None
    ) -> tuple[_DocOutcome, float]:
        try:
            result = await self._fetcher.get(
                url or self._well_known_url(domain), accept=(WELL_KNOWN_CONTENT_TYPE,)
            )
        except DiscoveryError as exc:
            ttl = MAX_NEGATIVE_TTL if exc.status.is_permanent else FAILURE_TTL
            return _Failure.of(exc), ttl
        if result.status in (404, 410):
            failure = _Failure(NoSuchDomain, f"{domain} publishes no well-known document")
            return failure, MAX_NEGATIVE_TTL
        if result.status in (408, 425, 429) or result.status >= 500:
            failure = _Failure(DiscoveryError, f"{domain}: well-known answered {result.status}")
            return failure, FAILURE_TTL
        if result.status != 200:
            failure = _Failure(
                MisconfiguredDomain, f"{domain}: well-known answered {result.status}"
            )
            return failure, MAX_NEGATIVE_TTL
        try:
            doc = parse_well_known(result.body, domain=domain)
        except MisconfiguredDomain as exc:
            return _Failure.of(exc), MAX_NEGATIVE_TTL
        max_age = WELL_KNOWN_DEFAULT_TTL if result.max_age is None else result.max_age
        return doc, _clamp(max_age, MIN_TTL, MAX_TTL)

    async def agent_card(self, domain: str, local: str) -> dict[str, Any]:
        """The agent card a partner relay publishes for ``local@domain`` (SPEC.md §7.8):
        ``<relay>/agents/<local>/.well-known/agent-card.json``, fetched under the same SSRF
        guard and size cap as well-known documents. Not cached: cards change with the agent.

        Raises NotFound (no such agent there), or a DiscoveryError subclass.
        """
        relay = await self.relay_url(domain)
        url = f"{relay}/agents/{local}/.well-known/agent-card.json"
        result = await self._fetcher.get(url, accept=("application/json",))
        if result.status == 404:
            raise NotFound(f"{local}@{domain} has no agent card")
        if result.status != 200:
            raise DiscoveryError(f"{domain}: agent card answered {result.status}")
        try:
            card = jsonutil.loads(result.body, max_bytes=MAX_WELL_KNOWN_BYTES, what="agent card")
        except SynqError as exc:
            raise MisconfiguredDomain(f"{domain}: {exc.message}") from None
        if not isinstance(card, dict):
            raise MisconfiguredDomain(f"{domain}: an agent card is a JSON object")
        return card

    # ---------------------------------------------------------------- cache plumbing

    async def _cached(
        self,
        cache: TTLCache[str, _T],
        key: tuple[str, str],
        produce: Callable[[], Awaitable[tuple[_T, float]]],
    ) -> _T:
        """The cached outcome for ``key``, or one produced now; one producer per key at a time."""
        hit = cache.get(key[1], self._clock.monotonic())
        if hit is not None:
            return hit
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._fill(cache, key[1], produce))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        # Shielded: one caller giving up (its own timeout, a closed connection) must not cancel
        # the look-up the other callers are waiting for.
        result: _T = await asyncio.shield(task)
        return result

    async def _fill(
        self,
        cache: TTLCache[str, _T],
        name: str,
        produce: Callable[[], Awaitable[tuple[_T, float]]],
    ) -> _T:
        outcome, ttl = await produce()
        cache.put(name, outcome, self._clock.monotonic() + ttl)
        return outcome

    def _settle(self, key: tuple[str, str], task: asyncio.Task[Any]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            # Mark any exception as retrieved: when every waiter has gone, nobody else will.
            task.exception()


def _ascii(text: bytes) -> str:
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        raise RecordError("the record is not ASCII") from None


def _parse_key(name: str, selector: str, text: bytes) -> PublicKey:
    try:
        record = _ascii(text)
        tags = parse_tags(record)
        if tags.get("p") == "":
            # RFC 6376 §3.6.1: an empty p= means the key has been revoked.
            raise UnknownKey(f"{name}: the key has been revoked")
        return KeyRecord.parse(selector, record).key
    except RecordError as exc:
        raise UnknownKey(f"{name}: {exc}") from None
