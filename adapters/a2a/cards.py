"""A2A agent cards: fetching an agent's own card with bounds, rewriting it for publication at
the relay's face, and signing it with the relay's key (A2A 1.0 §8.4).

Publication (SPEC.md "A2A mapping"): the card a relay serves for an address keeps what the
agent says about itself (name, description, skills, input and output modes, provider) and
replaces what only the relay can promise: ``supportedInterfaces`` (JSON-RPC and HTTP+JSON at
``<public_url>/a2a/<address>``, and gRPC when the face's gRPC listener is on), the capabilities of the face (streaming and push
notifications, which the relay provides whatever the agent does), the security scheme (the
local agent's Synq bearer token), and the signature.

Signatures (A2A 1.0 §8.4.2): a JWS (RFC 7515) whose payload is the RFC 8785 canonical form of
the card without ``signatures``, detached, with protected header ``{"alg": "EdDSA", "kid":
<selector>, "jku": <public_url>/a2a/jwks.json, "typ": "JOSE"}``. The canonical form is the one
both reference SDKs compute (a2a-sdk ``utils/signing.py``, @a2a-js/sdk ``signature.ts``): the
card parsed into the protocol's model and printed back in its JSON mapping, with empty strings,
lists and objects removed. The relay serves the card in that mapping, so what it signs is what
either SDK verifies (a test checks each). One consequence, of the SDKs' making: members whose
value is empty are outside the signature — among them a security requirement with no scopes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Final

from a2a.client.card_resolver import parse_agent_card
from a2a.types import AgentCard
from a2a.utils.signing import (
    SignatureVerificationError,
    create_agent_card_signer,
    create_signature_verifier,
)
from google.protobuf import json_format
from jwt.api_jwk import PyJWK

from relay.core import jsonutil
from relay.core.address import Address
from relay.core.cards import A2A_PROTOCOL_VERSION, SYNQ_ADDRESS_EXTENSION, a2a_base_url
from relay.core.errors import BadAgentCard, BadSignature, MalformedRequest, PayloadTooLarge
from relay.core.jws import PublicKey, SigningKey, b64url_decode

__all__ = [
    "JWKS_PATH",
    "MAX_CARD_BYTES",
    "SECURITY_SCHEME",
    "card_kids",
    "json_form",
    "parse_card",
    "publish_card",
    "sign_card",
    "verify_card",
]

#: Largest agent card the relay reads, from a local agent or a partner relay. Stops a broken
#: or hostile agent from making the relay download and parse megabytes on every card fetch;
#: the richest real cards are a few kilobytes. Same bound as a partner's well-known document
#: (SPEC.md §10.2 ``MAX_WELL_KNOWN_BYTES``).
MAX_CARD_BYTES: Final = 65_536
#: Where a relay publishes the keys that verify its card signatures (the ``jku`` of §8.4.2).
JWKS_PATH: Final = "/a2a/jwks.json"
#: The name of the face's security scheme (A2A 1.0 §4.5): the local agent's bearer token.
SECURITY_SCHEME: Final = "synq"
#: Protobuf fields the relay replaces or drops when it publishes an agent's card.
_REPLACED: Final = ("supportedInterfaces", "securitySchemes", "securityRequirements", "signatures")


def parse_card(data: bytes, where: str) -> AgentCard:
    """A card from raw bytes: bounded, strict JSON, an A2A 1.0 AgentCard with at least one
    interface the relay can speak (JSON-RPC, HTTP+JSON or gRPC)."""
    if len(data) > MAX_CARD_BYTES:
        raise BadAgentCard(f"{where}: the agent card is larger than {MAX_CARD_BYTES} bytes")
    try:
        raw = jsonutil.loads(data, max_bytes=MAX_CARD_BYTES, what="agent card")
    except (MalformedRequest, PayloadTooLarge):
        raise BadAgentCard(f"{where}: the agent card is not JSON") from None
    if not isinstance(raw, dict):
        raise BadAgentCard(f"{where}: the agent card is not a JSON object")
    try:
        card = parse_agent_card(copy.deepcopy(raw))
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise BadAgentCard(f"{where}: not an A2A agent card ({str(exc)[:120]})") from None
    if not card.name:
        raise BadAgentCard(f"{where}: not an A2A agent card (no name)")
    usable = [i for i in card.supported_interfaces if i.protocol_binding in _BINDINGS and i.url]
    if not usable:
        raise BadAgentCard(
            f"{where}: the agent card names no JSON-RPC, HTTP+JSON or gRPC interface the relay "
            "can use"
        )
    return card


_BINDINGS: Final = frozenset({"JSONRPC", "HTTP+JSON", "GRPC"})


def publish_card(
    card: AgentCard | Mapping[str, Any],
    address: Address,
    public_url: str,
    *,
    require_token: bool = True,
    grpc_target: str | None = None,
) -> AgentCard:
    """The card the relay serves for ``address``: the agent's own description, the face's
    interfaces, capabilities and security (see the module docstring). ``grpc_target``: the
    face's gRPC listener (``host:port``), listed with the address as its ``tenant`` — the
    one listener serves every address, and a client names the one it calls that way."""
    data = json_format.MessageToDict(card) if isinstance(card, AgentCard) else dict(card)
    data = {k: v for k, v in copy.deepcopy(data).items() if k not in _REPLACED}
    base = a2a_base_url(public_url, address)
    data["supportedInterfaces"] = [
        {"url": base, "protocolBinding": "JSONRPC", "protocolVersion": A2A_PROTOCOL_VERSION},
        {"url": base, "protocolBinding": "HTTP+JSON", "protocolVersion": A2A_PROTOCOL_VERSION},
    ]
    if grpc_target:
        data["supportedInterfaces"].append(
            {
                "url": grpc_target,
                "protocolBinding": "GRPC",
                "tenant": str(address),
                "protocolVersion": A2A_PROTOCOL_VERSION,
            }
        )
    capabilities = dict(data.get("capabilities") or {})
    # The face streams and pushes whatever the agent behind it does (updates reach it as
    # envelopes), and has no extended card of its own.
    capabilities["streaming"] = True
    capabilities["pushNotifications"] = True
    capabilities.pop("extendedAgentCard", None)
    extensions = [
        e
        for e in capabilities.get("extensions") or []
        if isinstance(e, dict) and e.get("uri") != SYNQ_ADDRESS_EXTENSION
    ]
    extensions.append(
        {
            "uri": SYNQ_ADDRESS_EXTENSION,
            "description": "The agent's Synq address",
            "params": {"address": str(address)},
        }
    )
    capabilities["extensions"] = extensions
    data["capabilities"] = capabilities
    data["securitySchemes"] = {
        SECURITY_SCHEME: {
            "httpAuthSecurityScheme": {
                "scheme": "Bearer",
                "description": "The bearer token of a local agent of this relay (synq agent add)",
            }
        }
    }
    if require_token:
        data["securityRequirements"] = [{"schemes": {SECURITY_SCHEME: {"list": []}}}]
    for field in ("defaultInputModes", "defaultOutputModes"):
        if not data.get(field):
            data[field] = ["text/plain"]
    data.setdefault("version", "1")
    data.setdefault("description", f"Synq agent {address}")
    data.setdefault("skills", [])
    try:
        published: AgentCard = json_format.ParseDict(data, AgentCard(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise BadAgentCard(f"the agent card of {address} cannot be republished: {exc}") from None
    return published


def json_form(card: AgentCard) -> dict[str, Any]:
    """A card as served: its protobuf JSON mapping (A2A 1.0 §5)."""
    data: dict[str, Any] = json_format.MessageToDict(card)
    return data


def sign_card(card: AgentCard, key: SigningKey, public_url: str) -> dict[str, Any]:
    """The card as served, with one signature by the relay's current key in place of any it
    had (see the module docstring for what the signature covers)."""
    unsigned = AgentCard()
    unsigned.CopyFrom(card)
    del unsigned.signatures[:]
    jwk = PyJWK(key.private_jwk_dict(), algorithm="EdDSA")
    signer = create_agent_card_signer(
        jwk,
        {
            "alg": "EdDSA",
            "kid": key.selector,
            "jku": public_url.rstrip("/") + JWKS_PATH,
            "typ": "JOSE",
        },
    )
    return json_form(signer(unsigned))


def card_kids(card: Mapping[str, Any]) -> list[str]:
    """The ``kid`` of every signature of a card (protected headers that do not decode are
    skipped; the verifier refuses them)."""
    kids: list[str] = []
    for sig in card.get("signatures") or []:
        if not isinstance(sig, dict) or not isinstance(sig.get("protected"), str):
            continue
        try:
            header = jsonutil.loads(b64url_decode(sig["protected"]), max_bytes=4096, what="header")
        except (ValueError, MalformedRequest, PayloadTooLarge):
            continue
        if isinstance(header, dict) and isinstance(header.get("kid"), str):
            kids.append(header["kid"])
    return kids


def verify_card(card: Mapping[str, Any], keys: Mapping[str, PublicKey]) -> None:
    """Raise BadSignature unless a signature of ``card`` verifies with one of ``keys`` (by
    selector). The keys come from the signer's DNS, never from the card's ``jku``: a card must
    not name its own verifier (as DKIM keys come from the signing domain's DNS)."""

    def provider(kid: str | None, _jku: str | None) -> PyJWK:
        key = keys.get(kid or "")
        if key is None:
            raise BadSignature(f"no key {kid!r}")
        return PyJWK({"kty": "OKP", "crv": "Ed25519", "x": key.b64url}, algorithm="EdDSA")

    verifier: Callable[[AgentCard], None] = create_signature_verifier(
        _safe_provider(provider), ["EdDSA"]
    )
    try:
        verifier(parse_agent_card(copy.deepcopy(dict(card))))
    except (SignatureVerificationError, json_format.ParseError, ValueError) as exc:
        raise BadSignature(f"the agent card's signature does not verify: {exc}") from None


def _safe_provider(
    provider: Callable[[str | None, str | None], PyJWK],
) -> Callable[[str | None, str | None], PyJWK]:
    """The SDK's verifier skips a signature whose key look-up raises PyJWTError only; turn an
    unknown kid into that, so one unknown key does not hide a good signature beside it."""
    from jwt.exceptions import PyJWKError

    def wrapped(kid: str | None, jku: str | None) -> PyJWK:
        try:
            return provider(kid, jku)
        except BadSignature as exc:
            raise PyJWKError(exc.message) from None

    return wrapped
