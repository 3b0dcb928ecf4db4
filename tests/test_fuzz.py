"""Generated hostile input: every input is accepted, or answered with a documented error —
never an unhandled exception, never a 500 (the h11/fuzz rule).

Targets and their share of the suite's corpus (CORPUS: 10,100 generated cases in all, under a
minute on one core; the pure targets get more, as their cases are cheaper):

* address parsing (``Address.parse``): canonical and idempotent, or ``InvalidAddress``;
* the envelope codec (``envelope.decode``): an envelope that re-encodes to itself, or one of
  ``InvalidEnvelope`` / ``MalformedRequest`` / ``PayloadTooLarge``;
* JWS parsing (``jws.parse_compact`` then ``jws.verify``): structural refusals as
  ``InvalidEnvelope`` / ``PayloadTooLarge``, signature failures as ``BadSignature``;
* the transaction handler, over a real socket to a live relay whose keys are in a loopback DNS
  server: ``200`` with one well-formed result per envelope, or a documented error document;
* the local send API, likewise.

The runs are reproducible (``derandomize=True``, no example database): CI explores the same
cases every time. A longer campaign explores more — ``SYNQ_FUZZ_EXAMPLES`` sets the examples
of every target (README.md, "Fuzzing"):

    SYNQ_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz.py --timeout 0
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import Config
from relay.core import envelope as env_mod
from relay.core import jws
from relay.core.address import Address
from relay.core.errors import (
    BadSignature,
    InvalidAddress,
    InvalidEnvelope,
    MalformedRequest,
    PayloadTooLarge,
)
from relay.core.jws import SigningKey, b64url_encode
from tests.fedenv import World, world

#: Examples per target in the suite; SYNQ_FUZZ_EXAMPLES replaces them all for a longer run.
CORPUS: Final = {"address": 4_500, "jws": 2_000, "envelope": 2_000, "txn": 1_000, "send": 600}
LONG_RUN: Final = int(os.environ.get("SYNQ_FUZZ_EXAMPLES", "0"))
#: Each target's whole-test bound (pytest-timeout); none for a long run.
FUZZ_TIMEOUT: Final = pytest.mark.timeout(0 if LONG_RUN else 300)


def fuzz(target: str, *, wire: bool = False) -> settings:
    """Reproducible settings for one target. The deadline is per example and generous, so a
    loaded CI machine does not turn slowness into a failure; what it catches is a pathological
    input (a parser gone quadratic)."""
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large]
    if wire:
        # One live relay pair serves every example of the test, on purpose.
        checks.append(HealthCheck.function_scoped_fixture)
    return settings(
        max_examples=LONG_RUN or CORPUS[target],
        deadline=timedelta(seconds=20 if wire else 5),
        derandomize=True,
        database=None,
        suppress_health_check=checks,
    )


STATUS_RE: Final = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
#: The error codes of SPEC.md §5.3 and the HTTP status each may come with.
DOCUMENTED: Final = {
    "malformed_request": {400, 405, 408, 415},
    "invalid_address": {400},
    "invalid_envelope": {422},
    "expired": {422},
    "created_in_future": {422},
    "bad_signature": {422},
    "unknown_key": {422},
    "unauthenticated": {401},
    "forbidden": {403},
    "not_found": {404},
    "unknown_recipient": {422},
    "wrong_domain": {422},
    "conflict": {409},
    "too_large": {413},
    "rate_limited": {429},
    "store_unavailable": {503},
}

# ---------------------------------------------------------------------------- strategies

#: Characters that matter to the parsers: separators, case, look-alikes, joiners, controls.
TRICKY = "aAzZ09.-_@+:/ \t\n\x00ßüÜıİ\u212a\u017f\u200d\u00ad\uff21\ufe52。"
NEAR_TEXT = st.text(alphabet=st.sampled_from(TRICKY), max_size=40)
ANY_TEXT = st.text(max_size=60)
LABEL = st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=12)
DOMAIN = st.lists(LABEL, min_size=1, max_size=4).map(".".join) | st.sampled_from(
    ["acme.test", "globex.test", "ACME.Test.", "xn--bcher-kva.example", "bücher.example"]
)
LOCAL = st.text(
    alphabet=string.ascii_letters + string.digits + "._-+ßüİı\u212a\u017f\uff41",
    min_size=0,
    max_size=12,
)
ADDRESSES = (
    st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAIN)
    | NEAR_TEXT
    | ANY_TEXT
    | st.sampled_from(["bob@globex.test", "alice@acme.test", "ghost@globex.test"])
)

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=6,
)

NOW: Final = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TIMESTAMPS = (
    st.sampled_from(
        [
            "2026-03-01T12:00:00.000Z",
            "2026-03-01T13:00:00Z",
            "2026-03-01T11:00:00+01:00",
            "2026-02-30T12:00:00Z",
            "2026-03-01 12:00:00Z",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00+01:00",
            "2026-03-01T12:00:60Z",
            "2026-03-01T12:00:00.1234567891Z",
        ]
    )
    | ANY_TEXT
)


def _envelope(
    id_: str,
    local: str,
    to: list[str],
    created: datetime,
    lifetime: timedelta,
    kind: str,
    body: Any,
) -> dict[str, Any]:
    return {
        "v": 1,
        "id": f"fz-{id_}",
        "from": f"{local}@acme.test",
        "to": to,
        "created": env_mod.format_timestamp(created),
        "expires": env_mod.format_timestamp(created + lifetime),
        "kind": kind,
        "content_type": "text/plain" if isinstance(body, str) else "application/json",
        "body": body,
    }


def valid_envelopes(now: datetime) -> st.SearchStrategy[dict[str, Any]]:
    """Envelopes from acme.test around ``now``: fresh (most), expired, from the future."""
    return st.builds(
        _envelope,
        st.text(alphabet=string.ascii_letters + string.digits + "._:-", min_size=1, max_size=16),
        st.sampled_from(["alice", "carol", "mailer-daemon"]),
        st.lists(
            st.sampled_from(["bob@globex.test"] * 3 + ["ghost@globex.test", "x@initech.test"]),
            min_size=1,
            max_size=3,
            unique=True,
        ),
        st.sampled_from([now] * 4 + [now - timedelta(days=3), now + timedelta(hours=1)]),
        st.sampled_from([timedelta(hours=1)] * 4 + [timedelta(days=8), timedelta(0)]),
        st.sampled_from(["message", "task.update", "dsn", "signal"]),
        JSON,
    )


@st.composite
def mutated(draw: st.DrawFn, now: datetime = NOW) -> dict[str, Any]:
    """A valid envelope with up to three fields dropped, replaced or added (often none)."""
    doc = draw(valid_envelopes(now))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        action = draw(st.sampled_from(["drop", "replace", "add", "address", "time"]))
        key = draw(st.sampled_from(sorted(doc) or ["v"]))
        if action == "drop":
            doc.pop(key, None)
        elif action == "replace":
            doc[key] = draw(JSON)
        elif action == "add":
            doc[draw(ANY_TEXT)] = draw(JSON)
        elif action == "address":
            doc[draw(st.sampled_from(["from", "to"]))] = draw(
                ADDRESSES | st.lists(ADDRESSES, max_size=3)
            )
        else:
            doc[draw(st.sampled_from(["created", "expires"]))] = draw(TIMESTAMPS)
    return doc


ENVELOPE_BYTES = (
    mutated().map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=300)
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.sampled_from([b"[" * 70 + b"]" * 70, b'{"v":1,"v":1}', b"\xef\xbb\xbf{}", b'{"a":NaN}'])
)

KEY: Final = SigningKey.generate("s1")
B64 = st.binary(max_size=80).map(b64url_encode)


@st.composite
def tokens(draw: st.DrawFn, key: SigningKey = KEY, now: datetime = NOW) -> str:
    """Signed tokens (most), some altered; three-part strings with any header; and junk."""
    choice = draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3, 4]))
    if choice <= 1:
        return jws.sign(json.dumps(draw(mutated(now))).encode(), key)
    if choice == 2:
        token = jws.sign(json.dumps(draw(valid_envelopes(now))).encode(), key)
        i = draw(st.integers(0, len(token) - 1))
        return token[:i] + draw(st.sampled_from(list("A_-.=x9 "))) + token[i + 1 :]
    if choice == 3:
        header = draw(
            st.dictionaries(
                st.sampled_from(["alg", "kid", "typ", "jku", "crit", "b64"]), JSON, max_size=4
            )
        )
        return ".".join([b64url_encode(json.dumps(header).encode()), draw(B64), draw(B64)])
    return draw(ANY_TEXT | st.lists(B64, max_size=5).map(".".join))


# ---------------------------------------------------------------------------- pure targets


@FUZZ_TIMEOUT
@fuzz("address")
@given(ADDRESSES)
def test_fuzz_address_parsing(text: str) -> None:
    try:
        address = Address.parse(text)
    except InvalidAddress:
        return
    canonical = str(address)
    assert Address.parse(canonical) == address  # normalisation is idempotent
    # SPEC.md §2.2: only ASCII is case-folded; a non-ASCII local part (KELVIN SIGN, LONG S)
    # must be refused, never folded onto another agent's address.
    assert text.partition("@")[0].isascii()
    assert canonical.isascii()
    assert canonical == canonical.lower()


@FUZZ_TIMEOUT
@fuzz("envelope")
@given(ENVELOPE_BYTES)
def test_fuzz_envelope_codec(data: bytes) -> None:
    try:
        envelope = env_mod.decode(data)
    except (InvalidEnvelope, MalformedRequest, PayloadTooLarge):
        return
    assert env_mod.decode(env_mod.encode(envelope)) == envelope  # re-encodes to itself


@FUZZ_TIMEOUT
@fuzz("jws")
@given(tokens())
def test_fuzz_jws_parsing(token: str) -> None:
    try:
        parsed = jws.parse_compact(token)
    except (InvalidEnvelope, PayloadTooLarge):
        return
    try:
        jws.verify(parsed, KEY.public_key)
    except BadSignature:
        return
    # Only what the key really signed verifies, and it parses back to the same payload.
    assert jws.sign(parsed.payload, KEY) == token


# ---------------------------------------------------------------------------- over the wire


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, "acme.test", "globex.test") as env:
        await env.orgs["globex.test"].agent("bob")
        await env.orgs["acme.test"].agent("alice")
        for org in env.orgs.values():
            # Unthrottled, so the generated traffic reaches custody and the store, not only
            # the rate limiters (whose 4.7.0 and 429 are also documented answers) — the
            # per-source ones included, since every case comes from one loopback address.
            data = org.relay.config.model_dump()
            data["rate_limits"] = {
                name: {"per_second": 1e9, "burst": 1e9}
                for name in ("sender_domain", "sender", "agent", "source_requests", "unverified")
            }
            org.relay.reload(Config.model_validate({**data, "base_dir": org.relay.config.base_dir}))
        yield env


def assert_documented_error(status: int, body: Any) -> None:
    assert status < 500 or status in (502, 503), body  # never 500: nothing escaped unhandled
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    err = body["error"]
    assert status in DOCUMENTED.get(err["code"], set()), (status, err)
    assert STATUS_RE.fullmatch(err["status"]), err


def assert_results(body: Any, envelopes: int) -> None:
    results = body["results"]
    assert isinstance(results, dict)
    assert 1 <= len(results) <= envelopes
    for result in results.values():
        assert result["status"] in ("accepted", "duplicate", "rejected"), result
        assert STATUS_RE.fullmatch(result["code"]), result
        klass = result["code"][0]
        assert (klass == "2") is (result["status"] != "rejected"), result
        for per in result.get("recipients", {}).values():
            assert STATUS_RE.fullmatch(per["code"]), result


VALID_TXN_ID = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,20}\Z")
TXN_IDS = st.one_of(
    VALID_TXN_ID,
    VALID_TXN_ID,
    VALID_TXN_ID,
    st.text(alphabet=string.ascii_letters + "-._~%!", min_size=1, max_size=20),
)


@st.composite
def transactions(draw: st.DrawFn, key: SigningKey, now: datetime) -> bytes:
    """Transaction bodies: junk, any JSON, and (mostly) transactions of tokens signed with the
    sending relay's published key, so that cases reach verification, policy and the store."""
    choice = draw(st.integers(0, 7))
    if choice == 0:
        return draw(st.binary(max_size=200))
    if choice == 1:
        return json.dumps(draw(JSON)).encode()
    known = st.sampled_from(["acme.test"] * 6 + ["ACME.test", "globex.test", "unknown.test"])
    origin = draw(st.one_of(known, known, known, DOMAIN))
    envelopes = draw(st.lists(tokens(key, now), min_size=int(choice > 2), max_size=4))
    doc: dict[str, Any] = {"origin": origin, "envelopes": envelopes}
    if choice == 2:
        doc[draw(st.sampled_from(["origin", "envelopes", "extra"]))] = draw(JSON)
    return json.dumps(doc).encode()


@FUZZ_TIMEOUT
@fuzz("txn", wire=True)
@given(txn_id=TXN_IDS, data=st.data())
async def test_fuzz_transaction_handler(w: World, txn_id: str, data: st.DataObject) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    body = data.draw(transactions(acme.key, w.clock.now()))
    async with w.http.put(
        f"{globex.url}/synq/v1/federation/txn/{txn_id}",
        data=body,
        headers={"Content-Type": "application/json"},
    ) as resp:
        status, answer = resp.status, await resp.json()
    if status == 200:
        assert_results(answer, max(1, len(json.loads(body)["envelopes"])))
    else:
        assert_documented_error(status, answer)


SEND_BODIES = (
    st.fixed_dictionaries(
        {"to": st.lists(ADDRESSES, max_size=3) | JSON, "body": JSON},
        optional={
            "content_type": st.sampled_from(["text/plain", "application/json", "Text/Plain"])
            | ANY_TEXT,
            "kind": st.sampled_from(["message", "dsn", "task.update"]) | ANY_TEXT,
            "thread": ANY_TEXT,
            "in_reply_to": ANY_TEXT,
            "expires": TIMESTAMPS,
            "trace": ANY_TEXT,
            "from": ADDRESSES,
        },
    ).map(lambda d: json.dumps(d).encode())
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=100)
)


@FUZZ_TIMEOUT
@fuzz("send", wire=True)
@given(body=SEND_BODIES)
async def test_fuzz_send_api(w: World, body: bytes) -> None:
    acme = w.orgs["acme.test"]
    async with w.http.post(
        f"{acme.url}/synq/v1/messages",
        data=body,
        headers={**acme.agents["alice"].auth, "Content-Type": "application/json"},
    ) as resp:
        status, answer = resp.status, await resp.json()
    if status == 202:
        assert answer["status"] == "queued"
    else:
        assert_documented_error(status, answer)
