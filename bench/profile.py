"""Sampling profiles of the relay processes while a benchmark runs (py-spy), and their summary.

``python -m bench --profile DIR`` attaches ``py-spy record -f raw`` to every relay process of
the relay→relay run and of the backlog drain; each writes ``DIR/<run>-<pid>.txt`` (folded
stacks, one ``frame;frame;… count`` line per distinct stack, readable by flamegraph tools) when
its process exits. The summary ranks functions by the share of samples in which they are the
innermost frame (self) and in which they are on the stack at all (total).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Proc

#: Samples per second.
RATE = 200

_LINE = re.compile(r":\d+\)$")


@dataclass
class Profile:
    label: str
    path: Path
    samples: int = 0
    self_counts: Counter[str] = field(default_factory=Counter)
    total_counts: Counter[str] = field(default_factory=Counter)

    def top(self, which: str = "self", n: int = 15) -> list[tuple[str, float]]:
        """``self``: innermost frames, any code; ``total``: Synq's own functions on the stack."""
        if which == "self":
            ranked = self.self_counts.most_common(n)
        else:
            # The command line's frames are on every stack of the main thread: left out.
            ranked = [
                kv
                for kv in self.total_counts.most_common()
                if is_own(kv[0]) and "(relay/cli.py)" not in kv[0]
            ][:n]
        return [(name, c / max(self.samples, 1)) for name, c in ranked]


#: Path fragments that mark Synq's own code in a frame's file name.
OWN_CODE = ("/relay/", "/adapters/")


def _frame(raw: str) -> str:
    """``func (/…/relay/store/sqlite.py:123)`` → ``func (relay/store/sqlite.py)`` for Synq's own
    code, ``func (core.py)`` for the rest: one entry per function, whatever the line."""
    name, _, where = raw.strip().partition(" (")
    path = _LINE.sub("", "(" + where).lstrip("(").rstrip(")") if where else ""
    for marker in OWN_CODE:
        if ("/" + path).find(marker) >= 0:
            return f"{name} ({marker.strip('/')}/{('/' + path).split(marker, 1)[1]})"
    return f"{name} ({path.rsplit('/', 1)[-1]})" if path else name


def is_own(frame: str) -> bool:
    return any(f"({m.strip('/')}/" in frame for m in OWN_CODE)


def read(label: str, path: Path) -> Profile:
    profile = Profile(label, path)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        profile.samples += n
        profile.self_counts[frames[-1]] += n
        for name in set(frames):
            profile.total_counts[name] += n
    return profile


class Profiler:
    """Attaches py-spy to processes; ``finish`` waits for the profiles and reads them."""

    def __init__(self, directory: Path, gil: bool = False) -> None:
        self.directory = directory
        #: Sample only the thread holding the GIL: where the Python CPU goes, without the
        #: threads that wait in fsync or select (which a wall-clock profile counts).
        self.gil = gil
        self._running: list[tuple[str, Path, asyncio.subprocess.Process]] = []

    @staticmethod
    def executable() -> str | None:
        """py-spy on PATH, or beside this Python (a virtualenv's bin/ need not be on PATH)."""
        beside = Path(sys.executable).parent / "py-spy"
        return shutil.which("py-spy") or (str(beside) if beside.exists() else None)

    @classmethod
    def missing(cls) -> str | None:
        if cls.executable() is None:
            return "py-spy is not installed (pip install -e '.[bench]')"
        return None

    async def attach(self, label: str, procs: list[Proc]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for proc in procs:
            out = self.directory / f"{label}-{proc.pid}.txt"
            spy = await asyncio.create_subprocess_exec(
                self.executable() or "py-spy", "record", "--nonblocking", "-r", str(RATE), "-f", "raw",
                "-o", str(out), "-p", str(proc.pid), *(["--gil"] if self.gil else []),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            self._running.append((f"{label} pid {proc.pid}", out, spy))

    async def finish(self, timeout: float = 60.0) -> list[Profile]:
        profiles = []
        for label, out, spy in self._running:
            try:
                await asyncio.wait_for(spy.wait(), timeout)
            except TimeoutError:
                spy.terminate()
                await spy.wait()
            if out.exists():
                profiles.append(read(label, out))
        self._running.clear()
        return profiles
