"""A bounded stdio transport for MCP servers the relay starts (MCP 2025-11-25 "Transports"
§stdio: newline-delimited JSON-RPC on stdin/stdout, logs on stderr).

The SDK's own ``stdio_client`` buffers a line of any length and passes the server's stderr to
ours. A relay runs servers it does not control for a long time, so this transport:

* reads at most ``MAX_STDIO_MESSAGE_BYTES`` per line: a server that prints an endless line is
  cut off (the connection ends, the supervisor restarts the server) instead of growing the
  relay's memory without limit;
* skips lines that are not JSON-RPC (a server that prints garbage to stdout) and logs how many,
  rather than failing the session on the first one;
* keeps only the last ``STDERR_TAIL_LINES`` lines of stderr, for the log when the server dies
  (and for the error ``synq agent add`` prints when it dies before initialising), bounded and
  with control characters replaced (:meth:`StdioProcess.stderr_report`);
* starts the server in its own process group with a minimal environment (the SDK's
  ``get_default_environment``: ``HOME``, ``LOGNAME``, ``PATH``, ``SHELL``, ``TERM``, ``USER``
  of the relay process, so no relay secrets leak into a tool server), and on close ends the
  whole group: stdin closed, then SIGTERM, then SIGKILL (the shutdown sequence of MCP
  2025-11-25 "Lifecycle" §Shutdown).

``synq agent add`` and ``synq serve`` are two processes, possibly with two ``PATH``s (a shell
with a virtualenv active, a systemd unit). :func:`resolve_command` therefore turns a bare program
name into the absolute path ``agent add`` found, which is what the endpoint stores: ``serve``
starts the very program that was checked. Both start it in the relay directory.

It yields the SDK's stream pair plus an ``ended`` event that is set when the server's stdout
closes for any reason; :attr:`StdioProcess.exit_reason` then says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client.stdio import get_default_environment
from mcp.shared.message import SessionMessage
from mcp.types import jsonrpc_message_adapter
from pydantic import ValidationError

log = logging.getLogger("synq.mcp.stdio")

#: Longest line (one JSON-RPC message) read from a server's stdout. Stops a buggy or hostile
#: server from making the relay buffer an unbounded line; a tool result fit for an envelope is
#: far smaller (see ``MAX_TOOL_RESULT_BYTES``), so nothing legitimate is lost.
MAX_STDIO_MESSAGE_BYTES: Final = 4 * 1024 * 1024
#: Lines of the server's stderr kept for the log when it exits.
STDERR_TAIL_LINES: Final = 20
#: Longest stderr line kept (the rest is cut), so the tail is bounded in bytes too.
STDERR_LINE_CHARS: Final = 500
#: How long a server may take to exit after its stdin closes, then after SIGTERM.
EXIT_GRACE: Final = 2.0
#: Characters of a server's stderr repeated in one log line or one ``synq agent add`` error
#: (the newest lines, joined). A server is arbitrary code: this stops one that writes megabytes
#: to stderr before dying from flooding the relay's log (and its disk) or the operator's
#: terminal with one entry per restart; replacing control characters stops it from rewriting
#: that terminal or forging log lines with escape sequences and newlines.
STDERR_REPORT_CHARS: Final = 2000
#: How long, once the server has exited, the rest of its stderr is read before reporting.
#: Bounds the wait for a grandchild that keeps the pipe open.
STDERR_DRAIN: Final = 1.0
#: Garbage lines logged one by one per connection; after that only counted.
GARBAGE_LOGGED: Final = 3

READ_CHUNK: Final = 64 * 1024


def parse_command(command: str) -> list[str]:
    """``stdio:<command>`` endpoints hold a shell-like command line (no shell is run)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"cannot parse the command {command!r}: {exc}") from None
    if not argv:
        raise ValueError("the command is empty")
    return argv


def server_environment() -> dict[str, str]:
    """The environment a server starts with (see the module docstring)."""
    return get_default_environment()


def resolve_command(command: str) -> str:
    """``command`` with a bare program name (``python``, ``npx``) replaced by the absolute path
    found on the ``PATH`` servers get; a path (``./run.sh``, ``/usr/bin/python3``) is kept, as
    it means the same in the relay directory whichever process starts it. The path found is not
    resolved further: a virtualenv's ``bin/python`` is a symlink whose own location is what
    selects the virtualenv. Raises ValueError naming the program when it is not found."""
    argv = parse_command(command)
    program = argv[0]
    if "/" in program:
        return command.strip()
    found = shutil.which(program, path=server_environment().get("PATH", os.defpath))
    if found is None:
        raise ValueError(f"{program!r} is not found on PATH (give its absolute path)")
    return shlex.join([found, *argv[1:]])


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


@dataclass
class StdioProcess:
    """What the transport learned about its server, for the supervisor and the log."""

    argv: list[str]
    ended: anyio.Event = field(default_factory=anyio.Event)
    exit_reason: str = ""
    garbage_lines: int = 0
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))
    pid: int | None = None
    returncode: int | None = None
    #: Set when stderr has been read to its end (or given up on).
    stderr_done: anyio.Event = field(default_factory=anyio.Event)

    def describe_exit(self) -> str:
        reason = self.exit_reason or "the server exited"
        return reason if self.returncode is None else f"{reason} (exit status {self.returncode})"

    def stderr_report(self) -> str:
        """The newest stderr lines, joined with `` | ``, at most ``STDERR_REPORT_CHARS``, with
        control characters replaced: for the operator's log and terminal only, never for an
        envelope (a server's stderr may name files, hosts or secrets of this machine)."""
        report = ""
        for line in reversed(self.stderr_tail):
            joined = f"{line} | {report}" if report else line
            if len(joined) > STDERR_REPORT_CHARS:
                report = "… " + joined[-(STDERR_REPORT_CHARS - 2) :]
                break
            report = joined
        return _printable(report)

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.exit_reason = reason
            self.ended.set()


async def _stdout_reader(
    stdout: anyio.abc.ByteReceiveStream,
    sink: MemoryObjectSendStream[SessionMessage | Exception],
    info: StdioProcess,
    max_line: int,
) -> None:
    buffer = bytearray()
    async with sink:
        try:
            while True:
                try:
                    chunk = await stdout.receive(READ_CHUNK)
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    info.end("the server closed its stdout")
                    return
                buffer += chunk
                while (newline := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:newline])
                    del buffer[: newline + 1]
                    if len(line) > max_line:
                        info.end(f"the server sent a message larger than {max_line} bytes")
                        return
                    if line.strip():
                        await _deliver(line, sink, info)
                if len(buffer) > max_line:
                    info.end(f"the server sent a message larger than {max_line} bytes")
                    return
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            info.end("the session closed")


async def _deliver(
    line: bytes, sink: MemoryObjectSendStream[SessionMessage | Exception], info: StdioProcess
) -> None:
    try:
        message = jsonrpc_message_adapter.validate_json(line, by_name=False)
    except (ValidationError, ValueError):
        info.garbage_lines += 1
        if info.garbage_lines <= GARBAGE_LOGGED:
            log.warning(
                "MCP server %s printed a line that is not JSON-RPC (%d bytes); skipped",
                info.argv[0],
                len(line),
            )
        return
    await sink.send(SessionMessage(message))


async def _stdin_writer(
    stdin: anyio.abc.ByteSendStream,
    source: MemoryObjectReceiveStream[SessionMessage],
    info: StdioProcess,
) -> None:
    async with source:
        try:
            async for item in source:
                data = item.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                await stdin.send(data.encode("utf-8"))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            info.end("the server closed its stdin")


async def _stderr_reader(stderr: anyio.abc.ByteReceiveStream, info: StdioProcess) -> None:
    pending = b""

    def keep(raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip()[:STDERR_LINE_CHARS]
        if text:
            info.stderr_tail.append(text)

    try:
        with contextlib.suppress(
            anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError
        ):
            while True:
                chunk = await stderr.receive(READ_CHUNK)
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()[-STDERR_LINE_CHARS:]
                for raw in lines:
                    keep(raw)
        keep(pending)  # a last line without a newline (a traceback's final line often is)
    finally:
        info.stderr_done.set()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _stop(process: anyio.abc.Process) -> None:
    """Close stdin, wait, SIGTERM the group, wait, SIGKILL the group (bounded throughout)."""
    if process.stdin is not None:
        with contextlib.suppress(Exception):
            await process.stdin.aclose()
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            _signal_group(process.pid, sig)
        with anyio.move_on_after(EXIT_GRACE):
            await process.wait()
            break
    else:
        log.warning("MCP server process %d did not exit after SIGKILL", process.pid)
    await _release(process)


async def _release(process: anyio.abc.Process) -> None:
    """Close the pipes and the subprocess transport (once the process is gone)."""
    with anyio.move_on_after(EXIT_GRACE):
        await process.aclose()
    # The asyncio subprocess transport is not closed by anyio once the process has exited,
    # and would warn when collected; nothing public exposes it (the SDK's stdio client does
    # the same).
    transport = getattr(process, "_transport", None)
    close = getattr(transport, "close", None)
    if callable(close):
        close()


@contextlib.asynccontextmanager
async def stdio_transport(
    command: str,
    *,
    cwd: Path | None = None,
    max_message_bytes: int = MAX_STDIO_MESSAGE_BYTES,
) -> AsyncIterator[
    tuple[
        MemoryObjectReceiveStream[SessionMessage | Exception],
        MemoryObjectSendStream[SessionMessage],
        StdioProcess,
    ]
]:
    """Start ``command`` and speak JSON-RPC with it over its stdin and stdout.

    Raises OSError (or ValueError for a command that does not parse) if it cannot start.
    """
    info = StdioProcess(argv=parse_command(command))
    process = await anyio.open_process(
        info.argv,
        env=server_environment(),
        cwd=cwd,
        start_new_session=True,
    )
    info.pid = process.pid
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
    assert process.stdout is not None
    assert process.stdin is not None
    assert process.stderr is not None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stdout_reader, process.stdout, read_writer, info, max_message_bytes)
            tg.start_soon(_stdin_writer, process.stdin, write_reader, info)
            tg.start_soon(_stderr_reader, process.stderr, info)
            try:
                yield read_stream, write_stream, info
            finally:
                with anyio.CancelScope(shield=True):
                    await _stop(process)
                    # What the server wrote before it exited, for the caller's report.
                    with anyio.move_on_after(STDERR_DRAIN):
                        await info.stderr_done.wait()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for stream in (read_stream, write_stream, read_writer, write_reader):
                await stream.aclose()
            if process.returncode is None:
                _signal_group(process.pid, signal.SIGKILL)
                await _release(process)
        info.returncode = process.returncode
