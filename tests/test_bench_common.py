"""bench/common.py: a relay whose port was taken between ``free_port`` and its start is moved
to a fresh port (``move_port``) and started again (``Federation.serve``)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bench.common import _port_taken, free_port, move_port

CONFIG = """[relay]
domain = "acme.test"
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"   # what partners and agent cards point at

[admin]
# listen = "127.0.0.1:PORT"   # default: loopback, the [relay] listen port + 1
"""


def test_move_port_moves_listen_and_public_url_to_a_port_free_now(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        old = taken.getsockname()[1]
        (tmp_path / "synq.toml").write_text(CONFIG.format(port=old), encoding="utf-8")
        assert move_port(tmp_path)
        text = (tmp_path / "synq.toml").read_text(encoding="utf-8")
    assert f":{old}" not in text
    new = int(text.split('listen = "127.0.0.1:', 1)[1].split('"', 1)[0])
    assert f'public_url = "http://127.0.0.1:{new}"' in text
    assert '# listen = "127.0.0.1:PORT"' in text  # comments untouched
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", new))  # free when moved


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "0.0.0.0:8443"])
def test_move_port_leaves_a_relay_it_cannot_move(tmp_path: Path, listen: str) -> None:
    config = CONFIG.replace("127.0.0.1:{port}", listen, 1).format(port=0)
    (tmp_path / "synq.toml").write_text(config, encoding="utf-8")
    assert not move_port(tmp_path)
    assert (tmp_path / "synq.toml").read_text(encoding="utf-8") == config


@pytest.mark.parametrize(
    ("error", "taken"),
    [
        (
            RuntimeError("serve did not start: ''\nsynq: the address is already in use (is ..."),
            True,
        ),
        (RuntimeError("serve did not start: ''\nsynq: permission denied"), False),
        (OSError("already in use"), False),
    ],
)
def test_only_a_taken_address_is_retried(error: BaseException, taken: bool) -> None:
    assert _port_taken(error) is taken


def test_free_port_is_bindable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", free_port()))
