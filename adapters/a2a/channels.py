"""gRPC channels to A2A agents whose card offers the gRPC binding (A2A 1.0 §10; SPEC.md "A2A
agents as addresses").

A card's gRPC interface names its target as ``host:port`` (the form gRPC's own name syntax
and the SDKs use), or with a scheme: ``grpc://`` or ``http://`` for plaintext HTTP/2,
``grpcs://`` or ``https://`` for TLS (port 443 when none is given). The target is chosen by
the agent's card, not by the operator, so it meets the relay's rules for URLs other parties
name (SPEC.md §7.6) before anything connects:

1. **Address.** The host is resolved by the relay's guarded resolver (``resolve``: the same
   address policy as well-known fetches — loopback, private, link-local and the like refused
   unless the operator allows private addresses or the network); a host with no permitted
   address is refused.
2. **Connect to what was checked.** The channel's target is the checked IP address itself
   (``ipv4:a.b.c.d:port`` / ``ipv6:[…]:port``), so gRPC's own resolver never sees the name
   and a DNS answer that changes in between (rebinding) cannot slip past the check. With TLS,
   the certificate is still verified for the host name (``grpc.ssl_target_name_override``),
   which is also the ``:authority``.
3. **Plaintext** only where the relay allows private addresses (as ``http`` URLs, rule 1 of
   §7.6): a ``grpc://``/``http://`` target, or a bare ``host:port`` that resolved to a
   non-public address (a loopback agent). Everything else is TLS.
4. No proxy from the environment (``grpc.enable_http_proxy`` off), as the HTTP client reads
   none.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import grpc
import grpc.aio

from relay.core.errors import BadAgentCard

__all__ = ["GrpcTarget", "Resolve", "open_channel", "parse_target"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The relay's guarded resolution: the permitted addresses of a host name or IP literal, or a
#: SynqError (refused, unresolvable) — relay/runtime.py builds it from ``[discovery]``.
Resolve = Callable[[str], Awaitable[list[IPAddress]]]

#: Schemes a card may put before a gRPC target, and whether each means TLS.
_SCHEMES: Final[dict[str, bool]] = {"grpc": False, "http": False, "grpcs": True, "https": True}
#: The port of a TLS target named without one.
_TLS_PORT: Final = 443


@dataclass(frozen=True, slots=True)
class GrpcTarget:
    host: str
    port: int
    #: True/False when the card's scheme says; None for a bare ``host:port`` (decided by the
    #: address it resolves to, rule 3).
    tls: bool | None


def parse_target(url: str) -> GrpcTarget:
    """A card's gRPC interface URL as host, port and transport security; BadAgentCard when it
    names none."""
    text = url.strip()
    tls: bool | None = None
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() not in _SCHEMES:
            raise BadAgentCard(f"the gRPC interface {url[:100]!r} has an unknown scheme")
        tls = _SCHEMES[scheme.lower()]
        text = rest.split("/", 1)[0]
    if "@" in text or not text:
        raise BadAgentCard(f"the gRPC interface {url[:100]!r} names no host")
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise BadAgentCard(f"the gRPC interface {url[:100]!r} is not host:port")
        port_text = after[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" not in text:
        host, port_text = text, ""
    else:
        raise BadAgentCard(f"the gRPC interface {url[:100]!r} is not host:port")
    if not port_text:
        if not tls:
            raise BadAgentCard(f"the gRPC interface {url[:100]!r} names no port")
        port_text = str(_TLS_PORT)
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadAgentCard(f"the gRPC interface {url[:100]!r} is not host:port")
    return GrpcTarget(host.lower(), int(port_text), tls)


def _numeric(ip: IPAddress, port: int) -> str:
    return f"ipv6:[{ip}]:{port}" if ip.version == 6 else f"ipv4:{ip}:{port}"


async def open_channel(
    url: str, resolve: Resolve, *, allow_plaintext: bool
) -> tuple[grpc.aio.Channel, str]:
    """A channel to the checked address of a card's gRPC target, and the address it connects
    to (for logs and spans). SynqError when the target is malformed or refused."""
    target = parse_target(url)
    addresses = await resolve(target.host)
    if not addresses:
        raise BadAgentCard(f"the gRPC interface {target.host} has no permitted address")
    ip = addresses[0]
    plaintext = target.tls is False or (target.tls is None and not ip.is_global)
    if plaintext and not allow_plaintext:
        raise BadAgentCard(
            f"the gRPC interface {target.host}:{target.port} is plaintext; the relay reaches "
            "such agents only when it allows private addresses"
        )
    host = f"[{target.host}]" if ":" in target.host else target.host
    authority = f"{host}:{target.port}"
    options: list[tuple[str, str | int]] = [
        ("grpc.enable_http_proxy", 0),
        ("grpc.default_authority", authority),
    ]
    address = _numeric(ip, target.port)
    if plaintext:
        return grpc.aio.insecure_channel(address, options=options), address
    options.append(("grpc.ssl_target_name_override", target.host))
    credentials = grpc.ssl_channel_credentials()  # grpcio's bundled roots
    return grpc.aio.secure_channel(address, credentials, options=options), address
