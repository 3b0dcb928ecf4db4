"""Signed partner requests: HTTP Message Signatures (RFC 9421) with Ed25519, and Content-Digest
(RFC 9530). Pure: bytes and strings in, headers or typed errors out; no I/O, no clock of its own.

A relay that asks a partner relay something on behalf of its agents (federated search, SPEC.md
§12.6) signs the request with the same Ed25519 key that signs its envelopes, published at
``<selector>._synqkey.<domain>`` (SPEC.md §4.3). The partner verifies it with the key it finds
there, so the request proves which domain asks, exactly as an envelope's signature proves its
``from`` domain. The profile, fixed so that there is one way to sign and one to verify::

    Content-Type: application/json
    Content-Digest: sha-256=:<base64 of SHA-256(body)>:
    Signature-Input: synq=("@method" "@authority" "@path" "content-type" "content-digest")
        ;created=1772366400;expires=1772366460;nonce="<22-64 base64url chars>"
        ;keyid="s1._synqkey.acme.example";alg="ed25519";tag="synq-discovery"
    Signature: synq=:<base64 of the 64-octet Ed25519 signature>:

* **alg** ``ed25519`` (RFC 9421 §3.3.6): Ed25519 (RFC 8032) over the signature base octets.
* **keyid** is the DNS owner name of the key record, ``<selector>._synqkey.<domain>``: it names
  the domain and the selector together, and the key counts only for that domain (SPEC.md §4.3,
  "Key binding"), so the domain the keyid names is the domain that asks.
* **Covered components**: the method, the authority and path of the partner's relay base URL
  (the verifier takes them from the base URL it publishes itself, not from ``Host``, so a
  proxy in between changes nothing, and a request signed for one relay does not verify at
  another), the media type and the body's digest — hence the body itself.
* **tag** ``synq-discovery`` (RFC 9421 §2.3) says what the signature is for: a verifier picks
  the signature with this tag and ignores others a proxy may have added.
* **created**/**expires** bound when the request may be used; **nonce** makes each request
  unique, so the verifier's replay cache (relay/federation/search.py) refuses a second copy.

Verification, in this order (cheap checks first, no cryptography before the key is known, times
judged only for authentic requests, as SPEC.md §4.4 orders envelope checks):

1. :func:`parse_signed_request` — presence (``SignatureRequired``), the structured fields, the
   profile (``MalformedRequest``, ``BadSignature``), the body against ``Content-Digest``
   (``DigestMismatch``); it builds the signature base;
2. the caller looks the key up by :attr:`SignedRequest.domain` and :attr:`SignedRequest.selector`
   (``UnknownKey``);
3. :func:`verify_signature` (``BadSignature``);
4. :func:`check_times` (``StaleSignature``).

**Structured fields.** RFC 8941 is implemented here only as far as these three fields need it
— Dictionaries whose values are Items or Inner Lists, with Parameters; bare Integers, Strings,
Tokens, Byte Sequences and Booleans — and strictly: anything else (Decimals, Dates, Display
Strings, a duplicate key, a trailing comma, a non-canonical base64 spelling) is refused, and
every length is bounded (``MAX_*`` below). Why not the ``http-sfv`` package: it is pre-1.0
with its last release in January 2024, parses more than these fields may carry (which we would
then have to refuse after it), keeps RFC 8941's "last duplicate wins" for dictionaries, where a
verifier must refuse (two signatures under one label leave the choice to the reader), and adds
a dependency for about two hundred lines. RFC 9421 libraries on PyPI were set aside for the
same reason: each brings its own key resolution and request model, where Synq's key comes from
its own resolver and its requests from aiohttp.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias
from urllib.parse import urlsplit

import nacl.bindings
import nacl.exceptions

from relay.core.address import normalize_domain
from relay.core.errors import (
    BadSignature,
    DigestMismatch,
    InvalidAddress,
    MalformedRequest,
    SignatureRequired,
    StaleSignature,
)
from relay.core.jws import SELECTOR_RE, PublicKey, SigningKey
from relay.core.records import KEY_LABEL, key_record_name

__all__ = [
    "ALG",
    "COMPONENTS",
    "LABEL",
    "MAX_FIELD_BYTES",
    "MAX_INNER_LIST_ITEMS",
    "MAX_KEY_LENGTH",
    "MAX_MEMBERS",
    "MAX_PARAMETERS",
    "MAX_SIGNATURE_LIFETIME",
    "MAX_SIGNATURE_SKEW",
    "NONCE_RE",
    "SIGNATURE_LIFETIME",
    "TAG",
    "SignedRequest",
    "Token",
    "check_times",
    "content_digest",
    "ed25519_sign",
    "ed25519_verify",
    "keyid_for",
    "parse_dictionary",
    "parse_keyid",
    "parse_signed_request",
    "serialize_inner_list",
    "sign_request",
    "signature_base",
    "verify_signature",
]

# ---------------------------------------------------------------------------------- the profile

#: The signature's label in ``Signature-Input`` and ``Signature`` when Synq signs.
LABEL: Final = "synq"
#: RFC 9421 §2.3 ``tag``: the application the signature is for. A verifier looks for it.
TAG: Final = "synq-discovery"
#: RFC 9421 §3.3.6.
ALG: Final = "ed25519"
#: What a signature must cover, exactly these (in any order; Synq signs them in this one).
COMPONENTS: Final = ("@method", "@authority", "@path", "content-type", "content-digest")
_PARAMS: Final = frozenset({"created", "expires", "nonce", "keyid", "alg", "tag"})

#: ``expires - created`` when Synq signs. A request is sent at once and answered within the
#: search deadline (about a second): a minute leaves room for a slow partner and nothing more.
SIGNATURE_LIFETIME: Final = 60
#: The longest ``expires - created`` a verifier takes. It bounds the replay window, hence how
#: long and how many nonces the verifier must remember (relay/federation/search.py).
MAX_SIGNATURE_LIFETIME: Final = 300
#: How far the signer's clock may be off the verifier's, either way: a request is refused when
#: ``created`` lies more than this ahead, or ``expires`` more than this behind. Smaller than
#: envelopes' ``MAX_CLOCK_SKEW`` (5 minutes, SPEC.md §3.4): an envelope may wait in a queue,
#: a search request is live, and the skew adds to the replay window twice.
MAX_SIGNATURE_SKEW: Final = 60
#: A nonce: 128 to 384 bits as unpadded base64url. At least 128 bits, so two requests of one
#: signer never share one by chance (the replay cache would refuse the second).
NONCE_RE: Final = re.compile(r"[A-Za-z0-9_-]{22,64}")

# --------------------------------------------------------------------- structured-field limits

#: One ``Signature-Input``, ``Signature`` or ``Content-Digest`` field, its lines combined. The
#: relay's HTTP server refuses longer header fields anyway (``max_field_size``, SPEC.md §11.4);
#: this bound keeps the parser safe for any caller. Synq's own fields are under 400 octets.
MAX_FIELD_BYTES: Final = 4096
#: Members of one dictionary: a request may carry a few signatures (a proxy adding its own),
#: a digest field a few algorithms; more is an attempt to make the verifier work.
MAX_MEMBERS: Final = 8
#: Items of an inner list: the covered components (Synq covers five; RFC 9421's examples up to
#: eight).
MAX_INNER_LIST_ITEMS: Final = 16
#: Parameters of one item or inner list (a signature has at most the six of RFC 9421 §2.3).
MAX_PARAMETERS: Final = 16
#: A dictionary or parameter key (RFC 8941 sets none; ours are at most 14 characters).
MAX_KEY_LENGTH: Final = 64


class Token(str):
    """An RFC 8941 Token (``alg`` in some deployments is one; ``sha-256`` keys are keys, not
    tokens). A subclass of ``str`` so that a String and a Token stay apart after parsing."""

    __slots__ = ()


BareItem: TypeAlias = int | str | bytes | bool
Params: TypeAlias = tuple[tuple[str, BareItem], ...]


@dataclass(frozen=True, slots=True)
class Item:
    value: BareItem
    params: Params = ()


@dataclass(frozen=True, slots=True)
class InnerList:
    items: tuple[Item, ...]
    params: Params = ()


Member: TypeAlias = Item | InnerList


class _SyntaxError(ValueError):
    pass


_KEY_FIRST: Final = frozenset("abcdefghijklmnopqrstuvwxyz*")
_KEY_REST: Final = _KEY_FIRST | frozenset("0123456789_-.")
_TOKEN_FIRST: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz*")
#: RFC 9110 §5.6.2 tchar, plus ":" and "/" (RFC 8941 §3.3.4).
_TOKEN_REST: Final = _TOKEN_FIRST | frozenset("0123456789!#$%&'+-.^_`|~:/")
_B64_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_MAX_INTEGER_DIGITS: Final = 15


class _Parser:
    """RFC 8941 §4.2, the subset described in the module docstring."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip(self, chars: str) -> None:
        while self.i < len(self.s) and self.s[self.i] in chars:
            self.i += 1

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise _SyntaxError(f"expected {char!r} at {self.i}")
        self.i += 1

    def dictionary(self) -> dict[str, Member]:
        members: dict[str, Member] = {}
        self.skip(" ")
        while self.i < len(self.s):
            key = self.key()
            if key in members:
                # RFC 8941 §4.2.2 lets the last one win; a verifier must not choose.
                raise _SyntaxError(f"duplicate key {key!r}")
            if len(members) == MAX_MEMBERS:
                raise _SyntaxError(f"more than {MAX_MEMBERS} members")
            if self.peek() == "=":
                self.i += 1
                members[key] = self.inner_list() if self.peek() == "(" else self.item()
            else:
                members[key] = Item(True, self.params())
            self.skip(" \t")
            if self.i == len(self.s):
                return members
            self.expect(",")
            self.skip(" \t")
            if self.i == len(self.s):
                raise _SyntaxError("trailing comma")
        return members

    def inner_list(self) -> InnerList:
        self.expect("(")
        items: list[Item] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.i += 1
                return InnerList(tuple(items), self.params())
            if len(items) == MAX_INNER_LIST_ITEMS:
                raise _SyntaxError(f"more than {MAX_INNER_LIST_ITEMS} items in an inner list")
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise _SyntaxError(f"expected ' ' or ')' at {self.i}")

    def item(self) -> Item:
        return Item(self.bare_item(), self.params())

    def params(self) -> Params:
        out: list[tuple[str, BareItem]] = []
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            key = self.key()
            if any(k == key for k, _ in out):
                raise _SyntaxError(f"duplicate parameter {key!r}")
            if len(out) == MAX_PARAMETERS:
                raise _SyntaxError(f"more than {MAX_PARAMETERS} parameters")
            value: BareItem = True
            if self.peek() == "=":
                self.i += 1
                value = self.bare_item()
            out.append((key, value))
        return tuple(out)

    def key(self) -> str:
        start = self.i
        if not self.peek() or self.peek() not in _KEY_FIRST:
            raise _SyntaxError(f"expected a key at {self.i}")
        self.i += 1
        while self.i < len(self.s) and self.s[self.i] in _KEY_REST:
            self.i += 1
            if self.i - start > MAX_KEY_LENGTH:
                raise _SyntaxError(f"key longer than {MAX_KEY_LENGTH}")
        return self.s[start : self.i]

    def bare_item(self) -> BareItem:
        c = self.peek()
        if c and c in "-0123456789":
            return self.integer()
        if c == '"':
            return self.string()
        if c == ":":
            return self.byte_sequence()
        if c == "?":
            return self.boolean()
        if c and c in _TOKEN_FIRST:
            return self.token()
        raise _SyntaxError(f"unsupported or invalid item at {self.i}")

    def integer(self) -> int:
        start = self.i
        if self.peek() == "-":
            self.i += 1
        digits = self.i
        while self.i < len(self.s) and self.s[self.i] in "0123456789":
            self.i += 1
        n = self.i - digits
        if n == 0 or n > _MAX_INTEGER_DIGITS:
            raise _SyntaxError(f"invalid integer at {start}")
        if self.peek() == ".":
            raise _SyntaxError("decimals are not accepted here")
        return int(self.s[start : self.i])

    def string(self) -> str:
        self.expect('"')
        out: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c == "\\":
                nxt = self.peek()
                if nxt not in ('"', "\\") or not nxt:
                    raise _SyntaxError("invalid escape in a string")
                out.append(nxt)
                self.i += 1
            elif c == '"':
                return "".join(out)
            elif not " " <= c <= "~":
                raise _SyntaxError("invalid character in a string")
            else:
                out.append(c)
        raise _SyntaxError("unterminated string")

    def token(self) -> Token:
        start = self.i
        self.i += 1
        while self.i < len(self.s) and self.s[self.i] in _TOKEN_REST:
            self.i += 1
        return Token(self.s[start : self.i])

    def byte_sequence(self) -> bytes:
        self.expect(":")
        end = self.s.find(":", self.i)
        if end < 0:
            raise _SyntaxError("unterminated byte sequence")
        text = self.s[self.i : end]
        self.i = end + 1
        if not set(text) <= _B64_CHARS or len(text) % 4:
            raise _SyntaxError("a byte sequence is padded base64")
        try:
            raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
        except binascii.Error:
            raise _SyntaxError("a byte sequence is padded base64") from None
        # One spelling per value: non-zero pad bits would give a second (RFC 8941 §3.3.5).
        if binascii.b2a_base64(raw, newline=False).decode("ascii") != text:
            raise _SyntaxError("a byte sequence is canonical base64")
        return raw

    def boolean(self) -> bool:
        self.expect("?")
        c = self.peek()
        if c not in ("0", "1") or not c:
            raise _SyntaxError("invalid boolean")
        self.i += 1
        return c == "1"


def parse_dictionary(text: str) -> dict[str, Member]:
    """An RFC 8941 Dictionary (§4.2.2), strictly; raise MalformedRequest."""
    if len(text) > MAX_FIELD_BYTES:
        raise MalformedRequest(f"a structured header field is longer than {MAX_FIELD_BYTES}")
    if not text.isascii():
        raise MalformedRequest("structured header fields are ASCII")
    parser = _Parser(text)
    try:
        members = parser.dictionary()
    except _SyntaxError as exc:
        raise MalformedRequest(f"not a structured-field dictionary: {exc}") from None
    return members


def _serialize_string(value: str) -> str:
    if not all(" " <= c <= "~" for c in value):
        raise ValueError("an sf-string is printable ASCII")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _serialize_bare(value: BareItem) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        if abs(value) >= 10**_MAX_INTEGER_DIGITS:
            raise ValueError("an sf-integer has at most 15 digits")
        return str(value)
    if isinstance(value, Token):
        return str(value)
    if isinstance(value, str):
        return _serialize_string(value)
    return ":" + binascii.b2a_base64(value, newline=False).decode("ascii") + ":"


def _serialize_params(params: Params) -> str:
    return "".join(
        f";{key}" if value is True else f";{key}={_serialize_bare(value)}" for key, value in params
    )


def serialize_inner_list(components: Sequence[str], params: Params) -> str:
    """RFC 8941 §4.1.1.1 for a list of component names (Strings) with parameters: the value of
    ``@signature-params`` and of a ``Signature-Input`` member."""
    inner = " ".join(_serialize_string(c) for c in components)
    return f"({inner}){_serialize_params(params)}"


# ----------------------------------------------------------------------------- signature base

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_DERIVED: Final = frozenset({"@method", "@target-uri", "@authority", "@scheme", "@path", "@query"})


def _combined_fields(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Field name (lower case) → its lines combined with ``", "`` (RFC 9110 §5.3), each line's
    surrounding whitespace removed (RFC 9421 §2.1). A ``Mapping`` that repeats names (aiohttp's
    ``CIMultiDictProxy``) yields every line from ``items()``."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    combined: dict[str, list[str]] = {}
    for name, value in pairs:
        # Obsolete line folding is replaced by a space (RFC 9421 §2.1); no newline survives.
        line = " ".join(value.replace("\r", "\n").split("\n")).strip(" \t")
        combined.setdefault(name.lower(), []).append(line)
    return {name: ", ".join(lines) for name, lines in combined.items()}


def _derived(name: str, method: str, url: str) -> str:
    """RFC 9421 §2.2 derived components of a request."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise MalformedRequest("not a request URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise MalformedRequest("not an http(s) request URL")
    if name == "@method":
        return method
    if name == "@target-uri":
        return url
    if name == "@scheme":
        return scheme
    if name == "@authority":
        host = parts.hostname.lower()
        if ":" in host:
            host = f"[{host}]"
        if port is not None and port != _DEFAULT_PORTS[scheme]:
            host = f"{host}:{port}"
        return host
    if name == "@path":
        return parts.path or "/"
    # @query: RFC 9421 §2.2.7, "?" when there is none.
    return f"?{parts.query}"


def signature_base(
    method: str,
    url: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    components: Sequence[str],
    params: Params,
) -> bytes:
    """The signature base of RFC 9421 §2.5 for a request: one line per covered component, then
    ``"@signature-params"``. Raise BadSignature when a covered field is absent or a component
    is one this implementation does not derive (RFC 9421 §2.5 step 2.4: fail)."""
    fields = _combined_fields(headers)
    lines: list[str] = []
    for name in components:
        if name.startswith("@"):
            if name not in _DERIVED:
                raise BadSignature(f"the component {name[:40]!r} is not supported")
            value = _derived(name, method, url)
        else:
            if name not in fields:
                raise BadSignature(f"the covered field {name[:40]!r} is absent")
            value = fields[name]
        if "\n" in value or not value.isascii():
            raise BadSignature(f"the component {name[:40]!r} has a value that cannot be signed")
        lines.append(f"{_serialize_string(name)}: {value}\n")
    lines.append(f'"@signature-params": {serialize_inner_list(components, params)}')
    return "".join(lines).encode("ascii")


def ed25519_sign(base: bytes, key: SigningKey) -> bytes:
    """RFC 9421 §3.3.6: the 64-octet Ed25519 signature of the signature base."""
    return bytes(nacl.bindings.crypto_sign(base, key.secret)[:64])


def ed25519_verify(base: bytes, signature: bytes, key: PublicKey) -> None:
    """RFC 9421 §3.3.6 verification; raise BadSignature. libsodium refuses non-canonical and
    small-order encodings too (SPEC.md §4.4 step 5)."""
    if len(signature) != 64:
        raise BadSignature()
    try:
        nacl.bindings.crypto_sign_open(signature + base, key.raw)
    except (ValueError, nacl.exceptions.CryptoError):
        raise BadSignature() from None


# ------------------------------------------------------------------------- Content-Digest


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` field value of RFC 9530 §2 with ``sha-256``."""
    digest = hashlib.sha256(body).digest()
    return f"sha-256=:{binascii.b2a_base64(digest, newline=False).decode('ascii')}:"


def _check_digest(value: str | None, body: bytes) -> None:
    """RFC 9530 §2: the ``sha-256`` member must be the SHA-256 of ``body``. Other algorithms may
    stand beside it (RFC 9530 lets a recipient ignore them); ``sha-256`` is the one required."""
    if value is None:
        raise DigestMismatch("the request has no Content-Digest")
    try:
        members = parse_dictionary(value)
    except MalformedRequest as exc:
        raise DigestMismatch(f"Content-Digest: {exc.message}") from None
    member = members.get("sha-256")
    if not isinstance(member, Item) or not isinstance(member.value, bytes):
        raise DigestMismatch("Content-Digest has no sha-256 byte sequence")
    if not hmac.compare_digest(member.value, hashlib.sha256(body).digest()):
        raise DigestMismatch()


# ------------------------------------------------------------------------------ keyid


def keyid_for(selector: str, domain: str) -> str:
    """The keyid of a key: its DNS owner name, ``<selector>._synqkey.<domain>`` (SPEC.md §4.3)."""
    return key_record_name(selector, domain)


def parse_keyid(keyid: str) -> tuple[str, str]:
    """``(selector, domain)`` of a keyid; raise BadSignature unless it is exactly
    ``<selector>._synqkey.<canonical domain>`` — one spelling, so one key has one keyid and the
    replay cache cannot be dodged by respelling it."""
    selector, sep, rest = keyid.partition(f".{KEY_LABEL}.")
    if not sep or not SELECTOR_RE.fullmatch(selector):
        raise BadSignature("keyid must be <selector>._synqkey.<domain>")
    try:
        domain = normalize_domain(rest)
    except InvalidAddress:
        raise BadSignature("keyid must be <selector>._synqkey.<domain>") from None
    if domain != rest:
        raise BadSignature("keyid must name the domain in its canonical (A-label) form")
    return selector, domain


# ------------------------------------------------------------------------- sign and verify


def sign_request(
    *,
    method: str,
    url: str,
    body: bytes,
    key: SigningKey,
    domain: str,
    created: int,
    nonce: str,
    content_type: str = "application/json",
    lifetime: int = SIGNATURE_LIFETIME,
) -> dict[str, str]:
    """The header fields that make a request to ``url`` a signed Synq request: ``Content-Type``,
    ``Content-Digest``, ``Signature-Input`` and ``Signature``. ``created`` is the signer's clock
    in whole seconds (RFC 9421 §2.3); ``nonce`` fresh randomness matching :data:`NONCE_RE`."""
    if not NONCE_RE.fullmatch(nonce):
        raise ValueError("a nonce is 22 to 64 base64url characters")
    if not 0 < lifetime <= MAX_SIGNATURE_LIFETIME:
        raise ValueError("lifetime out of range")
    fields = {"Content-Type": content_type, "Content-Digest": content_digest(body)}
    params: Params = (
        ("created", created),
        ("expires", created + lifetime),
        ("nonce", nonce),
        ("keyid", keyid_for(key.selector, domain)),
        ("alg", ALG),
        ("tag", TAG),
    )
    base = signature_base(method, url, fields, COMPONENTS, params)
    signature = binascii.b2a_base64(ed25519_sign(base, key), newline=False).decode("ascii")
    return {
        **fields,
        "Signature-Input": f"{LABEL}={serialize_inner_list(COMPONENTS, params)}",
        "Signature": f"{LABEL}=:{signature}:",
    }


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request whose signature fields, profile and digest check out; signature and times not
    yet checked."""

    keyid: str
    selector: str
    #: The domain that asks: the one the keyid names (SPEC.md §4.3, "Key binding").
    domain: str
    created: int
    expires: int
    nonce: str
    label: str
    base: bytes
    signature: bytes


def _is_string(value: BareItem | None, expected: str | None = None) -> bool:
    """Whether ``value`` is an sf-string (not a Token that spells the same), equal to
    ``expected`` when given."""
    if not isinstance(value, str) or isinstance(value, Token):
        return False
    return expected is None or value == expected


def _params_of(params: Params) -> dict[str, BareItem]:
    names = [k for k, _ in params]
    if set(names) != _PARAMS:
        missing = sorted(_PARAMS - set(names))
        extra = sorted(set(names) - _PARAMS)
        raise BadSignature(
            "signature parameters must be exactly created, expires, nonce, keyid, alg, tag"
            + (f" (missing {', '.join(missing)})" if missing else "")
            + (f" (unexpected {', '.join(e[:20] for e in extra)})" if extra else "")
        )
    return dict(params)


def parse_signed_request(
    method: str, url: str, headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes
) -> SignedRequest:
    """Steps 1 (presence, structure, profile) and the digest check; no key, no cryptography.

    ``url`` is the request's URL as the verifying relay names itself: its published relay base
    URL followed by the request's path (not the ``Host`` a proxy may have rewritten).
    """
    fields = _combined_fields(headers)
    sig_input, sig = fields.get("signature-input"), fields.get("signature")
    if sig_input is None and sig is None:
        raise SignatureRequired()
    if sig_input is None or sig is None:
        raise MalformedRequest("Signature and Signature-Input come together (RFC 9421 §4)")
    inputs, signatures = parse_dictionary(sig_input), parse_dictionary(sig)
    ours = [
        label
        for label, member in inputs.items()
        if isinstance(member, InnerList) and _is_string(dict(member.params).get("tag"), TAG)
    ]
    if len(ours) != 1:
        raise BadSignature(f"expected one signature tagged {TAG!r}, found {len(ours)}")
    label = ours[0]
    member, value = inputs[label], signatures.get(label)
    assert isinstance(member, InnerList)
    if not isinstance(value, Item) or not isinstance(value.value, bytes) or value.params:
        raise BadSignature(f"Signature has no byte sequence labelled {label!r}")
    components: list[str] = []
    for item in member.items:
        if (
            not isinstance(item.value, str)
            or isinstance(item.value, Token)
            or item.params
            or item.value in components
        ):
            raise BadSignature("covered components are distinct strings without parameters")
        components.append(item.value)
    if set(components) != set(COMPONENTS):
        raise BadSignature(f"the signature must cover exactly {', '.join(COMPONENTS)}")
    params = _params_of(member.params)
    created, expires = params["created"], params["expires"]
    nonce, keyid, alg = params["nonce"], params["keyid"], params["alg"]
    if isinstance(created, bool) or not isinstance(created, int):
        raise BadSignature("created is an integer")
    if isinstance(expires, bool) or not isinstance(expires, int):
        raise BadSignature("expires is an integer")
    if not 0 < expires - created <= MAX_SIGNATURE_LIFETIME:
        raise BadSignature(f"expires must follow created by 1 to {MAX_SIGNATURE_LIFETIME} s")
    if not _is_string(alg, ALG):
        raise BadSignature(f'alg must be "{ALG}"')
    if not isinstance(nonce, str) or not _is_string(nonce) or not NONCE_RE.fullmatch(nonce):
        raise BadSignature("nonce must be 22 to 64 base64url characters")
    if not isinstance(keyid, str) or not _is_string(keyid):
        raise BadSignature("keyid is a string")
    selector, domain = parse_keyid(keyid)
    # The digest before any key look-up: a body that does not match costs no DNS query.
    _check_digest(fields.get("content-digest"), body)
    base = signature_base(method, url, fields, components, member.params)
    return SignedRequest(
        keyid=keyid,
        selector=selector,
        domain=domain,
        created=created,
        expires=expires,
        nonce=nonce,
        label=label,
        base=base,
        signature=value.value,
    )


def verify_signature(request: SignedRequest, key: PublicKey) -> None:
    """Step 3: the Ed25519 signature over the signature base; raise BadSignature."""
    if key.selector != request.selector:
        raise BadSignature("the key's selector is not the keyid's")
    ed25519_verify(request.base, request.signature, key)


def check_times(request: SignedRequest, now: int, skew: int = MAX_SIGNATURE_SKEW) -> None:
    """Step 4, against the verifier's clock in whole seconds: refuse a request created more
    than ``skew`` ahead of ``now`` or whose ``expires`` is more than ``skew`` behind it."""
    if request.created > now + skew:
        raise StaleSignature("the signature is created in the future")
    if request.expires + skew <= now:
        raise StaleSignature("the signature has expired")
