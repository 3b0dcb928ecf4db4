"""Hostile input, one test per threat and named after it (as aiohttp names its security tests
after the CVE or RFC section they guard). Each test fails when the defence it names is removed;
SPEC.md "Security considerations" maps threat → mechanism → test.

Related threats already covered elsewhere, by name:

* forged or altered signatures: test_federation_inbound.py::test_forged_signature_is_refused_5_7_7
* open relaying through a partner: test_federation_inbound.py::
  test_envelope_from_a_domain_other_than_origin_is_refused_5_7_1
* private addresses as IP literals, gzip bombs, redirect loops: test_discovery.py
  (test_private_ip_literals_are_refused, test_well_known_wrong_type_or_compressed_is_refused,
  test_redirects_are_bounded)
* a fake bounce bypassing an agent's rules: test_policy.py::test_threat_fake_bounce_bypassing_agent_rules
* memory exhaustion through rate-limit tables: test_core_ratelimit.py::
  test_flooding_the_table_does_not_reset_a_throttled_bucket
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay.config import Config
from relay.core import envelope as env_mod
from relay.core import jws
from relay.core.clock import FakeClock
from relay.core.errors import UnknownKey
from relay.core.ids import uuid7
from relay.core.jws import SigningKey, b64url_encode
from relay.core.limits import MAX_API_BODY_BYTES, MAX_CLOCK_SKEW, MAX_JSON_DEPTH, MAX_LIFETIME
from relay.discovery import AddressRefused, Discovery, MisconfiguredDomain, build_well_known
from relay.discovery.wellknown import MAX_WELL_KNOWN_BYTES
from relay.dnsserver import DNSServer
from relay.runtime import Relay
from relay.server.app import build_app
from relay.server.http import DEFAULT_HTTP_LIMITS, GatedSite, make_runner
from tests.conftest import AgentFactory
from tests.fedenv import World, world
from tests.helpers import wait_until

# ============================================================================ federation


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, "acme.test", "globex.test") as env:
        await env.orgs["acme.test"].agent("alice")
        await env.orgs["globex.test"].agent("bob")
        yield env


def token(w: World, key: SigningKey, *, raw: bytes | None = None, **fields: Any) -> str:
    now = w.clock.now()
    doc: dict[str, Any] = {
        "v": 1,
        "id": uuid7(now),
        "from": "alice@acme.test",
        "to": ["bob@globex.test"],
        "created": env_mod.format_timestamp(now),
        "expires": env_mod.format_timestamp(now + timedelta(hours=1)),
        "kind": "message",
        "content_type": "text/plain",
        "body": "hi",
        **fields,
    }
    return jws.sign(raw if raw is not None else json.dumps(doc).encode(), key)


async def put(w: World, body: bytes, *, chunked: bool = False) -> tuple[int, Any]:
    data: Any = io.BytesIO(body)
    if chunked:

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 65536):
                yield body[i : i + 65536]

        data = chunks()
    async with w.http.put(
        f"{w.orgs['globex.test'].url}/synq/v1/federation/txn/t-{uuid7(w.clock.now())}",
        data=data,
        headers={"Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.json()


async def deliver(w: World, *tokens: str, origin: str = "acme.test") -> tuple[str, str]:
    status, body = await put(w, json.dumps({"origin": origin, "envelopes": list(tokens)}).encode())
    assert status == 200, body
    [result] = body["results"].values()
    return result["status"], result["code"]


async def bob_inbox(w: World) -> list[dict[str, Any]]:
    globex = w.orgs["globex.test"]
    return await w.inbox(globex, globex.agents["bob"], all=1)


async def test_threat_replay_inside_window(w: World) -> None:
    """A captured envelope sent again, before it expires: deduplicated, delivered once."""
    captured = token(w, w.orgs["acme.test"].key)
    assert await deliver(w, captured) == ("accepted", "2.0.0")
    w.clock.advance(30 * 60)
    assert await deliver(w, captured) == ("duplicate", "2.0.0")
    assert len(await bob_inbox(w)) == 1


async def test_threat_replay_outside_window(w: World) -> None:
    """The same envelope replayed after it expired is refused 5.4.7 on its time alone, so the
    deduplication key need only be kept until expires + MAX_CLOCK_SKEW (SPEC.md)."""
    captured = token(w, w.orgs["acme.test"].key)
    assert await deliver(w, captured) == ("accepted", "2.0.0")
    w.clock.advance(3600)  # exactly at expiry: already too late (SPEC.md §3.4)
    assert await deliver(w, captured) == ("rejected", "5.4.7")
    assert len(await bob_inbox(w)) == 1


async def test_threat_created_in_future_beyond_clock_skew(w: World) -> None:
    """Pre-dating an envelope into the future to outlive the replay window."""
    key, now = w.orgs["acme.test"].key, w.clock.now()

    def dated(created: datetime) -> str:
        return token(
            w,
            key,
            created=env_mod.format_timestamp(created),
            expires=env_mod.format_timestamp(created + timedelta(hours=1)),
        )

    assert await deliver(w, dated(now + MAX_CLOCK_SKEW)) == ("accepted", "2.0.0")
    over = now + MAX_CLOCK_SKEW + timedelta(seconds=1)
    assert await deliver(w, dated(over)) == ("rejected", "5.7.0")


async def test_threat_lifetime_beyond_maximum(w: World) -> None:
    """An envelope that never expires would outlive any replay window and any queue purge."""
    now = w.clock.now()
    forever = token(
        w,
        w.orgs["acme.test"].key,
        expires=env_mod.format_timestamp(now + MAX_LIFETIME + timedelta(seconds=1)),
    )
    assert await deliver(w, forever) == ("rejected", "5.6.0")
    assert await bob_inbox(w) == []


async def test_threat_partner_signs_for_domain_it_does_not_own(w: World) -> None:
    """globex holds a published key — for globex.test. Signing acme.test's mail with it, under
    either origin, gets nothing through (key binding, SPEC.md §4.3; no open relaying, §8)."""
    stolen_name = token(w, w.orgs["globex.test"].key)  # from alice@acme.test, globex's key
    assert await deliver(w, stolen_name, origin="acme.test") == ("rejected", "5.7.7")
    assert await deliver(w, stolen_name, origin="globex.test") == ("rejected", "5.7.1")
    assert await bob_inbox(w) == []


async def test_threat_deeply_nested_json(w: World) -> None:
    """Stack and CPU exhaustion by nesting, in a transaction and inside a signed envelope."""
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    status, body = await put(
        w, b'{"origin":"acme.test","envelopes":["x"],"pad":' + deep.encode() + b"}"
    )
    assert (status, body["error"]["code"]) == (400, "malformed_request")
    assert "nested" in body["error"]["message"]  # refused for its depth, before its shape
    nested = b'{"v":1,"body":' + deep.encode() + b"}"
    assert await deliver(w, token(w, w.orgs["acme.test"].key, raw=nested)) == ("rejected", "5.5.2")


async def test_threat_jws_header_stuffing(w: World) -> None:
    """A header naming its own key (jku/jwk) or padded to megabytes is refused before any
    key look-up or signature check."""
    good = token(w, w.orgs["acme.test"].key)
    _, payload, sig = good.split(".")
    for header in (
        {"alg": "EdDSA", "kid": "s1", "typ": "synq+jws", "jku": "https://evil.test/keys"},
        {"alg": "EdDSA", "kid": "s1", "typ": "synq+jws", "pad": "x" * 4096},
        {"alg": "none", "kid": "s1", "typ": "synq+jws"},
    ):
        forged = ".".join([b64url_encode(json.dumps(header).encode()), payload, sig])
        assert await deliver(w, forged) == ("rejected", "5.6.0")
    assert await bob_inbox(w) == []


async def test_threat_oversize_transaction(w: World) -> None:
    """A body larger than MAX_TXN_BYTES, sent chunked (no Content-Length to refuse up front)."""
    huge = b'{"origin":"acme.test","envelopes":["' + b"a" * (5 * 1024 * 1024) + b'"]}'
    status, body = await put(w, huge, chunked=True)
    assert (status, body["error"]["code"]) == (413, "too_large")


# ============================================================================ local API


async def test_threat_local_agent_sends_as_another_address(
    client: Any, make_agent: AgentFactory, relay: Relay
) -> None:
    """The sender is the token's agent, always: a request body cannot choose ``from``."""
    alice, bob = await make_agent("alice"), await make_agent("bob")
    for forged in ({"from": "bob@acme.test"}, {"sender": "bob@acme.test"}, {"from_": "bob"}):
        resp = await client.post(
            "/synq/v1/messages",
            json={"to": [bob.address], "body": "x", **forged},
            headers=alice.auth,
        )
        assert resp.status == 422, await resp.text()
    resp = await client.get("/synq/v1/inbox", headers=bob.auth)
    assert (await resp.json())["messages"] == []
    resp = await client.post(
        "/synq/v1/messages", json={"to": [bob.address], "body": "x"}, headers=alice.auth
    )
    assert resp.status == 202
    resp = await client.get("/synq/v1/inbox", headers=bob.auth)
    assert [m["from"] for m in (await resp.json())["messages"]] == ["alice@acme.test"]


async def test_threat_oversize_api_body(client: Any, make_agent: AgentFactory) -> None:
    """A body over MAX_API_BODY_BYTES, chunked so that no Content-Length gives it away."""
    alice = await make_agent("alice")
    blob = json.dumps({"to": ["bob@acme.test"], "body": "x" * MAX_API_BODY_BYTES}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(blob), 65536):
            yield blob[i : i + 65536]

    resp = await client.post(
        "/synq/v1/messages",
        data=chunks(),
        headers={**alice.auth, "Content-Type": "application/json"},
    )
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "too_large"


async def test_threat_deeply_nested_api_body(client: Any, make_agent: AgentFactory) -> None:
    alice = await make_agent("alice")
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    resp = await client.post(
        "/synq/v1/messages",
        data=f'{{"to":["alice@acme.test"],"body":{deep}}}',
        headers={**alice.auth, "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "malformed_request"


# ============================================================================ the HTTP server

#: The production limits with deadlines short enough to watch them fire in a test.
FAST = replace(
    DEFAULT_HTTP_LIMITS, keepalive_timeout=0.3, body_read_timeout=0.3, lingering_time=0.1
)
#: Scheduling slack on a loaded machine; far below aiohttp's own defaults (3,630 s idle, 10 s
#: lingering), so a removed limit still fails the test.
SLACK = 2.0


@dataclass
class Served:
    host: str
    port: int


@pytest.fixture
async def served(relay: Relay) -> AsyncIterator[Served]:
    """The relay's app on a real port-0 socket, run exactly as ``synq serve`` runs it."""
    runner = make_runner(build_app(relay, http_limits=FAST))
    await runner.setup()
    site = GatedSite(runner, "127.0.0.1", 0, relay.sources)
    await site.start()
    try:
        yield Served("127.0.0.1", site.port)
    finally:
        await runner.cleanup()


@dataclass
class Exchange:
    answer: bytes = b""
    closed: bool = False
    sent: int = 0
    seconds: float = 0.0


async def exchange(
    served: Served, head: bytes, dribble: bytes = b"", *, step: float = 0.02
) -> Exchange:
    """Send ``head``, then ``dribble`` one byte per ``step`` — each pause is a wait for the
    server to answer, so the exchange ends as soon as the server speaks or hangs up."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(served.host, served.port)
    result = Exchange()
    started = loop.time()
    try:
        writer.write(head)
        await writer.drain()
        pending = list(dribble)
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), step if pending else 2.0)
            except TimeoutError:
                if not pending:
                    break
                try:
                    writer.write(bytes([pending.pop(0)]))
                    await writer.drain()
                    result.sent += 1
                except ConnectionError:
                    result.closed = True
                    break
                continue
            if not chunk:
                result.closed = True
                break
            result.answer += chunk
            pending = []  # the server has answered: stop dribbling, read until it closes
    except ConnectionError:
        result.closed = True
    finally:
        result.seconds = loop.time() - started
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return result


def status_of(result: Exchange) -> int:
    line = result.answer.split(b"\r\n", 1)[0]
    return int(line.split()[1]) if line.startswith(b"HTTP/") else 0


async def test_threat_http_header_flood(served: Served) -> None:
    """More header fields than max_headers: refused by the parser before any handler runs."""
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(100))
    result = await exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert status_of(result) == 400
    ok = await exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(ok) == 200


async def test_threat_oversize_header_field(served: Served) -> None:
    big = b"X-Big: " + b"a" * (DEFAULT_HTTP_LIMITS.max_field_size + 100) + b"\r\n"
    result = await exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert status_of(result) == 400


async def test_threat_oversize_request_line(served: Served) -> None:
    path = b"/healthz?pad=" + b"a" * (DEFAULT_HTTP_LIMITS.max_line_size + 100)
    result = await exchange(served, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(result) == 400


async def test_threat_slow_loris_headers(served: Served) -> None:
    """Headers trickled a byte at a time never complete: the connection is closed after the
    idle/header deadline (keepalive_timeout), with nothing handled."""
    result = await exchange(
        served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 400
    )
    assert result.closed
    assert result.answer == b""
    assert result.seconds < FAST.keepalive_timeout + SLACK
    assert result.sent < 400


async def test_threat_slow_loris_body(served: Served) -> None:
    """A body dribbled byte by byte is cut off at the body deadline: 408, then the connection
    is closed (Connection: close, RFC 9110 §15.5.9) instead of draining the rest."""
    head = (
        b"PUT /synq/v1/federation/txn/t1 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    result = await exchange(served, head, b"{" + b" " * 999)
    assert status_of(result) == 408
    assert b'"malformed_request"' in result.answer
    assert b"connection: close" in result.answer.lower()
    assert result.closed
    assert result.sent < 1000
    assert result.seconds < FAST.body_read_timeout + FAST.lingering_time + SLACK


async def connect(served: Served, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(served.host, served.port, local_addr=(source, 0))


async def healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One ``GET /healthz`` on an open connection, which the server then closes."""
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    return answer


async def test_threat_one_address_holding_many_connections(relay: Relay, served: Served) -> None:
    """Open connections per source address, counted by the listener from accept to close: one
    past the limit is closed at accept, before a byte is read (an idle or slow-loris connection
    cannot hold the process's descriptors); other addresses connect; a closed connection gives
    its place back."""
    data = relay.config.model_dump()
    data["limits"] = {"connections_per_source": 2}
    relay.reload(Config.model_validate({**data, "base_dir": relay.config.base_dir}))
    held = [await connect(served, "127.0.0.2") for _ in range(2)]
    try:
        await wait_until(lambda: relay.sources.connections.held("127.0.0.2") == 2)
        reader, writer = await connect(served, "127.0.0.2")
        assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed, nothing answered
        writer.close()
        assert (await healthz(*await connect(served, "127.0.0.3"))).startswith(b"HTTP/1.1 200")
        # The held connections are served as usual; once one is closed, its place is free.
        assert (await healthz(*held.pop())).startswith(b"HTTP/1.1 200")
        await wait_until(lambda: relay.sources.connections.held("127.0.0.2") == 1)
        assert (await healthz(*await connect(served, "127.0.0.2"))).startswith(b"HTTP/1.1 200")
    finally:
        for _, w in held:
            w.close()
    await wait_until(lambda: len(relay.sources.connections) == 0)


# ============================================================================ discovery (SSRF)


@dataclass
class TLS:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls() -> TLS:
    """A throwaway CA and one certificate for every *.evil.test name and 127.0.0.1/127.0.0.2."""
    now = datetime.now(UTC)
    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Synq threat-test CA")])

    def cert(subject: str, key: Any, *, ca: bool, extensions: list[tuple[Any, bool]]) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical)
        return builder.sign(ca_key, hashes.SHA256())

    usage = dict.fromkeys(
        [
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ],
        False,
    )
    ca = cert(
        "Synq threat-test CA",
        ca_key,
        ca=True,
        extensions=[
            (x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), True),
            (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
        ],
    )
    names = [x509.DNSName("*.evil.test")]
    names += [x509.IPAddress(ipaddress.IPv4Address(ip)) for ip in ("127.0.0.1", "127.0.0.2")]
    leaf = cert(
        "evil.test", leaf_key, ca=False, extensions=[(x509.SubjectAlternativeName(names), False)]
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
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return TLS(server, client)


@dataclass
class Site:
    """A web server on one loopback address that records what reaches it."""

    host: str
    answer: dict[str, Any] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        async def handler(request: web.Request) -> web.StreamResponse:
            self.hits.append(request.path)
            if "location" in self.answer:
                return web.Response(status=302, headers={"Location": self.answer["location"]})
            return web.Response(
                body=self.answer.get("body", b"{}"),
                content_type=self.answer.get("content_type", "application/json"),
            )

        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        return app


@dataclass
class Net:
    """A "public" site on 127.0.0.2 (the one network discovery is allowed to reach) and an
    "internal" one on 127.0.0.1 — same port, so only the address tells them apart — and a DNS
    server the names of both resolve through."""

    dns: DNSServer
    public: Site
    internal: Site
    port: int
    tls: TLS
    clock: FakeClock

    def discovery(self, url: str) -> Discovery:
        return Discovery(
            [self.dns.address],
            self.clock,
            allow_private_addresses=False,
            allowed_networks=["127.0.0.2/32"],
            ssl_context=self.tls.client,
            dns_timeout=0.5,
            http_timeout=2.0,
            well_known_urls={"evil.test": url},
        )


def _same_port_on_two_addresses() -> Iterator[tuple[socket.socket, socket.socket]]:
    for _ in range(50):
        first = socket.socket()
        first.bind(("127.0.0.2", 0))
        port = first.getsockname()[1]
        second = socket.socket()
        try:
            second.bind(("127.0.0.1", port))
        except OSError:
            first.close()
            second.close()
            continue
        yield first, second
        return
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


@pytest.fixture
async def net(tls: TLS) -> AsyncIterator[Net]:
    public, internal = Site("127.0.0.2"), Site("127.0.0.1")
    [(a, b)] = list(_same_port_on_two_addresses())
    port = a.getsockname()[1]
    a.close()
    b.close()
    async with DNSServer(host="127.0.0.1", zones=["test"]) as dns:
        servers = [TestServer(site.app(), host=site.host, port=port) for site in (public, internal)]
        for server in servers:
            await server.start_server(ssl=tls.server)
        try:
            yield Net(dns, public, internal, port, tls, FakeClock())
        finally:
            for server in servers:
                await server.close()


async def test_threat_ssrf_private_address_in_dns(net: Net) -> None:
    """A partner whose well-known host resolves to our loopback gets no request from us."""
    net.dns.set_a("wk.evil.test", "127.0.0.1")
    discovery = net.discovery(f"https://wk.evil.test:{net.port}/.well-known/synq.json")
    try:
        with pytest.raises(AddressRefused):
            await discovery.well_known("evil.test")
    finally:
        await discovery.close()
    assert net.internal.hits == []


@pytest.mark.parametrize(
    "target",
    ["https://127.0.0.1:{port}/admin", "https://internal.evil.test:{port}/admin"],
    ids=["ip-literal", "name"],
)
async def test_threat_ssrf_redirect_to_private_address(net: Net, target: str) -> None:
    """A public well-known server redirecting us to an internal address: every hop is checked."""
    net.dns.set_a("wk.evil.test", "127.0.0.2")
    net.dns.set_a("internal.evil.test", "127.0.0.1")
    net.public.answer = {"location": target.format(port=net.port)}
    discovery = net.discovery(f"https://wk.evil.test:{net.port}/.well-known/synq.json")
    try:
        with pytest.raises(AddressRefused):
            await discovery.well_known("evil.test")
    finally:
        await discovery.close()
    assert net.public.hits == ["/.well-known/synq.json"]
    assert net.internal.hits == []


class RebindingDNS(DNSServer):
    """Answers ``rebind.evil.test`` with an allowed address once, then with loopback (TTL 0):
    the attacker's name server in a DNS rebinding attack."""

    def _reply(self, wire: bytes, transport: Any) -> bytes | None:
        answer = super()._reply(wire, transport)
        if self.query_count("rebind.evil.test", "A") == 1:
            self.set_a("rebind.evil.test", "127.0.0.1", ttl=0)
        return answer


async def test_threat_dns_rebinding_between_check_and_connect(net: Net) -> None:
    """The connection goes to the address that was checked: the name is resolved once, by the
    guarded resolver, and never again by anyone else before connecting."""
    key = SigningKey.generate("s1")
    doc = build_well_known("evil.test", "https://relay.evil.test", [key.public_key])
    net.public.answer = {"body": doc.to_json()}
    async with RebindingDNS(host="127.0.0.1", zones=["test"]) as dns:
        dns.set_a("rebind.evil.test", "127.0.0.2", ttl=0)
        net.dns = dns
        discovery = net.discovery(f"https://rebind.evil.test:{net.port}/.well-known/synq.json")
        try:
            assert (await discovery.well_known("evil.test")).key("s1") == key.public_key
        finally:
            await discovery.close()
        assert dns.query_count("rebind.evil.test", "A") == 1
    assert net.public.hits == ["/.well-known/synq.json"]
    assert net.internal.hits == []


# ============================================================================ huge or malformed documents

HOSTILE_DOCUMENTS = {
    "huge": (b'{"pad":"' + b"x" * (MAX_WELL_KNOWN_BYTES + 1) + b'"}', "application/json"),
    "not-json": (b"<html>hello</html>", "application/json"),
    "truncated": (b'{"v":1,"domain":', "application/json"),
    "array": (b"[1,2,3]", "application/json"),
    "nested": (b"[" * 10_000 + b"]" * 10_000, "application/json"),
    "duplicate-keys": (b'{"v":1,"v":2}', "application/json"),
    "wrong-type": (b"{}", "text/html"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_DOCUMENTS))
async def test_threat_huge_or_malformed_well_known_document(tmp_path: Path, kind: str) -> None:
    """A hostile domain's well-known document costs a bounded read and ends in a permanent,
    typed refusal: the key look-up is refused 5.7.7, nothing else escapes."""
    body, ctype = HOSTILE_DOCUMENTS[kind]
    site = Site("127.0.0.1", answer={"body": body, "content_type": ctype})
    async with (
        TestServer(site.app(), host="127.0.0.1") as server,
        DNSServer(host="127.0.0.1", zones=["test"]) as dns,
    ):
        url = f"http://127.0.0.1:{server.port}/.well-known/synq.json"
        async with Discovery(
            [dns.address],
            FakeClock(),
            allow_private_addresses=True,
            dns_timeout=0.5,
            well_known_urls={"evil.test": url},
        ) as discovery:
            with pytest.raises(MisconfiguredDomain):
                await discovery.well_known("evil.test")
            with pytest.raises(UnknownKey):
                await discovery.public_key("evil.test", "s1")
    assert site.hits == ["/.well-known/synq.json"]  # one fetch, then the refusal is cached


@pytest.mark.parametrize("kind", list(HOSTILE_DOCUMENTS))
async def test_threat_huge_or_malformed_agent_card(w: World, kind: str) -> None:
    """A partner relay answering a card request with a huge or malformed document: the local
    API answers 502 with a typed error, having read at most MAX_WELL_KNOWN_BYTES."""
    body, ctype = HOSTILE_DOCUMENTS[kind]
    site = Site("127.0.0.1", answer={"body": body, "content_type": ctype})
    async with TestServer(site.app(), host="127.0.0.1") as server:
        w.dns.set_txt("_synq.evil.test", [f"v=synq1; relay=http://127.0.0.1:{server.port}"])
        acme = w.orgs["acme.test"]
        async with w.http.get(f"{acme.url}/synq/v1/agents/x@evil.test") as resp:
            assert resp.status == 502
            err = (await resp.json())["error"]
    assert (err["code"], err["status"]) == ("misconfigured_domain", "5.1.2")
    assert site.hits == ["/agents/x/.well-known/agent-card.json"]
