"""``synq demo`` runs end to end and reports every step."""

from __future__ import annotations

from relay.demo import run_demo


def test_demo_runs_every_step() -> None:
    lines: list[str] = []
    assert run_demo(lines.append) == 0
    text = "\n".join(lines)
    for marker in (
        "_synq.acme.test. TXT",
        "relay for globex.test",
        "202 {",
        "sent 2.0.0",
        "from alice@acme.test: 'Hello Bob",
        "from bob@globex.test: 'Quote",
        '"status": "5.1.1"',
        "Every step worked.",
    ):
        assert marker in text, marker
