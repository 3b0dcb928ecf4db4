"""``synq signals list`` and ``synq signals show ID`` on the relay's store (SPEC.md §13)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay.config import load_config
from relay.runtime import Relay
from tests.test_cli import cli, relay_dir, run

__all__ = ["relay_dir"]


async def emit_and_claim(config_path: Path) -> tuple[str, str]:
    relay = await Relay.open(load_config(config_path))
    try:
        first = await relay.signals.emit(
            "alice", {"topic": "invoice.overdue", "text": "chase #7", "urgency": 0.9}
        )
        second = await relay.signals.emit("alice", {"topic": "ocr.scan", "urgency": 0.3})
        await relay.signals.claim("bob", second.id)
        return first.id, second.id
    finally:
        await relay.close()


def test_list_and_show(capsys: pytest.CaptureFixture[str], relay_dir: Path) -> None:
    for name in ("alice", "bob"):
        assert cli(capsys, relay_dir, "agent", "add", name)[0] == 0
    config = relay_dir / "synq.toml"
    open_id, claimed_id = asyncio.run(emit_and_claim(config))

    code, rows, _ = cli(capsys, relay_dir, "signals", "list")
    assert code == 0
    assert [(r["id"], r["state"]) for r in rows] == [(open_id, "open"), (claimed_id, "claimed")]
    assert rows[1]["claim"]["holder"] == "bob@acme.test"

    code, shown, _ = cli(capsys, relay_dir, "signals", "show", claimed_id)
    assert code == 0
    assert [(h["generation"], h["holder"]) for h in shown["history"]] == [(1, "bob@acme.test")]

    code, text, _ = run(capsys, "--config", str(config), "signals", "list")
    assert code == 0
    assert "invoice.overdue  from alice@acme.test" in text
    assert "held by bob@acme.test" in text
    code, _, err = run(capsys, "--config", str(config), "signals", "show", "nope")
    assert code != 0
    assert "no such signal" in err
