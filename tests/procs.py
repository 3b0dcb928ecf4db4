"""Real ``synq`` processes for crash tests: run a command, serve a relay, kill it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


async def synq(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    """Run ``synq --json ARGV`` to completion; return its parsed output. ``env``: the
    process's whole environment (default: this one's)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "--json", *argv,
        cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out) if out.strip() else None


@dataclass
class Served:
    """A running ``synq serve``; its output is collected in ``log``."""

    cwd: Path
    #: The process's whole environment (default: this one's).
    env: dict[str, str] | None = None
    log: list[bytes] = field(default_factory=list)
    proc: asyncio.subprocess.Process | None = None
    url: str = ""
    #: The admin listener (``/metrics``, ``/healthz``, ``/console``; SPEC.md §14.1).
    admin_url: str = ""
    _drains: list[asyncio.Task[None]] = field(default_factory=list)
    _more: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "serve",
            cwd=self.cwd, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
        assert "listening on" in line, line + b"".join(self.log).decode()
        self.url = line.rsplit(" ", 1)[1].strip()
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
        assert "admin listener on" in line, line
        self.admin_url = line.split(" on ", 1)[1].split(" ", 1)[0]
        self._drains = [
            asyncio.create_task(self._drain(self.proc.stdout)),
            asyncio.create_task(self._drain(self.proc.stderr)),
        ]
        return self.url

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.log.append(chunk)
            self._more.set()

    async def wait_for_output(self, text: str, timeout: float = 30) -> None:
        """Wait until the relay has written ``text`` (stdout or stderr)."""
        async with asyncio.timeout(timeout):
            while text not in self.text:
                self._more.clear()
                if text not in self.text:
                    await self._more.wait()

    async def wait_for_count(self, text: str, count: int, timeout: float = 30) -> None:
        """Wait until the relay has written ``text`` at least ``count`` times."""
        async with asyncio.timeout(timeout):
            while self.text.count(text) < count:
                self._more.clear()
                if self.text.count(text) < count:
                    await self._more.wait()

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def wait_killed(self) -> None:
        assert self.proc is not None
        await self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL
        await asyncio.gather(*self._drains)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await self.proc.wait()
        await asyncio.gather(*self._drains)

    @property
    def text(self) -> str:
        return b"".join(self.log).decode(errors="replace")
