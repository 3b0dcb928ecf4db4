"""README.md's walkthrough, run as written: the quick start's ``synq init``, then every shell
block of "Using it" in one shell against a real ``synq serve``. And every ``synq`` command line
in the README's shell blocks is one the parser accepts."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from relay.cli import build_parser
from tests.procs import Served

README = Path(__file__).resolve().parent.parent / "README.md"
#: The quick start's address; the test's relay listens on a port the OS chose instead.
README_URL = "http://127.0.0.1:8443"


def shell_blocks(section: str | None = None) -> list[str]:
    """The ```sh blocks of README.md, or of one ``## section`` of it."""
    text = README.read_text(encoding="utf-8")
    if section is not None:
        start = text.index(f"\n## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end >= 0 else None]
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.M | re.S)


def synq_commands(block: str) -> list[list[str]]:
    """Each ``synq …`` command line of a block (in pipelines, ``&&`` chains and ``$(…)``),
    with shell variables replaced by a placeholder and comments dropped."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(re.sub(r"\$\{?\w+\}?", "X", line), posix=True, punctuation_chars=True)
        lexer.wordchars += "@:%+,"  # addresses and URLs are words
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token and all(c in "();<>|&" for c in token):
                if segment and segment[0].removeprefix(".venv/bin/") == "synq":
                    commands.append(segment[1:])
                segment = []
            else:
                segment.append(token)
    return commands


def test_every_synq_command_line_in_the_readme_parses() -> None:
    commands = [c for block in shell_blocks() for c in synq_commands(block)]
    assert len(commands) >= 10
    parser = build_parser()
    for argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README: 'synq {shlex.join(argv)}' is not a valid synq command line")
        assert callable(args.func)


def test_help_names_only_real_actions_and_describes_init(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    [keys] = [line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["keys"]]
    assert keys.split(None, 1)[1] == "signing keys: list, rotate (rotate --retire OLD ends one)"
    for argv in (["keys", "list"], ["keys", "rotate"], ["keys", "rotate", "--retire", "OLD"]):
        parser.parse_args(argv)
    with pytest.raises(SystemExit):
        parser.parse_args(["keys", "retire"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        parser.parse_args(["init", "--help"])
    init_help = capsys.readouterr().out
    for option in ("--domain", "--listen", "--public-url", "--store", "--dir", "--nameserver",
                   "--allow-private-addresses"):  # fmt: skip
        # Each option's line is followed by its description, on the line or the next one.
        described = re.search(rf"^  {option}\b.*\n?\s+\w", init_help, flags=re.M)
        assert described is not None, f"synq init --help does not describe {option}"


@pytest.mark.slow
async def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    [setup, _tests] = shell_blocks("Set up on a fresh machine")
    [init] = [c for c in synq_commands(setup) if c[0] == "init"]
    # The README's own virtualenv, at the path the README names.
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {
        **os.environ,
        "PATH": os.pathsep.join(
            p
            for p in os.environ["PATH"].split(os.pathsep)
            if Path(p) != Path(sys.executable).parent
        ),
    }
    made = await asyncio.create_subprocess_exec(
        ".venv/bin/synq", *init, "--listen", "127.0.0.1:0", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await made.communicate()
    assert made.returncode == 0, err.decode()
    assert "git ignores /keys/" in out.decode()

    relay = Served(tmp_path / "acme")
    url = await relay.start()
    script = "\n".join(shell_blocks("Using it")).replace(README_URL, url)
    # The event stream never ends by itself (a reader stops it): give it three seconds.
    stream = "curl -s -N http"
    assert stream in script
    script = script.replace(stream, "curl -s -N --max-time 3 http")
    script = re.sub(r"(curl -s -N --max-time 3 .*?)(\s+#.*)?$", r"\1 || [ $? -eq 28 ]", script,
                    flags=re.M)  # fmt: skip
    try:
        shell = await asyncio.create_subprocess_exec(
            "bash", "-c", "set -euo pipefail\n" + script, cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(shell.communicate(), 50)
    finally:
        await relay.stop()
    text = out.decode()
    assert shell.returncode == 0, f"{text}\n{err.decode()}"
    assert "hello" in text  # synq inbox bob --ack
    assert "bob@acme.test: delivered" in text  # synq status
    assert text.count('"status":"queued"') + text.count('"status": "queued"') >= 2  # batch
    assert '"acked":true' in text.replace(" ", "")  # the HTTP ack
    assert '"body":"two"' in text.replace(" ", "")  # carol's inbox
    assert "event: message" in text  # the event stream
