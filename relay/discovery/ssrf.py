"""Fetching URLs named by other domains without being turned against our own network (SSRF).

A partner chooses its domain, its DNS records and its redirects; fetching
``https://<domain>/.well-known/synq.json`` for it must not let it make this relay send requests
to the relay's loopback, its private network or a cloud metadata address (169.254.169.254).
The rules, in the order a fetch meets them:

1. **Scheme.** Only ``https``. ``http`` is accepted only when ``allow_private_addresses`` is set
   — the switch for loopback tests and ``synq demo``, where partners listen on
   ``http://127.0.0.1:<port>`` — because without TLS nothing binds the answer to the domain.
   URLs with user information are refused (they exist to confuse URL parsers).
2. **Address.** Every address the host resolves to is checked; loopback, private (RFC 1918,
   RFC 4193), shared (RFC 6598), link-local, multicast, reserved and unspecified addresses are
   dropped, for IPv4 and IPv6 alike, including IPv4 addresses carried inside IPv6
   (IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``). If nothing is
   left, the fetch is refused. IP literals in URLs get the same check. An operator can allow
   chosen networks (``allowed_networks``), as Synapse's ``ip_range_whitelist`` does, and
   ``allow_private_addresses`` lifts the address check altogether.
3. **Connect to what was checked.** The check lives in the connection's resolver
   (:class:`GuardedResolver`, an aiohttp ``AbstractResolver``), which hands aiohttp the checked
   addresses themselves; nothing resolves the name a second time, so a DNS answer that changes
   between check and connect (DNS rebinding) cannot slip an address past the check. Names are
   resolved with dnspython against the configured name servers, never with ``getaddrinfo``,
   so ``/etc/hosts`` tricks and legacy numeric forms (``2130706433``, ``127.1``) do not apply.
   The one name answered without DNS is ``localhost`` (and names under it), which RFC 6761
   §6.3 reserves for the loopback host: it is ``127.0.0.1`` and ``::1`` and nothing else, and
   only when ``allow_private_addresses`` is set (a webhook receiver of a loopback test run at
   ``http://localhost:PORT``); otherwise it is refused like any loopback address.
4. **Redirects** are followed by hand, at most :data:`MAX_REDIRECTS`, each target passing rules
   1-3 again.
5. **Response.** At most :data:`~relay.discovery.wellknown.MAX_WELL_KNOWN_BYTES` are read (a
   larger ``Content-Length`` is refused before reading); compressed bodies are refused rather
   than inflated (a few KiB of gzip can inflate to gigabytes); the whole fetch, redirects
   included, has one deadline. No cookies are kept and no proxy settings are read from the
   environment.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp
import dns.asyncresolver
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from relay import __version__
from relay.core.address import normalize_domain
from relay.core.errors import ConfigError, DiscoveryError, InvalidAddress
from relay.discovery.dnsclient import DEFAULT_DNS_TIMEOUT, query
from relay.discovery.errors import AddressRefused, MisconfiguredDomain, NoSuchDomain

__all__ = [
    "DEFAULT_HTTP_TIMEOUT",
    "LOOPBACK_ADDRESSES",
    "MAX_REDIRECTS",
    "AddressPolicy",
    "FetchResult",
    "GuardedFetcher",
    "GuardedResolver",
    "SessionFactory",
    "embedded_ipv4",
    "is_localhost",
    "is_public_address",
    "make_guarded_connector",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SessionFactory = Callable[[aiohttp.TCPConnector], aiohttp.ClientSession]

#: Redirects followed for one fetch. RFC 9110 §15.4 leaves the limit to the client (browsers
#: use about 20); a well-known document has no reason to move more than once or twice, and each
#: hop is another connection a partner makes us open.
MAX_REDIRECTS: Final = 3

#: Deadline for one whole fetch, connection, TLS, redirects and body included. Bounds how long a
#: slow or silent partner can hold a look-up (and whoever waits on it).
DEFAULT_HTTP_TIMEOUT: Final = 10.0

#: Read size while streaming a body.
_CHUNK: Final = 16 * 1024

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
#: Special-purpose ranges some Python versions still call global (RFC 6890 §2.2.2: IETF protocol
#: assignments are not globally reachable, apart from a few anycast /32s we never need).
_NOT_GLOBAL: Final = (ipaddress.IPv4Network("192.0.0.0/24"),)
_MAX_AGE_RE: Final = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.I)
_NO_CACHE_RE: Final = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|=|$)", re.I)
_NUMERIC: Final = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


#: What ``localhost`` names (RFC 6761 §6.3), IPv4 first: a receiver that listens on one family
#: only (commonly ``127.0.0.1``) is reached at the first try.
LOOPBACK_ADDRESSES: Final[tuple[IPAddress, ...]] = (
    ipaddress.IPv4Address("127.0.0.1"),
    ipaddress.IPv6Address("::1"),
)


def is_localhost(host: str) -> bool:
    """``localhost`` or a name under it (RFC 6761 §6.3), in any case, with or without the
    final dot."""
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and routes to, if any.

    IPv4-mapped (RFC 4291 §2.5.5.2) reaches the IPv4 host directly on a dual-stack socket;
    6to4 (RFC 3056) and the NAT64 well-known prefix (RFC 6052) reach it through a gateway.
    """
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is a globally routable unicast address (and carries no private IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            if not is_public_address(inner):
                return False
            # A mapped or NAT64 address is only a spelling of the IPv4 host, whose prefix
            # Python files under "reserved": judge it by the host alone.
            if ip.ipv4_mapped is not None or ip in _NAT64:
                return True
        if ip.is_site_local:
            return False
    # ``is_global`` alone misses multicast (224/4 and ff00::/8 count as global), hence the
    # explicit list; the rest is belt and braces across Python versions, whose registry
    # tables have changed.
    return ip.is_global and not (
        any(ip in net for net in _NOT_GLOBAL)
        or ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
    )


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses and schemes a fetch may use."""

    #: Lift the address check and allow ``http``: loopback tests and ``synq demo`` only.
    allow_private: bool = False
    #: Networks allowed even though they are not public (an operator's known partners).
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def build(cls, *, allow_private: bool, allowed_networks: Iterable[str] = ()) -> AddressPolicy:
        """From configuration strings; raise ConfigError for a network that does not parse."""
        networks: list[IPNetwork] = []
        for text in allowed_networks:
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ConfigError(f"invalid network {text!r} in allowed_networks") from None
        return cls(allow_private=allow_private, allowed_networks=tuple(networks))

    def permits(self, ip: IPAddress) -> bool:
        if self.allow_private:
            return True
        # An IPv4-mapped address is that IPv4 host: judge (and allow) it as such.
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        candidate = plain or ip
        if any(candidate in net for net in self.allowed_networks):
            return True
        return is_public_address(ip)

    def check_url(self, url: URL) -> URL:
        """Apply the scheme and IP-literal rules to one URL (redirect targets included)."""
        if url.scheme == "http" and not self.allow_private:
            raise MisconfiguredDomain(f"{_show(url)}: only https URLs are fetched")
        if url.scheme not in ("https", "http") or not url.raw_host:
            raise MisconfiguredDomain(f"{_show(url)}: not an https URL")
        if url.raw_user is not None or url.raw_password is not None:
            raise MisconfiguredDomain(f"{_show(url)}: URLs with user information are refused")
        host = url.raw_host
        literal = _ip_literal(host)
        if literal is not None:
            if not self.permits(literal):
                raise AddressRefused(f"{_show(url)}: address {literal} is not public")
            return url
        if is_localhost(host):
            if not self.allow_private:
                raise MisconfiguredDomain(
                    f"{_show(url)}: localhost is this machine, allowed only with "
                    "allow_private_addresses"
                )
            return url
        try:
            normalize_domain(host)
        except InvalidAddress:
            raise MisconfiguredDomain(f"{_show(url)}: the host is not a DNS name") from None
        return url


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _show(url: URL) -> str:
    """A URL for a message: scheme, host and port only (paths and queries may be long or odd)."""
    return str(url.origin())[:200] if url.raw_host else repr(str(url)[:80])


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that resolves with dnspython and returns only permitted addresses.

    aiohttp connects to exactly the addresses returned here (it does not resolve IP literals,
    and :func:`make_guarded_connector` turns its DNS cache off), so the check and the connection
    see the same answer. Refusals leave as ``DiscoveryError`` subclasses, which aiohttp passes
    through untouched (it wraps only ``OSError``).

    When a host has both permitted and refused addresses, the refused ones are dropped and the
    rest used, as Synapse's ``_IPBlacklistingResolver`` does: a partner listing an internal
    address by mistake still gets its mail, and the internal address is never contacted.
    """

    def __init__(
        self,
        policy: AddressPolicy,
        dns_resolver: dns.asyncresolver.Resolver,
        *,
        lifetime: float = DEFAULT_DNS_TIMEOUT,
    ) -> None:
        self._policy = policy
        self._dns = dns_resolver
        self._lifetime = lifetime

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        literal = _ip_literal(host)
        if literal is not None:
            addresses = [literal]
        elif is_localhost(host):
            addresses = self._localhost(host, family)
        else:
            addresses = await self._lookup(host, family)
        permitted = [ip for ip in addresses if self._policy.permits(ip)]
        if not permitted:
            raise AddressRefused(f"{host[:100]} resolves only to addresses that are not public")
        return [
            ResolveResult(
                hostname=host,
                host=str(ip),
                port=port,
                family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                proto=0,
                flags=_NUMERIC,
            )
            for ip in permitted
        ]

    def _localhost(self, host: str, family: int) -> list[IPAddress]:
        """The loopback addresses of ``family`` (RFC 6761 §6.3: never asked of DNS), only when
        private addresses are allowed."""
        if not self._policy.allow_private:
            raise AddressRefused(f"{host[:100]} is this machine; private addresses are not allowed")
        wanted = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}.get(family)
        return [ip for ip in LOOPBACK_ADDRESSES if wanted is None or ip.version == wanted]

    async def _lookup(self, host: str, family: int) -> list[IPAddress]:
        by_family: dict[int, tuple[str, ...]] = {socket.AF_INET: ("A",), socket.AF_INET6: ("AAAA",)}
        kinds = by_family.get(family, ("A", "AAAA"))
        outcomes = await asyncio.gather(
            *(query(self._dns, host, kind, lifetime=self._lifetime) for kind in kinds),
            return_exceptions=True,
        )
        addresses: list[IPAddress] = []
        transient: BaseException | None = None
        for outcome in outcomes:
            if isinstance(outcome, DiscoveryError):
                transient = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
            elif outcome.rrset is not None:
                addresses.extend(ipaddress.ip_address(rdata.address) for rdata in outcome.rrset)
        if addresses:
            return addresses
        if transient is not None:
            raise transient
        raise NoSuchDomain(f"{host[:100]} has no address")

    async def close(self) -> None:
        """Nothing to release: the dnspython resolver holds no sockets between queries."""


def make_guarded_connector(
    policy: AddressPolicy,
    dns_resolver: dns.asyncresolver.Resolver,
    *,
    ssl_context: ssl.SSLContext | None = None,
    dns_timeout: float = DEFAULT_DNS_TIMEOUT,
) -> aiohttp.TCPConnector:
    """A connector that connects only where the policy permits (rules 2 and 3 above).

    It does not apply the scheme rule or check redirects: a client using it directly passes
    every URL through :meth:`AddressPolicy.check_url` and does not let aiohttp follow redirects.
    """
    return aiohttp.TCPConnector(
        resolver=GuardedResolver(policy, dns_resolver, lifetime=dns_timeout),
        use_dns_cache=False,
        ssl=ssl_context if ssl_context is not None else True,
    )


def _default_session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        headers={"User-Agent": f"Synq/{__version__}"},
    )


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The final (non-redirect) answer to a fetch."""

    url: str
    status: int
    #: The media type, lower case, without parameters.
    content_type: str
    #: The body of a 200 answer, at most ``max_bytes``; empty for other statuses.
    body: bytes
    #: Seconds from ``Cache-Control: max-age``; 0 for ``no-store``/``no-cache``; None if absent.
    max_age: float | None


class GuardedFetcher:
    """GET small documents from URLs chosen by other domains, under an :class:`AddressPolicy`.

    Owns its aiohttp session, created on first use (inside the running loop) and released by
    :meth:`close`. A ``session_factory`` may customise the session (headers, tracing); it must
    build it on the connector it is given, which is what carries the address check.
    """

    def __init__(
        self,
        policy: AddressPolicy,
        dns_resolver: dns.asyncresolver.Resolver,
        *,
        max_bytes: int,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
        dns_timeout: float = DEFAULT_DNS_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.policy = policy
        self._dns = dns_resolver
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._dns_timeout = dns_timeout
        self._ssl = ssl_context
        self._factory = session_factory or _default_session
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = make_guarded_connector(
                self.policy, self._dns, ssl_context=self._ssl, dns_timeout=self._dns_timeout
            )
            self._session = self._factory(connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, url: str, *, accept: Sequence[str] = ("application/json",)) -> FetchResult:
        """Fetch ``url``; raise a ``DiscoveryError`` (or subclass), never an aiohttp error.

        Refusals by policy raise AddressRefused or MisconfiguredDomain; an unresolvable host
        NoSuchDomain; connection failures, TLS failures and the deadline a plain (transient)
        DiscoveryError. ``accept`` lists the media types a 200 answer may have.
        """
        try:
            target = self.policy.check_url(URL(url))
        except ValueError:
            raise MisconfiguredDomain(f"{url[:80]!r} is not a URL") from None
        session = self._get_session()
        try:
            async with asyncio.timeout(self._timeout):
                for _hop in range(MAX_REDIRECTS + 1):
                    result = await self._request(session, target, accept)
                    if isinstance(result, FetchResult):
                        return result
                    target = result
                raise MisconfiguredDomain(f"{_show(target)}: more than {MAX_REDIRECTS} redirects")
        except TimeoutError:
            raise DiscoveryError(f"{_show(target)}: no answer within {self._timeout:g} s") from None
        except aiohttp.ClientSSLError:
            raise DiscoveryError(f"{_show(target)}: TLS handshake or certificate failed") from None
        except aiohttp.ClientError:
            raise DiscoveryError(f"{_show(target)}: connection failed") from None

    async def _request(
        self, session: aiohttp.ClientSession, url: URL, accept: Sequence[str]
    ) -> FetchResult | URL:
        headers = {"Accept": ", ".join(accept), "Accept-Encoding": "identity"}
        async with session.get(
            url, allow_redirects=False, headers=headers, auto_decompress=False
        ) as resp:
            if resp.status in _REDIRECTS:
                location = resp.headers.get("Location")
                if not location:
                    raise MisconfiguredDomain(f"{_show(url)}: redirect without a Location")
                try:
                    target = url.join(URL(location))
                except ValueError:
                    raise MisconfiguredDomain(f"{_show(url)}: redirect to a bad URL") from None
                return self.policy.check_url(target)
            content_type = resp.content_type.lower()
            max_age = _max_age(resp.headers.getall("Cache-Control", []))
            if resp.status != 200:
                return FetchResult(str(url), resp.status, content_type, b"", max_age)
            if content_type not in accept:
                raise MisconfiguredDomain(
                    f"{_show(url)}: answered {content_type[:60]!r}, expected {', '.join(accept)}"
                )
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding != "identity":
                raise MisconfiguredDomain(f"{_show(url)}: compressed answers are refused")
            body = await _read_capped(resp, self._max_bytes, url)
            return FetchResult(str(url), 200, content_type, body, max_age)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, url: URL) -> bytes:
    too_big = MisconfiguredDomain(f"{_show(url)}: document larger than {limit} bytes")
    if resp.content_length is not None and resp.content_length > limit:
        raise too_big
    body = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def _max_age(values: Sequence[str]) -> float | None:
    """``Cache-Control`` max-age in seconds (RFC 9111 §5.2.2.1); 0 for no-store or no-cache."""
    joined = ", ".join(values)
    if _NO_CACHE_RE.search(joined):
        return 0.0
    match = _MAX_AGE_RE.search(joined)
    return float(match.group(1)) if match else None
