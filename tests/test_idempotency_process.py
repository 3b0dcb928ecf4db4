"""A real ``synq serve`` SIGKILLed after it committed a send and before its client heard the
answer (SPEC.md §6.2): the client's retry under the same ``Idempotency-Key`` gets the first id,
and the recipient's inbox holds the message once.

A proxy in the test process stands between the client and the relay, so the test acts at the
exact moment that matters: it forwards the request, reads the relay's ``202`` — the envelope and
its key are committed — then kills the relay and closes the client's connection without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import pg
from tests.procs import Served, synq

pytestmark = pytest.mark.slow

#: What the proxy does with one request: (method, path, headers, body).
Hook = Callable[[str, str, dict[str, str], bytes], Awaitable[None]]


@contextlib.asynccontextmanager
async def silent_proxy(hook: Hook) -> AsyncIterator[str]:
    """A loopback HTTP proxy that hands each request to ``hook`` and then closes the client's
    connection without answering, whatever the hook did: a relay that died before its answer
    left, as the client sees it. Yields the proxy's URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.split("\r\n")
            headers: dict[str, str] = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            method, path, _version = request_line.split(" ", 2)
            await hook(method, path, headers, body)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def inbox_ids(http: aiohttp.ClientSession, url: str, token: str) -> list[str]:
    async with http.get(
        f"{url}/synq/v1/inbox",
        params={"all": "1", "limit": "500"},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200
        return [m["id"] for m in (await resp.json())["messages"]]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", pg.BACKENDS)
async def test_a_send_committed_before_a_sigkill_is_answered_once_on_retry(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    store = ["--store", pg.database_url(request)] if backend == "postgresql" else []
    await synq(
        "init", "--domain", "acme.test", "--dir", str(tmp_path), "--listen", "127.0.0.1:0",
        *store, cwd=tmp_path,
    )  # fmt: skip
    alice = await synq("agent", "add", "alice", cwd=tmp_path)
    bob = await synq("agent", "add", "bob", cwd=tmp_path)
    relay = Served(tmp_path)
    target = {"url": await relay.start()}
    heard: list[tuple[int, Any]] = []

    # The client: a fresh connection per request, so nothing is retried behind the test's back.
    client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    async with aiohttp.ClientSession() as http, client:

        async def commit_then_die(
            method: str, path: str, headers: dict[str, str], body: bytes
        ) -> None:
            forwarded = {
                name: headers[name.lower()]
                for name in ("Authorization", "Content-Type", "Idempotency-Key")
                if name.lower() in headers
            }
            async with http.request(
                method, f"{target['url']}{path}", data=body, headers=forwarded
            ) as resp:
                heard.append((resp.status, await resp.json()))
            relay.kill()
            await relay.wait_killed()

        auth = {"Authorization": f"Bearer {alice['token']}"}
        single = {"to": ["bob@acme.test"], "body": "exactly once"}
        batch = {
            "messages": [
                {"to": ["bob@acme.test"], "body": "batch one", "idempotency_key": "b-1"},
                {"to": ["bob@acme.test"], "body": "batch two", "idempotency_key": "b-2"},
            ]
        }
        try:
            async with silent_proxy(commit_then_die) as proxy:
                # One message: the relay commits and answers 202, dies; the client hears nothing.
                with pytest.raises(aiohttp.ClientError):
                    await client.post(
                        f"{proxy}/synq/v1/messages",
                        json=single,
                        headers={**auth, "Idempotency-Key": '"once-1"'},
                    )
                [(status, first)] = heard
                assert status == 202

                target["url"] = await relay.start()
                async with client.post(
                    f"{target['url']}/synq/v1/messages",
                    json=single,
                    headers={**auth, "Idempotency-Key": '"once-1"'},
                ) as resp:
                    assert resp.status == 202
                    assert await resp.json() == first
                    assert resp.headers["Location"] == f"/synq/v1/messages/{first['id']}"
                assert await inbox_ids(http, target["url"], bob["token"]) == [first["id"]]

                # A batch, each message under its own key: the same again.
                with pytest.raises(aiohttp.ClientError):
                    await client.post(f"{proxy}/synq/v1/messages/batch", json=batch, headers=auth)
                status, answer = heard[1]
                assert status == 202
                ids = [r["id"] for r in answer["results"]]

                target["url"] = await relay.start()
                async with client.post(
                    f"{target['url']}/synq/v1/messages/batch", json=batch, headers=auth
                ) as resp:
                    assert resp.status == 202
                    assert await resp.json() == answer
                got = await inbox_ids(http, target["url"], bob["token"])
                assert got == [first["id"], *ids]
        finally:
            await relay.stop()
