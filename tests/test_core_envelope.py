"""The ``synq/1`` envelope: validation, codec and time checks (SPEC.md §3)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core import envelope as env
from relay.core import jsonutil
from relay.core.clock import FakeClock
from relay.core.errors import (
    EnvelopeExpired,
    EnvelopeFromFuture,
    InvalidEnvelope,
    MalformedRequest,
    PayloadTooLarge,
    SynqError,
)
from relay.core.limits import (
    MAX_CLOCK_SKEW,
    MAX_ENVELOPE_BYTES,
    MAX_ID_LENGTH,
    MAX_JSON_DEPTH,
    MAX_LIFETIME,
    MAX_RECIPIENTS,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def base(**changes: Any) -> dict[str, Any]:
    """A valid envelope object; ``changes`` override fields, ``None`` values delete them."""
    obj: dict[str, Any] = {
        "v": 1,
        "id": "0190a7c2-2f6b-7d1e-9a3b-1c2d3e4f5a6b",
        "from": "alice@alpha.example",
        "to": ["bob@beta.example"],
        "created": "2026-01-01T00:00:00.000Z",
        "expires": "2026-01-03T00:00:00.000Z",
        "kind": "message",
        "content_type": "text/plain",
        "body": "hello",
    }
    for key, value in changes.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# ---------------------------------------------------------------------------- accepted


ACCEPTED = [
    pytest.param(base(), id="minimal"),
    pytest.param(
        base(thread="conv-1", in_reply_to="0190a7c2-0000-7000-8000-000000000000", trace=TRACE),
        id="all-optional-fields",
    ),
    pytest.param(base(kind="task.update"), id="kind-task-update"),
    pytest.param(base(kind="dsn", content_type="application/json", body={}), id="kind-dsn"),
    pytest.param(
        base(content_type="application/a2a+json", body={"parts": [{"text": "hi"}]}),
        id="json-body-object",
    ),
    pytest.param(base(content_type="application/json", body=[1, 2.5, True]), id="json-list"),
    pytest.param({**base(content_type="application/json"), "body": None}, id="json-null-body"),
    pytest.param(base(to=[f"a{i}@beta.example" for i in range(MAX_RECIPIENTS)]), id="max-to"),
    pytest.param(base(id="x" * MAX_ID_LENGTH), id="id-at-length-limit"),
    pytest.param(base(id="A.b_c:d-9"), id="id-punctuation"),
    pytest.param(base(created="2026-01-01t00:00:00z"), id="lower-case-t-and-z"),
    pytest.param(base(created="2026-01-01T02:00:00+02:00"), id="offset-other-than-z"),
    pytest.param(base(created="2026-01-01T00:00:00.1234567Z"), id="fraction-7-digits"),
    pytest.param(base(created="2026-01-01T00:00:00.123456789Z"), id="fraction-9-digits"),
    pytest.param(base(created="2026-01-01T00:00:00-00:00"), id="offset-minus-zero"),
    pytest.param(base(body=""), id="empty-text-body"),
]


@pytest.mark.parametrize("obj", ACCEPTED)
def test_accepts(obj: dict[str, Any]) -> None:
    e = env.decode(raw(obj))
    assert e.v == 1
    # Round trip: what a relay writes decodes to the same envelope, at the millisecond
    # precision Synq writes timestamps with.
    wire = env.encode(e)
    assert env.encode(env.decode(wire)) == wire
    assert env.decode(wire).model_dump(exclude={"created", "expires"}) == e.model_dump(
        exclude={"created", "expires"}
    )


def test_addresses_are_normalised() -> None:
    e = env.decode(raw(base(**{"from": "Alice@ALPHA.example."}, to=["Bob@Bücher.example"])))
    assert e.from_ == "alice@alpha.example"
    assert e.to == ["bob@xn--bcher-kva.example"]
    assert str(e.sender) == "alice@alpha.example"
    assert [str(a) for a in e.recipients] == ["bob@xn--bcher-kva.example"]


def test_timestamps_are_utc() -> None:
    e = env.decode(raw(base(created="2026-01-01T02:00:00+02:00")))
    assert e.created == T0
    assert e.created.tzinfo is UTC


def test_fraction_beyond_microseconds_is_truncated() -> None:
    e = env.decode(raw(base(created="2026-01-01T00:00:00.123456789Z")))
    assert e.created == T0 + timedelta(microseconds=123456)


def test_encode_wire_form() -> None:
    e = env.decode(raw(base(created="2026-01-01T02:00:00+02:00")))
    out = json.loads(env.encode(e))
    assert out == base()  # "from" spelt as on the wire, Z and milliseconds, no null fields
    assert b" " not in env.encode(e)  # compact separators


def test_encode_keeps_non_ascii_as_utf8() -> None:
    e = env.decode(raw(base(body="grüße 😀")))
    assert "grüße 😀".encode() in env.encode(e)


def test_from_dict_matches_decode() -> None:
    assert env.from_dict(base()) == env.decode(raw(base()))


# ---------------------------------------------------------------------------- refused

REQUIRED = ["v", "id", "from", "to", "created", "expires", "kind", "content_type", "body"]


@pytest.mark.parametrize("field", REQUIRED)
def test_required_field_missing(field: str) -> None:
    obj = base()
    del obj[field]
    with pytest.raises(InvalidEnvelope):
        env.decode(raw(obj))


REFUSED = [
    # unknown fields: a later version bumps v instead
    pytest.param(base(extra=1), id="unknown-field"),
    pytest.param(base(From="alice@alpha.example"), id="unknown-field-case-variant"),
    pytest.param(base(from_="alice@alpha.example"), id="python-name-not-wire-name"),
    # version
    pytest.param(base(v=2), id="v-2"),
    pytest.param(base(v=0), id="v-0"),
    pytest.param(base(v="1"), id="v-string"),
    pytest.param(base(v=True), id="v-true"),
    pytest.param(base(v=1.0), id="v-float"),
    pytest.param({**base(), "v": None}, id="v-null"),
    # id, thread, in_reply_to
    pytest.param(base(id=""), id="id-empty"),
    pytest.param(base(id="-abc"), id="id-leading-hyphen"),
    pytest.param(base(id="a b"), id="id-space"),
    pytest.param(base(id="a/b"), id="id-slash"),
    pytest.param(base(id="abc\n"), id="id-trailing-newline"),
    pytest.param(base(id="idé"), id="id-non-ascii"),
    pytest.param(base(id="x" * (MAX_ID_LENGTH + 1)), id="id-too-long"),
    pytest.param(base(id=123), id="id-number"),
    pytest.param(base(thread="a b"), id="thread-bad"),
    pytest.param(base(in_reply_to="../x"), id="in-reply-to-bad"),
    # from / to
    pytest.param(base(**{"from": "not-an-address"}), id="from-invalid"),
    pytest.param(base(**{"from": ["alice@alpha.example"]}), id="from-list"),
    pytest.param(base(to="bob@beta.example"), id="to-string-not-list"),
    pytest.param(base(to=[]), id="to-empty"),
    pytest.param(base(to=["bob@beta.example", "bob@beta.example"]), id="to-duplicate"),
    pytest.param(base(to=["bob@beta.example", "BOB@Beta.Example."]), id="to-duplicate-spelling"),
    pytest.param(
        base(to=[f"a{i}@beta.example" for i in range(MAX_RECIPIENTS + 1)]), id="to-too-many"
    ),
    pytest.param(base(to=["bob@localhost"]), id="to-invalid-address"),
    pytest.param(base(to=[7]), id="to-number"),
    # kind, content_type, trace
    pytest.param(base(kind="Message"), id="kind-upper-case"),
    pytest.param(base(kind="task..update"), id="kind-empty-word"),
    pytest.param(base(kind=""), id="kind-empty"),
    pytest.param(base(content_type="text"), id="content-type-no-subtype"),
    pytest.param(base(content_type="text/plain; charset=utf-8"), id="content-type-parameters"),
    pytest.param(base(content_type="Text/Plain"), id="content-type-upper-case"),
    pytest.param(base(trace="00-abc"), id="trace-malformed"),
    pytest.param(base(trace=TRACE.upper()), id="trace-upper-case-hex"),
    # body coherence
    pytest.param(base(body=3), id="text-body-number"),
    pytest.param(base(body={"text": "hi"}), id="text-body-object"),
    pytest.param({**base(), "body": None}, id="text-body-null"),
    pytest.param(base(content_type="text/markdown", body=["x"]), id="text-markdown-body-list"),
    # times
    pytest.param(base(expires="2026-01-01T00:00:00.000Z"), id="expires-equals-created"),
    pytest.param(base(expires="2025-12-31T23:59:59.999Z"), id="expires-before-created"),
    pytest.param(base(created="2026-01-01T00:00:00"), id="no-offset"),
    pytest.param(base(created="2026-01-01 00:00:00Z"), id="space-separator"),
    pytest.param(base(created="2026-01-01"), id="date-only"),
    pytest.param(base(created="2026-W01-4T00:00:00Z"), id="iso-week-date"),
    pytest.param(base(created="20260101T000000Z"), id="iso-basic-format"),
    pytest.param(base(created="2026-001T00:00:00Z"), id="ordinal-date"),
    pytest.param(base(created="2026-01-01T00:00Z"), id="no-seconds"),
    pytest.param(base(created="2026-01-01T00:00:00+0000"), id="offset-without-colon"),
    pytest.param(base(created="2026-01-01T00:00:00+00"), id="offset-hours-only"),
    pytest.param(base(created="2026-01-01T00:00:00.Z"), id="empty-fraction"),
    pytest.param(base(created="2026-01-01T00:00:00.1234567890Z"), id="fraction-10-digits"),
    pytest.param(base(created="2026-01-01T00:00:00,5Z"), id="comma-fraction"),
    pytest.param(base(created="2026-13-01T00:00:00Z"), id="month-13"),
    pytest.param(base(created="2026-01-01T24:00:00Z"), id="hour-24"),
    pytest.param(base(created="2026-12-31T23:59:60Z"), id="leap-second"),
    pytest.param(base(created="2026-01-01T00:00:00+24:00"), id="offset-24h"),
    pytest.param(base(created="2026-01-01T00:00:00Z\n"), id="trailing-newline"),
    pytest.param(base(created="\uff12\uff10\uff12\uff16-01-01T00:00:00Z"), id="fullwidth-digits"),
    pytest.param(base(created=1767225600), id="epoch-number"),
    pytest.param(base(expires="9999-12-31T23:59:59-23:59"), id="utc-instant-after-year-9999"),
    pytest.param(base(created="0001-01-01T00:00:00+23:59"), id="utc-instant-before-year-1"),
    pytest.param(base(created="0000-01-01T00:00:00Z"), id="year-0"),
]


@pytest.mark.parametrize("obj", REFUSED)
def test_refuses(obj: dict[str, Any]) -> None:
    with pytest.raises(InvalidEnvelope):
        env.decode(raw(obj))


@pytest.mark.parametrize(
    "value", [[], "envelope", 1, None, True], ids=["list", "string", "number", "null", "bool"]
)
def test_refuses_non_objects(value: Any) -> None:
    with pytest.raises(InvalidEnvelope):
        env.decode(raw(value))


def test_error_message_names_the_field() -> None:
    with pytest.raises(InvalidEnvelope, match=r"^kind"):
        env.decode(raw(base(kind="Message")))


# ---------------------------------------------------------------------------- codec


def nested(levels: int) -> dict[str, Any]:
    """A JSON object ``levels`` deep: {"a": {"a": ... {"a": 1}}}."""
    value: dict[str, Any] = {"a": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


# The envelope object is one level; its body takes the rest.
deep_body = nested(MAX_JSON_DEPTH - 1)
too_deep_body = nested(MAX_JSON_DEPTH)


CODEC_ERRORS = [
    pytest.param(
        b'{"v":1,"v":1,"id":"x"}',
        MalformedRequest,
        id="duplicate-key",
    ),
    pytest.param(
        raw(base()).replace(b'"body": "hello"', b'"body": {"k": 1, "k": 2}'),
        MalformedRequest,
        id="duplicate-key-nested",
    ),
    pytest.param(
        raw(base(content_type="application/json")).replace(b'"hello"', b"NaN"),
        MalformedRequest,
        id="nan",
    ),
    pytest.param(
        raw(base(content_type="application/json")).replace(b'"hello"', b"-Infinity"),
        MalformedRequest,
        id="negative-infinity",
    ),
    pytest.param(
        raw(base(content_type="application/json", body=too_deep_body)),
        MalformedRequest,
        id="nesting-too-deep",
    ),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, MalformedRequest, id="nesting-recursion-bomb"),
    pytest.param(b"", MalformedRequest, id="empty"),
    pytest.param(b"{", MalformedRequest, id="truncated"),
    pytest.param(b"{} {}", MalformedRequest, id="trailing-data"),
    pytest.param(b"\xff\xfe{}", MalformedRequest, id="not-utf8"),
    pytest.param(b"\xef\xbb\xbf" + raw(base()), MalformedRequest, id="utf8-bom"),
    pytest.param(json.dumps(base()).encode("utf-16"), MalformedRequest, id="utf16"),
    pytest.param(
        raw(base()).replace(b'"hello"', b'"\\ud800"'), MalformedRequest, id="lone-surrogate"
    ),
    pytest.param(b"{'v': 1}", MalformedRequest, id="single-quotes"),
    pytest.param(raw(base(body="x" * MAX_ENVELOPE_BYTES)), PayloadTooLarge, id="oversize-envelope"),
]


@pytest.mark.parametrize(("data", "error"), CODEC_ERRORS)
def test_codec_errors(data: bytes, error: type[SynqError]) -> None:
    with pytest.raises(error):
        env.decode(data)


def test_nesting_at_limit_is_accepted() -> None:
    obj = base(content_type="application/json", body=deep_body)
    assert jsonutil.depth(obj) == MAX_JSON_DEPTH
    assert env.decode(raw(obj)).body == deep_body


def test_size_at_limit_is_accepted() -> None:
    filler = MAX_ENVELOPE_BYTES - len(raw(base(body="")))
    data = raw(base(body="x" * filler))
    assert len(data) == MAX_ENVELOPE_BYTES
    assert env.decode(data).body == "x" * filler
    with pytest.raises(PayloadTooLarge):
        env.decode(raw(base(body="x" * (filler + 1))))


def test_paired_surrogate_escape_is_accepted() -> None:
    e = env.decode(raw(base()).replace(b'"hello"', b'"\\ud83d\\ude00"'))
    assert e.body == "😀"


# ---------------------------------------------------------------------------- check_times


def times(created: timedelta, lifetime: timedelta) -> env.Envelope:
    """An envelope created at T0 + ``created`` that lives ``lifetime``."""
    c = T0 + created
    return env.from_dict(
        base(created=env.format_timestamp(c), expires=env.format_timestamp(c + lifetime))
    )


MS = timedelta(milliseconds=1)
DAY = timedelta(days=1)

TIMES = [
    pytest.param(timedelta(0), DAY, None, id="fresh"),
    pytest.param(-DAY + MS, DAY, None, id="expires-1ms-after-now"),
    pytest.param(-DAY, DAY, EnvelopeExpired, id="expires-exactly-now"),
    pytest.param(-2 * DAY, DAY, EnvelopeExpired, id="expired-yesterday"),
    pytest.param(MAX_CLOCK_SKEW, DAY, None, id="created-at-max-skew"),
    pytest.param(MAX_CLOCK_SKEW + MS, DAY, EnvelopeFromFuture, id="created-1ms-beyond-skew"),
    pytest.param(timedelta(hours=1), DAY, EnvelopeFromFuture, id="created-an-hour-ahead"),
    pytest.param(timedelta(0), MAX_LIFETIME, None, id="lifetime-at-max"),
    pytest.param(timedelta(0), MAX_LIFETIME + MS, InvalidEnvelope, id="lifetime-1ms-too-long"),
    pytest.param(-DAY, 8 * DAY, InvalidEnvelope, id="past-and-lifetime-too-long"),
    # The order of the checks decides which error a peer sees (SPEC.md §4.4).
    pytest.param(-9 * DAY, 8 * DAY, EnvelopeExpired, id="expired-wins-over-lifetime"),
    pytest.param(timedelta(hours=1), 8 * DAY, EnvelopeFromFuture, id="future-wins-over-lifetime"),
]


@pytest.mark.parametrize(("created", "lifetime", "error"), TIMES)
def test_check_times(
    created: timedelta, lifetime: timedelta, error: type[SynqError] | None
) -> None:
    clock = FakeClock(T0)
    e = times(created, lifetime)
    if error is None:
        env.check_times(e, clock.now())
    else:
        with pytest.raises(error):
            env.check_times(e, clock.now())


def test_check_times_as_the_clock_moves() -> None:
    clock = FakeClock(T0 - timedelta(minutes=10))
    e = times(timedelta(0), timedelta(hours=1))
    with pytest.raises(EnvelopeFromFuture):
        env.check_times(e, clock.now())
    clock.advance(5 * 60)  # now exactly MAX_CLOCK_SKEW behind created
    env.check_times(e, clock.now())
    clock.set(T0 + timedelta(minutes=59, seconds=59))
    env.check_times(e, clock.now())
    clock.advance(1)
    with pytest.raises(EnvelopeExpired):
        env.check_times(e, clock.now())


def test_check_times_custom_limits() -> None:
    e = times(timedelta(minutes=1), timedelta(days=2))
    with pytest.raises(EnvelopeFromFuture):
        env.check_times(e, T0, max_skew=timedelta(seconds=30))
    with pytest.raises(InvalidEnvelope):
        env.check_times(e, T0, max_lifetime=DAY)
    env.check_times(e, T0, max_skew=timedelta(minutes=1), max_lifetime=2 * DAY)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2026-01-01T00:00:00Z", T0, id="z"),
        pytest.param("2026-01-01T05:30:00+05:30", T0, id="positive-offset"),
        pytest.param("2025-12-31T19:00:00-05:00", T0, id="negative-offset"),
        pytest.param("2026-01-01T00:00:00.5Z", T0 + timedelta(milliseconds=500), id="fraction-1"),
    ],
)
def test_parse_timestamp(text: str, expected: datetime) -> None:
    assert env.parse_timestamp(text) == expected


def test_parse_timestamp_rejects_naive_datetime() -> None:
    with pytest.raises(ValueError, match="offset"):
        env.parse_timestamp(datetime(2026, 1, 1))  # naive: the point of the test


def test_format_timestamp() -> None:
    assert env.format_timestamp(T0 + timedelta(microseconds=123999)) == "2026-01-01T00:00:00.123Z"


# ---------------------------------------------------------------------------- property

JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

FIELD_NAMES = st.sampled_from([*REQUIRED, "thread", "in_reply_to", "trace", "extra"])
FIELD_VALUES = JSONISH | st.sampled_from(
    [
        "alice@alpha.example",
        ["bob@beta.example"],
        "2026-01-01T00:00:00Z",
        "9999-12-31T23:59:59-23:59",
        "text/plain",
        "message",
        1,
    ]
)


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> bytes:
    """A valid envelope with a few fields replaced, removed or added: close to the edge."""
    obj = base()
    for _ in range(draw(st.integers(1, 3))):
        name = draw(FIELD_NAMES)
        if draw(st.booleans()):
            obj.pop(name, None)
        else:
            obj[name] = draw(FIELD_VALUES)
    return json.dumps(obj, allow_nan=True).encode()


def assert_decodes_or_refuses(data: bytes) -> None:
    try:
        e = env.decode(data)
    except SynqError:
        return
    # Anything accepted can be written back out and reads back the same.
    assert env.decode(env.encode(e)).to_json_dict() == e.to_json_dict()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    assert_decodes_or_refuses(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSONISH)
def test_decode_arbitrary_json(value: Any) -> None:
    assert_decodes_or_refuses(json.dumps(value, allow_nan=True).encode())


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_envelopes())
def test_decode_mutated_envelopes(data: bytes) -> None:
    assert_decodes_or_refuses(data)
