"""The signed partner-request vectors (interop/vectors/search-vectors.json, SPEC.md §12.6), run
through a verifier built from relay.core.httpsig and the replay cache of the federation layer;
a second implementation runs the same JSON through its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relay.core import httpsig
from relay.core.errors import ConfigError, SynqError, UnknownKey
from relay.core.jws import PublicKey
from relay.core.records import KeyRecord, RecordError, is_synq_record, key_record_name
from relay.federation.search import REPLAY_WINDOW, ReplayCache
from tests.test_vectors import load_generator

VECTORS_DIR = Path(__file__).resolve().parent.parent / "interop" / "vectors"
CASES: list[dict[str, Any]] = json.loads((VECTORS_DIR / "search-vectors.json").read_text("utf-8"))


def published_key(key_records: dict[str, list[str]], selector: str, domain: str) -> PublicKey:
    """SPEC.md §4.4 step 4's look-up, at the keyid's name (no well-known in the vectors)."""
    name = key_record_name(selector, domain)
    synq = [txt for txt in key_records.get(name, []) if is_synq_record(txt)]
    if len(synq) != 1:
        raise UnknownKey(f"{len(synq)} synq1 key records at {name}")
    try:
        return KeyRecord.parse(selector, synq[0]).key
    except (RecordError, ConfigError) as exc:
        raise UnknownKey(f"{name}: {exc}") from None


def verify_search_request(case: dict[str, Any]) -> str:
    """SPEC.md §12.6: the asking domain, or the first failing step's error."""
    headers = [(name, value) for name, value in case["headers"]]
    body = case["body"].encode("utf-8")
    request = httpsig.parse_signed_request(case["method"], case["url"], headers, body)
    key = published_key(case["key_records"], request.selector, request.domain)
    httpsig.verify_signature(request, key)
    now: int = case["now"]
    httpsig.check_times(request, now)
    replays = ReplayCache()
    for keyid, nonce in case["seen"]:
        replays.add((keyid, nonce), now + REPLAY_WINDOW, now)
    replays.add((request.keyid, request.nonce), request.expires + httpsig.MAX_SIGNATURE_SKEW, now)
    return request.domain


def outcome(case: dict[str, Any]) -> dict[str, str]:
    try:
        domain = verify_search_request(case)
    except SynqError as exc:
        return {"outcome": "error", "code": exc.code, "status": exc.status.code}
    return {"outcome": "valid", "domain": domain}


@pytest.mark.parametrize("case", [pytest.param(c, id=c["name"]) for c in CASES])
def test_search_vector(case: dict[str, Any]) -> None:
    assert outcome(case) == case["expect"], case["description"]


def test_search_vectors_cover_every_step() -> None:
    codes = {c["expect"].get("code", "valid") for c in CASES}
    assert codes == {
        "valid",
        "signature_required",
        "malformed_request",
        "bad_signature",
        "digest_mismatch",
        "unknown_key",
        "stale_signature",
        "replayed_request",
    }
    for case in CASES:
        assert set(case) == {
            "name", "description", "method", "url", "headers", "body", "key_records", "now",
            "seen", "expect",
        }  # fmt: skip


def test_regenerating_search_vectors_is_byte_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    generated = load_generator(monkeypatch).generate_search(VECTORS_DIR / "keys.json")
    assert generated == (VECTORS_DIR / "search-vectors.json").read_bytes()
