"""Regenerate ``vectors.json``, the signing test vectors, from the fixed keys in ``keys.json``.

    python interop/vectors/generate.py          # rewrite vectors.json next to this file
    python interop/vectors/generate.py --check  # exit 1 if vectors.json differs from its output

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

from relay.core import errors, jsonutil
from relay.core import signals as sg
from relay.core.envelope import format_timestamp
from relay.core.jws import PublicKey, SigningKey, b64url_decode, sign
from relay.core.limits import MAX_CLOCK_SKEW, MAX_ENVELOPE_BYTES, MAX_JWS_BYTES, MAX_LIFETIME
from relay.core.records import KeyRecord, key_record_name

HERE = Path(__file__).resolve().parent
KEYS_FILE = HERE / "keys.json"
VECTORS_FILE = HERE / "vectors.json"

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


def render(cases: list[dict[str, Any]]) -> bytes:
    return (json.dumps(cases, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def generate(keys_file: Path = KEYS_FILE) -> bytes:
    return render(build_cases(load_keys(keys_file)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", type=Path, default=VECTORS_FILE, help="where to write")
    args = parser.parse_args(argv)
    data = generate()
    if args.check:
        if args.out.read_bytes() != data:
            print(f"{args.out} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(json.loads(data))} cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
