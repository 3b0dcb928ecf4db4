"""The agents the protocol-overhead benchmark calls: plain SDK servers doing no work.

    python -m bench.agents a2a     an a2a-sdk agent answering every message with a Message
    python -m bench.agents mcp     an MCP server (mcp SDK, streamable HTTP) with an ``echo`` tool

Each listens on 127.0.0.1 on a port the OS chose and prints ``listening on <url>`` (the A2A
agent's base URL; the MCP server's endpoint, ``…/mcp``) once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

import uvicorn
from a2a.helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Role
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.types import ASGIApp


class EchoExecutor(AgentExecutor):
    """Answers with one Message (A2A 1.0 §3.1.1: a message-only exchange, no task)."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input() if context.message is not None else ""
        await event_queue.enqueue_event(
            new_text_message(f"echo: {text}", context_id=context.context_id, role=Role.ROLE_AGENT)
        )

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        return None


def a2a_app(base_url: str) -> Starlette:
    card = AgentCard(
        name="echo",
        description="Answers every message with its text.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=base_url, protocol_binding="JSONRPC", protocol_version="1.0"),
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="echo", description="echo", tags=["echo"])],
    )
    handler = DefaultRequestHandler(
        agent_executor=EchoExecutor(), task_store=InMemoryTaskStore(), agent_card=card
    )
    routes = [
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, rpc_url="/"),
        *create_rest_routes(handler),
    ]
    return Starlette(routes=routes)


def mcp_app() -> ASGIApp:
    server = MCPServer(name="echo-tools", version="1.0")

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    app: ASGIApp = server.streamable_http_app()
    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["a2a", "mcp"])
    args = ap.parse_args(argv)
    # Named TCP (not protocol 0), as a server that binds by host and port gets: asyncio turns
    # Nagle's algorithm off (TCP_NODELAY) only on sockets whose protocol says TCP, and an
    # agent with it on would hold its second small write of a response on a kept connection.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    if args.kind == "a2a":
        app: ASGIApp = a2a_app(base + "/")
        url = base + "/"
    else:
        app = mcp_app()
        url = base + "/mcp"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.01)
        print(f"listening on {url}", flush=True)
        await task

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
