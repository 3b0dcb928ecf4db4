"""A real MCP server (mcp SDK) for the MCP tests, run as a subprocess.

``python -m tests.mcpserver stdio [--garbage-at-start] [--exit-at-start]`` speaks on stdio;
``python -m tests.mcpserver http`` serves streamable HTTP on a loopback port chosen by the OS and
prints ``PORT <n>`` on its first stdout line (``--port N`` to pick it, e.g. to come back on
the same port).

Tools: ``echo``, ``add`` (typed input schema), ``slow`` (progress notifications), ``hang`` (never
answers), ``big`` (an enormous result), ``garbage`` (prints a non-JSON line to stdout first),
``crash`` (the process exits mid-call), ``grow`` (adds a tool and announces
``notifications/tools/list_changed``), ``whoami`` (which headers reached it), ``structured``,
``count`` (how many times it ran in this process: a call that ran twice shows), ``traceparent``
(the W3C ``traceparent`` the call's ``_meta`` carried, MCP SEP-414).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer(name="synq-test-tools", version="1.0")
seen_headers: dict[str, str] = {}
runs = {"count": 0}


@server.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def slow(steps: int, ctx: Context, delay: float = 0.05) -> str:
    """Report progress for each step, then finish."""
    for i in range(1, steps + 1):
        await anyio.sleep(delay)
        await ctx.report_progress(i, steps, f"step {i} of {steps}")
    return f"done after {steps} steps"


@server.tool()
async def hang() -> str:
    """Never answer."""
    await anyio.sleep_forever()
    return "unreachable"


@server.tool()
def big(size: int) -> str:
    """A result of ``size`` characters."""
    return "x" * size


@server.tool()
def garbage() -> str:
    """Print a line that is not JSON-RPC to stdout, then answer normally."""
    if not sys.stdout.isatty():
        os.write(1, b"this is not JSON-RPC at all\n")
    return "answered after garbage"


@server.tool()
def crash() -> str:
    """Exit the process in the middle of the call."""
    os._exit(3)


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the tool ``late`` and tell the client the list changed."""

    def late() -> str:
        """A tool that appeared later."""
        return "late tool"

    server.add_tool(late, name="late")
    await ctx.session.send_tool_list_changed()
    return "grown"


@server.tool()
def structured(city: str) -> dict[str, Any]:
    """A structured result."""
    return {"city": city, "temperature": 21.5}


@server.tool()
async def whoami(ctx: Context) -> str:
    """The Authorization header this call arrived with, or 'none'."""
    headers = ctx.headers or {}
    return headers.get("authorization", "none")


@server.tool()
async def traceparent(ctx: Context) -> str:
    """The ``traceparent`` of this call's ``_meta`` (MCP SEP-414), or 'none'."""
    meta = ctx.request_context.meta
    if meta is None:
        return "none"
    values = meta if isinstance(meta, dict) else meta.model_dump(by_alias=True)
    return str(values.get("traceparent", "none"))


@server.tool()
def count() -> str:
    """How many times this tool has run in this process, this call included."""
    runs["count"] += 1
    return str(runs["count"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("--garbage-at-start", action="store_true")
    parser.add_argument("--exit-at-start", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.exit_at_start:
        sys.exit(2)
    if args.transport == "stdio":
        if args.garbage_at_start:
            os.write(1, b"Starting up... {not json\n")
        server.run("stdio")
        return
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    port = sock.getsockname()[1]
    sock.listen(128)  # connections queue from now on, before the server accepts
    print(f"PORT {port}", flush=True)
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning")
    anyio.run(uvicorn.Server(config).serve, [sock])


if __name__ == "__main__":
    main()
