"""The loopback DNS server, queried by dnspython over real UDP and TCP sockets on port 0."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from relay.dnsserver import DNSServer, Fault, Query

FAST_TIMEOUT = 0.2


@pytest.fixture
async def server() -> AsyncIterator[DNSServer]:
    async with DNSServer(host="127.0.0.1", zones=["acme.test"], negative_ttl=42) as s:
        yield s


async def ask(
    server: DNSServer,
    name: str,
    rdtype: str = "TXT",
    *,
    tcp: bool = False,
    wait: float = 2.0,
    use_edns: bool | int = False,
    payload: int = 1232,
    rdclass: str = "IN",
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, rdclass, use_edns=use_edns, payload=payload)
    if tcp:
        return await dns.asyncquery.tcp(query, server.host, port=server.port, timeout=wait)
    return await dns.asyncquery.udp(query, server.host, port=server.port, timeout=wait)


def answer_rrset(response: dns.message.Message) -> dns.rrset.RRset:
    assert len(response.answer) == 1
    return response.answer[0]


def txt_strings(response: dns.message.Message) -> list[list[bytes]]:
    return [list(rdata.strings) for rdata in answer_rrset(response)]


class RawUDP(asyncio.DatagramProtocol):
    """A bare UDP socket, for sending what dnspython would never send."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received.put_nowait(data)


async def raw_udp(server: DNSServer) -> tuple[asyncio.DatagramTransport, RawUDP]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        RawUDP, remote_addr=(server.host, server.port)
    )
    return transport, protocol


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_txt_answer_is_authoritative_on_udp_and_tcp(server: DNSServer, tcp: bool) -> None:
    server.set_txt("_synq.acme.test", ["v=synq1; relay=https://relay.acme.test"], ttl=123)
    response = await ask(server, "_synq.acme.test", tcp=tcp)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    rrset = answer_rrset(response)
    assert rrset.ttl == 123
    assert txt_strings(response) == [[b"v=synq1; relay=https://relay.acme.test"]]
    assert server.queries[-1] == Query("_synq.acme.test", "TXT", "tcp" if tcp else "udp")


async def test_names_are_case_insensitive(server: DNSServer) -> None:
    server.set_txt("_SYNQ.Acme.Test.", "v=synq1; relay=https://relay.acme.test")
    response = await ask(server, "_synq.ACME.test")
    assert txt_strings(response) == [[b"v=synq1; relay=https://relay.acme.test"]]
    assert server.query_count("_synq.acme.test", "txt") == 1


async def test_a_and_aaaa_records(server: DNSServer) -> None:
    server.set_a("relay.acme.test", ["127.0.0.1", "127.0.0.2"])
    server.set_aaaa("relay.acme.test", "::1")
    a = answer_rrset(await ask(server, "relay.acme.test", "A"))
    aaaa = answer_rrset(await ask(server, "relay.acme.test", "AAAA"))
    assert sorted(rdata.to_text() for rdata in a) == ["127.0.0.1", "127.0.0.2"]
    assert [rdata.to_text() for rdata in aaaa] == ["::1"]


async def test_unknown_name_is_nxdomain_with_soa_for_negative_caching(server: DNSServer) -> None:
    response = await ask(server, "nowhere.acme.test")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    assert not response.answer
    (soa,) = response.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name.to_text() == "acme.test."
    # RFC 2308 §5: the negative TTL is min(SOA TTL, SOA MINIMUM).
    assert soa.ttl == 42
    assert soa[0].minimum == 42


async def test_other_type_at_existing_name_is_nodata(server: DNSServer) -> None:
    server.set_txt("relay.acme.test", "hello")
    response = await ask(server, "relay.acme.test", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert not response.answer
    assert response.authority[0].rdtype == dns.rdatatype.SOA


async def test_rfc8020_empty_non_terminal_is_nodata_not_nxdomain(server: DNSServer) -> None:
    server.set_txt("s1._synqkey.acme.test", "v=synq1; k=ed25519; p=x")
    response = await ask(server, "_synqkey.acme.test")
    assert response.rcode() == dns.rcode.NOERROR
    assert not response.answer


async def test_zone_apex_serves_its_soa(server: DNSServer) -> None:
    response = await ask(server, "acme.test", "SOA")
    assert answer_rrset(response).rdtype == dns.rdatatype.SOA
    assert (await ask(server, "acme.test", "TXT")).rcode() == dns.rcode.NOERROR


async def test_names_outside_the_zones_are_refused(server: DNSServer) -> None:
    response = await ask(server, "example.com")
    assert response.rcode() == dns.rcode.REFUSED
    assert not response.flags & dns.flags.AA
    with pytest.raises(ValueError, match="outside the zones"):
        server.set_txt("example.com", "x")


async def test_added_zone_is_served(server: DNSServer) -> None:
    server.add_zone("globex.test")
    server.set_txt("_synq.globex.test", "v=synq1; relay=https://relay.globex.test")
    assert (await ask(server, "_synq.globex.test")).rcode() == dns.rcode.NOERROR
    assert set(server.zones) == {"globex.test", "acme.test"}


async def test_chaos_class_is_refused(server: DNSServer) -> None:
    response = await ask(server, "_synq.acme.test", rdclass="CH")
    assert response.rcode() == dns.rcode.REFUSED


async def test_other_opcodes_are_not_implemented(server: DNSServer) -> None:
    query = dns.message.make_query("acme.test", "SOA")
    query.set_opcode(dns.opcode.NOTIFY)
    response = await dns.asyncquery.udp(query, server.host, port=server.port, timeout=2.0)
    assert response.rcode() == dns.rcode.NOTIMP


# ---------------------------------------------------------------- long TXT values


@pytest.mark.parametrize(
    ("size", "chunks"),
    [(0, [0]), (1, [1]), (255, [255]), (256, [255, 1]), (600, [255, 255, 90])],
)
async def test_rfc7208_3_3_long_txt_split_into_character_strings(
    server: DNSServer, size: int, chunks: list[int]
) -> None:
    value = bytes(ord("a") + i % 26 for i in range(size))
    server.set_txt("long.acme.test", [value])
    (strings,) = txt_strings(await ask(server, "long.acme.test", tcp=True))
    assert [len(s) for s in strings] == chunks
    assert b"".join(strings) == value


async def test_udp_answer_too_big_is_truncated_and_tcp_carries_it(server: DNSServer) -> None:
    values = [("v=synq1; " + "x" * 400 + str(i)) for i in range(3)]
    server.set_txt("big.acme.test", values)
    truncated = await ask(server, "big.acme.test")
    assert truncated.flags & dns.flags.TC
    assert len(truncated.to_wire()) <= 512
    full = await ask(server, "big.acme.test", tcp=True)
    assert not full.flags & dns.flags.TC
    assert sorted(b"".join(s).decode() for s in txt_strings(full)) == sorted(values)


async def test_edns_payload_lets_a_larger_answer_fit_in_udp(server: DNSServer) -> None:
    server.set_txt("big.acme.test", ["y" * 700])
    assert (await ask(server, "big.acme.test")).flags & dns.flags.TC
    response = await ask(server, "big.acme.test", use_edns=0, payload=1232)
    assert not response.flags & dns.flags.TC
    assert b"".join(txt_strings(response)[0]) == b"y" * 700


# ---------------------------------------------------------------- changing the zone while running


async def test_records_change_while_running(server: DNSServer) -> None:
    server.set_txt("_synq.acme.test", "v=synq1; relay=https://one.acme.test", ttl=60)
    assert txt_strings(await ask(server, "_synq.acme.test")) == [
        [b"v=synq1; relay=https://one.acme.test"]
    ]
    server.set_txt("_synq.acme.test", "v=synq1; relay=https://two.acme.test")
    assert txt_strings(await ask(server, "_synq.acme.test")) == [
        [b"v=synq1; relay=https://two.acme.test"]
    ]
    server.add_txt("_synq.acme.test", "v=spf1 -all")
    assert len(answer_rrset(await ask(server, "_synq.acme.test"))) == 2
    server.set_ttl("_synq.acme.test", 7)
    assert answer_rrset(await ask(server, "_synq.acme.test")).ttl == 7
    server.remove("_synq.acme.test", "TXT")
    assert (await ask(server, "_synq.acme.test")).rcode() == dns.rcode.NXDOMAIN


async def test_remove_whole_name_and_clear(server: DNSServer) -> None:
    server.set_txt("a.acme.test", "x")
    server.set_a("a.acme.test", "127.0.0.1")
    server.set_txt("b.acme.test", "y")
    server.remove("a.acme.test")
    assert (await ask(server, "a.acme.test", "A")).rcode() == dns.rcode.NXDOMAIN
    server.clear()
    assert (await ask(server, "b.acme.test")).rcode() == dns.rcode.NXDOMAIN


async def test_soa_serial_moves_with_every_change(server: DNSServer) -> None:
    before = answer_rrset(await ask(server, "acme.test", "SOA"))[0].serial
    server.set_txt("x.acme.test", "1")
    after = answer_rrset(await ask(server, "acme.test", "SOA"))[0].serial
    assert after > before


# ---------------------------------------------------------------- faults and the query log


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_dropped_name_times_out_others_answer(server: DNSServer, tcp: bool) -> None:
    server.set_txt("_synq.acme.test", "v=synq1; relay=https://relay.acme.test")
    server.set_txt("other.acme.test", "fine")
    server.set_fault(Fault.DROP, "_synq.acme.test")
    with pytest.raises(dns.exception.Timeout):
        await ask(server, "_synq.acme.test", tcp=tcp, wait=FAST_TIMEOUT)
    assert (await ask(server, "other.acme.test", tcp=tcp)).rcode() == dns.rcode.NOERROR
    # The dropped query still reached the server.
    assert server.query_count("_synq.acme.test") == 1
    server.set_fault(None, "_synq.acme.test")
    assert (await ask(server, "_synq.acme.test", tcp=tcp)).rcode() == dns.rcode.NOERROR


async def test_servfail_for_one_name_and_for_the_whole_server(server: DNSServer) -> None:
    server.set_txt("a.acme.test", "x")
    server.set_fault(Fault.SERVFAIL, "a.acme.test")
    assert (await ask(server, "a.acme.test")).rcode() == dns.rcode.SERVFAIL
    assert (await ask(server, "b.acme.test")).rcode() == dns.rcode.NXDOMAIN
    server.set_fault(Fault.SERVFAIL)
    assert (await ask(server, "b.acme.test")).rcode() == dns.rcode.SERVFAIL
    assert (await ask(server, "example.com")).rcode() == dns.rcode.SERVFAIL
    server.clear_faults()
    assert (await ask(server, "a.acme.test")).rcode() == dns.rcode.NOERROR


async def test_whole_server_drop(server: DNSServer) -> None:
    server.set_fault(Fault.DROP)
    with pytest.raises(dns.exception.Timeout):
        await ask(server, "a.acme.test", wait=FAST_TIMEOUT)
    server.set_fault(None)
    assert (await ask(server, "a.acme.test")).rcode() == dns.rcode.NXDOMAIN


async def test_query_log_and_counts(server: DNSServer) -> None:
    await ask(server, "a.acme.test", "TXT")
    await ask(server, "a.acme.test", "A")
    await ask(server, "b.acme.test", "TXT", tcp=True)
    assert server.query_count() == 3
    assert server.query_count("a.acme.test") == 2
    assert server.query_count("A.ACME.TEST.", "A") == 1
    assert server.query_count(rdtype="TXT") == 2
    assert [q.transport for q in server.queries] == ["udp", "udp", "tcp"]
    server.reset_queries()
    assert server.query_count() == 0


# ---------------------------------------------------------------- hostile or odd input


async def test_rfc1035_4_1_1_unparsable_question_gets_formerr(server: DNSServer) -> None:
    query = dns.message.make_query("a.acme.test", "TXT")
    transport, protocol = await raw_udp(server)
    try:
        transport.sendto(query.to_wire()[:-3])
        response = dns.message.from_wire(await protocol.received.get())
    finally:
        transport.close()
    assert response.id == query.id
    assert response.rcode() == dns.rcode.FORMERR
    assert server.query_count() == 0


async def test_short_packets_and_responses_get_no_answer(server: DNSServer) -> None:
    query = dns.message.make_query("a.acme.test", "TXT")
    stray_response = dns.message.make_response(dns.message.make_query("b.acme.test", "TXT"))
    transport, protocol = await raw_udp(server)
    try:
        transport.sendto(b"\x12")
        transport.sendto(stray_response.to_wire())
        transport.sendto(query.to_wire())
        # Datagrams on loopback arrive in order: the first answer is the real query's.
        first = dns.message.from_wire(await protocol.received.get())
    finally:
        transport.close()
    assert first.id == query.id
    assert protocol.received.empty()


async def test_rfc7766_6_2_1_pipelined_queries_on_one_tcp_connection(server: DNSServer) -> None:
    server.set_txt("a.acme.test", "one")
    server.set_txt("b.acme.test", "two")
    queries = [dns.message.make_query(n, "TXT") for n in ("a.acme.test", "b.acme.test")]
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(b"".join(q.to_wire(prepend_length=True) for q in queries))
        await writer.drain()
        answers = []
        for _ in queries:
            length = int.from_bytes(await reader.readexactly(2), "big")
            answers.append(dns.message.from_wire(await reader.readexactly(length)))
    finally:
        writer.close()
        await writer.wait_closed()
    assert [a.id for a in answers] == [q.id for q in queries]
    assert [txt_strings(a) for a in answers] == [[[b"one"]], [[b"two"]]]


# ---------------------------------------------------------------- lifecycle


async def test_port_zero_gives_distinct_ports_and_an_address() -> None:
    async with DNSServer() as one, DNSServer() as two:
        assert one.port != two.port
        assert one.address == f"127.0.0.1:{one.port}"
        assert one.zones == ("test",)


async def test_port_is_unknown_before_start_and_closed_after() -> None:
    server = DNSServer()
    with pytest.raises(RuntimeError):
        _ = server.port
    async with server:
        port = server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Closing the server also closed the open client connection.
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
async def test_ipv6_loopback() -> None:
    async with DNSServer(host="::1", zones=["acme.test"]) as server:
        server.set_txt("a.acme.test", "v6")
        assert server.address == f"[::1]:{server.port}"
        assert txt_strings(await ask(server, "a.acme.test")) == [[b"v6"]]
        assert txt_strings(await ask(server, "a.acme.test", tcp=True)) == [[b"v6"]]
