"""The well-known document ``https://<domain>/.well-known/synq.json`` (RFC 8615), without I/O.

It states in JSON what the DNS records state (SPEC.md §7.3): where the domain's relay takes
deliveries and which Ed25519 keys sign for the domain, plus optional policy hints. Partners read
it when DNS has no Synq records, and operators can cross-check the two::

    GET /.well-known/synq.json HTTP/1.1
    Host: acme.test

    HTTP/1.1 200 OK
    Content-Type: application/json
    Cache-Control: public, max-age=3600

    {"v": 1,
     "domain": "acme.test",
     "relay": "https://relay.acme.test:8443",
     "keys": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "<base64url>", "kid": "s1",
                        "use": "sig", "alg": "EdDSA"}]},
     "policy": {"max_envelope_bytes": 262144, "max_recipients": 100},
     "capabilities": ["receipts"]}

``capabilities`` names the optional parts of the protocol the domain's relay implements, so a
sender uses one only with a partner that understands it: ``receipts`` — the relay takes the
``notify`` member of a transaction and answers it with delivery-status envelopes (SPEC.md §8.1,
§9.4). A sender learns it from the document the partner's relay serves at
``<relay>/.well-known/synq.json`` (every relay serves its own), cached as discovery caches
documents.

``keys`` is a JWK Set (RFC 7517 §5) of public Ed25519 keys (RFC 8037 §2) whose ``kid`` is the
selector, so ``kid`` in an envelope's JWS header names the same key in DNS and here. Unknown
members are allowed everywhere (a later version may add some); the members named here are
validated strictly: a wrong type is an error, not a conversion.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from relay.core import jsonutil, limits
from relay.core.address import normalize_domain
from relay.core.errors import InvalidAddress, MalformedRequest, PayloadTooLarge
from relay.core.jws import SELECTOR_RE, PublicKey, b64url_decode
from relay.discovery.errors import MisconfiguredDomain

__all__ = [
    "CAPABILITY_RECEIPTS",
    "MAX_CAPABILITIES",
    "MAX_JWKS_KEYS",
    "MAX_WELL_KNOWN_BYTES",
    "RELAY_CAPABILITIES",
    "WELL_KNOWN_CACHE_CONTROL",
    "WELL_KNOWN_CONTENT_TYPE",
    "WELL_KNOWN_PATH",
    "Jwks",
    "Policy",
    "PublicJwk",
    "WellKnown",
    "build_well_known",
    "parse_well_known",
]

WELL_KNOWN_PATH: Final = "/.well-known/synq.json"
WELL_KNOWN_CONTENT_TYPE: Final = "application/json"
#: What a relay serving its own document sends: partners cache it this long (discovery clamps
#: the value to its own TTL bounds).
WELL_KNOWN_CACHE_CONTROL: Final = "public, max-age=3600"

#: Largest well-known document a partner's relay reads. A real one is a few hundred bytes per
#: key; the cap stops a hostile domain from making us download and parse megabytes for every
#: look-up (the fetcher stops reading at this many bytes).
MAX_WELL_KNOWN_BYTES: Final = 64 * 1024

#: Keys in one JWKS. Rotation needs two or three at a time (old, current, next); the cap bounds
#: the per-domain memory our cache holds for a document.
MAX_JWKS_KEYS: Final = 32

#: The capability of a relay that takes ``notify`` in transactions and sends receipts.
CAPABILITY_RECEIPTS: Final = "receipts"
#: What a Synq relay advertises for its own domain.
RELAY_CAPABILITIES: Final = (CAPABILITY_RECEIPTS,)
#: Capabilities one document may list, each at most MAX_CAPABILITY_LENGTH characters: a sender
#: only ever looks for a few, and the bound keeps what the cache holds per domain small.
MAX_CAPABILITIES: Final = 64
MAX_CAPABILITY_LENGTH: Final = 64

_STRICT: Final = ConfigDict(extra="allow", frozen=True, strict=True)


class PublicJwk(BaseModel):
    """One public Ed25519 key as a JWK (RFC 8037 §2), ``kid`` being the selector."""

    model_config = _STRICT

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    use: Literal["sig"] | None = None
    alg: Literal["EdDSA"] | None = None

    @field_validator("kid")
    @classmethod
    def _selector(cls, value: str) -> str:
        if not SELECTOR_RE.fullmatch(value):
            raise ValueError("kid must be a key selector (one lower-case DNS label)")
        return value

    @field_validator("x")
    @classmethod
    def _ed25519(cls, value: str) -> str:
        try:
            raw = b64url_decode(value)
        except ValueError:
            raise ValueError("x must be unpadded base64url") from None
        if len(raw) != 32:
            raise ValueError("x must be a 32-byte Ed25519 public key")
        return value

    @model_validator(mode="after")
    def _public_only(self) -> PublicJwk:
        # RFC 8037 §2: "d" is the private key. A document carrying one has leaked its key;
        # refusing it makes the mistake visible instead of silently trusting that key.
        if "d" in (self.model_extra or {}):
            raise ValueError("a published JWK must not contain the private key (d)")
        return self

    def public_key(self) -> PublicKey:
        return PublicKey.from_b64url(self.kid, self.x)

    @classmethod
    def from_public_key(cls, key: PublicKey) -> PublicJwk:
        return cls.model_validate(key.jwk_dict())


class Jwks(BaseModel):
    """A JWK Set (RFC 7517 §5) with one key per selector."""

    model_config = _STRICT

    keys: list[PublicJwk] = Field(max_length=MAX_JWKS_KEYS)

    @field_validator("keys")
    @classmethod
    def _unique_kids(cls, keys: list[PublicJwk]) -> list[PublicJwk]:
        kids = [key.kid for key in keys]
        if len(set(kids)) != len(kids):
            # Two keys under one selector would make the verifying key depend on which one a
            # verifier picks.
            raise ValueError("two keys share one kid")
        return keys


class Policy(BaseModel):
    """Optional hints about what the domain's relay accepts, so a sender can fit its batches."""

    model_config = _STRICT

    max_envelope_bytes: int | None = Field(default=None, gt=0)
    max_recipients: int | None = Field(default=None, gt=0)
    max_txn_envelopes: int | None = Field(default=None, gt=0)
    max_txn_bytes: int | None = Field(default=None, gt=0)


class WellKnown(BaseModel):
    """The ``/.well-known/synq.json`` document of one domain."""

    model_config = _STRICT

    v: Literal[1]
    domain: str
    relay: str
    keys: Jwks
    policy: Policy = Field(default_factory=Policy)
    #: Optional protocol features the relay implements; unknown names are ignored.
    capabilities: list[Annotated[str, Field(max_length=MAX_CAPABILITY_LENGTH)]] = Field(
        default_factory=list, max_length=MAX_CAPABILITIES
    )

    @field_validator("v", mode="before")
    @classmethod
    def _version(cls, value: object) -> object:
        # A Literal accepts True for 1 (they compare equal); JSON's true is not a version.
        # ValueError, not TypeError: pydantic turns only the former into a validation error.
        if isinstance(value, bool):
            raise ValueError("v must be the number 1")
        return value

    @field_validator("capabilities", mode="before")
    @classmethod
    def _no_capabilities(cls, value: object) -> object:
        # SPEC.md §7.3: an optional member given as null is the same as an absent one.
        return [] if value is None else value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        try:
            return normalize_domain(value)
        except InvalidAddress:
            raise ValueError("domain must be a DNS name") from None

    @field_validator("relay")
    @classmethod
    def _relay(cls, value: str) -> str:
        # The same rule as the relay= tag of the _synq TXT record (relay.core.records).
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("relay must be an http(s) URL")
        return value.rstrip("/")

    def supports(self, capability: str) -> bool:
        """Whether the domain's relay advertises ``capability`` (e.g. ``receipts``)."""
        return capability in self.capabilities

    def key(self, selector: str) -> PublicKey | None:
        """The published key with this selector, if any."""
        for jwk in self.keys.keys:
            if jwk.kid == selector:
                return jwk.public_key()
        return None

    @property
    def public_keys(self) -> tuple[PublicKey, ...]:
        return tuple(jwk.public_key() for jwk in self.keys.keys)

    def to_json(self) -> bytes:
        """The document as served: absent hints are left out rather than sent as null."""
        return self.model_dump_json(exclude_none=True).encode("utf-8")


def build_well_known(
    domain: str,
    relay_url: str,
    keys: Iterable[PublicKey],
    *,
    policy: Policy | None = None,
    capabilities: Iterable[str] = RELAY_CAPABILITIES,
) -> WellKnown:
    """The document a relay serves for its own domain at ``GET /.well-known/synq.json``.

    ``keys`` are the public halves of the keys partners should accept now: the active one and
    any still inside their rotation overlap. Without an explicit policy, the hints are this
    relay's own limits (relay.core.limits); the capabilities, what this relay implements.
    """
    if policy is None:
        policy = Policy(
            max_envelope_bytes=limits.MAX_ENVELOPE_BYTES,
            max_recipients=limits.MAX_RECIPIENTS,
            max_txn_envelopes=limits.MAX_TXN_ENVELOPES,
            max_txn_bytes=limits.MAX_TXN_BYTES,
        )
    return WellKnown(
        v=1,
        domain=domain,
        relay=relay_url,
        keys=Jwks(keys=[PublicJwk.from_public_key(key) for key in keys]),
        policy=policy,
        capabilities=list(capabilities),
    )


def parse_well_known(body: bytes, *, domain: str) -> WellKnown:
    """Validate a fetched document for ``domain``; raise MisconfiguredDomain if it is unusable.

    The document must name the domain it was fetched for: a redirect, or a shared hosting
    mistake, must not let one domain's keys speak for another.
    """
    try:
        data: Any = jsonutil.loads(body, max_bytes=MAX_WELL_KNOWN_BYTES, what="well-known document")
    except (MalformedRequest, PayloadTooLarge) as exc:
        raise MisconfiguredDomain(f"{domain}: {exc.message}") from None
    try:
        doc = WellKnown.model_validate(data)
    except ValidationError as exc:
        raise MisconfiguredDomain(f"{domain}: {_describe(exc)}") from None
    if doc.domain != domain:
        raise MisconfiguredDomain(f"{domain}: well-known document is for {doc.domain!r}")
    return doc


def _describe(exc: ValidationError) -> str:
    """Where the document is wrong, in our words: pydantic's own texts stay out of the message."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return "well-known document is invalid"
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "document"
    ctx = first.get("ctx") or {}
    reason = ctx.get("error") if first["type"] == "value_error" else None
    detail = f": {reason}" if reason is not None else f" ({first['type']})"
    return f"well-known document is invalid at {where}{detail}"
