"""A real ``synq serve`` SIGKILLed while its agents hold claims on its signals (SPEC.md §13.5):
after the restart, a lease still running still holds (others are refused, its holder completes),
a lease that ran out reopens the signal for another worker and fences the first one, and each
result reaches the emitter exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import pg
from tests.procs import Served, synq

pytestmark = pytest.mark.slow


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {token}"}}
    if body is not None:
        kwargs["json"] = body
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.json()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", pg.BACKENDS)
async def test_claims_survive_sigkill_and_leases_run_out_as_promised(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    store = ["--store", pg.database_url(request)] if backend == "postgresql" else []
    await synq(
        "init", "--domain", "acme.test", "--dir", str(tmp_path), "--listen", "127.0.0.1:0",
        *store, cwd=tmp_path,
    )  # fmt: skip
    alice, bob, carol = [
        (await synq("agent", "add", name, cwd=tmp_path))["token"]
        for name in ("alice", "bob", "carol")
    ]
    relay = Served(tmp_path)
    url = await relay.start()
    api = f"{url}/synq/v1"
    async with aiohttp.ClientSession() as http:
        await call(http, "PUT", f"{api}/subscriptions", carol, {"topics": ["job.*"]})
        signal = {"topic": "job.long", "text": "long", "urgency": 0.9}
        _, long = await call(http, "POST", f"{api}/signals", alice, {**signal, "lease": 600})
        signal = {"topic": "job.short", "text": "short", "urgency": 0.9}
        _, short = await call(http, "POST", f"{api}/signals", alice, {**signal, "lease": 5})
        _, got = await call(http, "POST", f"{api}/signals/{long['id']}/claim", bob)
        long_token = got["claim"]["token"]
        _, got = await call(http, "POST", f"{api}/signals/{short['id']}/claim", bob)
        short_token = got["claim"]["token"]

        relay.kill()
        await relay.wait_killed()
        relay = Served(tmp_path)
        url = await relay.start()
        api = f"{url}/synq/v1"
        try:
            # The long lease holds across the crash.
            status, err = await call(http, "POST", f"{api}/signals/{long['id']}/claim", carol)
            assert (status, err["error"]["code"]) == (409, "already_claimed")
            status, _ = await call(
                http, "POST", f"{api}/signals/{long['id']}/heartbeat", bob, {"token": long_token}
            )
            assert status == 200
            status, _ = await call(
                http,
                "POST",
                f"{api}/signals/{long['id']}/complete",
                bob,
                {"token": long_token, "body": "long done"},
            )
            assert status == 200

            # The short one runs out: carol's feed offers it once the lease has lapsed.
            status, feed = await call(http, "GET", f"{api}/signals?wait=30", carol)
            assert status == 200
            assert [s["id"] for s in feed["signals"]] == [short["id"]]
            status, got = await call(http, "POST", f"{api}/signals/{short['id']}/claim", carol)
            assert status == 200
            status, err = await call(
                http,
                "POST",
                f"{api}/signals/{short['id']}/complete",
                bob,
                {"token": short_token, "body": "late"},
            )
            assert (status, err["error"]["code"]) == (409, "stale_claim")
            status, _ = await call(
                http,
                "POST",
                f"{api}/signals/{short['id']}/complete",
                carol,
                {"token": got["claim"]["token"], "body": "short done"},
            )
            assert status == 200

            status, shown = await call(http, "GET", f"{api}/signals/{short['id']}", alice)
            assert [(h["holder"], h.get("outcome")) for h in shown["history"]] == [
                ("bob@acme.test", "lapsed"),
                ("carol@acme.test", "done"),
            ]
            status, mail = await call(http, "GET", f"{api}/inbox?all=1", alice)
            results = sorted((m["in_reply_to"], m["from"], m["body"]) for m in mail["messages"])
            assert results == sorted(
                [
                    (long["id"], "bob@acme.test", "long done"),
                    (short["id"], "carol@acme.test", "short done"),
                ]
            )
        finally:
            await relay.stop()
