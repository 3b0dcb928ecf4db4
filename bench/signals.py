"""``signals``: the emit → claim → complete round trip (SPEC.md §13) beside a plain send, in one
run, on two ``synq serve`` processes and a loopback DNS server (bench/common.py).

One round, timed from the emitter's first request to the moment it reads the result:

1. the emitter ``POST /synq/v1/signals``;
2. the worker's long poll ``GET /synq/v1/signals?wait=`` returns it;
3. the worker claims it and completes it with a body;
4. the emitter's long poll ``GET /synq/v1/inbox?wait=`` returns the result (``in_reply_to`` the
   signal), which it acks.

Locally (alice@acme emits, bob@acme works) and across the two relays (carol@acme emits, scope
``partners``, gina@globex works: the offer and the result cross through the federation queues,
the claim and the complete are signed requests to acme answered at once). Beside each, the plain
send it is judged against, in the same run: ``POST /synq/v1/messages`` → the recipient's long
poll returns it → ack (alice → bob locally, alice → gina across). Rounds run one after another,
after ``WARMUP`` untimed ones; each emitter stays within its emit rate's burst
(``relay.delivery.signals.DEFAULT_EMIT_RATE``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.common import Federation, Org, percentile

#: Untimed rounds before each measured series (connections, caches, the relays' first writes).
WARMUP: Final = 3
#: Measured rounds per series: with WARMUP, within one emitter's burst of 50 signals.
ROUNDS: Final = 40


@dataclass
class Series:
    name: str
    samples: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _json(
    http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> Any:
    async with http.request(method, url, json=body, headers=_auth(token)) as resp:
        data = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {url}: {resp.status} {data}")
        return data


async def _inbox_until(
    http: aiohttp.ClientSession, url: str, token: str, wanted: Callable[[dict[str, Any]], bool]
) -> None:
    while True:
        data = await _json(http, "GET", f"{url}/synq/v1/inbox?wait=30", token)
        for m in data["messages"]:
            await _json(http, "POST", f"{url}/synq/v1/inbox/{m['id']}/ack", token)
            if wanted(m):
                return


async def _signal_round(
    http: aiohttp.ClientSession, owner: Org, emitter: str, worker_org: Org, worker: str, topic: str
) -> None:
    body = {"topic": topic, "text": "bench", "urgency": 0.9, "lease": 30}
    if worker_org is not owner:
        body["scope"] = "partners"
    made = await _json(http, "POST", f"{owner.url}/synq/v1/signals", owner.tokens[emitter], body)
    sid = made["id"]
    wurl, wtoken = worker_org.url, worker_org.tokens[worker]
    while True:
        heard = await _json(http, "GET", f"{wurl}/synq/v1/signals?wait=30", wtoken)
        if any(s["id"] == sid for s in heard["signals"]):
            break
    claim = await _json(http, "POST", f"{wurl}/synq/v1/signals/{sid}/claim", wtoken)
    token = claim["claim"]["token"]
    await _json(
        http,
        "POST",
        f"{wurl}/synq/v1/signals/{sid}/complete",
        wtoken,
        {"token": token, "body": "ok"},
    )
    await _inbox_until(
        http, owner.url, owner.tokens[emitter], lambda m: m.get("in_reply_to") == sid
    )


async def _send_round(
    http: aiohttp.ClientSession, sender_org: Org, sender: str, to_org: Org, to: str
) -> None:
    address = f"{to}@{to_org.domain}"
    sent = await _json(
        http,
        "POST",
        f"{sender_org.url}/synq/v1/messages",
        sender_org.tokens[sender],
        {"to": [address], "body": "bench"},
    )
    await _inbox_until(http, to_org.url, to_org.tokens[to], lambda m: m["id"] == sent["id"])


async def _series(name: str, one: Callable[[], Awaitable[None]], rounds: int) -> Series:
    for _ in range(WARMUP):
        await one()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await one()
        samples.append(time.perf_counter() - started)
    return Series(name, samples)


def _partners(org: Org, partner: str) -> None:
    """``[discovery] partners`` in the relay's configuration (SPEC.md §13.6): the line
    ``synq init`` wrote (``partners = []``) replaced, so the key stays single."""
    path = org.cwd / "synq.toml"
    text = path.read_text(encoding="utf-8")
    text, found = re.subn(r"(?m)^partners = \[\]", f'partners = ["{partner}"]', text, count=1)
    if not found:
        text = text.replace("[discovery]\n", f'[discovery]\npartners = ["{partner}"]\n', 1)
    path.write_text(text, encoding="utf-8")


async def run(base: Path, rounds: int = ROUNDS) -> list[Series]:
    """The four series: plain send and signal round trip, locally and across two relays."""
    async with Federation(base) as fed:
        acme = await fed.add("acme.test", ["alice", "bob", "carol"])
        globex = await fed.add("globex.test", ["gina"])
        _partners(acme, globex.domain)
        _partners(globex, acme.domain)
        await fed.serve(acme)
        await fed.serve(globex)
        async with aiohttp.ClientSession() as http:
            bob, gina = acme.tokens["bob"], globex.tokens["gina"]
            await _json(
                http, "PUT", f"{acme.url}/synq/v1/subscriptions", bob, {"topics": ["bench.local"]}
            )
            await _json(
                http,
                "PUT",
                f"{globex.url}/synq/v1/subscriptions",
                gina,
                {"topics": ["bench.remote"]},
            )
            return [
                await _series(
                    "plain send, local",
                    lambda: _send_round(http, acme, "alice", acme, "bob"),
                    rounds,
                ),
                await _series(
                    "signal round trip, local",
                    lambda: _signal_round(http, acme, "alice", acme, "bob", "bench.local"),
                    rounds,
                ),
                await _series(
                    "plain send, relay -> relay",
                    lambda: _send_round(http, acme, "alice", globex, "gina"),
                    rounds,
                ),
                await _series(
                    "signal round trip, across relays",
                    lambda: _signal_round(http, acme, "carol", globex, "gina", "bench.remote"),
                    rounds,
                ),
            ]
