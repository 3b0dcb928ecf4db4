"""The ``synq`` command, called in-process through ``main()`` (the real parser and handlers)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from relay.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def relay_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, _ = run(
        capsys, "init", "--domain", "Acme.Test", "--dir", str(tmp_path), "--listen", "127.0.0.1:0"
    )
    assert code == 0
    assert "_synq.acme.test. IN TXT" in out
    return tmp_path


def cli(capsys: pytest.CaptureFixture[str], relay_dir: Path, *argv: str) -> tuple[int, Any, str]:
    code, out, err = run(capsys, "--json", "--config", str(relay_dir / "synq.toml"), *argv)
    return code, json.loads(out) if out.strip() else None, err


def test_init_writes_config_key_with_0600_and_dns_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "--json", "init", "--domain", "acme.test", "--dir", str(tmp_path / "r")
    )
    assert code == 0
    data = json.loads(out)
    assert [r["name"] for r in data["dns"]] == [
        "_synq.acme.test.",
        f"{data['selector']}._synqkey.acme.test.",
    ]
    assert data["dns"][1]["value"].startswith("v=synq1; k=ed25519; p=")
    key_file = tmp_path / "r" / "keys" / f"{data['selector']}.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # A second init refuses to overwrite.
    code, _, err = run(capsys, "init", "--domain", "acme.test", "--dir", str(tmp_path / "r"))
    assert code == 1
    assert err.startswith("synq: error: ")
    assert "already exists" in err


def test_agents_send_inbox_ack_status(relay_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, alice, _ = cli(capsys, relay_dir, "agent", "add", "alice")
    assert code == 0
    assert alice["address"] == "alice@acme.test"
    assert alice["token"].startswith("synq_")
    assert cli(capsys, relay_dir, "agent", "add", "bob")[0] == 0
    code, agents, _ = cli(capsys, relay_dir, "agent", "list")
    assert [a["address"] for a in agents] == ["alice@acme.test", "bob@acme.test"]
    assert all("token" not in a for a in agents)

    code, sent, _ = cli(capsys, relay_dir, "send", "alice", "bob@acme.test", "hello bob")
    assert code == 0
    code, box, _ = cli(capsys, relay_dir, "inbox", "bob", "--ack")
    assert [(m["id"], m["body"]) for m in box["messages"]] == [(sent["id"], "hello bob")]
    code, box, _ = cli(capsys, relay_dir, "inbox", "bob")
    assert box["messages"] == []
    code, status, _ = cli(capsys, relay_dir, "status", sent["id"])
    assert status["recipients"]["bob@acme.test"]["state"] == "delivered"
    assert cli(capsys, relay_dir, "agent", "remove", "bob")[0] == 0
    assert [a["address"] for a in cli(capsys, relay_dir, "agent", "list")[1]] == ["alice@acme.test"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("agent", "add", "Bad Name"), "invalid local part"),
        (("agent", "add", "postmaster"), "reserved"),
        (("agent", "add", "x@other.test"), "not an address of acme.test"),
        (("send", "alice", "nobody@acme.test", "x"), "no such agent"),
        (("send", "ghost", "alice@acme.test", "x"), "no local agent"),
        (("send", "alice", "not-an-address", "x"), "not an address"),
        (("inbox", "ghost"), "no local agent"),
        (("status", "0000"), "no message"),
        (("agent", "remove", "ghost"), "no agent"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(
    relay_dir: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    cli(capsys, relay_dir, "agent", "add", "alice")
    code, _, err = cli(capsys, relay_dir, *argv)
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("synq: error: ")
    assert message in err


def test_agent_add_twice_is_a_clear_error(
    relay_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, relay_dir, "agent", "add", "alice")[0] == 0
    code, _, err = cli(capsys, relay_dir, "agent", "add", "ALICE")
    assert code == 1
    assert "synq: error:" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_missing_or_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--config", str(tmp_path / "none.toml"), "agent", "list")
    assert code == 1
    assert "no config file" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('[relay]\ndomain = "acme.test"\nlisten = "127.0.0.1:0"\ncolour = "red"\n')
    code, _, err = run(capsys, "--config", str(bad), "agent", "list")
    assert code == 1
    assert "relay.colour" in err


def test_key_file_with_loose_permissions_is_refused(
    relay_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [key_file] = (relay_dir / "keys").glob("*.json")
    os.chmod(key_file, 0o644)
    code, _, err = cli(capsys, relay_dir, "agent", "list")
    assert code == 1
    assert "chmod 600" in err
