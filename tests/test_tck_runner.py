"""The A2A TCK runner's own logic (interop/a2a/run_tck.py), without the TCK: the MUST
comparison it prints from the two runs' ``compatibility.json``, and the config it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interop.a2a.run_tck import Score, configure_admin, must_report, read_requirements

PASS_ALL = {"grpc": "PASS", "jsonrpc": "PASS"}


def score(requirements: dict[str, tuple[str, str, dict[str, str]]]) -> Score:
    return Score(requirements=requirements)


@pytest.mark.parametrize(
    ("direct", "relayed", "expected"),
    [
        (
            {"A": ("MUST", "PASS", PASS_ALL), "B": ("SHOULD", "FAIL", {})},
            {"A": ("MUST", "PASS", PASS_ALL), "B": ("SHOULD", "PASS", {})},
            "  every MUST requirement has the same verdict on every transport",
        ),
        (
            {"A": ("MUST", "PASS", PASS_ALL)},
            {"A": ("MUST", "PASS", {"grpc": "FAIL", "jsonrpc": "PASS"})},
            "    A: ('PASS', {'grpc': 'PASS', 'jsonrpc': 'PASS'}) → "
            "('PASS', {'grpc': 'FAIL', 'jsonrpc': 'PASS'})",
        ),
        (
            {"A": ("MUST", "PASS", PASS_ALL)},
            {},
            "MUST requirements: no compatibility.json to compare",
        ),
        (
            {"A": ("MUST", "PASS", PASS_ALL)},
            {"B": ("MUST", "FAIL", {})},
            "    B: - → ('FAIL', {})",
        ),
    ],
)
def test_must_requirements_are_compared_transport_by_transport(
    direct: dict[str, tuple[str, str, dict[str, str]]],
    relayed: dict[str, tuple[str, str, dict[str, str]]],
    expected: str,
) -> None:
    assert must_report(score(direct), score(relayed))[-1] == expected


def test_requirements_are_read_from_the_tcks_report(tmp_path: Path) -> None:
    report = tmp_path / "compatibility.json"
    report.write_text(
        json.dumps(
            {
                "per_requirement": {
                    "CORE-SEND-001": {"level": "MUST", "status": "PASS", "transports": PASS_ALL}
                }
            }
        ),
        encoding="utf-8",
    )
    assert read_requirements(report) == {"CORE-SEND-001": ("MUST", "PASS", PASS_ALL)}


def test_the_admin_listener_gets_the_port_it_is_given(tmp_path: Path) -> None:
    config = tmp_path / "synq.toml"
    config.write_text('[relay]\nlisten = "127.0.0.1:5"\n\n[admin]   # the operator\n# listen\n')
    configure_admin(config, 7)
    assert config.read_text().splitlines()[3:5] == [
        "[admin]   # the operator",
        'listen = "127.0.0.1:7"',
    ]
