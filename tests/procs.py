"""Real ``synq`` processes for crash tests: run a command, serve a relay, kill it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


async def synq(*argv: str, cwd: Path) -> Any:
    """Run ``synq --json ARGV`` to completion; return its parsed output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "--json", *argv,
        cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out) if out.strip() else None


@dataclass
class Served:
    """A running ``synq serve``; its output is collected in ``log``."""

    cwd: Path
    log: list[bytes] = field(default_factory=list)
    proc: asyncio.subprocess.Process | None = None
    url: str = ""
    _drains: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "serve",
            cwd=self.cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
        assert "listening on" in line, line + b"".join(self.log).decode()
        self.url = line.rsplit(" ", 1)[1].strip()
        self._drains = [
            asyncio.create_task(self._drain(self.proc.stdout)),
            asyncio.create_task(self._drain(self.proc.stderr)),
        ]
        return self.url

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.log.append(chunk)

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
