"""Real ``synq serve`` processes (SPEC.md §13.5, §13.6). A relay SIGKILLed while its agents hold
claims on its signals: after the restart, a lease still running still holds (others are refused,
its holder completes), a lease that ran out reopens the signal for another worker and fences the
first one, and each result reaches the emitter exactly once. And two organisations with a real
DNS server, through REST and the MCP face, a worker's relay killed mid-claim."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.core import records
from relay.dnsserver import DNSServer
from tests import pg
from tests.conftest import Agent
from tests.mcpenv import mcp_client
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


@pytest.mark.timeout(120)
async def test_two_organisations_real_processes_rest_and_mcp(tmp_path: Path) -> None:
    """Two ``synq serve`` processes and a real DNS server: alice@acme emits to partners; bob at
    acme and gina at globex hear it by threshold, hank at globex (threshold above it) does not;
    gina claims through globex's MCP face, then globex is SIGKILLed with the claim held; the
    lease lapses, bob claims and completes; gina's late completion is refused; alice's inbox
    holds one result, bob's."""
    async with DNSServer(host="127.0.0.1", zones=["test"]) as dns, aiohttp.ClientSession() as http:
        served: dict[str, Served] = {}
        tokens: dict[str, str] = {}
        for domain, partner, agents in (
            ("acme.test", "globex.test", ("alice", "bob")),
            ("globex.test", "acme.test", ("gina", "hank")),
        ):
            cwd = tmp_path / domain
            cwd.mkdir()
            await synq(
                "init", "--domain", domain, "--dir", str(cwd), "--listen", "127.0.0.1:0",
                "--nameserver", dns.address, "--allow-private-addresses", cwd=cwd,
            )  # fmt: skip
            config = cwd / "synq.toml"
            text = config.read_text("utf-8")
            assert "\npartners = []" in text
            config.write_text(
                text.replace("\npartners = []", f'\npartners = ["{partner}"]', 1), "utf-8"
            )
            for name in agents:
                tokens[name] = (await synq("agent", "add", name, cwd=cwd))["token"]
            for rec in await synq("dns", cwd=cwd):
                if "._synqkey." in rec["name"]:
                    dns.set_txt(rec["name"].rstrip("."), [rec["value"]], ttl=60)
            served[domain] = Served(cwd)
            url = await served[domain].start()
            dns.set_txt(
                records.relay_record_name(domain), [records.RelayRecord(url).to_txt()], ttl=60
            )
        acme, globex = served["acme.test"].url, served["globex.test"].url
        try:
            for url, name, threshold in (
                (acme, "bob", 0.5),
                (globex, "gina", 0.5),
                (globex, "hank", 0.95),
            ):
                status, _ = await call(
                    http,
                    "PUT",
                    f"{url}/synq/v1/subscriptions",
                    tokens[name],
                    {"topics": ["invoice.*"], "threshold": threshold},
                )
                assert status == 200
            body = {"topic": "invoice.overdue", "urgency": 0.9, "lease": 5, "scope": "partners"}
            status, made = await call(
                http, "POST", f"{acme}/synq/v1/signals", tokens["alice"], body
            )
            assert status == 201
            sid = made["id"]

            _, heard = await call(http, "GET", f"{acme}/synq/v1/signals", tokens["bob"])
            assert [s["id"] for s in heard["signals"]] == [sid]
            _, heard = await call(http, "GET", f"{globex}/synq/v1/signals?wait=20", tokens["gina"])
            assert [s["id"] for s in heard["signals"]] == [sid]
            _, heard = await call(http, "GET", f"{globex}/synq/v1/signals", tokens["hank"])
            assert heard["signals"] == []

            gina = Agent("gina", "gina@globex.test", tokens["gina"])
            async with mcp_client(f"{globex}/mcp", gina) as client:
                claimed = await client.call_tool("claim_signal", {"id": sid})
                assert not claimed.is_error
                token = claimed.structured_content["claim"]["token"]
            status, err = await call(
                http, "POST", f"{acme}/synq/v1/signals/{sid}/claim", tokens["bob"]
            )
            assert (status, err["error"]["code"]) == (409, "already_claimed")

            # gina's relay dies with the claim held: nobody heartbeats; the lease lapses.
            served["globex.test"].kill()
            await served["globex.test"].wait_killed()
            _, heard = await call(http, "GET", f"{acme}/synq/v1/signals?wait=30", tokens["bob"])
            assert [s["id"] for s in heard["signals"]] == [sid]
            status, got = await call(
                http, "POST", f"{acme}/synq/v1/signals/{sid}/claim", tokens["bob"]
            )
            assert status == 200
            status, _ = await call(
                http,
                "POST",
                f"{acme}/synq/v1/signals/{sid}/complete",
                tokens["bob"],
                {"token": got["claim"]["token"], "body": "done by bob"},
            )
            assert status == 200

            # globex comes back; gina's late completion is fenced off.
            served["globex.test"] = Served(tmp_path / "globex.test")
            url = await served["globex.test"].start()
            dns.set_txt(
                records.relay_record_name("globex.test"),
                [records.RelayRecord(url).to_txt()],
                ttl=60,
            )
            async with mcp_client(f"{url}/mcp", gina) as client:
                late = await client.call_tool(
                    "complete_signal", {"id": sid, "token": token, "body": "late"}
                )
                assert late.is_error
            status, shown = await call(
                http, "GET", f"{acme}/synq/v1/signals/{sid}", tokens["alice"]
            )
            assert [(h["holder"], h.get("outcome")) for h in shown["history"]] == [
                ("gina@globex.test", "lapsed"),
                ("bob@acme.test", "done"),
            ]
            _, mail = await call(http, "GET", f"{acme}/synq/v1/inbox?all=1", tokens["alice"])
            assert [(m["from"], m["body"]) for m in mail["messages"]] == [
                ("bob@acme.test", "done by bob")
            ]
        finally:
            for proc in served.values():
                await proc.stop()
