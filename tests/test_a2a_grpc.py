"""A2A over gRPC (SPEC.md "A2A mapping"): the face's gRPC binding, and agents that offer only
gRPC, with real peers on loopback port 0.

* acme.test runs its face's gRPC listener (``[a2a] grpc_listen = "127.0.0.1:0"``); a real
  a2a-sdk gRPC client, chosen from acme's card, sends, streams, reads and cancels tasks on it,
  with and without a bearer token in the ``authorization`` metadata.
* globex.test has ``tckg``, an a2a-sdk agent whose card offers only gRPC (grpc.aio server on
  port 0), registered as ``synq agent add`` does; a message to it crosses two relays and
  reaches it over gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import httpx
import pytest
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.client.client import ClientCallContext
from a2a.client.errors import A2AClientError
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
    a2a_pb2_grpc,
)
from a2a.utils.constants import TransportProtocol
from a2a.utils.errors import TaskNotFoundError, UnsupportedOperationError
from aiohttp import web

from adapters.a2a.channels import GrpcTarget, open_channel, parse_target
from interop.a2a import tck_agent
from relay.config import A2ASection, Config, DiscoverySection, RelaySection
from relay.core.address import Address
from relay.core.errors import BadAgentCard, ConfigError, SynqError
from relay.core.ids import hash_token, new_token
from relay.runtime import grpc_resolver
from relay.server.a2a_face import A2A_FACE
from relay.server.a2a_grpc import GrpcFace
from relay.tasks.store import message_key
from tests import procs
from tests.a2a_peers import Peer, eventually, sdk_app
from tests.conftest import Agent
from tests.fedenv import Org, World, world
from tests.helpers import wait_until

TCK = "tck@globex.test"
TCKG = "tckg@globex.test"


def grpc_only_peer() -> tuple[Peer, grpc.aio.Server]:
    """The TCK scenario agent with its card over HTTP and every call over gRPC only."""
    server, target = tck_agent.grpc_server()

    def make(url: str) -> web.Application:
        from relay.server.asgi import AsgiHost

        host = AsgiHost(
            tck_agent.build_app(url, grpc_binding=(server, target), json_bindings=False), "agent"
        )
        app = web.Application()

        async def handle(request: web.Request) -> web.StreamResponse:
            return await host.handle(request)

        async def lifespan(_app: web.Application) -> AsyncIterator[None]:
            await host.startup()
            yield
            await host.shutdown()

        app.router.add_route("*", "/{tail:.*}", handle)
        app.cleanup_ctx.append(lifespan)
        return app

    return Peer(make), server


@dataclass
class Env:
    w: World
    acme: Org
    globex: Org
    alice: Agent
    http: httpx.AsyncClient

    def url(self, address: str) -> str:
        return f"{self.acme.url}/a2a/{address}"

    async def card(self, address: str) -> AgentCard:
        return await A2ACardResolver(self.http, self.url(address)).get_agent_card()

    async def grpc_client(self, address: str, *, streaming: bool = True) -> Client:
        config = ClientConfig(
            streaming=streaming,
            supported_protocol_bindings=[TransportProtocol.GRPC],
            grpc_channel_factory=grpc.aio.insecure_channel,
        )
        return ClientFactory(config).create(await self.card(address))

    def auth(self, token: str | None = None) -> ClientCallContext:
        token = self.alice.token if token is None else token
        return ClientCallContext(service_parameters={"authorization": f"Bearer {token}"})


async def with_grpc_listener(org: Org) -> None:
    """Restart ``org``'s server with the face's gRPC listener on (loopback, port 0)."""
    await org.stop()
    org.relay.config = org.relay.config.model_copy(
        update={"a2a": A2ASection(grpc_listen="127.0.0.1:0")}
    )
    await org.start()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with contextlib.AsyncExitStack() as stack:
        w = await stack.enter_async_context(world(tmp_path, "acme.test", "globex.test"))
        acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
        await with_grpc_listener(acme)
        agent = Peer(sdk_app)
        await agent.start()
        stack.push_async_callback(agent.stop)
        grpc_peer, grpc_server = grpc_only_peer()
        stack.push_async_callback(grpc_server.stop, None)
        await grpc_peer.start()
        stack.push_async_callback(grpc_peer.stop)
        await grpc_server.start()
        await globex.relay.store.create_agent(
            "tck", "a2a", hash_token(new_token()), agent.url, w.clock.now()
        )
        # As `synq agent add tckg --a2a URL` does: the adapter checks the card first.
        adapter = globex.relay.dispatcher.adapters["a2a"]
        endpoint = await adapter.check(grpc_peer.url)
        await globex.relay.store.create_agent(
            "tckg", "a2a", hash_token(new_token()), endpoint, w.clock.now()
        )
        alice = await acme.agent("alice")
        http = httpx.AsyncClient(headers=alice.auth, timeout=30)
        stack.push_async_callback(http.aclose)
        loops = [
            asyncio.create_task(loop())
            for loop in (
                acme.relay.sender.run,
                acme.relay.reply_tracker.run,
                globex.relay.sender.run,
                globex.relay.dispatcher.run,
            )
        ]
        try:
            yield Env(w, acme, globex, alice, http)
        finally:
            for task in loops:
                task.cancel()
            for task in loops:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def message(text: str) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(role=Role.ROLE_USER, message_id=text, parts=[Part(text=text)])
    )


def state(event: StreamResponse) -> str:
    which = event.WhichOneof("payload")
    if which == "task":
        return TaskState.Name(event.task.status.state)
    if which == "status_update":
        return TaskState.Name(event.status_update.status.state)
    return which or "?"


# --- the face's gRPC binding ---------------------------------------------------------------------


async def test_the_card_names_the_grpc_listener_with_the_address_as_tenant(env: Env) -> None:
    face = env.acme.server.app[A2A_FACE]  # type: ignore[union-attr]
    assert face.grpc is not None
    card = await env.card(TCK)
    by_binding = {i.protocol_binding: i for i in card.supported_interfaces}
    assert set(by_binding) == {"JSONRPC", "HTTP+JSON", "GRPC"}
    assert by_binding["GRPC"].url == face.grpc.bound
    assert by_binding["GRPC"].tenant == TCK
    assert by_binding["GRPC"].protocol_version == "1.0"


async def test_a_busy_grpc_port_is_a_one_line_configuration_error(env: Env) -> None:
    face = env.acme.server.app[A2A_FACE]  # type: ignore[union-attr]
    assert face.grpc is not None
    with pytest.raises(ConfigError, match="grpc_listen"):
        await GrpcFace(face).start(face.grpc.bound)


async def test_a_card_lists_no_grpc_while_the_listener_is_off(env: Env) -> None:
    card = await A2ACardResolver(env.http, f"{env.globex.url}/a2a/{TCK}").get_agent_card()
    assert {i.protocol_binding for i in card.supported_interfaces} == {"JSONRPC", "HTTP+JSON"}


async def test_an_sdk_grpc_client_streams_reads_and_cancels_through_the_face(env: Env) -> None:
    client = await env.grpc_client(TCK)
    events = [e async for e in client.send_message(message("tck-stream-001-g"), context=env.auth())]
    assert [state(e) for e in events] == [
        "TASK_STATE_SUBMITTED",
        "TASK_STATE_WORKING",
        "artifact_update",
        "TASK_STATE_COMPLETED",
    ]
    task_id = events[0].task.id
    task = await client.get_task(GetTaskRequest(id=task_id), context=env.auth())
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.history[0].message_id == "tck-stream-001-g"
    # The same task over JSON-RPC: one face, one store, whatever the binding.
    json_client = ClientFactory(ClientConfig(httpx_client=env.http)).create(await env.card(TCK))
    same = await json_client.get_task(GetTaskRequest(id=task_id))
    assert same.status.state == TaskState.TASK_STATE_COMPLETED

    blocking = await env.grpc_client(TCK, streaming=False)
    [waiting] = [
        e async for e in blocking.send_message(message("tck-input-required-g"), context=env.auth())
    ]
    assert waiting.task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    canceled = await client.cancel_task(CancelTaskRequest(id=waiting.task.id), context=env.auth())
    assert canceled.status.state == TaskState.TASK_STATE_CANCELED
    with pytest.raises(UnsupportedOperationError):  # ended: nothing to subscribe to
        async for _ in client.subscribe(
            SubscribeToTaskRequest(id=waiting.task.id), context=env.auth()
        ):
            pass
    with pytest.raises(TaskNotFoundError):
        await client.get_task(GetTaskRequest(id="no-such-task"), context=env.auth())


async def test_a_grpc_call_answered_in_full_frees_its_message_id_and_a_cut_one_does_not(
    env: Env,
) -> None:
    """SPEC.md "The A2A face", "Retries", over gRPC: a call that ended OK frees its messageId (the
    same message again is a new task); a stream the client cancelled keeps it (the same message
    again reads the first task, and the agent gets it once)."""
    blocking = await env.grpc_client(TCK, streaming=False)
    request = message("tck-complete-task-gr")
    [first] = [e async for e in blocking.send_message(request, context=env.auth())]
    key = message_key("alice", Address.parse(TCK), request.message)
    assert key is not None

    async def key_freed() -> bool:  # when gRPC reports the call done, just after the answer
        return not await env.acme.relay.store.idempotency_records("alice", [key.key])

    await eventually(key_freed)
    [again] = [e async for e in blocking.send_message(request, context=env.auth())]
    assert again.task.id != first.task.id
    assert again.task.status.state == TaskState.TASK_STATE_COMPLETED

    streaming = await env.grpc_client(TCK)
    cut = message("test-resubscribe-message-id-gr")
    stream = streaming.send_message(cut, context=env.auth())
    assert isinstance(stream, AsyncGenerator)
    head = await anext(stream)
    assert state(head) == "TASK_STATE_SUBMITTED"
    await stream.aclose()  # the client cancels the call: its answer is lost
    retried = [e async for e in streaming.send_message(cut, context=env.auth())]
    assert retried[0].task.id == head.task.id
    assert state(retried[-1]) == "TASK_STATE_COMPLETED"
    sent = await env.globex.relay.store.inbox("tck", limit=10, include_acked=True)
    assert sorted(i.id for i in sent) == sorted([first.task.id, again.task.id, head.task.id])


async def test_grpc_callers_need_a_local_agents_token(env: Env) -> None:
    client = await env.grpc_client(TCK, streaming=False)
    for context in (None, env.auth("synq_not-a-token")):
        with pytest.raises(A2AClientError, match="UNAUTHENTICATED"):
            await client.get_task(GetTaskRequest(id="x"), context=context)
        with pytest.raises(A2AClientError, match="UNAUTHENTICATED"):
            async for _ in client.send_message(message("tck-complete-task-x"), context=context):
                pass
    # An agent backed by a server of its own may not call (its inbox goes to that server).
    token = new_token()
    await env.acme.relay.store.create_agent(
        "bot", "a2a", hash_token(token), "http://127.0.0.1:9", env.w.clock.now()
    )
    with pytest.raises(A2AClientError, match="PERMISSION_DENIED"):
        await client.get_task(GetTaskRequest(id="x"), context=env.auth(token))
    # A call that names no address (no tenant), or a local one that does not exist.
    face = env.acme.server.app[A2A_FACE]  # type: ignore[union-attr]
    assert face.grpc is not None
    async with grpc.aio.insecure_channel(face.grpc.bound) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        metadata = (("authorization", f"Bearer {env.alice.token}"),)
        for tenant in ("", "nobody@acme.test", "not an address"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetTask(GetTaskRequest(tenant=tenant, id="x"), metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.GetTask(GetTaskRequest(tenant=TCK, id="x"))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # RFC 6750 §3, as the HTTP bindings' 401 says it.
        challenge = dict(anonymous.value.initial_metadata() or ())
        assert challenge.get("www-authenticate") == 'Bearer realm="synq"'


def with_source_limits(config: Config, *, rate: float, burst: float, in_flight: int) -> Config:
    data = config.model_dump()
    data["rate_limits"] = {"source_requests": {"per_second": rate, "burst": burst}}
    data["limits"] = {"requests_in_flight_per_source": in_flight}
    return Config.model_validate({**data, "base_dir": config.base_dir})


async def test_threat_one_address_flooding_the_grpc_listener_is_held_to_its_share(
    env: Env,
) -> None:
    """SPEC.md §10.3 on the gRPC listener, with the HTTP listener's tables: past its calls in
    flight or its call rate an address gets RESOURCE_EXHAUSTED with a retry-after trailer, and
    its HTTP and gRPC calls count together."""
    relay = env.acme.relay
    blocking = await env.grpc_client(TCK, streaming=False)
    [waiting] = [
        e
        async for e in blocking.send_message(message("tck-input-required-src"), context=env.auth())
    ]
    task_id = waiting.task.id
    face = env.acme.server.app[A2A_FACE]  # type: ignore[union-attr]
    assert face.grpc is not None
    metadata = (("authorization", f"Bearer {env.alice.token}"),)
    relay.reload(with_source_limits(relay.config, rate=100, burst=100, in_flight=1))
    async with grpc.aio.insecure_channel(face.grpc.bound) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        held = stub.SubscribeToTask(
            SubscribeToTaskRequest(tenant=TCK, id=task_id), metadata=metadata
        )
        first = await held.read()
        assert first.task.id == task_id  # the stream stays open: the task waits for input
        assert relay.sources.in_flight.held("127.0.0.1") == 1
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await stub.GetTask(GetTaskRequest(tenant=TCK, id=task_id), metadata=metadata)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(busy.value.trailing_metadata() or ()).get("retry-after") == "1"
        assert (await env.http.get(f"{env.acme.url}/healthz")).status_code == 429
        held.cancel()
        await wait_until(lambda: relay.sources.in_flight.held("127.0.0.1") == 0)
        task = await stub.GetTask(GetTaskRequest(tenant=TCK, id=task_id), metadata=metadata)
        assert task.id == task_id

        relay.reload(with_source_limits(relay.config, rate=0.25, burst=2, in_flight=8))
        codes = []
        for _ in range(4):
            try:
                await stub.GetTask(GetTaskRequest(tenant=TCK, id=task_id), metadata=metadata)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as refused:
                codes.append(refused.code())
                retry_after = dict(refused.trailing_metadata() or ()).get("retry-after")
        assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_after == "4"
        env.w.clock.advance(8)
        task = await stub.GetTask(GetTaskRequest(tenant=TCK, id=task_id), metadata=metadata)
        assert task.id == task_id


async def test_a_call_without_tenant_is_for_the_default_address_when_one_is_set(
    env: Env,
) -> None:
    relay = env.acme.relay
    relay.config = relay.config.model_copy(
        update={"a2a": A2ASection(grpc_listen="127.0.0.1:0", grpc_default_address=TCK)}
    )
    face = env.acme.server.app[A2A_FACE]  # type: ignore[union-attr]
    assert face.grpc is not None
    async with grpc.aio.insecure_channel(face.grpc.bound) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        metadata = (("authorization", f"Bearer {env.alice.token}"),)
        answer = await stub.SendMessage(message("tck-complete-task-no-tenant"), metadata=metadata)
        assert answer.task.status.state == TaskState.TASK_STATE_COMPLETED
        row = await relay.store.a2a_get_task(answer.task.id)
        assert row is not None
        assert row.address == TCK


async def test_an_anonymous_grpc_caller_acts_as_the_configured_agent(env: Env) -> None:
    relay = env.acme.relay
    relay.config = relay.config.model_copy(
        update={"a2a": A2ASection(grpc_listen="127.0.0.1:0", anonymous_agent="guest")}
    )
    await env.acme.agent("guest")
    client = await env.grpc_client(TCK, streaming=False)
    [answer] = [e async for e in client.send_message(message("tck-complete-task-anon"))]
    assert answer.task.status.state == TaskState.TASK_STATE_COMPLETED
    row = await relay.store.a2a_get_task(answer.task.id)
    assert row is not None
    assert row.owner == "guest"


# --- agents that offer only gRPC -----------------------------------------------------------------


async def test_a_grpc_only_agent_is_reached_across_two_relays(env: Env) -> None:
    # alice at acme calls tckg at globex through acme's face (gRPC both ways: the caller's
    # hop to the face and globex's hop to the agent).
    client = await env.grpc_client(TCKG)
    events = [e async for e in client.send_message(message("tck-stream-001-x"), context=env.auth())]
    assert [state(e) for e in events] == [
        "TASK_STATE_SUBMITTED",
        "TASK_STATE_WORKING",
        "artifact_update",
        "TASK_STATE_COMPLETED",
    ]
    assert events[2].artifact_update.artifact.parts[0].text == "Stream hello from TCK"


async def test_an_inbox_message_reaches_a_grpc_only_agent(env: Env) -> None:
    # A plain envelope from alice's inbox API: globex's dispatcher hands it to the agent as
    # an A2A message over gRPC, and the agent's events come back as envelopes.
    sent = await env.w.send(
        env.acme, env.alice, {"to": [TCKG], "body": "tck-complete-task-mail", "thread": "t1"}
    )

    async def answered() -> bool:
        return bool(await env.acme.relay.store.inbox("alice", limit=10))

    await eventually(answered, timeout=20)
    replies = await env.w.inbox(env.acme, env.alice)
    assert {m["from"] for m in replies} == {TCKG}
    assert all(m["in_reply_to"] == sent["id"] for m in replies)


# --- the gRPC target of a card --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("127.0.0.1:50051", GrpcTarget("127.0.0.1", 50051, None)),
        ("agent.example:443", GrpcTarget("agent.example", 443, None)),
        ("[::1]:7000", GrpcTarget("::1", 7000, None)),
        ("grpc://Agent.Example:80", GrpcTarget("agent.example", 80, False)),
        ("http://agent.example:8080/", GrpcTarget("agent.example", 8080, False)),
        ("grpcs://agent.example", GrpcTarget("agent.example", 443, True)),
        ("https://agent.example:8443", GrpcTarget("agent.example", 8443, True)),
    ],
)
def test_grpc_targets_parse(url: str, target: GrpcTarget) -> None:
    assert parse_target(url) == target


@pytest.mark.parametrize(
    "url",
    [
        "",
        "agent.example",  # no port, no TLS scheme
        "grpc://agent.example",  # plaintext needs a port
        "ftp://agent.example:21",
        "user@agent.example:443",
        "::1:7000",  # an IPv6 literal without brackets
        "agent.example:0",
        "agent.example:70000",
        "[::1]x:1",
    ],
)
def test_bad_grpc_targets_are_refused(url: str) -> None:
    with pytest.raises(BadAgentCard):
        parse_target(url)


def _relay_config(*, allow_private: bool) -> Config:
    return Config(
        relay=RelaySection(domain="acme.test"),
        # Nothing listens there: only IP literals and localhost, which need no DNS, are asked.
        discovery=DiscoverySection(
            nameservers=["127.0.0.1:9"], allow_private_addresses=allow_private
        ),
    )


@pytest.mark.parametrize(
    "url",
    ["127.0.0.1:50051", "[::1]:50051", "10.1.2.3:443", "169.254.169.254:80", "localhost:50051"],
)
async def test_rfc_ssrf_a_card_cannot_aim_the_grpc_client_at_the_relays_network(url: str) -> None:
    """SPEC.md §7.6: the gRPC target of an agent's card meets the address policy of every URL
    another party names; nothing connects to a refused address."""
    resolve = grpc_resolver(_relay_config(allow_private=False))
    with pytest.raises(SynqError):
        await open_channel(url, resolve, allow_plaintext=False)


async def test_plaintext_grpc_only_where_private_addresses_are_allowed() -> None:
    resolve = grpc_resolver(_relay_config(allow_private=True))
    with pytest.raises(BadAgentCard, match="plaintext"):
        await open_channel("grpc://127.0.0.1:50051", resolve, allow_plaintext=False)
    channel, address = await open_channel("127.0.0.1:50051", resolve, allow_plaintext=True)
    await channel.close()
    assert address == "ipv4:127.0.0.1:50051"


# --- synq serve ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_synq_serve_runs_the_grpc_listener_and_prints_it(tmp_path: Path) -> None:
    await procs.synq(
        "init", "--domain", "acme.test", "--dir", str(tmp_path), "--listen", "127.0.0.1:0",
        cwd=tmp_path,
    )  # fmt: skip
    config = tmp_path / "synq.toml"
    text = config.read_text()
    assert '# grpc_listen = "127.0.0.1:PORT"' in text  # off unless asked
    config.write_text(
        text.replace('# grpc_listen = "127.0.0.1:PORT"', 'grpc_listen = "127.0.0.1:0"')
    )
    alice = await procs.synq("agent", "add", "alice", cwd=tmp_path)
    relay = procs.Served(tmp_path)
    url = await relay.start()
    try:
        await relay.wait_for_output("A2A gRPC listener on ")
        printed = relay.text.split("A2A gRPC listener on ", 1)[1].split()[0]
        assert printed.startswith("127.0.0.1:")
        assert not printed.endswith(":0")
        async with httpx.AsyncClient(timeout=10) as http:
            card = await A2ACardResolver(http, f"{url}/a2a/alice@acme.test").get_agent_card()
        [grpc_interface] = [i for i in card.supported_interfaces if i.protocol_binding == "GRPC"]
        assert grpc_interface.url == printed
        config_ = ClientConfig(
            supported_protocol_bindings=[TransportProtocol.GRPC],
            grpc_channel_factory=grpc.aio.insecure_channel,
        )
        client = ClientFactory(config_).create(card)
        auth = ClientCallContext(service_parameters={"authorization": f"Bearer {alice['token']}"})
        with pytest.raises(TaskNotFoundError):  # admitted: the task is what is missing
            await client.get_task(GetTaskRequest(id="none"), context=auth)
        await client.close()
    finally:
        await relay.stop()
