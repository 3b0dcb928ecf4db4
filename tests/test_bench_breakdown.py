"""bench/breakdown.py: one relayed call's spans cut into steps (pure: spans in, durations out)."""

from __future__ import annotations

import pytest

from bench.breakdown import CLIENT_STEP, STEPS, Collector, Span, analyse
from bench.protocols import Latency

MS = 1_000_000
SERVER, CLIENT, INTERNAL = 2, 3, 1


def span(name: str, start_ms: float, end_ms: float, kind: int = INTERNAL, **attrs: str) -> Span:
    return Span(name, kind, int(start_ms * MS), int(end_ms * MS), dict(attrs))


def one_call(collector: Collector, trace: str, face: str = "POST /a2a/{address}") -> None:
    """The spans of one relayed call, each step lasting a known time (ms)."""
    collector.spans["acme.test"][trace] += [
        span(face, 0, 40, SERVER),
        span("synq.accept", 2, 3),  # face in 2, accept 1
        span("synq.queue.wait", 1, 4),
        span("synq.federation.send", 4, 9, CLIENT),  # sender woken 1
        span("synq.federation.receive", 30, 33, SERVER),
    ]
    collector.spans["globex.test"][trace] += [
        span("synq.federation.receive", 5, 8, SERVER),  # out 1, partner 3
        span("synq.queue.wait", 6, 10, **{"synq.to": "bob@globex.test"}),  # woken 2
        span("synq.deliver", 10, 28),
        span("a2a.send_message", 11, 27, CLIENT),  # lease to call 1
        span("synq.accept", 20, 24),  # agent call 9, reply accept 4
        span("synq.queue.wait", 24, 25, **{"synq.destination": "acme.test"}),
        span("synq.federation.send", 26, 34, CLIENT),  # reply woken 2, out 4
    ]
    # caller's relay 3, face answers 7


def test_steps_follow_the_span_edges_and_add_up_to_the_face_span() -> None:
    collector = Collector()
    one_call(collector, "t1")
    b = analyse("A2A", Latency([0.001]), Latency([0.045]), ["t1"], collector, r"POST /a2a/")
    got = [round(b.steps[name][0] * 1000, 6) for name, _, _ in STEPS]
    assert got == [2, 1, 1, 1, 3, 2, 1, 9, 4, 2, 4, 3, 7]
    assert sum(got) == 40
    assert b.steps[CLIENT_STEP] == [pytest.approx(0.005)]
    assert b.incomplete == 0


def test_a_call_missing_a_span_is_counted_and_left_out() -> None:
    collector = Collector()
    one_call(collector, "t1")
    one_call(collector, "t2")
    collector.spans["globex.test"]["t2"] = [
        s for s in collector.spans["globex.test"]["t2"] if s.name != "a2a.send_message"
    ]
    b = analyse("A2A", Latency([0.001]), Latency([0.045, 0.05]), ["t1", "t2"], collector, "POST")
    assert b.incomplete == 1
    assert all(len(v) == 1 for v in b.steps.values())
