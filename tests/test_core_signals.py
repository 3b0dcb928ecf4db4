"""The pure signal model (relay/core/signals.py, SPEC.md §13): emit validation, intensity,
topic patterns, hearing and the claim state machine, in tables; and a property: no sequence of
operations completes a signal twice."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from relay.core import signals as sg
from relay.core.errors import Conflict, Forbidden, InvalidEnvelope, PayloadTooLarge, SynqError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EMITTER = "alice@acme.test"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def signal(**kw: Any) -> sg.Signal:
    base = sg.Signal(
        id="0190aaaa-0000-7000-8000-000000000001",
        owner="acme.test",
        emitter=EMITTER,
        topic="invoice.overdue",
        text="chase it",
        urgency=0.8,
        half_life=60.0,
        lease=30.0,
        scope="local",
        created=T0,
        expires=at(3600),
    )
    return replace(base, **kw)


# --- emit validation ----------------------------------------------------------------------------

GOOD = {"topic": "invoice.overdue", "text": "t", "urgency": 0.5}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({}, None),
        ({"urgency": 1}, None),
        ({"urgency": 0}, InvalidEnvelope),
        ({"urgency": -0.1}, InvalidEnvelope),
        ({"urgency": 1.01}, InvalidEnvelope),
        ({"urgency": True}, InvalidEnvelope),
        ({"urgency": "0.5"}, InvalidEnvelope),
        ({"urgency": None}, InvalidEnvelope),
        ({"half_life": 0.5}, InvalidEnvelope),
        ({"half_life": 1}, None),
        ({"half_life": 7 * 86400 + 1}, InvalidEnvelope),
        ({"lease": 4}, InvalidEnvelope),
        ({"lease": 3600}, None),
        ({"lease": 3601}, InvalidEnvelope),
        ({"scope": "partners"}, None),
        ({"scope": ["globex.test"]}, None),
        ({"scope": "world"}, InvalidEnvelope),
        ({"scope": []}, InvalidEnvelope),
        ({"scope": ["not a domain"]}, InvalidEnvelope),
        ({"scope": ["a.test", "a.test"]}, InvalidEnvelope),
        ({"scope": [f"d{i}.test" for i in range(sg.MAX_SCOPE_DOMAINS + 1)]}, InvalidEnvelope),
        ({"topic": "Invoice"}, InvalidEnvelope),
        ({"topic": "invoice."}, InvalidEnvelope),
        ({"topic": "invoice.*"}, InvalidEnvelope),
        ({"topic": "a" * 129}, InvalidEnvelope),
        ({"text": "x" * (sg.MAX_TEXT_LENGTH + 1)}, InvalidEnvelope),
        ({"expires": "2026-01-01T00:00:00Z"}, InvalidEnvelope),
        ({"expires": "2026-01-01T01:00:00Z"}, None),
        ({"expires": "2026-01-09T00:00:00Z"}, InvalidEnvelope),
        ({"body": {"n": 1}}, None),
        ({"body": "x" * (sg.MAX_SIGNAL_BODY_BYTES + 1)}, PayloadTooLarge),
        ({"content_type": "not a type", "body": "x"}, InvalidEnvelope),
        ({"colour": "red"}, InvalidEnvelope),
    ],
)
def test_check_emit(change: dict[str, Any], error: type[SynqError] | None) -> None:
    data = {**GOOD, **change}
    if error is None:
        emit = sg.check_emit(data, T0)
        assert emit.topic == data["topic"]
    else:
        with pytest.raises(error):
            sg.check_emit(data, T0)


def test_emit_defaults() -> None:
    emit = sg.check_emit({"topic": "a", "urgency": 0.3}, T0)
    assert (emit.half_life, emit.lease, emit.scope) == (
        sg.DEFAULT_HALF_LIFE,
        sg.DEFAULT_LEASE,
        "local",
    )
    assert emit.expires == T0 + sg.DEFAULT_EXPIRES
    assert sg.check_emit({"topic": "a", "urgency": 0.3, "body": "x"}, T0).content_type == (
        "text/plain"
    )


# --- intensity ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "reinforcements", "expected"),
    [
        (0, (), 0.8),
        (60, (), 0.4),
        (120, (), 0.2),
        (60, (("b", 0.4, 60),), 0.8),
        (120, (("b", 0.4, 60),), 0.4),
        # A reinforcement from the future (clock skew between rows) does not count yet.
        (30, (("b", 0.4, 60),), round(0.8 * 2**-0.5, 6)),
    ],
)
def test_intensity_decays_from_timestamps(
    seconds: float, reinforcements: tuple[tuple[str, float, float], ...], expected: float
) -> None:
    rs = tuple(sg.Reinforcement(s, a, at(t)) for s, a, t in reinforcements)
    assert sg.intensity(signal(reinforcements=rs), at(seconds)) == pytest.approx(expected)


@pytest.mark.parametrize("state", ["claimed", "done", "withdrawn", "expired"])
def test_only_open_signals_have_intensity(state: sg.SignalState) -> None:
    assert sg.intensity(signal(state=state), T0) == 0.0


# --- topics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "topic", "hit"),
    [
        ("invoice.overdue", "invoice.overdue", True),
        ("invoice.*", "invoice.overdue", True),
        ("invoice.*", "invoice", False),
        ("invoice.*", "invoice.overdue.eu", False),
        ("invoice.**", "invoice.overdue.eu", True),
        ("invoice.**", "invoice", False),
        ("*.overdue", "invoice.overdue", True),
        ("**", "anything.at.all", True),
        ("invoice", "invoices", False),
    ],
)
def test_matches(pattern: str, topic: str, hit: bool) -> None:
    assert sg.matches(sg.check_pattern(pattern), sg.check_topic(topic)) is hit


@pytest.mark.parametrize("pattern", ["", ".", "a..b", "a.**.b", "***", "A", "a.*x", "a" * 129])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(InvalidEnvelope):
        sg.check_pattern(pattern)


def test_capability_topics() -> None:
    assert sg.capability_topics(["Invoice", "pdf export", "ocr", "ocr", 3]) == [
        "invoice",
        "invoice.**",
        "ocr",
        "ocr.**",
    ]


@pytest.mark.parametrize(
    ("data", "card", "topics", "error"),
    [
        ({"topics": ["invoice.*"], "threshold": 0.2}, None, ("invoice.*",), None),
        ({"capabilities": True}, ["ocr"], ("ocr", "ocr.**"), None),
        ({"topics": ["a"], "capabilities": True}, ["a"], ("a", "a.**"), None),
        ({"topics": "a"}, None, (), InvalidEnvelope),
        ({"topics": ["a"], "threshold": -1}, None, (), InvalidEnvelope),
        ({"topics": ["a"], "capabilities": 1}, None, (), InvalidEnvelope),
        ({"topics": ["a"] * (sg.MAX_SUBSCRIPTION_TOPICS + 1)}, None, (), InvalidEnvelope),
        ({"queue": "x"}, None, (), InvalidEnvelope),
    ],
)
def test_check_subscription(
    data: dict[str, Any],
    card: list[str] | None,
    topics: tuple[str, ...],
    error: type[SynqError] | None,
) -> None:
    if error is not None:
        with pytest.raises(error):
            sg.check_subscription("bob@acme.test", data, card)
        return
    assert sg.check_subscription("bob@acme.test", data, card).topics == topics


@pytest.mark.parametrize(
    ("agent", "topics", "threshold", "seconds", "heard"),
    [
        ("bob@acme.test", ("invoice.*",), 0.5, 0, 0.8),
        ("bob@acme.test", ("invoice.*",), 0.5, 60, None),  # evaporated below the threshold
        ("bob@acme.test", ("ocr",), 0.0, 0, None),
        (EMITTER, ("invoice.*",), 0.0, 0, None),  # never one's own
    ],
)
def test_hears(
    agent: str, topics: tuple[str, ...], threshold: float, seconds: float, heard: float | None
) -> None:
    sub = sg.Subscription(agent, topics, threshold)
    assert sg.hears(sub, signal(), at(seconds)) == heard


# --- staggered offers ---------------------------------------------------------------------------

HEARERS = [f"w{i}@acme.test" for i in range(10)]


def by_draw(id: str) -> list[str]:
    return sorted(HEARERS, key=lambda a: sg.offer_draw(a, id))


def test_offer_draw_is_a_uniform_hash() -> None:
    draws = [
        sg.offer_draw("bob@acme.test", f"0190aaaa-0000-7000-8000-{i:012x}") for i in range(2000)
    ]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert sg.offer_draw("bob@acme.test", "x") == sg.offer_draw("bob@acme.test", "x")
    assert sg.offer_draw("bob@acme.test", "x") != sg.offer_draw("carol@acme.test", "x")
    # Uniform: each tenth of [0, 1) holds about a tenth of the draws (binomial sd ≈ 13).
    counts = [sum(1 for d in draws if k / 10 <= d < (k + 1) / 10) for k in range(10)]
    assert all(140 <= c <= 260 for c in counts), counts


def test_each_hearer_is_first_about_as_often() -> None:
    firsts = [by_draw(f"0190aaaa-0000-7000-8000-{i:012x}")[0] for i in range(2000)]
    assert all(120 <= firsts.count(a) <= 280 for a in HEARERS)


@pytest.mark.parametrize(
    ("waiting", "first"),
    [
        (10, 2),  # OFFER_FIRST of them, the lowest draws
        (2, 2),
        (1, 1),
        (0, 0),
    ],
)
def test_first_hearers(waiting: int, first: int) -> None:
    s = signal()
    hearers = HEARERS[:waiting]
    got = sg.first_hearers(s.id, [*hearers, *hearers])  # an agent counts once
    assert got == set(sorted(hearers, key=lambda a: sg.offer_draw(a, s.id))[:first])
    assert len(got) == first


@pytest.mark.parametrize(
    ("waiting", "busy", "first"),
    [
        # Lowest draws among those holding no claim; the busy only where too few are free.
        (5, 3, lambda free, busy: set(free[:2])),
        (5, 4, lambda free, busy: {free[0], busy[0]}),
        (3, 3, lambda free, busy: set(busy[:2])),
        (3, 0, lambda free, busy: set(free[:2])),
    ],
)
def test_first_hearers_free_before_busy(
    waiting: int, busy: int, first: Callable[[list[str], list[str]], set[str]]
) -> None:
    s = signal()
    hearers = HEARERS[:waiting]
    held = set(hearers[:busy])
    draw = sorted(hearers, key=lambda a: sg.offer_draw(a, s.id))
    free = [a for a in draw if a not in held]
    taken = [a for a in draw if a in held]
    assert sg.first_hearers(s.id, hearers, busy=held) == first(free, taken)


def test_first_hearers_fill_up_with_the_next_to_look() -> None:
    s = signal()
    alone = sg.first_hearers(s.id, ["bob@acme.test"])
    assert alone == {"bob@acme.test"}
    two = sg.first_hearers(s.id, ["carol@acme.test"], alone)
    assert two == {"bob@acme.test", "carol@acme.test"}
    assert sg.first_hearers(s.id, ["dave@acme.test"], two) == two  # full: dave waits


@pytest.mark.parametrize(
    ("first", "seconds", "held"),
    [
        (True, 0.0, False),  # a first hearer hears at once
        (False, 0.0, True),  # the others from created + OFFER_DELAY
        (False, 0.099, True),
        (False, 0.1, False),  # OFFER_DELAY passed: everyone hears it
        (False, -1.0, False),  # dated after now (another relay's clock): not held back
    ],
)
def test_offered_from(first: bool, seconds: float, held: bool) -> None:
    s = signal()
    me = "bob@acme.test"
    firsts = {me, "carol@acme.test"} if first else {"carol@acme.test", "dave@acme.test"}
    assert sg.offered_from(s, me, firsts, at(seconds)) == (at(0.1) if held else None)
    assert timedelta(milliseconds=100) == sg.OFFER_DELAY


# --- the state machine --------------------------------------------------------------------------


def claimed(secret: str = "s1", when: float = 0) -> tuple[sg.Signal, sg.ClaimRecord, str]:
    t = sg.claim(signal(), "bob@acme.test", at(when), secret)
    assert t.token is not None
    return t.signal, t.claims[0], t.token


def test_claim_then_complete() -> None:
    s, h, token = claimed()
    assert (s.state, s.generation, s.holder, s.lease_until) == (
        "claimed",
        1,
        "bob@acme.test",
        at(30),
    )
    assert token == "1.s1"
    t = sg.complete(s, h, "bob@acme.test", token, at(10), result_id="r1", body="ok")
    assert t.signal.state == "done"
    assert t.claims[0].outcome == "done"
    assert t.signal.result_id == "r1"


@pytest.mark.parametrize(
    ("prepare", "op", "error"),
    [
        ("open", "claim_own", Forbidden),
        ("claimed", "claim", sg.AlreadyClaimed),
        ("done", "claim", sg.SignalClosed),
        ("withdrawn", "claim", sg.SignalClosed),
        ("expired", "claim", sg.SignalClosed),
        ("claimed", "complete_other_agent", sg.StaleClaim),
        ("claimed", "complete_forged", sg.StaleClaim),
        ("claimed", "complete_old_generation", sg.StaleClaim),
        ("claimed", "complete_garbage", sg.StaleClaim),
        ("open", "complete", sg.StaleClaim),
        ("done", "complete", sg.StaleClaim),
        ("withdrawn", "complete", sg.SignalClosed),
        ("claimed", "withdraw_not_emitter", Forbidden),
        ("done", "withdraw", sg.SignalClosed),
    ],
)
def test_refusals(prepare: sg.SignalState, op: str, error: type[SynqError]) -> None:
    s, h, token = claimed()
    if prepare != "claimed":
        s = replace(s, state=prepare, holder=None, token_hash=None)
    calls = {
        "claim_own": lambda: sg.claim(s, EMITTER, at(1)),
        "claim": lambda: sg.claim(s, "carol@acme.test", at(1)),
        "complete_other_agent": lambda: sg.complete(
            s, h, "carol@acme.test", token, at(1), result_id="r"
        ),
        "complete_forged": lambda: sg.complete(
            s, h, "bob@acme.test", "1.forged", at(1), result_id="r"
        ),
        "complete_old_generation": lambda: sg.complete(
            s, h, "bob@acme.test", "0.s1", at(1), result_id="r"
        ),
        "complete_garbage": lambda: sg.complete(
            s, h, "bob@acme.test", ["1.s1"], at(1), result_id="r"
        ),
        "complete": lambda: sg.complete(s, h, "bob@acme.test", token, at(1), result_id="r"),
        "withdraw_not_emitter": lambda: sg.withdraw(s, h, "bob@acme.test", at(1)),
        "withdraw": lambda: sg.withdraw(s, h, EMITTER, at(1)),
    }
    with pytest.raises(error):
        calls[op]()


def test_lapsed_lease_reopens_with_a_boost_and_fences_the_old_token() -> None:
    s, h, token = claimed()
    assert not sg.settle(s, h, at(29)).changed
    t = sg.settle(s, h, at(45))
    assert t.changed
    assert t.signal.state == "open"
    assert t.claims == (replace(h, ended=at(30), outcome="lapsed"),)
    assert t.reinforcements == (sg.Reinforcement("lapse:1", 0.4, at(30)),)
    # At 45 s: 0.8·2^(−45/60) + 0.4·2^(−15/60).
    assert sg.intensity(t.signal, at(45)) == pytest.approx(0.8 * 2**-0.75 + 0.4 * 2**-0.25)
    with pytest.raises(sg.StaleClaim):
        sg.complete(t.signal, h, "bob@acme.test", token, at(45), result_id="r")
    again = sg.claim(t.signal, "carol@acme.test", at(46), "s2")
    assert again.token == "2.s2"
    with pytest.raises(sg.StaleClaim):
        sg.complete(again.signal, again.claims[0], "bob@acme.test", token, at(47), result_id="r")


def test_heartbeat_extends_and_release_reopens_without_boost() -> None:
    s, h, token = claimed()
    t = sg.heartbeat(s, h, "bob@acme.test", token, at(20))
    assert t.signal.lease_until == at(50)
    assert t.claims[0].until == at(50)
    assert not sg.settle(t.signal, t.claims[0], at(40)).changed
    r = sg.release(t.signal, t.claims[0], "bob@acme.test", token, at(41))
    assert r.signal.state == "open"
    assert r.claims[0].outcome == "released"
    assert r.reinforcements == ()


def test_expiry_closes_a_signal() -> None:
    s, h, _ = claimed()
    s = replace(s, lease_until=at(4000))
    t = sg.settle(s, h, at(3600))
    assert t.signal.state == "expired"
    assert t.claims[0].outcome == "expired"


def test_reinforce_once_per_agent_within_bounds() -> None:
    s = signal()
    r = sg.reinforce(s, "bob@acme.test", 0.5, at(1))
    assert r == sg.Reinforcement("bob@acme.test", 0.5, at(1))
    with pytest.raises(Conflict):
        sg.reinforce(replace(s, reinforcements=(r,)), "bob@acme.test", 0.5, at(2))
    for bad in (0, 1.5, "x", True, float("nan")):
        with pytest.raises(InvalidEnvelope):
            sg.reinforce(s, "bob@acme.test", bad, at(1))


# --- the property -------------------------------------------------------------------------------

WORKERS = ("w1@acme.test", "w2@acme.test", "w3@globex.test")
OPS = hs.tuples(
    hs.sampled_from(["claim", "heartbeat", "complete", "release", "withdraw", "wait"]),
    hs.sampled_from(WORKERS),
    hs.integers(min_value=0, max_value=5),  # which token held so far to use
    hs.floats(min_value=0, max_value=40),  # seconds to advance
)


@settings(max_examples=300, deadline=None)
@given(hs.lists(OPS, max_size=40))
def test_no_sequence_completes_twice(ops: list[tuple[str, str, int, float]]) -> None:
    """Whatever workers do with whatever tokens they ever held, at whatever times, the signal
    is completed at most once, and only by the holder of the then current claim."""
    s = signal(expires=at(10_000))
    history: sg.ClaimRecord | None = None
    tokens: list[tuple[str, str]] = []
    now = 0.0
    completions = 0
    for op, worker, pick, advance in ops:
        now += advance
        settled = sg.settle(s, history, at(now))
        s = settled.signal
        for c in settled.claims:
            history = c
        token_worker, token = tokens[pick % len(tokens)] if tokens else (worker, "0.none")
        try:
            match op:
                case "claim":
                    t = sg.claim(s, worker, at(now))
                    assert t.token is not None
                    tokens.append((worker, t.token))
                case "heartbeat" if history is not None:
                    t = sg.heartbeat(s, history, token_worker, token, at(now))
                case "complete" if history is not None:
                    t = sg.complete(s, history, token_worker, token, at(now), result_id="r")
                    completions += 1
                    assert t.signal.generation == int(token.split(".")[0])
                case "release" if history is not None:
                    t = sg.release(s, history, token_worker, token, at(now))
                case "withdraw":
                    t = sg.withdraw(s, history, EMITTER, at(now))
                case _:
                    continue
        except SynqError:
            continue
        s = t.signal
        if t.claims:
            history = t.claims[-1]
    assert completions <= 1
    if completions:
        assert s.state == "done"


# --- fuzz: accepted, or the documented error, never anything else --------------------------------

JSON = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.floats() | hs.text(max_size=20),
    lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = hs.sampled_from(
    ["topic", "text", "urgency", "half_life", "lease", "scope", "expires", "body", "state",
     "generation", "version", "id", "created", "reinforcements", "holder", "lease_until"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(hs.dictionaries(FIELDS, JSON, max_size=10), hs.dictionaries(FIELDS, JSON, max_size=4))
def test_fuzz_emit_and_offer(data: dict[str, Any], noise: dict[str, Any]) -> None:
    base = {"topic": "a.b", "urgency": 0.5, **data}
    for candidate in (data, base, {**base, **noise}):
        with contextlib.suppress(InvalidEnvelope, PayloadTooLarge):
            sg.check_emit(candidate, T0)
        with contextlib.suppress(InvalidEnvelope):
            sg.parse_offer(candidate, EMITTER, "acme.test", T0)
