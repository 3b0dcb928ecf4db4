"""The one place discovery talks to dnspython: build the stub resolver, ask one question.

Every dnspython exception is translated here, so none leaves this module: NXDOMAIN and an
empty answer become a negative :class:`DnsAnswer`, which the caller may cache (RFC 2308); a
timeout, SERVFAIL or REFUSED from every server, or a malformed reply becomes a transient
``DiscoveryError``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

from relay.core.errors import ConfigError, DiscoveryError

__all__ = ["DEFAULT_DNS_TIMEOUT", "DnsAnswer", "make_resolver", "parse_nameserver", "query"]

#: Total time for one look-up, retries and every configured server included. dnspython's own
#: default lifetime, and the glibc stub's (timeout:5); a slower answer is treated as a failure
#: and retried later by the caller's queue, not waited for.
DEFAULT_DNS_TIMEOUT: Final = 5.0

#: Time given to one server for one try before the next try (dnspython's default). Shorter than
#: the look-up's lifetime so that one lost UDP datagram costs a retry, not the whole look-up.
PER_TRY_TIMEOUT: Final = 2.0

_DNS_PORT: Final = 53


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The answer to one question: the records, or a negative answer and how long it holds."""

    rrset: dns.rrset.RRset | None
    #: Seconds the answer may be cached, as the DNS says: the smallest TTL along the CNAME
    #: chain, or for a negative answer min(SOA TTL, SOA MINIMUM) (RFC 2308 §5). Unclamped.
    ttl: float
    nxdomain: bool = False


def parse_nameserver(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address; raise ConfigError."""
    host, port = text.strip(), _DNS_PORT
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"invalid nameserver {text!r}: expected host:port")
        host = inner
        if rest:
            port = _port(text, rest[1:])
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
        port = _port(text, port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"invalid nameserver {text!r}: the host must be an IP address") from None
    return host, port


def _port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"invalid nameserver {text!r}: bad port")
    return int(port_text)


def make_resolver(
    nameservers: Sequence[str] | None, *, timeout: float = DEFAULT_DNS_TIMEOUT
) -> dns.asyncresolver.Resolver:
    """A stub resolver for the given ``host:port`` servers, or the system's (resolv.conf).

    dnspython's own answer cache stays off: discovery caches parsed results with its own
    bounds and its own clock.
    """
    if nameservers is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.exception.DNSException as exc:
            raise ConfigError("cannot read the system resolver configuration") from exc
    else:
        if not nameservers:
            raise ConfigError("nameservers is empty: list at least one, or omit it")
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(*parse_nameserver(entry)) for entry in nameservers
        ]
    resolver.lifetime = timeout
    resolver.timeout = min(PER_TRY_TIMEOUT, timeout)
    resolver.cache = None
    return resolver


async def query(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: str, *, lifetime: float
) -> DnsAnswer:
    """Ask one question of an absolute ``name``; never raises a dnspython exception."""
    try:
        qname = dns.name.from_text(name, origin=dns.name.root)
    except dns.exception.DNSException:
        raise DiscoveryError(f"{name[:80]!r} is not a DNS name") from None
    kind = dns.rdatatype.from_text(rdtype)
    try:
        answer = await resolver.resolve(
            qname, kind, search=False, raise_on_no_answer=False, lifetime=lifetime
        )
    except dns.resolver.NXDOMAIN as exc:
        response = exc.kwargs.get("responses", {}).get(qname)
        ttl = float(response.resolve_chaining().minimum_ttl) if response is not None else 0.0
        return DnsAnswer(None, ttl, nxdomain=True)
    except dns.exception.Timeout:
        raise DiscoveryError(f"DNS look-up of {name} timed out") from None
    except dns.resolver.NoNameservers:
        raise DiscoveryError(f"no DNS server answered for {name} (SERVFAIL or REFUSED)") from None
    except (dns.exception.DNSException, OSError):
        raise DiscoveryError(f"DNS look-up of {name} failed") from None
    return DnsAnswer(answer.rrset, float(answer.chaining_result.minimum_ttl))
