"""Regenerate ``vectors.json`` (signed envelopes) and ``search-vectors.json`` (signed partner
requests), the signing test vectors, from the fixed keys in ``keys.json``.

    python interop/vectors/generate.py          # rewrite both files next to this file
    python interop/vectors/generate.py --check  # exit 1 if either differs from its output

The output is byte-for-byte reproducible: the keys are fixed, every id and timestamp below is a
constant, Ed25519 signatures (RFC 8032) are deterministic, and the JSON is written with a fixed
layout. A change to this file or to the envelope rules therefore shows up as a diff of
``vectors.json`` that a reviewer can read. README.md explains the verification procedure that
produces each case's ``expect``; SPEC.md §4.4 is normative.

Well-formed cases are signed with ``relay.core.jws.sign``; malformed ones (odd headers, other
algorithms) are assembled by hand below, since the real signer refuses to produce them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.core import errors, httpsig, jsonutil
from relay.core import signals as sg
from relay.core.envelope import format_timestamp
from relay.core.jws import PublicKey, SigningKey, b64url_decode, sign
from relay.core.limits import MAX_CLOCK_SKEW, MAX_ENVELOPE_BYTES, MAX_JWS_BYTES, MAX_LIFETIME
from relay.core.records import KeyRecord, key_record_name

HERE = Path(__file__).resolve().parent
KEYS_FILE = HERE / "keys.json"
VECTORS_FILE = HERE / "vectors.json"
SEARCH_VECTORS_FILE = HERE / "search-vectors.json"

#: The verifier's clock in every case.
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
#: When a well-formed envelope was created, and how long it lives.
CREATED = NOW - timedelta(minutes=1)
LIFETIME = timedelta(days=2)
MS = timedelta(milliseconds=1)

HEADER = {"alg": "EdDSA", "kid": "s1", "typ": "synq+jws"}


@dataclass(frozen=True)
class Key:
    name: str
    domain: str
    selector: str
    signing: SigningKey
    private: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        return self.signing.public_key


def load_keys(path: Path = KEYS_FILE) -> dict[str, Key]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    keys: dict[str, Key] = {}
    for entry in doc["keys"]:
        jwk = entry["jwk"]
        key = Key(
            name=entry["name"],
            domain=entry["domain"],
            selector=entry["selector"],
            signing=SigningKey.from_jwk_dict(entry["selector"], jwk),
            private=Ed25519PrivateKey.from_private_bytes(b64url_decode(jwk["d"])),
        )
        if key.public.b64url != jwk["x"]:
            raise SystemExit(f"keys.json: {key.name}: x does not belong to d")
        keys[key.name] = key
    return keys


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def compact(header: dict[str, Any] | bytes, payload: bytes, sig: Callable[[bytes], bytes]) -> str:
    """Assemble a compact JWS from any header bytes and a signing function."""
    head = header if isinstance(header, bytes) else jsonutil.dumps(header)
    signing_input = f"{b64(head)}.{b64(payload)}".encode("ascii")
    return f"{signing_input.decode('ascii')}.{b64(sig(signing_input))}"


def signed(key: Key, payload: bytes, header: dict[str, Any] | bytes | None = None) -> str:
    """A token signed with ``key``'s Ed25519 private key; the header defaults to ours."""
    if header is None:
        token = sign(payload, key.signing)
        # The hand-made path and the real signer agree byte for byte.
        assert token == compact({**HEADER, "kid": key.selector}, payload, key.private.sign)
        return token
    return compact(header, payload, key.private.sign)


def envelope(n: int, **changes: Any) -> dict[str, Any]:
    """Envelope number ``n``: alice@alpha.example to bob@beta.example; ``changes`` override."""
    created = changes.pop("created", CREATED)
    expires = changes.pop("expires", None)
    if expires is None:
        expires = created + LIFETIME
    obj: dict[str, Any] = {
        "v": 1,
        "id": f"0195a3c0-0000-7000-8000-{n:012d}",
        "from": "alice@alpha.example",
        "to": ["bob@beta.example"],
        "created": format_timestamp(created) if isinstance(created, datetime) else created,
        "expires": format_timestamp(expires) if isinstance(expires, datetime) else expires,
        "kind": "message",
        "content_type": "text/plain",
        "body": "Hello from alpha.",
    }
    obj.update(changes)
    return obj


def payload(obj: dict[str, Any]) -> bytes:
    return jsonutil.dumps(obj)


def world(keys: dict[str, Key]) -> dict[str, list[str]]:
    """The TXT records every case's verifier sees, by owner name."""
    records: dict[str, list[str]] = {}
    for name in ("alpha-s1", "alpha-s2", "beta-s1", "beta-b2", "buecher-s1"):
        k = keys[name]
        records[key_record_name(k.selector, k.domain)] = [KeyRecord(k.public).to_txt()]
    # Revoked (DKIM's convention, RFC 6376 §3.6.1): the name stays, the key is gone.
    records[key_record_name("s3", "alpha.example")] = ["v=synq1; k=ed25519; p="]
    return dict(sorted(records.items()))


def valid() -> dict[str, str]:
    return {"outcome": "valid"}


def error(cls: type[errors.SynqError]) -> dict[str, str]:
    return {"outcome": "error", "code": cls.code, "status": cls.status.code}


def tamper_signature(token: str) -> str:
    head, body, sig = token.split(".")
    raw = bytearray(b64url_decode(sig))
    raw[0] ^= 0x01
    return f"{head}.{body}.{b64(bytes(raw))}"


def build_cases(keys: dict[str, Key]) -> list[dict[str, Any]]:
    a1, a2, a3, a0 = keys["alpha-s1"], keys["alpha-s2"], keys["alpha-s3"], keys["alpha-s0"]
    b1, b2, idn = keys["beta-s1"], keys["beta-b2"], keys["buecher-s1"]
    records = world(keys)
    cases: list[dict[str, Any]] = []

    def case(
        name: str,
        description: str,
        token: str,
        expect: dict[str, str],
        key_records: dict[str, list[str]] | None = None,
    ) -> None:
        cases.append(
            {
                "name": name,
                "description": description,
                "token": token,
                "key_records": records if key_records is None else key_records,
                "now": format_timestamp(NOW),
                "expect": expect,
            }
        )

    good = payload(envelope(1))
    good_token = signed(a1, good)

    # ---- accepted
    case(
        "valid", "A well-formed envelope signed with alpha's published key s1.", good_token, valid()
    )
    case(
        "valid-rotated-key",
        "Signed with alpha's second published key s2 (both selectors live during a rotation).",
        signed(a2, payload(envelope(2))),
        valid(),
    )
    case(
        "valid-from-not-canonical",
        "from is spelt Alice@ALPHA.Example.; it is normalised (case, trailing dot) before the "
        "key look-up, so the key is found at s1._synqkey.alpha.example.",
        signed(a1, payload(envelope(3, **{"from": "Alice@ALPHA.Example."}))),
        valid(),
    )
    case(
        "valid-idn-domain",
        "from is agent@bücher.example (a U-label); the key is published under the A-label name "
        "s1._synqkey.xn--bcher-kva.example.",
        signed(idn, payload(envelope(4, **{"from": "agent@bücher.example"}))),
        valid(),
    )
    case(
        "valid-record-unknown-tags",
        "The key record has its tags after v=synq1 in another order, extra whitespace and "
        "unknown tags, which a verifier ignores.",
        good_token,
        valid(),
        key_records={
            **records,
            key_record_name("s1", "alpha.example"): [
                f"v = synq1 ;  t=y; p={a1.public.b64url} ;note=rotated in March;\tk=ed25519;"
            ],
        },
    )
    case(
        "valid-other-txt-at-name",
        "The key's owner name also holds TXT records of other protocols (first tag not "
        "v=synq1); they are ignored and the one Synq record is used.",
        good_token,
        valid(),
        key_records={
            **records,
            key_record_name("s1", "alpha.example"): [
                "google-site-verification=abc123",
                "v=spf1 -all",
                f"v=DKIM1; k=ed25519; p={a1.public.b64url}",
                KeyRecord(a1.public).to_txt(),
            ],
        },
    )
    case(
        "valid-created-at-skew-limit",
        f"created is exactly MAX_CLOCK_SKEW ({int(MAX_CLOCK_SKEW.total_seconds())} s) after now.",
        signed(a1, payload(envelope(5, created=NOW + MAX_CLOCK_SKEW))),
        valid(),
    )
    case(
        "valid-expires-1ms-after-now",
        "expires is one millisecond after now: still deliverable.",
        signed(a1, payload(envelope(6, created=NOW - LIFETIME + MS, expires=NOW + MS))),
        valid(),
    )
    case(
        "valid-lifetime-at-max",
        f"expires - created is exactly MAX_LIFETIME ({MAX_LIFETIME.days} days).",
        signed(a1, payload(envelope(7, expires=CREATED + MAX_LIFETIME))),
        valid(),
    )
    case(
        "valid-fraction-9-digits-and-offset",
        "Timestamps with nine fractional digits and a non-Z offset are valid RFC 3339.",
        signed(
            a1,
            payload(
                envelope(
                    8,
                    created="2026-03-01T13:58:59.123456789+02:00",
                    expires="2026-03-03T11:59:00.5-00:00",
                )
            ),
        ),
        valid(),
    )

    # ---- step 1: size
    filler = MAX_ENVELOPE_BYTES + 1 - len(payload(envelope(9, body="")))
    big = payload(envelope(9, body="x" * filler))
    assert len(big) == MAX_ENVELOPE_BYTES + 1
    big_token = signed(a1, big)
    assert len(big_token) <= MAX_JWS_BYTES
    case(
        "oversize-payload",
        f"The payload is MAX_ENVELOPE_BYTES + 1 = {MAX_ENVELOPE_BYTES + 1} bytes (otherwise a "
        "valid, correctly signed envelope); the token itself is within MAX_JWS_BYTES.",
        big_token,
        error(errors.PayloadTooLarge),
    )

    # ---- step 2: structure and header
    h, p, s = good_token.split(".")
    case(
        "two-part-token",
        "Only header.payload: the signature part is missing.",
        f"{h}.{p}",
        error(errors.InvalidEnvelope),
    )
    case(
        "header-jku",
        "The protected header adds jku (a URL to fetch the key from). Headers are exactly "
        "alg, kid, typ: a verifier never takes a key the signer points at.",
        signed(a1, good, {**HEADER, "jku": "https://alpha.example/jwks.json"}),
        error(errors.InvalidEnvelope),
    )
    case(
        "header-duplicate-alg",
        'The protected header has "alg" twice; duplicate member names are refused.',
        signed(a1, good, b'{"alg":"none","alg":"EdDSA","kid":"s1","typ":"synq+jws"}'),
        error(errors.InvalidEnvelope),
    )
    case(
        "alg-mismatch",
        "The header says ES256 over a valid Ed25519 signature: alg must be EdDSA.",
        signed(a1, good, {**HEADER, "alg": "ES256"}),
        error(errors.InvalidEnvelope),
    )
    case(
        "alg-hs256-public-key-as-secret",
        "Algorithm confusion: HS256 keyed with alpha's published public key (raw 32 bytes).",
        compact(
            {**HEADER, "alg": "HS256"},
            good,
            lambda data: hmac.new(a1.public.raw, data, hashlib.sha256).digest(),
        ),
        error(errors.InvalidEnvelope),
    )
    case(
        "alg-none",
        "An unsecured JWS (alg none, empty signature).",
        f"{b64(jsonutil.dumps({**HEADER, 'alg': 'none'}))}.{p}.",
        error(errors.InvalidEnvelope),
    )
    case(
        "typ-wrong",
        "typ is JWT instead of synq+jws.",
        signed(a1, good, {**HEADER, "typ": "JWT"}),
        error(errors.InvalidEnvelope),
    )
    sig_chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = sig_chars[sig_chars.index(s[-1]) ^ 0x01]
    case(
        "signature-non-canonical-base64url",
        "The last signature character differs only in its 4 unused bits: it decodes to the same "
        "64 bytes, but only the canonical spelling is accepted, so a token has one form.",
        f"{h}.{p}.{s[:-1]}{last}",
        error(errors.InvalidEnvelope),
    )
    case(
        "signature-padded",
        "The signature part carries base64 '=' padding.",
        f"{h}.{p}.{s}==",
        error(errors.InvalidEnvelope),
    )

    # ---- step 3: payload
    dup = payload(envelope(10)).replace(
        b'"to":["bob@beta.example"]', b'"to":["bob@beta.example"],"to":["mallory@beta.example"]'
    )
    case(
        "payload-duplicate-key",
        'The payload has "to" twice. Parsers that keep the first or the last member would '
        "deliver to different agents, so duplicates are refused (correctly signed).",
        signed(a1, dup),
        error(errors.MalformedRequest),
    )
    case(
        "payload-lone-surrogate",
        "The body contains the escape \\ud800, an unpaired surrogate (not I-JSON, RFC 7493).",
        signed(a1, payload(envelope(11)).replace(b'"Hello from alpha."', b'"\\ud800"')),
        error(errors.MalformedRequest),
    )
    case(
        "envelope-unknown-field",
        'The envelope adds a top-level field "priority"; unknown fields are refused.',
        signed(a1, payload(envelope(12, priority="high"))),
        error(errors.InvalidEnvelope),
    )
    case(
        "envelope-version-2",
        "v is 2; this is a synq/1 verifier.",
        signed(a1, payload(envelope(13, v=2))),
        error(errors.InvalidEnvelope),
    )
    case(
        "envelope-from-invalid",
        "from is alice@localhost (a single-label domain): no key can be looked up.",
        signed(a1, payload(envelope(14, **{"from": "alice@localhost"}))),
        error(errors.InvalidEnvelope),
    )

    # ---- step 4: key look-up
    case(
        "kid-not-published",
        "Signed with alpha's key s0, whose selector alpha never published.",
        signed(a0, payload(envelope(15))),
        error(errors.UnknownKey),
    )
    case(
        "kid-revoked",
        "Signed with alpha's key s3, whose record is published with an empty p= (revoked).",
        signed(a3, payload(envelope(16))),
        error(errors.UnknownKey),
    )
    case(
        "key-records-ambiguous",
        "Two Synq records at s1._synqkey.alpha.example (alpha's key and another): the choice "
        "would be the reader's, so the look-up fails even though one of them verifies.",
        good_token,
        error(errors.UnknownKey),
        key_records={
            **records,
            key_record_name("s1", "alpha.example"): [
                KeyRecord(a1.public).to_txt(),
                KeyRecord(b1.public).to_txt(),
            ],
        },
    )
    case(
        "key-record-malformed",
        "The one Synq record at the name is unusable (k=rsa): an error, not a reason to look "
        "further.",
        good_token,
        error(errors.UnknownKey),
        key_records={**records, key_record_name("s1", "alpha.example"): ["v=synq1; k=rsa; p=AAAA"]},
    )
    case(
        "key-record-v-not-first",
        "The record at the name has v=synq1 as its second tag, so it is not a Synq record and "
        "the name holds no key.",
        good_token,
        error(errors.UnknownKey),
        key_records={
            **records,
            key_record_name("s1", "alpha.example"): [f"k=ed25519; v=synq1; p={a1.public.b64url}"],
        },
    )
    case(
        "foreign-key-selector-only-at-signer",
        "from alice@alpha.example but signed by beta with kid b2: b2._synqkey.beta.example "
        "exists, b2._synqkey.alpha.example does not. Keys are looked up under the from domain.",
        signed(b2, payload(envelope(17))),
        error(errors.UnknownKey),
    )

    # ---- step 5: signature
    case(
        "foreign-key-same-selector",
        "from alice@alpha.example but signed with beta's key, kid s1. alpha also publishes an s1 "
        "(its own key), which is the one that must be used: the signature does not verify.",
        signed(b1, payload(envelope(18))),
        error(errors.BadSignature),
    )
    case(
        "kid-names-another-published-key",
        "Signed with alpha's s1 key but the header says kid s2 (also published by alpha).",
        signed(a1, good, {**HEADER, "kid": "s2"}),
        error(errors.BadSignature),
    )
    tampered = payload(envelope(1, body="Hello from alpha!"))
    reordered = b'{"kid":"s1","alg":"EdDSA","typ":"synq+jws"}'
    case(
        "tampered-payload",
        "The valid case with one character of the body changed; header and signature kept.",
        f"{h}.{b64(tampered)}.{s}",
        error(errors.BadSignature),
    )
    case(
        "tampered-signature",
        "The valid case with one bit of the signature flipped.",
        tamper_signature(good_token),
        error(errors.BadSignature),
    )
    case(
        "header-re-encoded",
        "The same three header fields in another order: the fields are fine, but the signed "
        "bytes changed.",
        f"{b64(reordered)}.{p}.{s}",
        error(errors.BadSignature),
    )

    # ---- step 6: times
    case(
        "expired",
        "expires is exactly now: an envelope is expired from its expires instant on.",
        signed(a1, payload(envelope(19, created=NOW - LIFETIME, expires=NOW))),
        error(errors.EnvelopeExpired),
    )
    case(
        "expired-long-ago",
        "Created and expired in 2025.",
        signed(
            a1,
            payload(envelope(20, created="2025-06-01T00:00:00Z", expires="2025-06-02T00:00:00Z")),
        ),
        error(errors.EnvelopeExpired),
    )
    case(
        "created-in-future",
        "created is MAX_CLOCK_SKEW + 1 ms after now.",
        signed(a1, payload(envelope(21, created=NOW + MAX_CLOCK_SKEW + MS))),
        error(errors.EnvelopeFromFuture),
    )
    case(
        "lifetime-too-long",
        "expires - created is MAX_LIFETIME + 1 ms.",
        signed(a1, payload(envelope(22, expires=CREATED + MAX_LIFETIME + MS))),
        error(errors.InvalidEnvelope),
    )

    # ---- the order of the steps decides the error
    case(
        "order-header-before-payload",
        "jku in the header and a duplicate key in the payload: the header (step 2) is checked "
        "first.",
        signed(a1, dup, {**HEADER, "jku": "https://alpha.example/jwks.json"}),
        error(errors.InvalidEnvelope),
    )
    case(
        "order-envelope-before-key",
        "An unknown field, signed with an unpublished key: the envelope (step 3) is checked "
        "before the key is looked up.",
        signed(a0, payload(envelope(23, priority="high"))),
        error(errors.InvalidEnvelope),
    )
    case(
        "order-key-before-times",
        "Expired and signed with an unpublished key: unknown_key (step 4) wins.",
        signed(a0, payload(envelope(24, created=NOW - LIFETIME, expires=NOW))),
        error(errors.UnknownKey),
    )
    case(
        "order-signature-before-times",
        "Expired and with a broken signature: bad_signature (step 5) wins, so an unsigned "
        "envelope never learns how the receiver judges its times.",
        tamper_signature(signed(a1, payload(envelope(25, created=NOW - LIFETIME, expires=NOW)))),
        error(errors.BadSignature),
    )
    case(
        "order-future-before-lifetime",
        "Created in the future beyond the skew and with a lifetime over the maximum: "
        "created_in_future (checked before the lifetime).",
        signed(
            a1,
            payload(
                envelope(26, created=NOW + timedelta(hours=1), expires=NOW + 8 * timedelta(days=1))
            ),
        ),
        error(errors.EnvelopeFromFuture),
    )

    # ---- MCP messages carried whole (SPEC.md "MCP mapping", "Any MCP message")
    request_id = envelope(27)["id"]
    case(
        "valid-mcp-request",
        "A client's resources/read crossing as application/mcp-request+json.",
        signed(
            a1,
            payload(
                envelope(
                    27,
                    to=["tools@beta.example"],
                    thread="mcp-0195a3c0-0000-7000-8000-000000000027",
                    content_type="application/mcp-request+json",
                    body={
                        "method": "resources/read",
                        "params": {"uri": "test://static-text"},
                        "id": "0195a3c0-0000-7000-8000-0000000000a1",
                        "protocolVersion": "2025-11-25",
                    },
                )
            ),
        ),
        valid(),
    )
    case(
        "valid-mcp-notification",
        "A server's log message for that request, back as application/mcp-notification+json.",
        signed(
            b1,
            payload(
                envelope(
                    28,
                    **{"from": "tools@beta.example", "to": ["alice@alpha.example"]},
                    kind="task.update",
                    thread="mcp-0195a3c0-0000-7000-8000-000000000027",
                    in_reply_to=request_id,
                    content_type="application/mcp-notification+json",
                    body={
                        "method": "notifications/message",
                        "params": {"level": "info", "data": "reading"},
                    },
                )
            ),
        ),
        valid(),
    )
    case(
        "valid-mcp-result",
        "The answer to that request as application/mcp-result+json.",
        signed(
            b1,
            payload(
                envelope(
                    29,
                    **{"from": "tools@beta.example", "to": ["alice@alpha.example"]},
                    kind="task.update",
                    thread="mcp-0195a3c0-0000-7000-8000-000000000027",
                    in_reply_to=request_id,
                    content_type="application/mcp-result+json",
                    body={
                        "id": "0195a3c0-0000-7000-8000-0000000000a1",
                        "result": {
                            "contents": [
                                {
                                    "uri": "test://static-text",
                                    "mimeType": "text/plain",
                                    "text": "hi",
                                }
                            ]
                        },
                    },
                )
            ),
        ),
        valid(),
    )

    # ---- signals (SPEC.md §13.6): an offer, and a claim request made for a partner's agent
    sid = "0195a3c0-0000-7000-8000-000000000100"
    offer = sg.Signal(
        id=sid,
        owner="alpha.example",
        emitter="alice@alpha.example",
        topic="invoice.overdue",
        text="Chase invoice 7.",
        urgency=0.8,
        half_life=600.0,
        lease=60.0,
        scope=("beta.example",),
        created=CREATED,
        expires=CREATED + timedelta(days=1),
    )
    case(
        "signal-offer",
        "A signal offered by its owner relay to a partner: kind signal, to signals@beta.example, "
        "the signal as the body (application/synq-signal+json).",
        signed(
            a1,
            payload(
                envelope(
                    40,
                    to=["signals@beta.example"],
                    kind=sg.KIND_SIGNAL,
                    thread=sid,
                    content_type=sg.SIGNAL_CONTENT_TYPE,
                    body=sg.offer_body(offer),
                )
            ),
        ),
        valid(),
    )
    claim = {
        "from": "carol@beta.example",
        "to": ["alice@alpha.example"],
        "kind": "signal.claim",
        "in_reply_to": sid,
        "content_type": sg.REQUEST_CONTENT_TYPE,
        "body": {"signal": sid},
        "expires": CREATED + sg.MAX_REQUEST_LIFETIME,
    }
    case(
        "signal-claim-request",
        "A claim request for carol@beta.example, signed by beta's relay (kid s1), POSTed to "
        "alpha's /synq/v1/federation/signals/{id}/claim; it lives 300 s.",
        signed(b1, payload(envelope(41, **claim))),
        valid(),
    )
    case(
        "signal-claim-request-other-domain",
        "The same request signed by alpha's key: a relay speaks only for agents of a domain "
        "whose key it holds, so beta's key does not verify it.",
        signed(a1, payload(envelope(42, **claim))),
        error(errors.BadSignature),
    )
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "case names are unique"
    return cases


# ------------------------------------------------------------ signed partner requests (§12.6)

#: The partner relay's URL the requests are addressed to, as the verifier names itself.
SEARCH_URL = "https://relay.beta.example/ard/search"
SEARCH_BODY = jsonutil.dumps(
    {"query": {"text": "translate invoices into German"}, "federation": "none", "pageSize": 10}
)
SEARCH_NOW = int(NOW.timestamp())


def search_request(
    key: Key,
    *,
    domain: str = "alpha.example",
    url: str = SEARCH_URL,
    body: bytes = SEARCH_BODY,
    created: int = SEARCH_NOW - 2,
    lifetime: int = httpsig.SIGNATURE_LIFETIME,
    n: int = 0,
) -> dict[str, str]:
    """The header fields of a request signed by ``key`` for ``domain``, nonce number ``n``."""
    nonce = b64(hashlib.sha256(f"synq search vector nonce {n}".encode()).digest()[:18])
    return httpsig.sign_request(
        method="POST", url=url, body=body, key=key.signing, domain=domain, created=created,
        nonce=nonce, lifetime=lifetime,
    )  # fmt: skip


def build_search_cases(keys: dict[str, Key]) -> list[dict[str, Any]]:
    a1, a2, a0, a3 = keys["alpha-s1"], keys["alpha-s2"], keys["alpha-s0"], keys["alpha-s3"]
    b1 = keys["beta-s1"]
    records = world(keys)
    skew, lifetime = httpsig.MAX_SIGNATURE_SKEW, httpsig.SIGNATURE_LIFETIME
    cases: list[dict[str, Any]] = []

    def case(
        name: str,
        description: str,
        headers: dict[str, str],
        expect: dict[str, str],
        *,
        method: str = "POST",
        url: str = SEARCH_URL,
        body: bytes = SEARCH_BODY,
        seen: list[list[str]] | None = None,
    ) -> None:
        cases.append(
            {
                "name": name,
                "description": description,
                "method": method,
                "url": url,
                "headers": [[k, v] for k, v in headers.items()],
                "body": body.decode("utf-8"),
                "key_records": records,
                "now": SEARCH_NOW,
                "seen": seen or [],
                "expect": expect,
            }
        )

    def accepted(domain: str = "alpha.example") -> dict[str, str]:
        return {"outcome": "valid", "domain": domain}

    good = search_request(a1)
    si, sig = good["Signature-Input"], good["Signature"]
    first_nonce = httpsig.parse_signed_request("POST", SEARCH_URL, good, SEARCH_BODY).nonce

    # ---- accepted
    case(
        "valid",
        "A search request signed by alpha's relay with its published key s1.",
        good,
        accepted(),
    )
    case(
        "valid-rotated-key",
        "Signed with alpha's second published key s2.",
        search_request(a2, n=1),
        accepted(),
    )
    case(
        "valid-other-signature-beside",
        "A proxy added a signature of its own under another label and tag; the verifier picks "
        "the one tagged synq-discovery and ignores the other.",
        {
            **good,
            "Signature-Input": f'proxy=("@method");created=1;keyid="p";alg="ed25519", {si}',
            "Signature": f"proxy=:AAAA:, {sig}",
        },
        accepted(),
    )
    case(
        "valid-created-at-skew-limit",
        f"created is MAX_SIGNATURE_SKEW ({skew} s) ahead of now.",
        search_request(a1, created=SEARCH_NOW + skew, n=2),
        accepted(),
    )
    case(
        "valid-expires-within-skew",
        f"expires is {skew - 1} s behind now: within MAX_SIGNATURE_SKEW.",
        search_request(a1, created=SEARCH_NOW - lifetime - skew + 1, n=3),
        accepted(),
    )
    case(
        "valid-default-port-in-url",
        "The verifier names itself with an explicit :443; @authority omits the default port.",
        good,
        accepted(),
        url="https://relay.beta.example:443/ard/search",
    )

    # ---- step 1: presence and structure
    case(
        "unsigned",
        "No Signature and no Signature-Input.",
        {"Content-Type": "application/json", "Content-Digest": good["Content-Digest"]},
        error(errors.SignatureRequired),
    )
    case(
        "signature-without-input",
        "Signature without Signature-Input.",
        {k: v for k, v in good.items() if k != "Signature-Input"},
        error(errors.MalformedRequest),
    )
    case(
        "signature-input-not-structured",
        "Signature-Input is not an RFC 8941 dictionary.",
        {**good, "Signature-Input": si.replace("synq=(", "synq=(;")},
        error(errors.MalformedRequest),
    )
    case(
        "duplicate-label",
        "Two signatures under the label synq: RFC 8941 would keep the "
        "last; a verifier refuses rather than choose.",
        {**good, "Signature": f"{sig}, {sig}"},
        error(errors.MalformedRequest),
    )
    case(
        "tag-missing",
        "No signature is tagged synq-discovery.",
        {**good, "Signature-Input": si.replace(';tag="synq-discovery"', "")},
        error(errors.BadSignature),
    )
    case(
        "alg-not-ed25519",
        'alg is "rsa-pss-sha512".',
        {**good, "Signature-Input": si.replace('"ed25519"', '"rsa-pss-sha512"')},
        error(errors.BadSignature),
    )
    case(
        "content-digest-not-covered",
        "The covered components leave out content-digest.",
        {**good, "Signature-Input": si.replace(' "content-digest"', "")},
        error(errors.BadSignature),
    )
    case(
        "keyid-bare-selector",
        'keyid is "s1": it must be the key record name, s1._synqkey.alpha.example.',
        {**good, "Signature-Input": si.replace("s1._synqkey.alpha.example", "s1")},
        error(errors.BadSignature),
    )
    case(
        "keyid-not-canonical",
        "keyid spells the domain in upper case.",
        {**good, "Signature-Input": si.replace("alpha.example", "ALPHA.example")},
        error(errors.BadSignature),
    )
    case(
        "lifetime-too-long",
        f"expires - created is MAX_SIGNATURE_LIFETIME + 1 ({httpsig.MAX_SIGNATURE_LIFETIME + 1} s).",
        {
            **good,
            "Signature-Input": si.replace(
                f"expires={SEARCH_NOW - 2 + lifetime}",
                f"expires={SEARCH_NOW - 2 + httpsig.MAX_SIGNATURE_LIFETIME + 1}",
            ),
        },
        error(errors.BadSignature),
    )
    case(
        "nonce-too-short",
        "The nonce has 21 characters (under 128 bits).",
        {**good, "Signature-Input": si.replace(first_nonce, first_nonce[:21])},
        error(errors.BadSignature),
    )

    # ---- step 1: the digest, before any key
    case(
        "digest-mismatch",
        "The body was changed after signing; headers kept.",
        good,
        error(errors.DigestMismatch),
        body=SEARCH_BODY.replace(b"German", b"French"),
    )
    case(
        "digest-missing",
        "No Content-Digest field.",
        {k: v for k, v in good.items() if k != "Content-Digest"},
        error(errors.DigestMismatch),
    )
    case(
        "order-digest-before-key",
        "Signed with the unpublished key s0 and a changed body: the digest fails first, so a "
        "mismatching body costs the verifier no key look-up.",
        search_request(a0, n=4),
        error(errors.DigestMismatch),
        body=b"{}",
    )

    # ---- step 2: the key
    case(
        "kid-not-published",
        "Signed with alpha's key s0, which alpha never published.",
        search_request(a0, n=5),
        error(errors.UnknownKey),
    )
    case(
        "kid-revoked",
        "Signed with alpha's s3, published with an empty p= (revoked).",
        search_request(a3, n=6),
        error(errors.UnknownKey),
    )

    # ---- step 3: the signature
    case(
        "foreign-key",
        "keyid s1._synqkey.alpha.example but signed with beta's key s1.",
        search_request(b1, domain="alpha.example", n=7),
        error(errors.BadSignature),
    )
    case(
        "signed-for-another-relay",
        "Signed for https://relay.gamma.example/ard/search and sent to beta's relay: "
        "@authority differs.",
        search_request(a1, url="https://relay.gamma.example/ard/search", n=8),
        error(errors.BadSignature),
    )
    case(
        "method-changed",
        "Signed as POST, received as PUT.",
        good,
        error(errors.BadSignature),
        method="PUT",
    )
    case(
        "path-changed",
        "Signed for /ard/search, received at /ard/explore.",
        good,
        error(errors.BadSignature),
        url="https://relay.beta.example/ard/explore",
    )
    case(
        "content-type-changed",
        "Content-Type changed to text/plain after signing.",
        {**good, "Content-Type": "text/plain"},
        error(errors.BadSignature),
    )
    case(
        "order-signature-before-times",
        "Expired an hour ago and signed with beta's key: bad_signature wins, so a forgery "
        "learns nothing about the window.",
        search_request(b1, created=SEARCH_NOW - 3600, n=9),
        error(errors.BadSignature),
    )

    # ---- step 4: the times
    case(
        "expired",
        f"expires is exactly MAX_SIGNATURE_SKEW ({skew} s) behind now.",
        search_request(a1, created=SEARCH_NOW - lifetime - skew, n=10),
        error(errors.StaleSignature),
    )
    case(
        "created-in-future",
        "created is MAX_SIGNATURE_SKEW + 1 s ahead of now.",
        search_request(a1, created=SEARCH_NOW + skew + 1, n=11),
        error(errors.StaleSignature),
    )

    # ---- step 5: the replay cache
    case(
        "replayed",
        "The valid case's request again: its keyid and nonce were already accepted (seen).",
        good,
        error(errors.ReplayedRequest),
        seen=[["s1._synqkey.alpha.example", first_nonce]],
    )
    case(
        "same-nonce-other-key",
        "A nonce seen under s1 is new under s2: the replay key is (keyid, nonce).",
        search_request(a2, n=0),
        accepted(),
        seen=[["s1._synqkey.alpha.example", first_nonce]],
    )
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "case names are unique"
    return cases


def render(cases: list[dict[str, Any]]) -> bytes:
    return (json.dumps(cases, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def generate(keys_file: Path = KEYS_FILE) -> bytes:
    return render(build_cases(load_keys(keys_file)))


def generate_search(keys_file: Path = KEYS_FILE) -> bytes:
    return render(build_search_cases(load_keys(keys_file)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", type=Path, default=VECTORS_FILE, help="where to write")
    parser.add_argument(
        "--search-out", type=Path, default=SEARCH_VECTORS_FILE, help="where to write those"
    )
    args = parser.parse_args(argv)
    outputs = [(args.out, generate()), (args.search_out, generate_search())]
    if args.check:
        stale = [path for path, data in outputs if path.read_bytes() != data]
        for path in stale:
            print(f"{path} is out of date; run {Path(__file__).name}", file=sys.stderr)
        return 1 if stale else 0
    for path, data in outputs:
        path.write_bytes(data)
        print(f"wrote {path} ({len(json.loads(data))} cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
