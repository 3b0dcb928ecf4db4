"""The A2A TCK scenario agent: a plain a2a-sdk agent that behaves as the kit's scenarios ask.

The A2A TCK (github a2aproject/a2a-tck, branch ``1.0-dev``) drives the agent under test
through the ``messageId`` of each message: a prefix names a scenario in the kit's
``scenarios/*.feature`` (``tck-complete-task``, ``tck-input-required``, ``tck-stream-001``…).
The kit's own Python agent uses the a2a-sdk 0.3 API; this one is written against a2a-sdk 1.3
(A2A protocol 1.0), with push notifications on, and serves JSON-RPC and HTTP+JSON from one base
URL — the same layout as the relay's A2A face, so the two TCK runs differ only in the hops.

    python -m interop.a2a.tck_agent [--host 127.0.0.1] [--port 0] [--grpc] [--grpc-only]

``--grpc`` serves the gRPC binding too (A2A 1.0 §10), on a port of its own (gRPC needs HTTP/2)
that the card names; ``--grpc-only`` serves only the card over HTTP and every call over gRPC.

A client that does not choose its messageIds names the scenario in its first text part instead
(``tck-complete-task``).

prints ``listening on <url>`` once it accepts connections. Tests and ``interop/a2a/run_tck.py``
import :func:`build_app` to run it in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator

import grpc.aio
import httpx
import uvicorn
from a2a.helpers import new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
from a2a.server.routes import (
    create_agent_card_routes,
    create_jsonrpc_routes,
    create_rest_routes,
)
from a2a.server.tasks import (
    BasePushNotificationSender,
    InMemoryPushNotificationConfigStore,
    InMemoryTaskStore,
    TaskUpdater,
)
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    Message,
    Part,
    TaskState,
    a2a_pb2_grpc,
)
from a2a.utils.errors import A2AError
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Value
from starlette.applications import Starlette
from starlette.routing import BaseRoute

#: How long the resubscription scenario keeps its task working: twice the kit's streaming
#: timeout (2 s), as ``scenarios/streaming.feature`` asks.
RESUBSCRIBE_WORK_SECONDS = 4.0


#: Prefixes that name a scenario (the kit's scenarios/*.feature).
SCENARIO_PREFIXES = ("tck-", "test-resubscribe-message-id")


def _scenario(message: Message) -> str:
    """The scenario a message asks for: its messageId (how the TCK says it), or else its first
    text part (how clients that choose no messageIds of their own say it, such as the
    contract tests CI runs with a2a-proof)."""
    if message.message_id.startswith(SCENARIO_PREFIXES):
        return message.message_id
    for part in message.parts:
        if part.HasField("text") and part.text.strip().startswith(SCENARIO_PREFIXES):
            return part.text.strip()
    return message.message_id


class TckAgentExecutor(AgentExecutor):
    """Reacts to the TCK's messageId prefixes (scenarios/*.feature of the kit)."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id, message = context.task_id, context.context_id, context.message
        if context.current_task is not None:
            # A follow-up that names the task but not its context gets a fresh context id
            # from the SDK; the task's own one is the right one.
            context_id = context.current_task.context_id
        if task_id is None or context_id is None:
            return
        updater = TaskUpdater(event_queue, task_id, context_id)
        if message is None:
            await updater.complete(updater.new_agent_message([Part(text="No message provided")]))
            return
        mid = _scenario(message)
        if mid.startswith("tck-message-response"):
            # A message-only exchange: one Message, no task (A2A 1.0 §3.1.1).
            await event_queue.enqueue_event(
                updater.new_agent_message([Part(text="Direct message response")])
            )
            return
        if context.current_task is None:
            # The SDK wants a new task announced as a Task before any update of it.
            await event_queue.enqueue_event(
                new_task(task_id, context_id, TaskState.TASK_STATE_SUBMITTED, history=[message])
            )
        # Order matters where one prefix starts another (tck-artifact-file-url, -file).
        if mid.startswith("tck-input-required"):
            await updater.requires_input()
        elif mid.startswith("tck-complete-task"):
            await updater.complete(updater.new_agent_message([Part(text="Hello from TCK")]))
        elif mid.startswith("tck-reject-task"):
            raise A2AError("rejected")
        elif mid.startswith("tck-artifact-file-url"):
            await updater.add_artifact(
                parts=[
                    Part(
                        url="https://example.com/output.txt",
                        media_type="text/plain",
                        filename="output.txt",
                    )
                ]
            )
            await updater.complete()
        elif mid.startswith("tck-artifact-file"):
            await updater.add_artifact(
                parts=[Part(raw=b"tck", media_type="text/plain", filename="output.txt")]
            )
            await updater.complete()
        elif mid.startswith("tck-artifact-text"):
            await updater.add_artifact(parts=[Part(text="Generated text content")])
            await updater.complete()
        elif mid.startswith("tck-artifact-data"):
            data = json_format.Parse('{"key": "value", "count": 42}', Value())
            await updater.add_artifact(parts=[Part(data=data)])
            await updater.complete()
        elif mid.startswith("tck-stream-artifact-chunked"):
            await updater.start_work()
            await updater.add_artifact(parts=[Part(text="chunk-1 ")], artifact_id="chunked")
            await updater.add_artifact(
                parts=[Part(text="chunk-2")], artifact_id="chunked", append=True, last_chunk=True
            )
            await updater.complete()
        elif mid.startswith("tck-stream-artifact-file"):
            await updater.start_work()
            await updater.add_artifact(
                parts=[Part(raw=b"tck", media_type="text/plain", filename="output.txt")]
            )
            await updater.complete()
        elif mid.startswith("tck-stream-002"):
            await updater.complete()
        elif mid.startswith(("tck-stream-001", "tck-stream-003", "tck-stream-ordering-001")):
            text = {
                "tck-stream-001": "Stream hello from TCK",
                "tck-stream-003": "Stream task lifecycle",
            }.get(mid[:14], "Ordered output")
            await updater.start_work()
            await updater.add_artifact(parts=[Part(text=text)])
            await updater.complete()
        elif mid.startswith("tck-stream-artifact-text"):
            await updater.start_work()
            await updater.add_artifact(parts=[Part(text="Streamed text content")])
            await updater.complete()
        elif mid.startswith("test-resubscribe-message-id"):
            await updater.start_work()
            await asyncio.sleep(RESUBSCRIBE_WORK_SECONDS)
            await updater.complete()
        else:
            await updater.complete(
                updater.new_agent_message([Part(text=f"Unhandled messageId prefix: {mid}")])
            )

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        if context.task_id is None or context.context_id is None:
            return
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def agent_card(
    base_url: str, *, grpc_target: str | None = None, json_bindings: bool = True
) -> AgentCard:
    interfaces = []
    if json_bindings:
        interfaces += [
            AgentInterface(url=base_url, protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(url=base_url, protocol_binding="HTTP+JSON", protocol_version="1.0"),
        ]
    if grpc_target is not None:
        interfaces.append(
            AgentInterface(url=grpc_target, protocol_binding="GRPC", protocol_version="1.0")
        )
    return AgentCard(
        name="Synq TCK scenario agent",
        description="An a2a-sdk agent that reacts to the A2A TCK's messageId prefixes.",
        version="1.0.0",
        provider=AgentProvider(organization="Synq", url="https://github.com/synq"),
        supported_interfaces=interfaces,
        capabilities=AgentCapabilities(streaming=True, push_notifications=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id="tck",
                name="TCK conformance",
                description="Handles TCK conformance test messages",
                tags=["tck"],
            )
        ],
    )


def build_app(
    base_url: str,
    *,
    grpc_binding: tuple[grpc.aio.Server, str] | None = None,
    json_bindings: bool = True,
) -> Starlette:
    """The agent as one Starlette application: card, JSON-RPC at ``/``, HTTP+JSON beside it.

    ``grpc_binding``: a gRPC server with a port added (not started) and its ``host:port``; it gets the
    same request handler and the card names it. ``json_bindings=False`` leaves only the card
    on HTTP."""
    grpc_server, grpc_target = grpc_binding if grpc_binding is not None else (None, None)
    card = agent_card(base_url, grpc_target=grpc_target, json_bindings=json_bindings)
    push_store = InMemoryPushNotificationConfigStore()
    http = httpx.AsyncClient(timeout=10.0)
    handler = DefaultRequestHandler(
        agent_executor=TckAgentExecutor(),
        task_store=InMemoryTaskStore(),
        agent_card=card,
        push_config_store=push_store,
        push_sender=BasePushNotificationSender(http, push_store),
    )
    if grpc_server is not None:
        # The SDK's generated registration function carries no annotations.
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(  # type: ignore[no-untyped-call]
            GrpcHandler(handler), grpc_server
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await handler.aclose()
            await http.aclose()

    routes: list[BaseRoute] = list(
        create_agent_card_routes(card, cache_control="public, max-age=60")
    )
    if json_bindings:
        routes += [*create_jsonrpc_routes(handler, rpc_url="/"), *create_rest_routes(handler)]
    return Starlette(routes=routes, lifespan=lifespan)


def grpc_server(host: str = "127.0.0.1") -> tuple[grpc.aio.Server, str]:
    """A gRPC server bound to a free port of ``host``, not started, and its ``host:port``."""
    server = grpc.aio.server()
    port = server.add_insecure_port(f"{host}:0")
    return server, f"{host}:{port}"


async def serve(
    sock: socket.socket, base_url: str, *, with_grpc: bool = False, json_bindings: bool = True
) -> None:
    bound = grpc_server(sock.getsockname()[0]) if with_grpc else None
    app = build_app(base_url, grpc_binding=bound, json_bindings=json_bindings)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    if bound is not None:
        await bound[0].start()
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        if bound is not None:
            await bound[0].stop(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--grpc", action="store_true", help="serve the gRPC binding too")
    parser.add_argument("--grpc-only", action="store_true", help="serve calls over gRPC only")
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    print(f"listening on {url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(
                sock,
                url,
                with_grpc=args.grpc or args.grpc_only,
                json_bindings=not args.grpc_only,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
