"""The signing test vectors in interop/vectors/, run through a verifier built only from relay.core.

The verifier below is the procedure of SPEC.md §4.4, step by step; a second implementation
runs the same JSON through its own and must reach the same outcomes.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from relay.core import envelope as env
from relay.core import errors, jws
from relay.core.errors import ConfigError, SynqError, UnknownKey
from relay.core.records import KeyRecord, RecordError, is_synq_record, key_record_name

VECTORS_DIR = Path(__file__).resolve().parent.parent / "interop" / "vectors"
CASES: list[dict[str, Any]] = json.loads((VECTORS_DIR / "vectors.json").read_text("utf-8"))


def verify_signed_envelope(
    token: str, key_records: dict[str, list[str]], now: datetime
) -> env.Envelope:
    """SPEC.md §4.4: verify one signed envelope; return it, or raise the step's error."""
    # Steps 1-2: size, compact structure, the exact protected header. No crypto yet.
    parsed = jws.parse_compact(token)
    # Step 3: the payload as an envelope (size, strict JSON, schema), to learn the from domain.
    envelope = env.decode(parsed.payload)
    # Step 4: the one key published under the *from* domain with the header's kid. TXT records
    # of other protocols at the name are ignored; none, several or a broken Synq record is
    # unknown_key (no well-known document exists in the vectors' world).
    name = key_record_name(parsed.kid, envelope.sender.domain)
    synq = [txt for txt in key_records.get(name, []) if is_synq_record(txt)]
    if len(synq) != 1:
        raise UnknownKey(f"{len(synq)} synq1 key records at {name}")
    try:
        key = KeyRecord.parse(parsed.kid, synq[0]).key
    except (RecordError, ConfigError) as exc:
        raise UnknownKey(f"{name}: {exc}") from None
    # Step 5: the signature over the bytes as received.
    jws.verify(parsed, key)
    # Step 6: the times, against the verifier's clock.
    env.check_times(envelope, now)
    return envelope


def outcome(case: dict[str, Any]) -> dict[str, str]:
    try:
        verify_signed_envelope(case["token"], case["key_records"], env.parse_timestamp(case["now"]))
    except SynqError as exc:
        return {"outcome": "error", "code": exc.code, "status": exc.status.code}
    return {"outcome": "valid"}


@pytest.mark.parametrize("case", [pytest.param(c, id=c["name"]) for c in CASES])
def test_vector(case: dict[str, Any]) -> None:
    assert outcome(case) == case["expect"], case["description"]


def test_vectors_cover_every_step() -> None:
    codes = {c["expect"].get("code", "valid") for c in CASES}
    assert codes >= {
        "valid",
        "too_large",
        "invalid_envelope",
        "malformed_request",
        "unknown_key",
        "bad_signature",
        "expired",
        "created_in_future",
    }


def test_vectors_schema() -> None:
    known = {
        cls.code: cls.status.code
        for cls in vars(errors).values()
        if inspect.isclass(cls) and issubclass(cls, SynqError)
    }
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))
    for case in CASES:
        assert set(case) == {"name", "description", "token", "key_records", "now", "expect"}
        assert all(isinstance(v, list) for v in case["key_records"].values())
        expect = case["expect"]
        if expect["outcome"] == "valid":
            assert expect == {"outcome": "valid"}
        else:
            assert set(expect) == {"outcome", "code", "status"}
            assert known[expect["code"]] == expect["status"], case["name"]


def test_keys_file_is_consistent() -> None:
    doc = json.loads((VECTORS_DIR / "keys.json").read_text("utf-8"))
    for entry in doc["keys"]:
        key = jws.SigningKey.from_jwk_dict(entry["selector"], entry["jwk"])
        assert key.public_key.b64url == entry["jwk"]["x"], entry["name"]
        assert entry["domain"] == entry["domain"].lower()


def load_generator(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import interop/vectors/generate.py (a script, not a package) for this test only."""
    name = "synq_vectors_generate"
    spec = importlib.util.spec_from_file_location(name, VECTORS_DIR / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules.
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_regenerating_is_byte_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    generated = load_generator(monkeypatch).generate(VECTORS_DIR / "keys.json")
    assert generated == (VECTORS_DIR / "vectors.json").read_bytes()
