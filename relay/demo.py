"""``synq demo``: two organisations' relays federating on loopback, shown step by step.

Everything is real and local: a DNS server on 127.0.0.1 publishing both relays' records, two
relays (``acme.test`` and ``globex.test``) on their own loopback ports with their own SQLite
stores, agents using the HTTP API with bearer tokens, and the relays' federation queues running
in the background. Nothing leaves the machine; the temporary directory is removed at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from relay.config import Config, DiscoverySection, RelaySection, StoreSection
from relay.core import records
from relay.core.clock import SystemClock
from relay.core.ids import hash_token, new_token
from relay.core.jws import SigningKey, b64url_decode
from relay.dnsserver import DNSServer
from relay.keyring import KeyEntry, selector_for, write_key
from relay.runtime import Relay
from relay.server.app import build_app

#: How long the demo waits for any one step before declaring it failed.
STEP_TIMEOUT = 30.0


class DemoFailed(Exception):
    pass


@dataclass
class Side:
    domain: str
    relay: Relay
    runner: web.AppRunner
    url: str
    key: SigningKey


class Demo:
    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.step_no = 0

    def step(self, title: str) -> None:
        self.step_no += 1
        self.say(f"\n[{self.step_no}] {title}")

    def show(self, text: str) -> None:
        for line in text.splitlines():
            self.say(f"    {line}")

    async def start_side(self, base: Path, domain: str, dns: DNSServer) -> Side:
        directory = base / domain
        now = SystemClock().now()
        key = SigningKey.generate(selector_for(now))
        write_key(directory / "keys", KeyEntry(key=key, created=now, activates=now, retires=None))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        config = Config(
            relay=RelaySection(domain=domain, listen=f"127.0.0.1:{port}", public_url=url),
            store=StoreSection(url="sqlite:///synq.db"),
            discovery=DiscoverySection(
                nameservers=[dns.address], allow_private_addresses=True, timeout=2.0
            ),
            base_dir=directory,
        )
        relay = await Relay.open(config)
        runner = web.AppRunner(
            build_app(relay, own_relay=True), handler_cancellation=True, access_log=None
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        return Side(domain, relay, runner, url, key)

    async def agent(self, side: Side, name: str) -> str:
        token = new_token()
        await side.relay.store.create_agent(
            name, "inbox", hash_token(token), None, side.relay.clock.now()
        )
        return token

    async def run(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="synq-demo-"))
        sides: list[Side] = []
        try:
            async with (
                DNSServer(host="127.0.0.1", zones=["test"]) as dns,
                aiohttp.ClientSession() as http,
            ):
                self.step("Start a DNS server and two relays on loopback")
                acme = await self.start_side(base, "acme.test", dns)
                sides.append(acme)
                globex = await self.start_side(base, "globex.test", dns)
                sides.append(globex)
                self.show(f"DNS server        udp+tcp {dns.address}")
                self.show(f"acme.test relay   {acme.url}")
                self.show(f"globex.test relay {globex.url}")

                self.step(
                    "Each organisation publishes its relay and signing key in DNS (DKIM-style)"
                )
                for side in (acme, globex):
                    relay_rec = records.RelayRecord(side.url).to_txt()
                    key_rec = records.KeyRecord(side.key.public_key).to_txt()
                    dns.set_txt(records.relay_record_name(side.domain), [relay_rec], ttl=300)
                    dns.set_txt(
                        records.key_record_name(side.key.selector, side.domain), [key_rec], ttl=300
                    )
                    self.show(f'{records.relay_record_name(side.domain)}. TXT "{relay_rec}"')
                    self.show(
                        f'{records.key_record_name(side.key.selector, side.domain)}. TXT "{key_rec}"'
                    )

                self.step("Register agents: alice@acme.test and bob@globex.test")
                alice = await self.agent(acme, "alice")
                bob = await self.agent(globex, "bob")
                self.show("each gets a persistent address and a bearer token for the HTTP API")

                self.step("Discovery: acme's relay looks up globex.test in DNS")
                url = await acme.relay.discovery.relay_url("globex.test")
                key = await acme.relay.discovery.public_key("globex.test", globex.key.selector)
                self.show(f"relay for globex.test: {url}")
                self.show(f"key {key.selector} for globex.test: {key.b64url}")

                self.step("alice sends bob a message: signed, queued durably, answered 202")
                sent = await self.api(
                    http,
                    "POST",
                    f"{acme.url}/synq/v1/messages",
                    alice,
                    {
                        "to": ["bob@globex.test"],
                        "content_type": "text/plain",
                        "body": "Hello Bob, can your pricing agent quote 40 units?",
                        "thread": "quote-40",
                    },
                )
                self.show(f"202 {json.dumps(sent)}")

                self.step("acme's queue delivers it to globex in a signed transaction")
                await self.wait_status(http, acme, alice, sent["id"], "bob@globex.test", "sent")
                status = await self.api(
                    http, "GET", f"{acme.url}/synq/v1/messages/{sent['id']}", alice
                )
                rec = status["recipients"]["bob@globex.test"]
                self.show(
                    f"bob@globex.test: {rec['state']} {rec.get('code', '')} after {rec['attempts']} attempt(s)"
                )

                self.step(
                    "bob reads his inbox at globex (long poll); globex verified acme's signature"
                )
                box = await self.api(http, "GET", f"{globex.url}/synq/v1/inbox?wait=10", bob)
                msg = box["messages"][0]
                self.show(f"from {msg['from']}: {msg['body']!r} (thread {msg['thread']})")
                await self.api(http, "POST", f"{globex.url}/synq/v1/inbox/{msg['id']}/ack", bob)
                self.show("acked")

                self.step("bob replies; the reply crosses back to alice's inbox")
                reply = await self.api(
                    http,
                    "POST",
                    f"{globex.url}/synq/v1/messages",
                    bob,
                    {
                        "to": ["alice@acme.test"],
                        "body": "Quote: 40 units at 12.50 each, valid 7 days.",
                        "thread": "quote-40",
                        "in_reply_to": sent["id"],
                    },
                )
                box = await self.api(http, "GET", f"{acme.url}/synq/v1/inbox?wait=10", alice)
                back = box["messages"][0]
                if back["id"] != reply["id"]:
                    raise DemoFailed("alice did not receive bob's reply")
                self.show(
                    f"from {back['from']}: {back['body']!r} (in reply to {back['in_reply_to']})"
                )
                token = await self.raw_token(acme, back["id"])
                self.show(f"signed by globex.test, JWS header {token}")
                await self.api(http, "POST", f"{acme.url}/synq/v1/inbox/{back['id']}/ack", alice)

                self.step(
                    "alice writes to an address that does not exist: globex refuses, acme bounces"
                )
                lost = await self.api(
                    http,
                    "POST",
                    f"{acme.url}/synq/v1/messages",
                    alice,
                    {
                        "to": ["carol@globex.test"],
                        "body": "Are you there?",
                    },
                )
                await self.wait_status(
                    http, acme, alice, lost["id"], "carol@globex.test", "bounced"
                )
                box = await self.api(http, "GET", f"{acme.url}/synq/v1/inbox?wait=10", alice)
                dsn = box["messages"][0]
                if dsn["kind"] != "dsn":
                    raise DemoFailed("expected a delivery-status envelope")
                self.show(f"{dsn['kind']} from {dsn['from']} about {dsn['in_reply_to']}:")
                self.show(json.dumps(dsn["body"], indent=2))
                self.say("\nEvery step worked.")
        finally:
            for side in sides:
                await side.runner.cleanup()
            shutil.rmtree(base, ignore_errors=True)

    async def raw_token(self, side: Side, envelope_id: str) -> str:
        items = await side.relay.mailbox.read("alice", limit=50, include_acked=True)
        for item in items:
            if item.id == envelope_id:
                return b64url_decode(item.token.split(".")[0]).decode()
        raise DemoFailed("message not in the store")

    async def api(
        self, http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
    ) -> Any:
        async with http.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            data = await resp.json()
            if resp.status >= 400:
                raise DemoFailed(f"{method} {url}: {resp.status} {data}")
            return data

    async def wait_status(
        self,
        http: aiohttp.ClientSession,
        side: Side,
        token: str,
        id: str,
        recipient: str,
        state: str,
    ) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            status = await self.api(http, "GET", f"{side.url}/synq/v1/messages/{id}", token)
            if status["recipients"][recipient]["state"] == state:
                return
            # The queue works in the background; look again shortly.
            await asyncio.sleep(0.05)
        raise DemoFailed(f"{recipient} did not reach state {state!r} in {STEP_TIMEOUT:.0f} s")


def run_demo(say: Callable[[str], None] = print) -> int:
    # The steps tell the story; the relays' own INFO lines would interleave with them.
    logging.getLogger().setLevel(logging.WARNING)
    try:
        asyncio.run(Demo(say).run())
    except DemoFailed as exc:
        say(f"\ndemo failed: {exc}")
        return 1
    return 0
