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
import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

import nacl.bindings
import nacl.exceptions
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


#: base64url → standard alphabet, for binascii's strict decoder; the standard alphabet's own
#: ``+`` and ``/`` and the pad ``=`` become ``!``, which the strict decoder refuses.
_TO_STANDARD: Final = bytes.maketrans(b"-_+/=", b"+/!!!")
#: The 6-bit value of every base64url character, to check the unused low bits of the last one.
_SEXTET: Final = {
    c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
#: Unused low bits of the last character, by length mod 4 (RFC 4648 §3.5): 2 chars carry one
#: byte (4 spare bits), 3 chars carry two bytes (2 spare bits).
_SPARE_BITS_MASK: Final = {2: 0b1111, 3: 0b0011}


def b64url_decode(text: str) -> bytes:
    """Unpadded, canonical base64url (RFC 7515 §2) to bytes; raise ValueError on anything else.

    Strict, so that one byte string has exactly one spelling: no padding, no characters outside
    the URL-safe alphabet (a lenient decoder drops them, newlines included), and zero unused
    bits in the last character (RFC 4648 §3.5); otherwise two different tokens would carry the
    same signature. ``binascii``'s ``strict_mode`` refuses anything outside the alphabet once
    ``-_`` are mapped to ``+/`` (and ``+/=`` of the input to a character it refuses).
    """
    if len(text) % 4 == 1 or not text.isascii():
        raise ValueError("not unpadded base64url")
    raw = text.encode("ascii")
    spare = _SPARE_BITS_MASK.get(len(raw) % 4)
    if spare is not None and _SEXTET.get(raw[-1], 0) & spare:
        raise ValueError("not canonical base64url (non-zero trailing bits)")
    try:
        return binascii.a2b_base64(
            raw.translate(_TO_STANDARD) + b"=" * (-len(raw) % 4), strict_mode=True
        )
    except binascii.Error:
        raise ValueError("not unpadded base64url") from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private key and the selector it is published under."""

    selector: str
    key: jwk.JWK
    #: libsodium's 64-byte secret key (seed ‖ public key), derived once per key.
    secret: bytes = field(init=False, repr=False, compare=False)
    header_b64: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_selector(self.selector)
        if self.key.get("kty") != "OKP" or self.key.get("crv") != "Ed25519":
            raise ConfigError(f"key {self.selector!r} is not an Ed25519 key")
        if not self.key.has_private:
            raise ConfigError(f"key {self.selector!r} has no private part")
        try:
            seed = b64url_decode(str(self.key.get("d")))
            public, secret = nacl.bindings.crypto_sign_seed_keypair(seed)
        except (ValueError, nacl.exceptions.CryptoError):
            raise ConfigError(f"key {self.selector!r} is not an Ed25519 private key") from None
        if public != b64url_decode(str(self.key.get("x"))):
            raise ConfigError(f"key {self.selector!r}: the public part does not match the private")
        header = json.dumps({"alg": ALG, "kid": self.selector, "typ": TYP}, separators=(",", ":"))
        # Derived once per key, not per envelope.
        object.__setattr__(self, "secret", secret)
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

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")

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
    (RFC 8037 §3.1). The framing is done here and the signature by libsodium (PyNaCl): jwcrypto's
    ``JWS`` object copies its header registry per token (two thirds of the signing cost) and
    libsodium's Ed25519 signs and verifies in about 0.7 and 0.55 of the time OpenSSL takes
    through ``cryptography`` (README: dependencies and why). A test checks that jwcrypto
    verifies what this produces and vice versa.
    """
    signing_input = (key.header_b64 + "." + b64url_encode(payload)).encode("ascii")
    # crypto_sign returns signature ‖ message (RFC 8032 §5.1.6 output, then the message).
    signature = nacl.bindings.crypto_sign(signing_input, key.secret)[:64]
    return signing_input.decode("ascii") + "." + b64url_encode(signature)


@dataclass(frozen=True, slots=True)
class ParsedJWS:
    """A structurally valid compact JWS whose signature is not yet checked."""

    token: str
    kid: str
    payload: bytes
    #: The decoded signature part (checked canonical by ``parse_compact``).
    signature: bytes = b""


#: Distinct protected headers whose parse is remembered. Every envelope a relay signs with one
#: key carries the same header bytes, so a handful of entries serve all honest traffic; the
#: bound stops a peer that varies its header from growing the cache (least recently used go).
HEADER_CACHE_SIZE: Final = 256


@functools.lru_cache(maxsize=HEADER_CACHE_SIZE)
def _header_kid(header_b64: str) -> str:
    """The ``kid`` of a protected header that passes every check; raise InvalidEnvelope.

    The header is restricted to exactly ``alg``, ``kid`` and ``typ`` (no ``jku``, ``x5u``,
    ``jwk`` or ``crit``): a verifier that followed a key URL or an embedded key named by the
    signer would let the signer pick its own key. Only successful parses are cached
    (``lru_cache`` does not keep exceptions).
    """
    if len(header_b64) > (MAX_JWS_HEADER_BYTES * 4) // 3 + 4:
        raise InvalidEnvelope("JWS protected header too large")
    try:
        # Strict JSON: with a duplicate "alg", two JWS libraries may each read a different one.
        header = jsonutil.loads(
            b64url_decode(header_b64), max_bytes=MAX_JWS_HEADER_BYTES, what="JWS header"
        )
    except (ValueError, MalformedRequest, PayloadTooLarge):
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
    return kid


def parse_compact(token: str) -> ParsedJWS:
    """Structural checks, no crypto: three parts, our exact header, decodable payload.

    Raises PayloadTooLarge or InvalidEnvelope.
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
    header_b64, payload_b64, signature_b64 = parts
    kid = _header_kid(header_b64)
    try:
        payload = b64url_decode(payload_b64)
        signature = b64url_decode(signature_b64)
    except ValueError:
        raise InvalidEnvelope("JWS parts are not valid base64url JSON") from None
    return ParsedJWS(token=token, kid=kid, payload=payload, signature=signature)


def verify(parsed: ParsedJWS, key: PublicKey) -> None:
    """Check the signature with the given public key; raise BadSignature.

    Ed25519 over the signing input exactly as received (RFC 7515 §5.2 step 8; RFC 8037 §3.1),
    with libsodium, which also refuses non-canonical and small-order encodings (RFC 8032
    §5.1.7's checks and more); ``parse_compact`` has already checked the three parts' encoding.
    """
    if key.selector != parsed.kid:
        raise BadSignature(f"key selector {key.selector!r} does not match kid {parsed.kid!r}")
    signing_input, _, signature_b64 = parsed.token.rpartition(".")
    try:
        signature = parsed.signature or b64url_decode(signature_b64)
        if len(signature) != 64:
            raise BadSignature()
        nacl.bindings.crypto_sign_open(signature + signing_input.encode("ascii"), key.raw)
    except (ValueError, nacl.exceptions.CryptoError):
        raise BadSignature() from None
