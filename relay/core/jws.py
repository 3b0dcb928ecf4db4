"""Envelope signatures: JWS compact serialisation (RFC 7515) with EdDSA / Ed25519 (RFC 8037).

Protected header, exactly: ``{"alg":"EdDSA","kid":"<selector>","typ":"synq+jws"}``. The payload
is the envelope JSON bytes as sent, so nothing is canonicalised: a verifier checks the bytes it
received and parses those same bytes.

The key that verifies an envelope is the one published at ``<kid>._synqkey.<domain>`` where
``domain`` is the envelope's ``from`` domain (SPEC.md §4.3). That binding — a signature
counts only for the domain whose DNS publishes the key — is what stops one partner signing for
another's domain.

Verification is split in two so the key look-up (DNS, cache) can be asynchronous:
``parse_compact`` does the structural checks without any crypto, ``verify`` checks the
signature once the caller has the key.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwcrypto import jwk
from jwcrypto.common import JWException

from relay.core import jsonutil
from relay.core.errors import (
    BadSignature,
    ConfigError,
    InvalidEnvelope,
    MalformedRequest,
    PayloadTooLarge,
)
from relay.core.limits import MAX_JWS_BYTES, MAX_JWS_HEADER_BYTES

ALG: Final = "EdDSA"
TYP: Final = "synq+jws"
#: A selector is one DNS label (RFC 1035 §2.3.1), lower case.
SELECTOR_RE: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_B64URL_RE: Final = re.compile(r"^[A-Za-z0-9_-]*$")
_ALLOWED_HEADER: Final = frozenset({"alg", "kid", "typ"})


def b64url_decode(text: str) -> bytes:
    """Unpadded, canonical base64url (RFC 7515 §2) to bytes; raise ValueError on anything else.

    Strict, so that one byte string has exactly one spelling: ``fullmatch`` because ``$`` would
    let a trailing newline through (which the lenient decoder then drops), and the re-encoding
    check because the last character may carry unused bits (RFC 4648 §3.5); either way two
    different tokens would carry the same signature.
    """
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(data) != text:
        raise ValueError("not canonical base64url (non-zero trailing bits)")
    return data


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private key and the selector it is published under."""

    selector: str
    key: jwk.JWK
    private_key: Ed25519PrivateKey = field(init=False, repr=False, compare=False)
    header_b64: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_selector(self.selector)
        if self.key.get("kty") != "OKP" or self.key.get("crv") != "Ed25519":
            raise ConfigError(f"key {self.selector!r} is not an Ed25519 key")
        if not self.key.has_private:
            raise ConfigError(f"key {self.selector!r} has no private part")
        private = self.key.get_op_key("sign")
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"key {self.selector!r} is not an Ed25519 private key")
        header = json.dumps({"alg": ALG, "kid": self.selector, "typ": TYP}, separators=(",", ":"))
        # Derived once per key, not per envelope.
        object.__setattr__(self, "private_key", private)
        object.__setattr__(self, "header_b64", b64url_encode(header.encode("ascii")))

    @classmethod
    def generate(cls, selector: str) -> SigningKey:
        return cls(selector, jwk.JWK.generate(kty="OKP", crv="Ed25519"))

    @classmethod
    def from_jwk_dict(cls, selector: str, data: dict[str, Any]) -> SigningKey:
        try:
            key = jwk.JWK(**data)
        except (JWException, ValueError, TypeError) as exc:
            raise ConfigError(f"key {selector!r} is not a valid JWK") from exc
        return cls(selector, key)

    def private_jwk_dict(self) -> dict[str, Any]:
        return dict(self.key.export(private_key=True, as_dict=True))

    @property
    def public_key(self) -> PublicKey:
        return PublicKey.from_raw(self.selector, b64url_decode(str(self.key.get("x"))))


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key, as published in DNS (``p=``) or in a JWKS."""

    selector: str
    raw: bytes
    verifier: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        object.__setattr__(self, "verifier", Ed25519PublicKey.from_public_bytes(self.raw))

    @classmethod
    def from_raw(cls, selector: str, raw: bytes) -> PublicKey:
        return cls(selector, raw)

    @classmethod
    def from_b64url(cls, selector: str, text: str) -> PublicKey:
        return cls(selector, b64url_decode(text))

    @property
    def b64url(self) -> str:
        return b64url_encode(self.raw)

    def jwk_dict(self) -> dict[str, str]:
        """RFC 8037 §2 public JWK, with ``kid`` set to the selector (for well-known JWKS)."""
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.b64url,
            "kid": self.selector,
            "use": "sig",
            "alg": ALG,
        }

    def to_jwk(self) -> jwk.JWK:
        return jwk.JWK(kty="OKP", crv="Ed25519", x=self.b64url)


def check_selector(selector: object) -> str:
    if not isinstance(selector, str) or not SELECTOR_RE.fullmatch(selector):
        raise ConfigError(f"invalid key selector {selector!r}: one lower-case DNS label")
    return selector


def sign(payload: bytes, key: SigningKey) -> str:
    """Sign envelope bytes; return the compact JWS (RFC 7515 §7.1).

    The compact form is ``b64url(header) . b64url(payload) . b64url(Ed25519(signing input))``
    (RFC 8037 §3.1); the signature itself is computed by ``cryptography``'s Ed25519, on the key
    object jwcrypto loaded. Doing the framing here rather than through ``jwcrypto.jws.JWS``
    saves that class's per-token header-registry copies, two thirds of the signing cost; a test
    checks that jwcrypto verifies what this produces and vice versa.
    """
    signing_input = key.header_b64 + "." + b64url_encode(payload)
    signature = key.private_key.sign(signing_input.encode("ascii"))
    return signing_input + "." + b64url_encode(signature)


@dataclass(frozen=True, slots=True)
class ParsedJWS:
    """A structurally valid compact JWS whose signature is not yet checked."""

    token: str
    kid: str
    payload: bytes


def parse_compact(token: str) -> ParsedJWS:
    """Structural checks, no crypto: three parts, our exact header, decodable payload.

    Raises PayloadTooLarge or InvalidEnvelope. The header is restricted to exactly ``alg``,
    ``kid`` and ``typ`` (no ``jku``, ``x5u``, ``jwk`` or ``crit``): a verifier that followed a
    key URL or an embedded key named by the signer would let the signer pick its own key.
    """
    if not isinstance(token, str):
        raise InvalidEnvelope("a signed envelope is a JWS compact serialization string")
    if len(token) > MAX_JWS_BYTES:
        raise PayloadTooLarge(
            f"signed envelope is {len(token)} bytes; the limit is {MAX_JWS_BYTES}"
        )
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidEnvelope("not a JWS compact serialization (expected three non-empty parts)")
    header_b64, payload_b64, _sig = parts
    if len(header_b64) > (MAX_JWS_HEADER_BYTES * 4) // 3 + 4:
        raise InvalidEnvelope("JWS protected header too large")
    try:
        # Strict JSON: with a duplicate "alg", two JWS libraries may each read a different one.
        header = jsonutil.loads(
            b64url_decode(header_b64), max_bytes=MAX_JWS_HEADER_BYTES, what="JWS header"
        )
        payload = b64url_decode(payload_b64)
        b64url_decode(_sig)
    except (ValueError, binascii.Error, MalformedRequest, PayloadTooLarge):
        raise InvalidEnvelope("JWS parts are not valid base64url JSON") from None
    if not isinstance(header, dict) or set(header) != _ALLOWED_HEADER:
        raise InvalidEnvelope('JWS protected header must be exactly {"alg","kid","typ"}')
    if header["alg"] != ALG:
        raise InvalidEnvelope(f"JWS alg must be {ALG}")
    if header["typ"] != TYP:
        raise InvalidEnvelope(f"JWS typ must be {TYP}")
    kid = header["kid"]
    if not isinstance(kid, str) or not SELECTOR_RE.fullmatch(kid):
        raise InvalidEnvelope("JWS kid must be a key selector (one lower-case DNS label)")
    return ParsedJWS(token=token, kid=kid, payload=payload)


def verify(parsed: ParsedJWS, key: PublicKey) -> None:
    """Check the signature with the given public key; raise BadSignature.

    Ed25519 over the signing input exactly as received (RFC 7515 §5.2 step 8; RFC 8037 §3.1),
    with ``cryptography``; ``parse_compact`` has already checked the three parts' encoding.
    """
    if key.selector != parsed.kid:
        raise BadSignature(f"key selector {key.selector!r} does not match kid {parsed.kid!r}")
    signing_input, _, signature_b64 = parsed.token.rpartition(".")
    try:
        key.verifier.verify(b64url_decode(signature_b64), signing_input.encode("ascii"))
    except (InvalidSignature, ValueError):
        raise BadSignature() from None
