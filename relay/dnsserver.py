"""A small authoritative DNS server for loopback use: ``synq demo`` and the tests run it.

Production relays never start one; they publish their records in their real DNS zone and
resolve partners through the system resolver. This server exists so that the demo and the
tests exercise the same code path as production — dnspython's stub resolver sending real
queries over UDP and TCP — instead of a patched resolver.

What it does, and the RFC each behaviour follows:

* answers over UDP and TCP on one host and port (RFC 1035 §4.2, RFC 7766: TCP is mandatory,
  and a resolver falls back to it when a UDP answer is truncated); port 0 picks a free port,
  read back from :attr:`DNSServer.port`;
* is authoritative (AA) for a set of zones, answers NXDOMAIN for unknown names inside them
  and REFUSED outside them (RFC 1035 §4.1.1); a name with nothing of the asked type, or an
  empty non-terminal (``_synqkey.acme.test`` when ``s1._synqkey.acme.test`` exists), gets an
  empty NOERROR answer, because NXDOMAIN would deny every name below it (RFC 8020);
* puts the zone's SOA in the authority section of negative answers, so resolvers can cache
  them for ``min(SOA TTL, SOA MINIMUM)`` (RFC 2308 §3, §5);
* splits TXT values longer than 255 bytes into several character-strings, which readers
  concatenate (RFC 1035 §3.3.14, RFC 7208 §3.3, RFC 6376 §3.6.2.2);
* truncates UDP answers to 512 bytes, or to the EDNS payload size the query offers, and sets
  TC (RFC 1035 §4.2.1, RFC 6891 §6.2.3);
* answers FORMERR to a query it cannot parse past the header, and nothing at all to a packet
  too short to carry an id or to a packet that is itself a response (answering responses is
  how two servers end up in a reflection loop).

All parsing and rendering is dnspython's (``dns.message.from_wire``, ``make_response``,
``to_wire``); the only framing written here is TCP's two-byte length prefix.

Tests change the zone while the server runs and inject faults: a name, or the whole server,
can be set to :attr:`Fault.DROP` (never answer: the client times out) or
:attr:`Fault.SERVFAIL`. Every parsed query is recorded, so a test can assert that a cache
answered instead of the network::

    async with DNSServer(host="127.0.0.1", zones=["acme.test"]) as server:
        server.set_txt("_synq.acme.test", ["v=synq1; relay=https://relay.acme.test"], ttl=300)
        resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", server.port)]
        ...
        assert server.query_count("_synq.acme.test", "TXT") == 1

The zone is plain in-memory state changed from the event loop the server runs on; it takes
no lock because every change and every answer happen on that one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

__all__ = [
    "DEFAULT_NEGATIVE_TTL",
    "DEFAULT_TTL",
    "DEFAULT_ZONES",
    "DNSServer",
    "Fault",
    "Query",
]

#: TTL of records added without one. Five minutes: long enough that a resolver's cache is
#: visible in tests, short enough that a demo's changes show up without restarting anything.
DEFAULT_TTL: Final = 300

#: SOA MINIMUM and SOA TTL of every zone: how long resolvers may cache a negative answer
#: (RFC 2308 §4-5). Short, because in a demo a name is often queried before it is published.
DEFAULT_NEGATIVE_TTL: Final = 30

#: Zones served unless others are given: ``.test`` is reserved for testing (RFC 6761 §6.2),
#: so the demo's domains (``acme.test``, ``globex.test``) can never collide with real ones.
DEFAULT_ZONES: Final = ("test",)

#: Largest character-string in a TXT record (RFC 1035 §3.3: one length octet).
MAX_TXT_STRING: Final = 255

#: Largest UDP answer to a query without EDNS (RFC 1035 §2.3.4).
CLASSIC_UDP_PAYLOAD: Final = 512

#: Largest UDP payload we agree to, whatever a query's EDNS offers: the size the DNS Flag Day
#: 2020 settled on to avoid IP fragmentation; larger answers go over TCP.
MAX_UDP_PAYLOAD: Final = 1232

#: How long an idle TCP connection is kept open. RFC 7766 §6.2.3 suggests seconds, not
#: minutes; a client that opens connections and sends nothing must not pin them for long.
TCP_IDLE_TIMEOUT: Final = 10.0

#: Tries at finding a port free for both UDP and TCP when asked for port 0: the kernel picks
#: the UDP port, and the TCP port of the same number may already be taken by someone else.
_BIND_ATTEMPTS: Final = 20

_IN: Final = dns.rdataclass.IN


class Fault(enum.Enum):
    """A failure the server can be told to simulate, for one name or for every query."""

    #: Read the query and never answer: the resolver times out.
    DROP = "drop"
    #: Answer SERVFAIL (RFC 1035 §4.1.1 rcode 2): the resolver reports a server failure.
    SERVFAIL = "servfail"


@dataclass(frozen=True, slots=True)
class Query:
    """One query the server received (and could parse)."""

    #: Lower-case, without the trailing dot.
    name: str
    #: The type's mnemonic: ``"TXT"``, ``"A"``, …
    rdtype: str
    transport: Literal["udp", "tcp"]


def _name(name: str | dns.name.Name) -> dns.name.Name:
    """An absolute name; a string is taken as fully qualified whether or not it ends in a dot."""
    if isinstance(name, dns.name.Name):
        return name if name.is_absolute() else name.concatenate(dns.name.root)
    return dns.name.from_text(name, origin=dns.name.root)


def _label(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _txt_rdata(value: str | bytes) -> dns.rdtypes.ANY.TXT.TXT:
    """One TXT record whose value may exceed 255 bytes: split into character-strings.

    RFC 7208 §3.3 and RFC 6376 §3.6.2.2: a long record is published as several strings in one
    TXT record and the reader concatenates them with nothing in between.
    """
    data = value.encode("utf-8") if isinstance(value, str) else value
    chunks = [data[i : i + MAX_TXT_STRING] for i in range(0, len(data), MAX_TXT_STRING)]
    return dns.rdtypes.ANY.TXT.TXT(_IN, dns.rdatatype.TXT, chunks or [b""])


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not inherit DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self._server._reply(data, "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DNSServer:
    """An authoritative DNS server on loopback with an in-memory, changeable zone.

    Use as an async context manager (or call :meth:`start` and :meth:`close`). Record-changing
    methods take effect for the next query; they raise ``ValueError`` for a name outside every
    zone, since the server would refuse to answer for it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        zones: Iterable[str] = DEFAULT_ZONES,
        default_ttl: int = DEFAULT_TTL,
        negative_ttl: int = DEFAULT_NEGATIVE_TTL,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self.default_ttl = default_ttl
        self.negative_ttl = negative_ttl
        self._zones: list[dns.name.Name] = []
        self._records: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rrset.RRset]] = {}
        self._faults: dict[dns.name.Name, Fault] = {}
        self._server_fault: Fault | None = None
        self._queries: list[Query] = []
        self._serial = 1
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        for zone in zones:
            self.add_zone(zone)

    # ---------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        """The port the server listens on (UDP and TCP); known once started."""
        if self._port is None:
            raise RuntimeError("the DNS server is not started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` as a Synq ``nameservers`` entry spells it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        if self._udp is not None:
            raise RuntimeError("the DNS server is already started")
        loop = asyncio.get_running_loop()
        attempts = _BIND_ATTEMPTS if self._requested_port == 0 else 1
        for attempt in range(attempts):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), local_addr=(self.host, self._requested_port)
            )
            port = int(udp.get_extra_info("sockname")[1])
            try:
                tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError as exc:
                udp.close()
                if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
                continue
            self._udp, self._tcp, self._port = udp, tcp, port
            return

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            # Closing each connection ends its handler with EOF. Cancelling the handlers
            # instead would make asyncio's stream callback log the cancellation as an error.
            handlers = list(self._tcp_handlers.items())
            for _task, writer in handlers:
                writer.close()
            await asyncio.gather(*(task for task, _ in handlers), return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None

    async def __aenter__(self) -> DNSServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---------------------------------------------------------------- zone contents

    def add_zone(self, origin: str) -> None:
        """Serve ``origin`` and every name below it."""
        zone = _name(origin)
        if zone not in self._zones:
            self._zones.append(zone)
            # Most specific first, so a name inside nested zones picks the innermost one.
            self._zones.sort(key=len, reverse=True)

    @property
    def zones(self) -> tuple[str, ...]:
        return tuple(_label(zone) for zone in self._zones)

    def set_txt(
        self, name: str, values: Sequence[str | bytes] | str | bytes, ttl: int | None = None
    ) -> None:
        """Replace the TXT records of ``name``: one record per value, long values split."""
        if isinstance(values, str | bytes):
            values = [values]
        self._set(name, dns.rdatatype.TXT, [_txt_rdata(v) for v in values], ttl)

    def add_txt(self, name: str, value: str | bytes, ttl: int | None = None) -> None:
        """Add one TXT record to ``name``, keeping the ones already there."""
        existing = self._rrset(name, dns.rdatatype.TXT)
        rdatas = [*(existing or []), _txt_rdata(value)]
        keep_ttl = existing.ttl if existing is not None else None
        self._set(name, dns.rdatatype.TXT, rdatas, ttl if ttl is not None else keep_ttl)

    def set_a(self, name: str, addresses: Sequence[str] | str, ttl: int | None = None) -> None:
        """Replace the A records of ``name``."""
        self.set_records(name, "A", [addresses] if isinstance(addresses, str) else addresses, ttl)

    def set_aaaa(self, name: str, addresses: Sequence[str] | str, ttl: int | None = None) -> None:
        """Replace the AAAA records of ``name``."""
        listed = [addresses] if isinstance(addresses, str) else addresses
        self.set_records(name, "AAAA", listed, ttl)

    def set_records(
        self, name: str, rdtype: str, texts: Iterable[str], ttl: int | None = None
    ) -> None:
        """Replace the records of any type from their zone-file text (RFC 1035 §5.1)."""
        kind = dns.rdatatype.from_text(rdtype)
        rdatas = [dns.rdata.from_text(_IN, kind, text) for text in texts]
        self._set(name, kind, rdatas, ttl)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Delete the records of one type at ``name``, or the whole name when no type is given."""
        owner = self._owner(name)
        node = self._records.get(owner)
        if node is None:
            return
        if rdtype is None:
            del self._records[owner]
        else:
            node.pop(dns.rdatatype.from_text(rdtype), None)
            if not node:
                del self._records[owner]
        self._bump()

    def set_ttl(self, name: str, ttl: int, rdtype: str | None = None) -> None:
        """Change the TTL of the records at ``name`` (of one type, or all of them)."""
        node = self._records.get(self._owner(name), {})
        for kind, rrset in node.items():
            if rdtype is None or kind == dns.rdatatype.from_text(rdtype):
                rrset.ttl = ttl
        self._bump()

    def clear(self) -> None:
        """Delete every record (the zones stay, answering NXDOMAIN)."""
        self._records.clear()
        self._bump()

    def _owner(self, name: str) -> dns.name.Name:
        owner = _name(name)
        if self._zone_of(owner) is None:
            raise ValueError(f"{_label(owner)!r} is outside the zones {self.zones}")
        return owner

    def _rrset(self, name: str, kind: dns.rdatatype.RdataType) -> dns.rrset.RRset | None:
        return self._records.get(self._owner(name), {}).get(kind)

    def _set(
        self,
        name: str,
        kind: dns.rdatatype.RdataType,
        rdatas: Sequence[dns.rdata.Rdata],
        ttl: int | None,
    ) -> None:
        owner = self._owner(name)
        if not rdatas:
            self.remove(name, dns.rdatatype.to_text(kind))
            return
        rrset = dns.rrset.from_rdata_list(owner, self.default_ttl if ttl is None else ttl, rdatas)
        self._records.setdefault(owner, {})[kind] = rrset
        self._bump()

    def _bump(self) -> None:
        # A new SOA serial for every change, as a real primary would (RFC 1982 arithmetic is
        # never needed: nothing here transfers zones).
        self._serial += 1

    # ---------------------------------------------------------------- faults and query log

    def set_fault(self, fault: Fault | None, name: str | None = None) -> None:
        """Make ``name`` (or, without a name, every query) fail as ``fault``; ``None`` heals."""
        if name is None:
            self._server_fault = fault
            return
        owner = _name(name)
        if fault is None:
            self._faults.pop(owner, None)
        else:
            self._faults[owner] = fault

    def clear_faults(self) -> None:
        self._faults.clear()
        self._server_fault = None

    @property
    def queries(self) -> tuple[Query, ...]:
        return tuple(self._queries)

    def query_count(self, name: str | None = None, rdtype: str | None = None) -> int:
        """How many queries arrived, optionally only for one name and/or type."""
        label = _label(_name(name)) if name is not None else None
        kind = rdtype.upper() if rdtype is not None else None
        return sum(
            1
            for q in self._queries
            if (label is None or q.name == label) and (kind is None or q.rdtype == kind)
        )

    def reset_queries(self) -> None:
        self._queries.clear()

    # ---------------------------------------------------------------- answering

    def _zone_of(self, name: dns.name.Name) -> dns.name.Name | None:
        for zone in self._zones:
            if name.is_subdomain(zone):
                return zone
        return None

    def _soa(self, zone: dns.name.Name) -> dns.rrset.RRset:
        # MNAME and RNAME are placeholders: nothing here sends NOTIFY or mail to hostmaster.
        soa = dns.rdata.from_text(
            _IN,
            dns.rdatatype.SOA,
            f"ns.{zone} hostmaster.{zone} {self._serial} 3600 600 86400 {self.negative_ttl}",
        )
        return dns.rrset.from_rdata_list(zone, self.negative_ttl, [soa])

    def _name_exists(self, name: dns.name.Name, zone: dns.name.Name) -> bool:
        """The name has records, is the zone apex, or is an empty non-terminal (RFC 8020)."""
        if name == zone or name in self._records:
            return True
        return any(owner.is_subdomain(name) for owner in self._records)

    def _reply(self, wire: bytes, transport: Literal["udp", "tcp"]) -> bytes | None:
        """The wire answer to one received message, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire, continue_on_error=True)
        except Exception:
            # Not even a header: there is no id to answer to.
            return None
        if query.flags & dns.flags.QR:
            return None
        if query.errors or len(query.question) != 1:
            formerr = dns.message.Message(id=query.id)
            formerr.flags = dns.flags.Flag.QR
            formerr.set_rcode(dns.rcode.FORMERR)
            return self._render(formerr, transport, CLASSIC_UDP_PAYLOAD)
        question = query.question[0]
        qname = question.name
        self._queries.append(
            Query(_label(qname), dns.rdatatype.to_text(question.rdtype), transport)
        )

        fault = self._faults.get(qname, self._server_fault)
        if fault is Fault.DROP:
            return None
        response = dns.message.make_response(query, our_payload=MAX_UDP_PAYLOAD)
        zone = self._zone_of(qname)
        if fault is Fault.SERVFAIL:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif question.rdclass != _IN or zone is None:
            response.set_rcode(dns.rcode.REFUSED)
        else:
            response.flags |= dns.flags.AA
            self._fill(response, qname, question.rdtype, zone)
        udp_limit = (
            min(max(query.payload, CLASSIC_UDP_PAYLOAD), MAX_UDP_PAYLOAD)
            if query.edns >= 0
            else CLASSIC_UDP_PAYLOAD
        )
        return self._render(response, transport, udp_limit)

    def _fill(
        self,
        response: dns.message.Message,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        zone: dns.name.Name,
    ) -> None:
        if rdtype == dns.rdatatype.SOA and qname == zone:
            response.answer.append(self._soa(zone))
            return
        rrset = self._records.get(qname, {}).get(rdtype)
        if rrset is not None:
            response.answer.append(rrset)
            return
        if not self._name_exists(qname, zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        # Negative answer (NXDOMAIN or NODATA): the SOA tells resolvers how long to cache it.
        response.authority.append(self._soa(zone))

    def _render(
        self, message: dns.message.Message, transport: Literal["udp", "tcp"], udp_limit: int
    ) -> bytes | None:
        if transport == "udp":
            # Too big for the datagram: send what fits with TC set; the resolver retries on TCP.
            return message.to_wire(max_size=udp_limit, prefer_truncation=True)
        try:
            return message.to_wire(max_size=65535, prepend_length=True)
        except dns.exception.TooBig:
            message.answer.clear()
            message.authority.clear()
            message.set_rcode(dns.rcode.SERVFAIL)
            return message.to_wire(prepend_length=True)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tcp_handlers[task] = writer
        try:
            # RFC 7766 §6.2.1: a client may send several queries on one connection, and
            # the server answers each (here in order, since answering never waits).
            while True:
                async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                    prefix = await reader.readexactly(2)
                    wire = await reader.readexactly(int.from_bytes(prefix, "big"))
                reply = self._reply(wire, "tcp")
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            self._tcp_handlers.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
