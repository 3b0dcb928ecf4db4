"""The ``synq`` command, called in-process through ``main()`` (the real parser and handlers)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters.mcp.stdio import STDERR_REPORT_CHARS
from relay.cli import UserError, bind_listeners, main


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


def test_queue_list_prints_the_queue_as_it_reads_it(
    relay_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``synq queue list`` (postqueue -p) writes each row as its page is read: one JSON array
    with ``--json``, a line per recipient and a count otherwise; ``--domain`` one destination."""
    assert cli(capsys, relay_dir, "agent", "add", "alice")[0] == 0
    sent = [
        cli(capsys, relay_dir, "send", "alice", to, "hello")[1]["id"]
        for to in ("carol@globex.test", "dave@globex.test", "erin@initech.test")
    ]
    code, rows, _ = cli(capsys, relay_dir, "queue", "list")
    assert code == 0
    assert [(r["id"], r["recipient"], r["domain"], r["attempts"]) for r in rows] == [
        (sent[0], "carol@globex.test", "globex.test", 0),
        (sent[1], "dave@globex.test", "globex.test", 0),
        (sent[2], "erin@initech.test", "initech.test", 0),
    ]
    code, rows, _ = cli(capsys, relay_dir, "queue", "list", "--domain", "globex.test")
    assert [r["recipient"] for r in rows] == ["carol@globex.test", "dave@globex.test"]

    config = str(relay_dir / "synq.toml")
    code, out, _ = run(capsys, "--config", config, "queue", "list")
    lines = out.splitlines()
    assert lines[0].startswith(f"{sent[0]}  alice@acme.test -> carol@globex.test  attempts 0")
    assert len(lines) == 4
    assert lines[-1] == "-- 3 queued"

    assert cli(capsys, relay_dir, "queue", "delete", "--all")[1] == {"deleted": 3}
    assert cli(capsys, relay_dir, "queue", "list")[1] == []
    assert run(capsys, "--config", config, "queue", "list")[1] == "queue is empty\n"


def test_send_idempotency_key_sends_once_and_notify_is_kept(
    relay_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli(capsys, relay_dir, "agent", "add", "alice")
    cli(capsys, relay_dir, "agent", "add", "bob")
    argv = ("send", "alice", "bob@acme.test", "once", "--idempotency-key", "k-1")
    code, first, _ = cli(capsys, relay_dir, *argv, "--notify", "success,failure")
    assert code == 0
    code, again, _ = cli(capsys, relay_dir, *argv, "--notify", "success,failure")
    assert code == 0
    assert again["id"] == first["id"]
    # The same key for a different request is refused, not sent.
    code, _, err = cli(
        capsys,
        relay_dir,
        "send",
        "alice",
        "bob@acme.test",
        "other",
        "--idempotency-key",
        "k-1",
        "--notify",
        "success,failure",
    )
    assert code == 1
    assert "idempotency key" in err
    code, box, _ = cli(capsys, relay_dir, "inbox", "bob")
    assert [m["id"] for m in box["messages"]] == [first["id"]]
    # A success receipt was asked for: alice's inbox has it (SPEC.md §9.4).
    code, box, _ = cli(capsys, relay_dir, "inbox", "alice")
    assert [m["content_type"] for m in box["messages"]] == ["application/synq-dsn+json"]
    assert box["messages"][0]["body"]["action"] == "delivered"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("agent", "add", "Bad Name"), "invalid local part"),
        (("agent", "add", "postmaster"), "reserved"),
        (("agent", "add", "x@other.test"), "not an address of acme.test"),
        (("send", "alice", "nobody@acme.test", "x"), "no such agent"),
        (("send", "ghost", "alice@acme.test", "x"), "no local agent"),
        (("send", "alice", "not-an-address", "x"), "not an address"),
        (("send", "alice", "alice@acme.test", "x", "--notify", "sometimes"), "notify"),
        (("send", "alice", "alice@acme.test", "x", "--idempotency-key", "é"), "printable ASCII"),
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--domain", "bad_domain"), "--domain: invalid domain 'bad_domain'"),
        (("--domain", "acme.test", "--listen", "nope"), "--listen: expected HOST:PORT"),
        (("--domain", "acme.test", "--listen", "127.0.0.1:99999"), "--listen: expected HOST:PORT"),
        (("--domain", "acme.test", "--public-url", "ftp://x"), "--public-url: public_url must be"),
        (("--domain", "acme.test", "--nameserver", "1.2.3.4"), "--nameserver: expected HOST:PORT"),
        (
            ("--domain", "acme.test", "--store", "mysql://synq:s3cret@db/synq"),
            "--store: unsupported store URL scheme 'mysql'",
        ),
        (("--domain", "acme.test", "--store", "synq.db"), "--store: unsupported store URL scheme"),
        (("--domain", "acme.test", "--store", "sqlite:synq.db"), "--store: an SQLite store URL is"),
    ],
)
def test_init_names_the_bad_option_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, "init", *argv, "--dir", str(tmp_path / "r"))
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"synq: error: {message}")
    assert "pydantic" not in err
    assert "s3cret" not in err  # a store URL's password is never repeated
    assert not (tmp_path / "r").exists()  # nothing written


def test_a_bad_store_url_in_the_config_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "synq.toml"
    bad.write_text('[relay]\ndomain = "acme.test"\n[store]\nurl = "redis://x"\n')
    code, _, err = run(capsys, "--config", str(bad), "agent", "list")
    assert code == 1
    assert err == f"synq: error: {bad}: store.url: unsupported store URL scheme 'redis': " + (
        "expected sqlite:///PATH or postgresql://USER@HOST/DB\n"
    )


def git(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True, check=False)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_init_keeps_keys_and_database_out_of_git(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert git(tmp_path, "init", "-q").returncode == 0
    (tmp_path / "acme").mkdir()
    # An operator's own .gitignore is completed, not replaced.
    (tmp_path / "acme" / ".gitignore").write_text("notes.txt")
    code, out, _ = run(capsys, "init", "--domain", "acme.test", "--dir", str(tmp_path / "acme"))
    assert code == 0
    assert "git ignores /keys/, /synq.db, /synq.db-* (private keys and the database)" in out
    lines = (tmp_path / "acme" / ".gitignore").read_text().splitlines()
    assert lines[0] == "notes.txt"
    assert lines[-3:] == ["/keys/", "/synq.db", "/synq.db-*"]
    for name in ("synq.db", "synq.db-wal", "synq.db-shm", "synq.db-journal"):
        (tmp_path / "acme" / name).write_bytes(b"")
    [key] = (tmp_path / "acme" / "keys").glob("*.json")
    assert git(tmp_path, "add", "-A").returncode == 0
    staged = set(git(tmp_path, "diff", "--cached", "--name-only").stdout.split())
    assert staged == {"acme/.gitignore", "acme/synq.toml"}
    assert git(tmp_path, "check-ignore", "-q", str(key)).returncode == 0


def test_init_does_not_name_a_database_outside_the_relay_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "elsewhere" / "relay.db"
    code, out, _ = run(
        capsys, "--json", "init", "--domain", "acme.test", "--dir", str(tmp_path / "r"),
        "--store", f"sqlite:///{db}",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["gitignore"]["entries"] == ["/keys/"]
    assert (tmp_path / "r" / ".gitignore").read_text().splitlines()[-1] == "/keys/"


def test_agent_token_rotate_keeps_the_inbox(
    relay_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = cli(capsys, relay_dir, "agent", "add", "alice")[1]
    cli(capsys, relay_dir, "agent", "add", "bob")
    sent = cli(capsys, relay_dir, "send", "bob", "alice@acme.test", "kept")[1]
    code, rotated, _ = cli(capsys, relay_dir, "agent", "token", "alice", "--rotate")
    assert code == 0
    assert rotated["address"] == "alice@acme.test"
    assert rotated["token"].startswith("synq_")
    assert rotated["token"] != alice["token"]
    again = cli(capsys, relay_dir, "agent", "token", "alice@acme.test", "--rotate")[1]
    assert again["token"] not in (alice["token"], rotated["token"])
    box = cli(capsys, relay_dir, "inbox", "alice")[1]
    assert [m["id"] for m in box["messages"]] == [sent["id"]]
    code, text, _ = run(
        capsys, "--config", str(relay_dir / "synq.toml"), "agent", "token", "bob", "--rotate"
    )
    assert code == 0
    assert "The inbox is kept." in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("agent", "token", "alice"), "cannot be shown again; 'synq agent token alice --rotate'"),
        (("agent", "token", "ghost", "--rotate"), "no agent ghost@acme.test"),
    ],
)
def test_agent_token_errors(
    relay_dir: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    cli(capsys, relay_dir, "agent", "add", "alice")
    code, _, err = cli(capsys, relay_dir, *argv)
    assert code == 1
    assert err.count("\n") == 1
    assert message in err


def test_agent_add_shows_the_stderr_of_a_server_that_dies_before_initialising(
    relay_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (relay_dir / "dying.py").write_text(
        "import sys\nprint('cannot find my settings file', file=sys.stderr)\nsys.exit(1)\n"
    )
    command = f"{sys.executable} dying.py"
    code, _, err = cli(capsys, relay_dir, "agent", "add", "tools", "--mcp-stdio", command)
    assert code == 1
    assert err.count("\n") == 1
    assert f"it ran in {relay_dir} and exited with status 1" in err
    assert err.rstrip().endswith("its stderr: cannot find my settings file")


def test_a_servers_stderr_is_reported_bounded_and_without_control_characters(
    relay_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A megabyte of stderr, escape sequences and all, then the death.
    (relay_dir / "noisy.py").write_text(
        "import sys\n"
        "for i in range(2000):\n"
        "    print(f'\\x1b[2J\\x1b]0;owned\\x07 line {i} ' + 'x' * 500, file=sys.stderr)\n"
        "print('the last words', end='', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    command = f"{sys.executable} noisy.py"
    code, _, err = cli(capsys, relay_dir, "agent", "add", "tools", "--mcp-stdio", command)
    assert code == 1
    assert err.count("\n") == 1
    report = err.split("its stderr: ", 1)[1].rstrip("\n")
    assert len(report) <= STDERR_REPORT_CHARS
    assert report.endswith("| the last words")  # the newest lines are the ones kept
    assert "\x1b" not in err
    assert "\x07" not in err


def test_agent_add_names_a_program_missing_from_path(
    relay_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("agent", "add", "tools", "--mcp-stdio", "no-such-mcp-server --flag")
    code, _, err = cli(capsys, relay_dir, *argv)
    assert code == 1
    assert "'no-such-mcp-server' is not found on PATH (give its absolute path)" in err


def test_serve_names_what_is_wrong_with_the_listen_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as busy:
            bind_listeners("127.0.0.1", port, config_file=tmp_path / "synq.toml")
    assert str(busy.value) == (
        f"cannot listen on 127.0.0.1:{port}: the address is already in use (is another synq "
        f"serve running?); stop that process, or choose another [relay] listen in "
        f"{tmp_path / 'synq.toml'}"
    )
    with pytest.raises(UserError) as foreign:
        bind_listeners("192.0.2.7", 0)  # TEST-NET-1 (RFC 5737): no interface has it
    assert "no interface of this machine has that address" in str(foreign.value)
    [sock] = bind_listeners("127.0.0.1", 0)
    sock.close()
