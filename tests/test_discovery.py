"""Discovery against a real DNS server and real HTTP(S) servers on loopback, port 0.

Pure parts first (cache, address rules, document model), then DNS look-ups through
:class:`relay.dnsserver.DNSServer`, then well-known fetches from aiohttp servers whose host
names resolve through that same DNS server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from yarl import URL

from relay.core import status as st
from relay.core.clock import FakeClock
from relay.core.errors import ConfigError, DiscoveryError, InvalidAddress, UnknownKey
from relay.core.jws import PublicKey, SigningKey
from relay.core.records import KeyRecord, RelayRecord
from relay.discovery import (
    AddressPolicy,
    AddressRefused,
    Discovery,
    MisconfiguredDomain,
    NoSuchDomain,
    WellKnown,
    build_well_known,
    parse_well_known,
)
from relay.discovery import resolver as resolver_mod
from relay.discovery.cache import TTLCache
from relay.discovery.dnsclient import make_resolver, parse_nameserver
from relay.discovery.ssrf import GuardedResolver, embedded_ipv4, is_public_address
from relay.discovery.wellknown import MAX_WELL_KNOWN_BYTES
from relay.dnsserver import DNSServer, Fault

DOMAIN = "acme.test"
RELAY = "https://relay.acme.test:8443"
WK_HOST = "wk.acme.test"
#: The DNS time limit of a test that waits for a dropped query to time out: short, as it is waited
#: out in full.
FAST = 0.2
#: The DNS time limit of every other test: the loopback server answers in a millisecond, but it
#: shares the event loop (and, in a full run, the machine) with everything else.
ANSWERED = 5.0

AiohttpServer = Callable[..., Awaitable[TestServer]]


# ================================================================ pure: cache


def test_cache_hit_expiry_and_lru_eviction() -> None:
    cache: TTLCache[str, int] = TTLCache(2)
    cache.put("a", 1, expires_at=10.0)
    cache.put("b", 2, expires_at=10.0)
    assert cache.get("a", now=5.0) == 1  # "a" is now the most recently used
    cache.put("c", 3, expires_at=10.0)  # evicts "b", the least recently used
    assert "b" not in cache
    assert cache.get("a", 5.0) == 1
    assert cache.get("c", 5.0) == 3
    assert cache.get("c", 10.0) is None  # expired exactly at expires_at
    assert len(cache) == 1
    cache.discard("a")
    assert len(cache) == 0
    with pytest.raises(ValueError, match="at least one"):
        TTLCache[str, int](0)


# ================================================================ pure: addresses and URLs


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),  # loopback
        ("10.1.2.3", False),  # RFC 1918
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # RFC 6598 shared (carrier-grade NAT)
        ("169.254.169.254", False),  # link-local: cloud metadata
        ("224.0.0.1", False),  # multicast
        ("240.0.0.1", False),  # reserved
        ("255.255.255.255", False),
        ("0.0.0.0", False),  # unspecified
        ("192.0.0.8", False),  # IETF protocol assignments
        ("198.18.0.1", False),  # benchmarking
        ("::1", False),
        ("::", False),
        ("fe80::1", False),  # link-local
        ("fd00::1", False),  # RFC 4193 unique local
        ("fec0::1", False),  # deprecated site-local
        ("ff02::1", False),  # multicast
        ("2001:db8::1", False),  # documentation
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", False),  # IPv4-mapped private
        ("::ffff:8.8.8.8", True),
        ("2002:a00:1::1", False),  # 6to4 carrying 10.0.0.1
        ("2002:808:808::1", True),  # 6to4 carrying 8.8.8.8
        ("64:ff9b::a00:1", False),  # NAT64 carrying 10.0.0.1
        ("64:ff9b::808:808", True),  # NAT64 carrying 8.8.8.8
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_embedded_ipv4() -> None:
    assert embedded_ipv4(ipaddress.IPv6Address("::ffff:1.2.3.4")) == ipaddress.IPv4Address(
        "1.2.3.4"
    )
    assert embedded_ipv4(ipaddress.IPv6Address("64:ff9b::102:304")) == ipaddress.IPv4Address(
        "1.2.3.4"
    )
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1")) is None


def test_policy_allowed_networks_and_allow_private() -> None:
    strict = AddressPolicy.build(allow_private=False)
    listed = AddressPolicy.build(allow_private=False, allowed_networks=["127.0.0.1/32"])
    everything = AddressPolicy.build(allow_private=True)
    loopback = ipaddress.ip_address("127.0.0.1")
    mapped = ipaddress.ip_address("::ffff:127.0.0.1")
    other = ipaddress.ip_address("127.0.0.2")
    assert not strict.permits(loopback)
    assert listed.permits(loopback)
    assert listed.permits(mapped)  # the same host, spelled as IPv6
    assert not listed.permits(other)
    assert everything.permits(other)
    with pytest.raises(ConfigError):
        AddressPolicy.build(allow_private=False, allowed_networks=["not-a-network"])


@pytest.mark.parametrize(
    ("url", "allow_private", "error"),
    [
        ("https://acme.test/.well-known/synq.json", False, None),
        ("https://8.8.8.8/x", False, None),
        ("http://acme.test/x", False, MisconfiguredDomain),  # https only
        ("http://127.0.0.1:8080/x", True, None),  # loopback tests and demo
        ("ftp://acme.test/x", True, MisconfiguredDomain),
        ("https://user:pw@acme.test/x", False, MisconfiguredDomain),
        ("https://127.0.0.1/x", False, AddressRefused),
        ("https://[::1]/x", False, AddressRefused),
        ("https://[::ffff:7f00:1]/x", False, AddressRefused),
        ("https://[::ffff:10.0.0.1]/x", False, AddressRefused),
        ("https://169.254.169.254/latest/meta-data", False, AddressRefused),
        ("https://localhost/x", False, MisconfiguredDomain),  # not a DNS name we resolve
        ("https://127.1/x", False, MisconfiguredDomain),  # legacy numeric forms
        ("https://2130706433/x", False, MisconfiguredDomain),
    ],
)
def test_check_url(url: str, allow_private: bool, error: type[Exception] | None) -> None:
    policy = AddressPolicy.build(allow_private=allow_private)
    if error is None:
        assert policy.check_url(URL(url)) == URL(url)
    else:
        with pytest.raises(error):
            policy.check_url(URL(url))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("[::1]", ("::1", 53)),
        ("::1", ("::1", 53)),
        ("ns.acme.test:53", None),
        ("127.0.0.1:0", None),
        ("127.0.0.1:x", None),
        ("[::1]x", None),
    ],
)
def test_parse_nameserver(text: str, expected: tuple[str, int] | None) -> None:
    if expected is None:
        with pytest.raises(ConfigError):
            parse_nameserver(text)
    else:
        assert parse_nameserver(text) == expected


def test_empty_nameserver_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        make_resolver([])


# ================================================================ pure: the well-known document

KEY = SigningKey.generate("s1").public_key
KEY2 = SigningKey.generate("s2").public_key


def test_well_known_round_trip_and_policy_hints() -> None:
    doc = build_well_known(DOMAIN, RELAY + "/", [KEY, KEY2])
    wire = json.loads(doc.to_json())
    assert wire["v"] == 1
    assert wire["domain"] == DOMAIN
    assert wire["relay"] == RELAY
    assert wire["keys"]["keys"][0] == KEY.jwk_dict()
    assert wire["policy"]["max_recipients"] > 0
    parsed = parse_well_known(doc.to_json(), domain=DOMAIN)
    assert parsed.key("s1") == KEY
    assert parsed.key("s2") == KEY2
    assert parsed.key("s3") is None
    assert parsed.public_keys == (KEY, KEY2)


def _doc(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(build_well_known(DOMAIN, RELAY, [KEY]).to_json())
    data.update(changes)
    return data


def _jwk(**changes: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = dict(KEY.jwk_dict())
    jwk.update(changes)
    return jwk


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"v": 1, "v": 1}', "duplicate key"),
        (b"[]", "invalid"),
        (json.dumps(_doc(v=2)).encode(), "at v"),
        (json.dumps(_doc(v="1")).encode(), "at v"),  # strict: no string-to-int conversion
        (json.dumps(_doc(v=True)).encode(), "at v"),
        (json.dumps(_doc(domain="globex.test")).encode(), "for 'globex.test'"),
        (json.dumps(_doc(relay="ftp://relay.acme.test")).encode(), "at relay"),
        (json.dumps(_doc(keys={"keys": [_jwk(kty="RSA")]})).encode(), "kty"),
        (json.dumps(_doc(keys={"keys": [_jwk(crv="X25519")]})).encode(), "crv"),
        (json.dumps(_doc(keys={"keys": [_jwk(x="AAAA")]})).encode(), "32-byte"),
        (json.dumps(_doc(keys={"keys": [_jwk(kid="Not A Label")]})).encode(), "selector"),
        (json.dumps(_doc(keys={"keys": [_jwk(d="c2VjcmV0")]})).encode(), "private key"),
        (json.dumps(_doc(keys={"keys": [_jwk(), _jwk()]})).encode(), "share one kid"),
        (json.dumps(_doc(keys={"keys": [_jwk(alg="ES256")]})).encode(), "alg"),
        (json.dumps(_doc(policy={"max_recipients": 0})).encode(), "max_recipients"),
        (json.dumps({k: v for k, v in _doc().items() if k != "keys"}).encode(), "at keys"),
        (b" " * (MAX_WELL_KNOWN_BYTES + 1), "limit"),
        (b"[" * 100 + b"]" * 100, "nested"),
    ],
)
def test_invalid_well_known_documents(body: bytes, reason: str) -> None:
    with pytest.raises(MisconfiguredDomain, match=reason) as info:
        parse_well_known(body, domain=DOMAIN)
    assert info.value.status.is_permanent


def test_well_known_unknown_members_are_allowed() -> None:
    data = _doc(future="yes", policy={"max_recipients": 5, "hint": [1, 2]})
    data["keys"]["keys"][0]["x5t"] = "ignored"
    doc = parse_well_known(json.dumps(data).encode(), domain=DOMAIN)
    assert doc.policy.max_recipients == 5
    assert doc.key("s1") == KEY


# ================================================================ DNS look-ups


@pytest.fixture
async def dns_server() -> AsyncIterator[DNSServer]:
    async with DNSServer(host="127.0.0.1", zones=["test"], negative_ttl=30) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MakeDiscovery = Callable[..., Discovery]


@pytest.fixture
async def make_discovery(dns_server: DNSServer, clock: FakeClock) -> AsyncIterator[MakeDiscovery]:
    made: list[Discovery] = []

    def make(**kwargs: Any) -> Discovery:
        kwargs.setdefault("allow_private_addresses", True)
        kwargs.setdefault("dns_timeout", ANSWERED)
        kwargs.setdefault("http_timeout", 5.0)
        discovery = Discovery([dns_server.address], clock, **kwargs)
        made.append(discovery)
        return discovery

    yield make
    for discovery in made:
        await discovery.close()


def publish(server: DNSServer, *, ttl: int = 300, key: PublicKey = KEY) -> None:
    server.set_txt(f"_synq.{DOMAIN}", RelayRecord(RELAY).to_txt(), ttl=ttl)
    server.set_txt(f"{key.selector}._synqkey.{DOMAIN}", KeyRecord(key).to_txt(), ttl=ttl)


async def test_relay_url_and_key_from_txt(
    dns_server: DNSServer, make_discovery: MakeDiscovery
) -> None:
    publish(dns_server)
    discovery = make_discovery()
    assert await discovery.relay_url(DOMAIN) == RELAY
    assert await discovery.relay_url("ACME.Test.") == RELAY  # normalised, and now cached
    assert await discovery.public_key(DOMAIN, "s1") == KEY
    assert dns_server.query_count(f"_synq.{DOMAIN}") == 1


async def test_ttl_caching_then_requery_after_expiry(
    dns_server: DNSServer, make_discovery: MakeDiscovery, clock: FakeClock
) -> None:
    publish(dns_server, ttl=300)
    discovery = make_discovery()
    name = f"s1._synqkey.{DOMAIN}"
    assert await discovery.public_key(DOMAIN, "s1") == KEY
    clock.advance(299)
    assert await discovery.public_key(DOMAIN, "s1") == KEY
    assert dns_server.query_count(name) == 1
    # The key is rotated in DNS; the cache keeps the old answer until its TTL runs out.
    dns_server.set_txt(name, KeyRecord(PublicKey("s1", KEY2.raw)).to_txt())
    assert (await discovery.public_key(DOMAIN, "s1")).raw == KEY.raw
    clock.advance(2)
    assert (await discovery.public_key(DOMAIN, "s1")).raw == KEY2.raw
    assert dns_server.query_count(name) == 2


@pytest.mark.parametrize(
    ("published", "kept"),
    [(0, resolver_mod.MIN_TTL), (10**6, resolver_mod.MAX_TTL), (600, 600.0)],
)
async def test_ttl_is_clamped(
    dns_server: DNSServer,
    make_discovery: MakeDiscovery,
    clock: FakeClock,
    published: int,
    kept: float,
) -> None:
    publish(dns_server, ttl=published)
    discovery = make_discovery()
    await discovery.relay_url(DOMAIN)
    clock.advance(kept - 1)
    await discovery.relay_url(DOMAIN)
    assert dns_server.query_count(f"_synq.{DOMAIN}") == 1
    clock.advance(1)
    await discovery.relay_url(DOMAIN)
    assert dns_server.query_count(f"_synq.{DOMAIN}") == 2


async def test_nxdomain_is_permanent_and_negatively_cached(
    dns_server: DNSServer, make_discovery: MakeDiscovery, clock: FakeClock
) -> None:
    discovery = make_discovery()
    with pytest.raises(NoSuchDomain) as info:
        await discovery.relay_url("nowhere.test")
    assert info.value.status.code == "5.1.2"
    assert info.value.status.is_permanent
    # The DNS said no _synq record, then the well-known host did not exist either.
    assert dns_server.query_count("_synq.nowhere.test", "TXT") == 1
    assert dns_server.query_count("nowhere.test", "A") == 1
    with pytest.raises(NoSuchDomain):
        await discovery.relay_url("nowhere.test")
    assert dns_server.query_count() == 3  # TXT, A, AAAA: the second call asked nothing
    # RFC 2308 §5: the TXT answer is cached for the zone's negative TTL (30 s here) ...
    clock.advance(29)
    with pytest.raises(NoSuchDomain):
        await discovery.relay_url("nowhere.test")
    assert dns_server.query_count("_synq.nowhere.test") == 1
    clock.advance(2)
    with pytest.raises(NoSuchDomain):
        await discovery.relay_url("nowhere.test")
    assert dns_server.query_count("_synq.nowhere.test") == 2
    # ... and once the domain publishes, the next look-up after that finds it.
    dns_server.set_txt("_synq.nowhere.test", "v=synq1; relay=https://relay.nowhere.test")
    clock.advance(31)
    assert await discovery.relay_url("nowhere.test") == "https://relay.nowhere.test"


async def test_negative_ttl_has_a_floor(clock: FakeClock) -> None:
    async with (
        DNSServer(zones=["test"], negative_ttl=1) as server,
        Discovery([server.address], clock, dns_timeout=ANSWERED) as discovery,
    ):
        name = "s1._synqkey.nowhere.test"
        with pytest.raises(UnknownKey):
            await discovery.public_key("nowhere.test", "s1")
        clock.advance(resolver_mod.MIN_NEGATIVE_TTL - 0.5)
        with pytest.raises(UnknownKey):
            await discovery.public_key("nowhere.test", "s1")
        assert server.query_count(name) == 1  # kept for the floor, not the SOA's 1 s
        clock.advance(1)
        with pytest.raises(UnknownKey):
            await discovery.public_key("nowhere.test", "s1")
        assert server.query_count(name) == 2


async def test_missing_key_is_unknown_key(
    dns_server: DNSServer, make_discovery: MakeDiscovery
) -> None:
    publish(dns_server)
    discovery = make_discovery()
    with pytest.raises(UnknownKey) as info:
        await discovery.public_key(DOMAIN, "s9")
    assert info.value.status.is_permanent
    with pytest.raises(UnknownKey):
        await discovery.public_key(DOMAIN, "Not-A-Selector")
    assert dns_server.query_count("Not-A-Selector._synqkey.acme.test") == 0


async def test_dropped_query_times_out_as_transient_and_is_briefly_remembered(
    dns_server: DNSServer, make_discovery: MakeDiscovery, clock: FakeClock
) -> None:
    publish(dns_server)
    dns_server.set_fault(Fault.DROP, f"_synq.{DOMAIN}")
    discovery = make_discovery(dns_timeout=FAST)
    with pytest.raises(DiscoveryError) as info:
        await discovery.relay_url(DOMAIN)
    assert type(info.value) is DiscoveryError
    assert info.value.status is st.ROUTING_FAILED
    assert info.value.status.is_transient
    assert "timed out" in info.value.message
    dns_server.set_fault(None, f"_synq.{DOMAIN}")
    asked = dns_server.query_count(f"_synq.{DOMAIN}")
    with pytest.raises(DiscoveryError):
        await discovery.relay_url(DOMAIN)  # RFC 2308 §7.1: the failure is cached briefly
    assert dns_server.query_count(f"_synq.{DOMAIN}") == asked
    clock.advance(resolver_mod.FAILURE_TTL)
    assert await discovery.relay_url(DOMAIN) == RELAY


async def test_servfail_is_transient(dns_server: DNSServer, make_discovery: MakeDiscovery) -> None:
    publish(dns_server)
    dns_server.set_fault(Fault.SERVFAIL, f"s1._synqkey.{DOMAIN}")
    discovery = make_discovery()
    with pytest.raises(DiscoveryError) as info:
        await discovery.public_key(DOMAIN, "s1")
    assert type(info.value) is DiscoveryError
    assert info.value.status.is_transient
    assert await discovery.relay_url(DOMAIN) == RELAY


@pytest.mark.parametrize(
    "record",
    [
        "v=synq1; relay=ftp://relay.acme.test",
        "v=synq1; relay=",
        "v=synq1; relay=https://a; relay=https://b",
        "v=synq1; relay",
        "v=synq1; relay=https://relay.acme.tést",
    ],
)
async def test_malformed_relay_record_is_misconfigured(
    dns_server: DNSServer, make_discovery: MakeDiscovery, record: str
) -> None:
    dns_server.set_txt(f"_synq.{DOMAIN}", record)
    with pytest.raises(MisconfiguredDomain) as info:
        await make_discovery().relay_url(DOMAIN)
    assert info.value.status.is_permanent


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("v=synq1; k=ed25519; p=!!!", "base64url"),
        ("v=synq1; k=ed25519; p=AAAA", "base64url"),
        ("v=synq1; k=rsa; p=" + KEY.b64url, "key type"),
        ("v=synq1; k=ed25519; p=", "revoked"),  # RFC 6376 §3.6.1
        ("v=synq1; k=ed25519; p=" + KEY.b64url + "; p=x", "duplicate"),
    ],
)
async def test_rfc6376_6_1_2_malformed_key_record_is_unknown_key(
    dns_server: DNSServer, make_discovery: MakeDiscovery, record: str, reason: str
) -> None:
    dns_server.set_txt(f"s1._synqkey.{DOMAIN}", record)
    with pytest.raises(UnknownKey, match=reason):
        await make_discovery().public_key(DOMAIN, "s1")


async def test_two_synq_records_are_ambiguous(
    dns_server: DNSServer, make_discovery: MakeDiscovery
) -> None:
    dns_server.set_txt(
        f"_synq.{DOMAIN}",
        ["v=synq1; relay=https://one.acme.test", "v=synq1; relay=https://two.acme.test"],
    )
    dns_server.set_txt(f"s1._synqkey.{DOMAIN}", [KeyRecord(KEY).to_txt(), KeyRecord(KEY2).to_txt()])
    discovery = make_discovery()
    with pytest.raises(MisconfiguredDomain, match="ambiguous"):
        await discovery.relay_url(DOMAIN)
    with pytest.raises(UnknownKey, match="ambiguous"):
        await discovery.public_key(DOMAIN, "s1")


async def test_rfc7208_4_5_other_txt_records_are_ignored(
    dns_server: DNSServer, make_discovery: MakeDiscovery
) -> None:
    dns_server.set_txt(
        f"_synq.{DOMAIN}",
        ["v=spf1 -all", "v=synq10; relay=https://wrong.acme.test", RelayRecord(RELAY).to_txt()],
    )
    assert await make_discovery().relay_url(DOMAIN) == RELAY


async def test_rfc7208_3_3_long_record_is_joined(
    dns_server: DNSServer, make_discovery: MakeDiscovery
) -> None:
    long_url = "https://relay.acme.test/" + "p" * 400
    dns_server.set_txt(f"_synq.{DOMAIN}", RelayRecord(long_url).to_txt())
    padded = KeyRecord(KEY).to_txt() + "; n=" + "z" * 300
    dns_server.set_txt(f"s1._synqkey.{DOMAIN}", padded)
    discovery = make_discovery()
    assert await discovery.relay_url(DOMAIN) == long_url
    assert await discovery.public_key(DOMAIN, "s1") == KEY


async def test_concurrent_lookups_share_one_query(
    dns_server: DNSServer, make_discovery: MakeDiscovery
) -> None:
    publish(dns_server)
    discovery = make_discovery()
    urls = await asyncio.gather(*(discovery.relay_url(DOMAIN) for _ in range(20)))
    assert set(urls) == {RELAY}
    assert dns_server.query_count(f"_synq.{DOMAIN}") == 1


async def test_cache_is_bounded(dns_server: DNSServer, make_discovery: MakeDiscovery) -> None:
    for name in ("a", "b", "c"):
        dns_server.set_txt(f"_synq.{name}.test", f"v=synq1; relay=https://relay.{name}.test")
    discovery = make_discovery(max_cache_entries=2)
    for name in ("a", "b", "c"):
        await discovery.relay_url(f"{name}.test")
    await discovery.relay_url("c.test")
    await discovery.relay_url("a.test")  # evicted by "c": asked again
    assert dns_server.query_count("_synq.c.test") == 1
    assert dns_server.query_count("_synq.a.test") == 2


async def test_clear_cache(dns_server: DNSServer, make_discovery: MakeDiscovery) -> None:
    publish(dns_server)
    discovery = make_discovery()
    await discovery.relay_url(DOMAIN)
    discovery.clear_cache()
    await discovery.relay_url(DOMAIN)
    assert dns_server.query_count(f"_synq.{DOMAIN}") == 2


async def test_not_a_domain_is_refused_without_a_query(
    dns_server: DNSServer, make_discovery: MakeDiscovery
) -> None:
    with pytest.raises(InvalidAddress):
        await make_discovery().relay_url("not a domain")
    assert dns_server.query_count() == 0


# ================================================================ well-known over HTTP


@dataclass
class Site:
    """What the test web server answers at every path; counts the requests it gets."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False
    hang: bool = False
    redirects: dict[str, str] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def serve(self, doc: WellKnown) -> None:
        self.body = doc.to_json()

    def app(self) -> web.Application:
        async def handler(request: web.Request) -> web.StreamResponse:
            self.hits.append(request.path)
            if request.path in self.redirects:
                return web.Response(status=302, headers={"Location": self.redirects[request.path]})
            if self.hang:
                await asyncio.Event().wait()  # cancelled when the client gives up
            headers = {"Content-Type": self.content_type, **self.headers}
            if not self.chunked:
                return web.Response(status=self.status, body=self.body, headers=headers)
            response = web.StreamResponse(status=self.status, headers=headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            for i in range(0, len(self.body), 4096):
                await response.write(self.body[i : i + 4096])
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        return app


@dataclass
class WellKnownEnv:
    site: Site
    server: TestServer
    dns: DNSServer
    make: MakeDiscovery

    @property
    def url(self) -> str:
        return f"{self.server.scheme}://{WK_HOST}:{self.server.port}/.well-known/synq.json"

    def discovery(self, **kwargs: Any) -> Discovery:
        kwargs.setdefault("well_known_urls", {DOMAIN: self.url})
        return self.make(**kwargs)


@pytest.fixture
async def wk(
    aiohttp_server: AiohttpServer, dns_server: DNSServer, make_discovery: MakeDiscovery
) -> WellKnownEnv:
    """An HTTP server for acme.test's well-known document, at wk.acme.test → 127.0.0.1."""
    site = Site()
    site.serve(build_well_known(DOMAIN, RELAY, [KEY]))
    server = await aiohttp_server(site.app())
    dns_server.set_a(WK_HOST, "127.0.0.1")
    return WellKnownEnv(site, server, dns_server, make_discovery)


async def test_well_known_fallback_when_dns_has_no_record(wk: WellKnownEnv) -> None:
    discovery = wk.discovery()
    assert await discovery.relay_url(DOMAIN) == RELAY
    assert await discovery.public_key(DOMAIN, "s1") == KEY
    assert (await discovery.well_known(DOMAIN)).domain == DOMAIN
    assert wk.site.hits == ["/.well-known/synq.json"]  # fetched once, then cached
    assert wk.dns.query_count(WK_HOST, "A") == 1  # resolved through the configured server
    with pytest.raises(UnknownKey, match="s9"):
        await discovery.public_key(DOMAIN, "s9")


async def test_dns_record_wins_over_well_known(wk: WellKnownEnv) -> None:
    wk.dns.set_txt(f"_synq.{DOMAIN}", "v=synq1; relay=nonsense")
    discovery = wk.discovery()
    with pytest.raises(MisconfiguredDomain):
        await discovery.relay_url(DOMAIN)  # a malformed record is not a reason to look elsewhere
    assert wk.site.hits == []


async def test_well_known_fallback_next_to_other_txt(wk: WellKnownEnv) -> None:
    wk.dns.set_txt(f"_synq.{DOMAIN}", "v=spf1 -all")
    assert await wk.discovery().relay_url(DOMAIN) == RELAY


async def test_well_known_cache_control_max_age(wk: WellKnownEnv, clock: FakeClock) -> None:
    wk.site.headers["Cache-Control"] = "public, max-age=120"
    discovery = wk.discovery()
    await discovery.well_known(DOMAIN)
    clock.advance(119)
    await discovery.well_known(DOMAIN)
    assert len(wk.site.hits) == 1
    clock.advance(1)
    await discovery.well_known(DOMAIN)
    assert len(wk.site.hits) == 2


async def test_well_known_default_ttl(wk: WellKnownEnv, clock: FakeClock) -> None:
    discovery = wk.discovery()
    await discovery.well_known(DOMAIN)
    clock.advance(resolver_mod.WELL_KNOWN_DEFAULT_TTL - 1)
    await discovery.well_known(DOMAIN)
    assert len(wk.site.hits) == 1


@pytest.mark.parametrize("status", [404, 410])
async def test_well_known_not_found_is_no_such_domain(wk: WellKnownEnv, status: int) -> None:
    wk.site.status = status
    discovery = wk.discovery()
    with pytest.raises(NoSuchDomain):
        await discovery.relay_url(DOMAIN)
    with pytest.raises(UnknownKey):
        await discovery.public_key(DOMAIN, "s1")


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_well_known_server_error_is_transient(
    wk: WellKnownEnv, clock: FakeClock, status: int
) -> None:
    wk.site.status = status
    discovery = wk.discovery()
    with pytest.raises(DiscoveryError) as info:
        await discovery.relay_url(DOMAIN)
    assert type(info.value) is DiscoveryError
    with pytest.raises(DiscoveryError) as key_info:
        await discovery.public_key(DOMAIN, "s1")
    assert type(key_info.value) is DiscoveryError  # transient, not UnknownKey
    assert len(wk.site.hits) == 1
    wk.site.status = 200
    clock.advance(resolver_mod.FAILURE_TTL)
    assert await discovery.relay_url(DOMAIN) == RELAY


async def test_well_known_other_status_is_misconfigured(wk: WellKnownEnv) -> None:
    wk.site.status = 403
    with pytest.raises(MisconfiguredDomain, match="403"):
        await wk.discovery().relay_url(DOMAIN)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_oversize_well_known_is_refused(wk: WellKnownEnv, chunked: bool) -> None:
    big = json.loads(wk.site.body)
    big["padding"] = "x" * MAX_WELL_KNOWN_BYTES
    wk.site.body = json.dumps(big).encode()
    wk.site.chunked = chunked
    with pytest.raises(MisconfiguredDomain, match="larger than"):
        await wk.discovery().well_known(DOMAIN)


async def test_malformed_json_well_known_is_refused(wk: WellKnownEnv) -> None:
    wk.site.body = b'{"v": 1, "domain": '
    discovery = wk.discovery()
    with pytest.raises(MisconfiguredDomain, match="JSON"):
        await discovery.relay_url(DOMAIN)
    with pytest.raises(UnknownKey):
        await discovery.public_key(DOMAIN, "s1")


async def test_well_known_for_another_domain_is_refused(wk: WellKnownEnv) -> None:
    wk.site.serve(build_well_known("globex.test", RELAY, [KEY]))
    with pytest.raises(MisconfiguredDomain, match=r"globex\.test"):
        await wk.discovery().well_known(DOMAIN)


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [("text/html", None), ("application/json", "gzip")],
)
async def test_well_known_wrong_type_or_compressed_is_refused(
    wk: WellKnownEnv, content_type: str, encoding: str | None
) -> None:
    wk.site.content_type = content_type
    if encoding:
        wk.site.headers["Content-Encoding"] = encoding
    with pytest.raises(MisconfiguredDomain):
        await wk.discovery().well_known(DOMAIN)


async def test_well_known_timeout_is_transient(wk: WellKnownEnv) -> None:
    wk.site.hang = True
    with pytest.raises(DiscoveryError, match="no answer") as info:
        await wk.discovery(http_timeout=FAST).well_known(DOMAIN)
    assert type(info.value) is DiscoveryError


async def test_well_known_connection_refused_is_transient(
    dns_server: DNSServer, make_discovery: MakeDiscovery
) -> None:
    dns_server.set_a(WK_HOST, "127.0.0.1")
    with socket.socket() as unlistened:  # bound, never listening: connections are refused
        unlistened.bind(("127.0.0.1", 0))
        port = unlistened.getsockname()[1]
        url = f"http://{WK_HOST}:{port}/.well-known/synq.json"
        discovery = make_discovery(well_known_urls={DOMAIN: url})
        with pytest.raises(DiscoveryError, match="connection failed") as info:
            await discovery.well_known(DOMAIN)
    assert type(info.value) is DiscoveryError


async def test_well_known_host_without_address_is_no_such_domain(wk: WellKnownEnv) -> None:
    wk.dns.remove(WK_HOST)
    wk.dns.set_txt(WK_HOST, "no address here")
    with pytest.raises(NoSuchDomain):
        await wk.discovery().well_known(DOMAIN)


async def test_well_known_dns_timeout_is_transient(wk: WellKnownEnv) -> None:
    wk.dns.set_fault(Fault.DROP, WK_HOST)
    with pytest.raises(DiscoveryError, match="timed out") as info:
        await wk.discovery(dns_timeout=FAST).well_known(DOMAIN)
    assert type(info.value) is DiscoveryError


# ================================================================ SSRF guard


async def test_loopback_allowed_when_private_addresses_are_allowed(wk: WellKnownEnv) -> None:
    assert await wk.discovery(allow_private_addresses=True).relay_url(DOMAIN) == RELAY


async def test_loopback_refused_when_not_allowed(wk: WellKnownEnv) -> None:
    https_url = f"https://{WK_HOST}:{wk.server.port}/.well-known/synq.json"
    discovery = wk.discovery(allow_private_addresses=False, well_known_urls={DOMAIN: https_url})
    with pytest.raises(AddressRefused) as info:
        await discovery.relay_url(DOMAIN)
    assert info.value.status.is_permanent
    with pytest.raises(UnknownKey, match="not public"):
        await discovery.public_key(DOMAIN, "s1")
    assert wk.site.hits == []  # refused before connecting


async def test_http_refused_when_private_addresses_are_not_allowed(wk: WellKnownEnv) -> None:
    with pytest.raises(MisconfiguredDomain, match="only https"):
        await wk.discovery(allow_private_addresses=False).relay_url(DOMAIN)
    assert wk.site.hits == []


@pytest.mark.parametrize(
    ("rdtype", "addresses"),
    [
        ("A", ["10.0.0.1"]),
        ("A", ["169.254.169.254"]),
        ("A", ["0.0.0.0"]),
        ("AAAA", ["fd00::1"]),
        ("AAAA", ["fe80::1"]),
        ("AAAA", ["::1"]),
        ("AAAA", ["::ffff:127.0.0.1"]),
        ("AAAA", ["::ffff:10.0.0.1"]),
        ("AAAA", ["64:ff9b::a00:1"]),
    ],
)
async def test_private_addresses_in_dns_are_refused(
    dns_server: DNSServer, make_discovery: MakeDiscovery, rdtype: str, addresses: list[str]
) -> None:
    host = "internal.acme.test"
    dns_server.set_records(host, rdtype, addresses)
    url = f"https://{host}/.well-known/synq.json"
    discovery = make_discovery(allow_private_addresses=False, well_known_urls={DOMAIN: url})
    with pytest.raises(AddressRefused):
        await discovery.well_known(DOMAIN)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/.well-known/synq.json",
        "https://[::1]/.well-known/synq.json",
        "https://[::ffff:127.0.0.1]/.well-known/synq.json",
        "https://10.0.0.1/.well-known/synq.json",
    ],
)
async def test_private_ip_literals_are_refused(make_discovery: MakeDiscovery, url: str) -> None:
    discovery = make_discovery(allow_private_addresses=False, well_known_urls={DOMAIN: url})
    with pytest.raises(AddressRefused):
        await discovery.well_known(DOMAIN)


async def test_guarded_resolver_drops_refused_addresses_and_keeps_the_rest(
    dns_server: DNSServer,
) -> None:
    dns_server.set_a("mixed.acme.test", ["10.0.0.1", "8.8.8.8", "127.0.0.1"])
    dns_server.set_aaaa("mixed.acme.test", ["fd00::1", "2606:4700::1111"])
    resolver = GuardedResolver(
        AddressPolicy.build(allow_private=False),
        make_resolver([dns_server.address], timeout=ANSWERED),
        lifetime=ANSWERED,
    )
    results = await resolver.resolve("mixed.acme.test", 443, socket.AF_UNSPEC)
    assert sorted(r["host"] for r in results) == ["2606:4700::1111", "8.8.8.8"]
    assert {r["port"] for r in results} == {443}
    only_v4 = await resolver.resolve("mixed.acme.test", 443, socket.AF_INET)
    assert [r["host"] for r in only_v4] == ["8.8.8.8"]
    assert dns_server.query_count("mixed.acme.test", "AAAA") == 1  # AF_INET asked A only


# ---------------------------------------------------------------- over TLS, with redirects


@dataclass
class TLS:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls() -> TLS:
    """A throwaway CA and a certificate for wk.acme.test and 127.0.0.1."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Synq test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, WK_HOST)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(WK_HOST), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(
        cadata=ca.public_bytes(serialization.Encoding.PEM).decode()
    )
    return TLS(server_ctx, client_ctx)


@pytest.fixture
async def wks(
    aiohttp_server: AiohttpServer, dns_server: DNSServer, make_discovery: MakeDiscovery, tls: TLS
) -> WellKnownEnv:
    """Like ``wk``, over https, with discovery refusing private addresses but 127.0.0.1/32."""
    site = Site()
    site.serve(build_well_known(DOMAIN, RELAY, [KEY]))
    server = await aiohttp_server(site.app(), ssl=tls.server)
    dns_server.set_a(WK_HOST, "127.0.0.1")

    def strict(**kwargs: Any) -> Discovery:
        kwargs.setdefault("allow_private_addresses", False)
        kwargs.setdefault("allowed_networks", ["127.0.0.1/32"])
        kwargs.setdefault("ssl_context", tls.client)
        return make_discovery(**kwargs)

    return WellKnownEnv(site, server, dns_server, strict)


async def test_https_well_known_through_an_allowed_network(wks: WellKnownEnv) -> None:
    assert wks.url.startswith("https://")
    discovery = wks.discovery()
    assert await discovery.relay_url(DOMAIN) == RELAY
    assert await discovery.public_key(DOMAIN, "s1") == KEY


async def test_tls_failure_is_transient(wks: WellKnownEnv) -> None:
    with pytest.raises(DiscoveryError, match="TLS") as info:
        await wks.discovery(ssl_context=ssl.create_default_context()).well_known(DOMAIN)
    assert type(info.value) is DiscoveryError


async def test_redirect_to_an_allowed_https_url_is_followed(wks: WellKnownEnv) -> None:
    wks.site.redirects["/.well-known/synq.json"] = "/moved/synq.json"
    assert (await wks.discovery().well_known(DOMAIN)).relay == RELAY
    assert wks.site.hits == ["/.well-known/synq.json", "/moved/synq.json"]


@pytest.mark.parametrize(
    ("location", "error"),
    [
        ("https://10.0.0.1/synq.json", AddressRefused),
        ("https://[::ffff:10.0.0.1]/synq.json", AddressRefused),
        ("https://169.254.169.254/latest/meta-data/", AddressRefused),
        ("https://internal.acme.test/synq.json", AddressRefused),  # A record: 10.1.2.3
        ("http://wk.acme.test/synq.json", MisconfiguredDomain),  # downgrade to http
        ("file:///etc/passwd", MisconfiguredDomain),
    ],
)
async def test_redirect_to_a_private_address_is_refused(
    wks: WellKnownEnv, location: str, error: type[Exception]
) -> None:
    wks.dns.set_a("internal.acme.test", "10.1.2.3")
    wks.site.redirects["/.well-known/synq.json"] = location
    with pytest.raises(error):
        await wks.discovery().well_known(DOMAIN)
    assert wks.site.hits == ["/.well-known/synq.json"]


async def test_redirects_are_bounded(wks: WellKnownEnv) -> None:
    wks.site.redirects = {"/.well-known/synq.json": "/a", "/a": "/b", "/b": "/a"}
    with pytest.raises(MisconfiguredDomain, match="redirects"):
        await wks.discovery().well_known(DOMAIN)
    assert len(wks.site.hits) == 4  # the first request and MAX_REDIRECTS more
