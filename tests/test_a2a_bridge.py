"""The A2A bridge end to end: unmodified a2a-sdk clients at acme.test talk, through acme's A2A
face and federation, to an a2a-sdk agent registered at globex.test (``synq agent add tck
--a2a URL``) — and to plain inbox agents, and to addresses that do not exist.

Two real relays, a real DNS server and the agent on loopback (tests/fedenv.py); the federation
queues and local dispatchers run in the background, so calls complete on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils import errors as a2a_errors
from a2a.utils.signing import create_signature_verifier
from aiohttp import web
from aiohttp.test_utils import TestServer
from jwt.api_jwk import PyJWK

from adapters.a2a import tasks as folding
from adapters.a2a import wire
from relay.config import A2ASection
from relay.core.ids import hash_token, new_token
from relay.runtime import Relay
from relay.server.a2a_face import A2A_FACE, A2AFace
from relay.store.base import A2ATask
from relay.tasks.replies import CURSOR_LAG, ReplyTracker
from relay.tasks.store import Change, Tail, event_json, parse_task, task_json
from tests.a2a_peers import Peer, eventually, sdk_app
from tests.conftest import Agent
from tests.fedenv import Org, World, world
from tests.helpers import wait_until
from tests.test_store import new
from tests.test_store_a2a import task as store_task

TCK = "tck@globex.test"


@dataclass
class Bridge:
    w: World
    acme: Org
    globex: Org
    agent: Peer
    alice: Agent
    http: httpx.AsyncClient
    loops: list[asyncio.Task[None]]

    def face(self, org: Org | None = None) -> A2AFace:
        server = (org or self.acme).server
        assert server is not None
        assert server.app is not None
        return server.app[A2A_FACE]

    def url(self, address: str = TCK) -> str:
        return f"{self.acme.url}/a2a/{address}"

    async def card(self, address: str = TCK) -> AgentCard:
        return await A2ACardResolver(self.http, self.url(address)).get_agent_card()

    async def client(self, address: str = TCK, *, streaming: bool = True) -> Client:
        config = ClientConfig(streaming=streaming, httpx_client=self.http)
        return ClientFactory(config).create(await self.card(address))

    def run(self, org: Org, *, dispatcher: bool = True) -> None:
        self.loops.append(asyncio.create_task(org.relay.sender.run()))
        self.loops.append(asyncio.create_task(org.relay.reply_tracker.run()))
        if dispatcher:
            self.loops.append(asyncio.create_task(org.relay.dispatcher.run()))

    async def stop_loops(self) -> None:
        for task in self.loops:
            task.cancel()
        for task in self.loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.loops.clear()


@contextlib.asynccontextmanager
async def bridge(base: Path, *, globex_dispatcher: bool = True) -> AsyncIterator[Bridge]:
    async with world(base, "acme.test", "globex.test") as w:
        acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
        agent = Peer(sdk_app)
        await agent.start()
        await globex.relay.store.create_agent(
            "tck", "a2a", hash_token(new_token()), agent.url, w.clock.now()
        )
        alice = await acme.agent("alice")
        http = httpx.AsyncClient(headers=alice.auth, timeout=30)
        b = Bridge(w, acme, globex, agent, alice, http, [])
        b.run(acme)
        b.run(globex, dispatcher=globex_dispatcher)
        try:
            yield b
        finally:
            await b.stop_loops()
            await http.aclose()
            await agent.stop()


def message(text: str, *, task_id: str = "", message_id: str | None = None) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(
            role=Role.ROLE_USER,
            message_id=message_id or text,
            task_id=task_id,
            parts=[Part(text=text)],
        )
    )


async def collect(client: Client, request: SendMessageRequest) -> list[StreamResponse]:
    return [event async for event in client.send_message(request)]


def state(event: StreamResponse) -> str:
    which = event.WhichOneof("payload")
    if which == "task":
        return TaskState.Name(event.task.status.state)
    if which == "status_update":
        return TaskState.Name(event.status_update.status.state)
    return which or "?"


@pytest.fixture
async def b(tmp_path: Path) -> AsyncIterator[Bridge]:
    async with bridge(tmp_path) as env:
        yield env


# --- an unmodified A2A client across two relays --------------------------------------------------


async def test_an_unmodified_sdk_client_completes_a_streaming_task_across_two_relays(
    b: Bridge,
) -> None:
    # The card verifies with the relay's published keys (A2A 1.0 §8.4), as any client can check.
    jwks = (await b.http.get(f"{b.acme.url}/a2a/jwks.json")).json()["keys"]
    keys = {k["kid"]: PyJWK(k, algorithm="EdDSA") for k in jwks}
    verifier = create_signature_verifier(lambda kid, _jku: keys[kid or ""], ["EdDSA"])
    card = await A2ACardResolver(b.http, b.url()).get_agent_card(signature_verifier=verifier)
    assert card.name == "Synq TCK scenario agent"
    assert {i.url for i in card.supported_interfaces} == {b.url()}
    client = ClientFactory(ClientConfig(streaming=True, httpx_client=b.http)).create(card)

    events = await collect(client, message("tck-stream-001-e2e"))

    assert [state(e) for e in events] == [
        "TASK_STATE_SUBMITTED",
        "TASK_STATE_WORKING",
        "artifact_update",
        "TASK_STATE_COMPLETED",
    ]
    task_id = events[0].task.id
    assert {e.status_update.task_id for e in events[1:] if e.HasField("status_update")} == {task_id}
    assert events[2].artifact_update.artifact.parts[0].text == "Stream hello from TCK"
    task = await client.get_task(GetTaskRequest(id=task_id))
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.history[0].message_id == "tck-stream-001-e2e"
    # The replies were taken from alice's inbox into the task: nothing is left unread there.
    assert await b.acme.relay.store.inbox("alice", limit=10) == []


async def test_the_agent_is_down_the_message_waits_and_arrives_when_it_is_back(
    tmp_path: Path,
) -> None:
    async with bridge(tmp_path, globex_dispatcher=False) as b:
        await b.agent.stop()
        client = await b.client(streaming=False)
        request = message("tck-complete-task-late")
        request.configuration.CopyFrom(SendMessageConfiguration(return_immediately=True))
        [submitted] = await collect(client, request)
        task_id = submitted.task.id
        assert submitted.task.status.state == TaskState.TASK_STATE_SUBMITTED

        dispatcher = b.globex.relay.dispatcher

        async def attempted() -> bool:  # the envelope crossed to globex: one failed attempt
            return await dispatcher.run_once() > 0

        await eventually(attempted)
        assert [i.id for i in await b.globex.relay.store.inbox("tck", limit=5)] != []
        still = await client.get_task(GetTaskRequest(id=task_id))
        assert still.status.state == TaskState.TASK_STATE_SUBMITTED

        await b.agent.start()  # back, at the same URL
        b.w.clock.advance(600)
        assert await dispatcher.run_once() == 1
        streaming = await b.client()
        try:
            events = [e async for e in streaming.subscribe(SubscribeToTaskRequest(id=task_id))]
            assert state(events[-1]) == "TASK_STATE_COMPLETED"
        except a2a_errors.UnsupportedOperationError:
            pass  # the answer was folded before the subscription came: the task had ended
        done = await client.get_task(GetTaskRequest(id=task_id))
        assert done.status.state == TaskState.TASK_STATE_COMPLETED
        assert done.status.message.parts[0].text == "Hello from TCK"


async def test_tasks_survive_a_restart_of_the_relay(b: Bridge) -> None:
    client = await b.client(streaming=False)
    [open_task] = await collect(client, message("tck-input-required-r"))
    task_id = open_task.task.id
    assert open_task.task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED

    await b.stop_loops()
    config = b.acme.relay.config
    await b.acme.stop()
    await b.acme.relay.close()
    b.acme.relay = await Relay.open(config, clock=b.w.clock)
    await b.acme.start()
    b.run(b.acme)
    b.run(b.globex)

    client = await b.client(streaming=False)
    same = await client.get_task(GetTaskRequest(id=task_id))
    assert same.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    # The agent's own task id was kept too: the next turn reaches the same task over there.
    [done] = await collect(client, message("tck-complete-task-r", task_id=task_id))
    assert done.task.id == task_id
    assert done.task.status.state == TaskState.TASK_STATE_COMPLETED
    assert [m.message_id for m in done.task.history][:2] == [
        "tck-input-required-r",
        "tck-complete-task-r",
    ]


# --- faults -------------------------------------------------------------------------------------


async def test_a_client_that_hangs_up_mid_stream_leaves_nothing_running(b: Bridge) -> None:
    face = b.face()
    notifier = b.acme.relay.store.notifier
    before = {t for t in asyncio.all_tasks() if not t.done()}
    client = await b.client()
    stream = client.send_message(message("test-resubscribe-message-id-hangup"))
    assert isinstance(stream, AsyncGenerator)
    first = await anext(stream)
    assert state(first) == "TASK_STATE_SUBMITTED"
    await stream.aclose()  # the client goes away while the agent still works on the task
    await wait_until(lambda: face.host.active == 0)
    await wait_until(lambda: notifier.listener_count("a2a:") == 0)
    cpu = time.process_time()
    # The task goes on without the client and ends; nothing spun meanwhile.
    row = await b.acme.relay.store.a2a_get_task(first.task.id)
    assert row is not None
    async with asyncio.timeout(20):
        while (row := await b.acme.relay.store.a2a_get_task(first.task.id)) is not None and (
            row.state != "TASK_STATE_COMPLETED"
        ):
            async with notifier.listen(f"a2a:{first.task.id}") as listener:
                await listener.wait(1.0)
    assert time.process_time() - cpu < 2.0

    # What may remain: the client's idle keep-alive connection (aiohttp's per-connection task,
    # serving no request: host.active is 0) and sse-starlette's process-wide shutdown watcher.
    expected = ("_shutdown_watcher", "RequestHandler.start")

    def left() -> list[asyncio.Task[Any]]:
        after = {t for t in asyncio.all_tasks() if not t.done()} - before
        return [t for t in after if not any(e in repr(t.get_coro()) for e in expected)]

    # The relay's own work on the reply may still be finishing once the task shows it (the
    # federation sender's pass carrying its receipt back to globex, and that loop's wake-up
    # being cancelled): it ends on its own, where a reader left behind would stay for good.
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: not left())
    assert not left()


async def test_unknown_tasks_and_ended_tasks_get_the_a2a_errors(b: Bridge) -> None:
    client = await b.client()
    with pytest.raises(a2a_errors.TaskNotFoundError):
        await client.get_task(GetTaskRequest(id="no-such-task"))
    events = await collect(client, message("tck-complete-task-y"))
    task_id = events[0].task.id
    with pytest.raises(a2a_errors.TaskNotCancelableError):
        await client.cancel_task(CancelTaskRequest(id=task_id))
    with pytest.raises(a2a_errors.UnsupportedOperationError):
        await collect(client, message("tck-complete-task-z", task_id=task_id))
    rest = await b.http.get(f"{b.url()}/tasks/no-such-task", headers={"A2A-Version": "1.0"})
    assert rest.status_code == 404
    # Another agent of the same relay does not see alice's tasks.
    bob = await b.acme.agent("bob")
    other = await b.http.get(
        f"{b.url()}/tasks/{task_id}", headers={**bob.auth, "A2A-Version": "1.0"}
    )
    assert other.status_code == 404


async def test_cancel_crosses_the_boundary_to_the_agents_task(b: Bridge) -> None:
    client = await b.client(streaming=False)
    [waiting] = await collect(client, message("tck-input-required-c"))
    task_id = waiting.task.id
    canceled = await client.cancel_task(CancelTaskRequest(id=task_id))
    assert canceled.status.state == TaskState.TASK_STATE_CANCELED
    row = await b.acme.relay.store.a2a_get_task(task_id)
    assert row is not None
    remote = row.remote_id
    assert remote
    # The signal envelope reaches globex and the agent cancels its own task.
    agent_card = await A2ACardResolver(b.http, b.agent.url).get_agent_card()
    direct = ClientFactory(ClientConfig(httpx_client=b.http)).create(agent_card)

    async def canceled_there() -> bool:
        task = await direct.get_task(GetTaskRequest(id=remote))
        return task.status.state == TaskState.TASK_STATE_CANCELED

    await eventually(canceled_there)


async def tck_envelopes(b: Bridge) -> list[str]:
    """The envelopes the agent's inbox at globex got, acknowledged or not."""
    return [i.id for i in await b.globex.relay.store.inbox("tck", limit=20, include_acked=True)]


async def test_a_message_id_sent_again_after_its_answer_is_a_new_task_and_tasks_are_listed_apart(
    b: Bridge,
) -> None:
    """Once a call's answer was written in full its messageId is free (SPEC.md "The A2A face",
    "Retries"; A2A 1.0 §3.3.1): the same message again, or another message under the same id,
    is a new call — a new task and a new envelope, not a replay nor invalid params."""
    client = await b.client(streaming=False)
    first = await collect(client, message("tck-complete-task", message_id="dup-1"))
    again = await collect(client, message("tck-complete-task", message_id="dup-1"))
    other = await collect(client, message("tck-complete-task-other", message_id="dup-1"))
    ids = {first[0].task.id, again[0].task.id, other[0].task.id}
    assert len(ids) == 3
    assert {e[0].task.status.state for e in (first, again, other)} == {
        TaskState.TASK_STATE_COMPLETED
    }
    assert sorted(await tck_envelopes(b)) == sorted(ids)
    listed = await client.list_tasks(ListTasksRequest(page_size=2))
    assert (listed.total_size, len(listed.tasks)) == (3, 2)
    assert listed.next_page_token
    rest = await client.list_tasks(ListTasksRequest(page_size=2, page_token=listed.next_page_token))
    assert {t.id for t in [*listed.tasks, *rest.tasks]} == ids
    assert not rest.next_page_token


async def test_a_stream_cut_before_its_end_is_retried_into_the_same_task(b: Bridge) -> None:
    """A client whose stream broke before the task's closing event cannot know what it missed:
    the same message again reads the first call's task from the start, and the agent gets the
    message once. The retry's stream, read to its end, frees the messageId."""
    face = b.face()
    client = await b.client()
    request = message("test-resubscribe-message-id-lost", message_id="lost-1")
    stream = client.send_message(request)
    assert isinstance(stream, AsyncGenerator)
    first = await anext(stream)
    assert state(first) == "TASK_STATE_SUBMITTED"
    await stream.aclose()  # the connection is cut: the answer is lost
    await wait_until(lambda: face.host.active == 0)
    retried = await collect(client, request)
    assert retried[0].task.id == first.task.id
    assert state(retried[-1]) == "TASK_STATE_COMPLETED"
    assert await tck_envelopes(b) == [first.task.id]
    # That answer arrived in full: the same message once more is a new call.
    polled = SendMessageRequest()
    polled.CopyFrom(request)
    polled.configuration.CopyFrom(SendMessageConfiguration(return_immediately=True))
    [after] = await collect(await b.client(streaming=False), polled)
    assert after.task.id != first.task.id

    async def both_sent() -> bool:
        return sorted(await tck_envelopes(b)) == sorted([first.task.id, after.task.id])

    await eventually(both_sent)


async def test_a_bounce_fails_the_task_with_the_reason(b: Bridge) -> None:
    # An address its relay does not know: globex refuses, acme bounces, the task fails.
    raw = await b.http.post(
        b.url("ghost@globex.test"),
        headers={"A2A-Version": "1.0"},
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "SendMessage",
            "params": {
                "message": {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": "hi"}]}
            },
        },
    )
    task = raw.json()["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_FAILED"
    assert "5.1.1" in task["status"]["message"]["parts"][0]["text"]


async def test_an_inbox_agent_answers_an_a2a_client_in_plain_text(b: Bridge) -> None:
    bob = await b.globex.agent("bob")
    client = await b.client("bob@globex.test")
    polling = await b.client("bob@globex.test", streaming=False)
    request = message("what time is it?")
    request.configuration.CopyFrom(SendMessageConfiguration(return_immediately=True))
    [submitted] = await collect(polling, request)
    task_id = submitted.task.id

    async def delivered() -> bool:
        return bool(await b.w.inbox(b.globex, bob))

    await eventually(delivered)
    [mail] = await b.w.inbox(b.globex, bob)
    assert (mail["from"], mail["content_type"]) == ("alice@acme.test", wire.CONTENT_TYPE)
    assert mail["body"]["parts"] == [{"text": "what time is it?"}]
    subscribed = client.subscribe(SubscribeToTaskRequest(id=task_id))
    events = [await anext(subscribed)]  # the task as it stands: the subscription is open
    # bob sends his update and his answer one after the other. Envelopes keep no order
    # (SPEC.md §9.1, "No ordering guarantee"): the answer may arrive first — on acme's first
    # contact with globex it does — and the task still ends with it, the update in its history.
    await b.w.send(
        b.globex,
        bob,
        {
            "to": ["alice@acme.test"],
            "kind": "task.update",
            "body": "looking",
            "in_reply_to": mail["id"],
        },
    )
    await b.w.send(
        b.globex, bob, {"to": ["alice@acme.test"], "body": "noon", "in_reply_to": mail["id"]}
    )
    events += [e async for e in subscribed]
    assert state(events[-1]) == "TASK_STATE_COMPLETED"

    async def folded() -> bool:
        task = await polling.get_task(GetTaskRequest(id=task_id))
        return len(task.history) == 2

    await eventually(folded)
    task = await client.get_task(GetTaskRequest(id=task_id))
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.status.message.parts[0].text == "noon"
    assert [m.parts[0].text for m in task.history] == ["what time is it?", "looking"]


async def test_only_the_address_asked_can_move_a_task(b: Bridge) -> None:
    mallory = await b.globex.agent("mallory")
    client = await b.client(streaming=False)
    [waiting] = await collect(client, message("tck-input-required-f"))
    task_id = waiting.task.id
    forged = {
        "to": ["alice@acme.test"],
        "kind": "task.update",
        "content_type": wire.CONTENT_TYPE,
        "in_reply_to": task_id,
        "body": {"statusUpdate": {"taskId": "x", "status": {"state": "TASK_STATE_COMPLETED"}}},
    }
    sent = await b.w.send(b.globex, mallory, forged)

    async def arrived() -> bool:
        return any(m["id"] == sent["id"] for m in await b.w.inbox(b.acme, b.alice))

    await eventually(arrived)
    await b.acme.relay.reply_tracker.run_once()
    same = await client.get_task(GetTaskRequest(id=task_id))
    assert same.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    # The forged envelope stays in alice's inbox, unread, for her to judge.
    assert [m["id"] for m in await b.w.inbox(b.acme, b.alice)] == [sent["id"]]


async def test_push_notifications_reach_the_clients_webhook(b: Bridge) -> None:
    received: list[tuple[str, Any]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append((request.headers.get("Authorization", ""), await request.json()))
        arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app)
    await server.start_server()
    try:
        client = await b.client(streaming=False)
        request = message("tck-input-required-p")
        config = TaskPushNotificationConfig(url=str(server.make_url("/hook")), id="p1")
        config.authentication.scheme = "Bearer"
        config.authentication.credentials = "hook-secret"
        request.configuration.task_push_notification_config.CopyFrom(config)
        [task] = await collect(client, request)
        await asyncio.wait_for(arrived.wait(), 10)
        auth, body = received[0]
        assert auth == "Bearer hook-secret"
        assert set(body) & {"task", "statusUpdate", "artifactUpdate"}
        listed = await client.get_task_push_notification_config(
            GetTaskPushNotificationConfigRequest(task_id=task.task.id, id="p1")
        )
        assert listed.url == config.url
    finally:
        await server.close()


async def test_callers_must_be_local_agents(b: Bridge) -> None:
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "GetTask",
        "params": {"id": "x"},
    }
    async with httpx.AsyncClient(timeout=10) as anon:
        none = await anon.post(b.url(), json=call, headers={"A2A-Version": "1.0"})
        assert none.status_code == 401
        assert none.headers["WWW-Authenticate"].startswith("Bearer")
        bad = await anon.post(
            b.url(), json=call, headers={"Authorization": "Bearer nope", "A2A-Version": "1.0"}
        )
        assert bad.status_code == 401
        token = new_token()
        await b.acme.relay.store.create_agent(
            "bot", "a2a", hash_token(token), "http://127.0.0.1:9", b.w.clock.now()
        )
        backed = await anon.post(
            b.url(), json=call, headers={"Authorization": f"Bearer {token}", "A2A-Version": "1.0"}
        )
        assert backed.status_code == 403
        missing = await anon.get(f"{b.acme.url}/a2a/nobody@acme.test/.well-known/agent-card.json")
        assert missing.status_code == 404
        huge = await anon.post(
            b.url(),
            content=b"{" + b" " * 400_000 + b"}",
            headers={**b.alice.auth, "Content-Type": "application/json"},
        )
        assert huge.status_code == 413


async def test_the_card_is_cached_by_etag(b: Bridge) -> None:
    first = await b.http.get(f"{b.url()}/.well-known/agent-card.json")
    assert "max-age" in first.headers["Cache-Control"]
    again = await b.http.get(
        f"{b.url()}/.well-known/agent-card.json", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert again.status_code == 304


async def test_an_anonymous_caller_acts_as_the_configured_agent(b: Bridge) -> None:
    # The face serves local addresses too; an inbox card says what any address can do.
    body = (await b.http.get(f"{b.url('alice@acme.test')}/.well-known/agent-card.json")).json()
    assert body["securityRequirements"] == [{"schemes": {"synq": {}}}]
    relay = b.acme.relay
    relay.config = relay.config.model_copy(update={"a2a": A2ASection(anonymous_agent="guest")})
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {
                "role": "ROLE_USER",
                "messageId": "tck-complete-task-anon",
                "parts": [{"text": "hi"}],
            }
        },
    }
    async with httpx.AsyncClient(timeout=30) as anon:
        missing = await anon.post(b.url(), json=call, headers={"A2A-Version": "1.0"})
        assert missing.status_code == 401  # the configured agent does not exist yet
        await b.acme.agent("guest")
        answer = await anon.post(b.url(), json=call, headers={"A2A-Version": "1.0"})
        task = answer.json()["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED"
        card = (await anon.get(f"{b.url()}/.well-known/agent-card.json")).json()
        assert "securityRequirements" not in card
    row = await relay.store.a2a_get_task(task["id"])
    assert row is not None
    assert row.owner == "guest"


async def _stored_task(b: Bridge, task_id: str, context: str) -> A2ATask:
    """A submitted task of alice's to the kit's address, written straight to acme's store (as
    another process would), its first envelope ``task_id``."""
    now = b.w.clock.now()
    first = folding.new_task(task_id, context, message("hello").message, now)
    row = store_task(
        task_id,
        address=TCK,
        context=context,
        snapshot=task_json(first),
        status_at=now,
        created=now,
        updated=now,
    )
    await b.acme.relay.store.a2a_create_task(row, task_id)
    return row


async def test_a_waiting_task_is_known_in_memory_and_a_stale_copy_only_costs_a_reread(
    b: Bridge,
) -> None:
    # The reply tracker takes the task a reply names from memory while a reader of it waits
    # in this process (TaskStore.known), instead of reading and parsing it: the store stays the
    # authority, so a copy another process has outdated fails its compare-and-set and the
    # change is made again on the task as stored.
    relay = b.acme.relay
    tasks, store = relay.task_store, relay.store
    now = b.w.clock.now()
    row = await _stored_task(b, "t-known", "c-known")
    assert tasks.known("t-known") is None  # written by no change of this task store
    async with Tail(tasks, "t-known", 0):
        # A follow-up's turn links its envelope: its reply will name that envelope.
        turn = _status(TaskState.TASK_STATE_WORKING, now)
        await tasks.change("t-known", turn, link="e-known")
        known = tasks.known("e-known")
        assert known is not None
        assert tasks.knows("e-known")
        assert (known[0].version, known[1].status.state) == (1, TaskState.TASK_STATE_WORKING)
        # Each caller gets its own copy.
        known[1].status.state = TaskState.TASK_STATE_FAILED
        again = tasks.known("e-known")
        assert again is not None
        assert again[1].status.state == TaskState.TASK_STATE_WORKING
        # Another process moves the task on: the copy in memory is stale.
        stored = await store.a2a_get_task("t-known")
        assert stored is not None
        waiting = _status(TaskState.TASK_STATE_INPUT_REQUIRED, now)(
            stored, parse_task(stored.snapshot)
        )
        assert waiting is not None
        written = await store.a2a_update_task(
            replace(stored, state="TASK_STATE_INPUT_REQUIRED", snapshot=task_json(waiting.task)),
            1,
            [event_json(e) for e in waiting.events],
        )
        assert written == "updated"
        seen: list[tuple[int, TaskState]] = []

        def complete(current: A2ATask, task: Task) -> Change | None:
            seen.append((current.version, task.status.state))
            return _status(TaskState.TASK_STATE_COMPLETED, now)(current, task)

        changed = await tasks.change("t-known", complete, current=again[0], snapshot=again[1])
        assert changed is not None
        # Tried on the stale copy, conflicted, made again on the stored task.
        assert seen == [(1, TaskState.TASK_STATE_WORKING), (2, TaskState.TASK_STATE_INPUT_REQUIRED)]
        stored = await store.a2a_get_task("t-known")
        assert stored is not None
        assert (stored.version, stored.state) == (3, "TASK_STATE_COMPLETED")
        # An ended task is read from the store (it may be purged there).
        assert tasks.known("e-known") is None
    assert "t-known" not in tasks.tails
    # A task not ended is kept while a reader waits, and no longer once its last one is gone.
    await store.a2a_create_task(replace(row, id="t-gone"), "t-gone")
    async with Tail(tasks, "t-gone", 0):
        await tasks.change("t-gone", _status(TaskState.TASK_STATE_WORKING, now), link="e-gone")
        assert tasks.knows("e-gone")
    assert not tasks.knows("e-gone")


async def test_the_tracker_saves_its_cursor_with_a_reply_or_after_cursor_lag_other_rows(
    b: Bridge,
) -> None:
    # Mail to a task's owner that answers no task (an MCP answer, a peer's message) is read
    # by the tracker too; saving the cursor for each would cost every such message a commit.
    # The cursor waits for a reply's own write, or for CURSOR_LAG rows: a restart reads at
    # most those again, which changes nothing.
    store = b.acme.relay.store
    now = b.w.clock.now()
    await store.a2a_create_task(store_task("t-lag", owner="alice"), "t-lag")
    tracker = ReplyTracker(b.acme.relay.task_store)
    start = await store.a2a_feed_cursor()
    await store.accept_many(
        [new(f"m-lag-{n}", local=["alice"], created=now) for n in range(3)], now
    )
    assert await tracker.run_once() == 3
    assert await store.a2a_feed_cursor() == start
    more = [new(f"m-lag-more-{n}", local=["alice"], created=now) for n in range(CURSOR_LAG)]
    await store.accept_many(more, now)
    assert await tracker.run_once() == CURSOR_LAG
    feed = await store.a2a_feed(start, 2 * CURSOR_LAG)
    assert len(feed) == CURSOR_LAG + 3
    assert await store.a2a_feed_cursor() == feed[-1].seq
    # A tracker that starts again reads on from the saved cursor.
    assert await ReplyTracker(b.acme.relay.task_store).run_once() == 0


def _status(state: TaskState, now: datetime) -> Callable[[A2ATask, Task], Change | None]:
    """A task change to ``state`` (the tracker's fold of a status update)."""

    def change(_row: A2ATask, task: Task) -> Change | None:
        update = TaskStatusUpdateEvent(status=TaskStatus(state=state))
        folded = folding.fold(task, update, now)
        return None if folded is None else Change(task=folded.task, events=[folded.event])

    return change


async def test_a_tasks_readers_get_its_changes_in_memory_and_the_log_stays_the_authority(
    b: Bridge,
) -> None:
    relay = b.acme.relay
    tasks, store = relay.task_store, relay.store
    now = b.w.clock.now()
    await _stored_task(b, "t-mem", "c-mem")
    deadline = asyncio.get_running_loop().time() + 10
    async with Tail(tasks, "t-mem", 0) as tail:
        assert tasks.tails["t-mem"] == {tail}
        # A change made here is handed over with the task as it left it.
        await tasks.change("t-mem", _status(TaskState.TASK_STATE_WORKING, now))
        item = await tail.next(deadline)
        assert item is not None
        assert (item[0], state(item[1])) == (1, "TASK_STATE_WORKING")
        current = tail.current()
        assert current is not None
        assert (current[0].version, current[1].status.state) == (1, TaskState.TASK_STATE_WORKING)
        # A change this process did not make (another relay process on the same store) is
        # read from the log; the hand-off no longer says how the task stands.
        stored = await store.a2a_get_task("t-mem")
        assert stored is not None
        folded = _status(TaskState.TASK_STATE_INPUT_REQUIRED, now)(
            stored, parse_task(stored.snapshot)
        )
        assert folded is not None
        written = await store.a2a_update_task(
            replace(stored, state="TASK_STATE_INPUT_REQUIRED", snapshot=task_json(folded.task)),
            1,
            [event_json(e) for e in folded.events],
        )
        assert written == "updated"
        item = await tail.next(deadline)
        assert item is not None
        assert (item[0], state(item[1])) == (2, "TASK_STATE_INPUT_REQUIRED")
        assert tail.current() is None
    assert "t-mem" not in tasks.tails
    # A reader that has not seen every version takes no hand-off: it reads the log, in order.
    async with Tail(tasks, "t-mem", 0) as late:
        await tasks.change("t-mem", _status(TaskState.TASK_STATE_COMPLETED, now))
        seen = [await late.next(deadline) for _ in range(3)]
        assert [(i[0], state(i[1])) for i in seen if i is not None] == [
            (1, "TASK_STATE_WORKING"),
            (2, "TASK_STATE_INPUT_REQUIRED"),
            (3, "TASK_STATE_COMPLETED"),
        ]
        assert late.current() is None
