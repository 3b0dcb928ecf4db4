"""The console in a real browser (SPEC.md §14.2): Debian's Chromium driven by Playwright.

Two relays on loopback (tests/fedenv.py). globex is stopped; alice@acme writes to bob@globex;
the console shows the message queued for globex.test; a page on another loopback origin posts
a form to the delete action and is refused, nothing deleted; globex comes back, the operator
presses Flush, and the console shows the recipient delivered (globex's receipt, SPEC.md §9.4).
Before signing in, the console answers 401 and sends the page to the login form.

The queue is driven by hand (``run_once``) as in every fedenv test; the page is waited on by
its DOM, never by sleeping. Screenshots go to ``$SYNQ_TEST_ARTIFACTS`` (default
``tests/artifacts/``). Without /usr/bin/chromium the test is skipped; CI installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.admintoken import new_admin_token
from relay.server.admin import CONSOLE, build_admin_app
from relay.server.console.state import Console
from tests.fedenv import World, world

CHROMIUM = "/usr/bin/chromium"
#: Chromium without the services a test has no use for (and which would reach the network).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None,
        reason=f"no Chromium at {CHROMIUM} (CI installs Debian's chromium package)",
    ),
]


def artifacts_dir() -> Path:
    path = Path(os.environ.get("SYNQ_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


async def cross_site_page(target: str) -> TestServer:
    """Another origin on loopback (the same host, another port: the *same site* as far as
    cookies go) whose page posts a form to the console's delete action as soon as it loads."""
    html = f"""<!doctype html><html><body>
<form method="post" action="{target}">
  <input name="all" value="1"><input name="csrf_token" value="guessed">
</form>
<script>document.forms[0].submit()</script>
</body></html>"""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.timeout(180)
async def test_the_console_shows_a_queued_message_and_flush_delivers_it(tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.async_api", reason="playwright not installed")
    shots = artifacts_dir()
    async with world(tmp_path / "orgs", "acme.test", "globex.test") as w:
        acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
        alice, bob = await acme.agent("alice"), await globex.agent("bob")
        token = new_admin_token(acme.relay.config.admin_token_path, replace=False)
        admin = TestServer(build_admin_app(acme.relay), host="127.0.0.1")
        await admin.start_server()
        # The charts' samples come every 10 s; the test takes them itself at each step.
        state = admin.app[CONSOLE]
        await state.sample()
        base = str(admin.make_url("")).rstrip("/")
        evil = await cross_site_page(f"{base}/console/api/queue/delete")
        try:
            # The partner is down: the message waits in acme's queue after a failed attempt.
            await globex.stop()
            sent = await w.send(
                acme, alice, {"to": [bob.address], "body": "hello", "notify": ["success"]}
            )
            id = sent["id"]
            await acme.relay.sender.run_once()
            await state.sample()
            [row] = await acme.relay.store.list_queue()
            assert (row.id, row.attempts) == (id, 1)

            async with playwright_api.async_playwright() as p:
                context = await p.chromium.launch_persistent_context(
                    str(tmp_path / "chromium-profile"),  # a fresh profile every run
                    executable_path=CHROMIUM,
                    headless=True,
                    args=CHROMIUM_ARGS,
                )
                try:
                    await run_in_browser(context, base, token, id, shots, evil, w, state)
                finally:
                    await context.close()
        finally:
            await evil.close()
            await admin.close()

    for name in ("login.png", "queued.png", "cross-site-refused.png", "delivered.png"):
        data = (shots / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 1000, name


async def run_in_browser(
    context: Any,
    base: str,
    token: str,
    id: str,
    shots: Path,
    evil: TestServer,
    w: World,
    state: Console,
) -> None:
    acme, globex, clock = w.orgs["acme.test"], w.orgs["globex.test"], w.clock
    page = await context.new_page()

    # Without the token: the API answers 401, the page goes to the login form.
    refused = await page.request.get(f"{base}/console/api/snapshot")
    assert refused.status == 401
    await page.goto(f"{base}/console")
    assert page.url == f"{base}/console/login"
    await page.fill("#token", token)
    await page.screenshot(path=str(shots / "login.png"))
    await page.click("#login button[type=submit]")
    await page.wait_for_url(f"{base}/console")

    # An open signal of alice's shows in the signals panel, live (SPEC.md §13).
    alice = acme.agents["alice"]
    async with w.http.post(
        f"{acme.url}/synq/v1/signals",
        json={"topic": "invoice.overdue", "text": "chase invoice 7", "urgency": 0.8},
        headers=alice.auth,
    ) as resp:
        assert resp.status == 201
        signal_id = (await resp.json())["id"]
    signal = page.locator(f'#signals tbody tr[data-id="{signal_id}"]')
    await signal.locator(".badge.open").wait_for()
    assert "alice@acme.test" in await signal.inner_text()

    # Queued for globex.test, with the failed attempt's code, shown live.
    destination = page.locator('#destinations tbody tr[data-domain="globex.test"]')
    await destination.locator("td.depth", has_text="1").wait_for()
    await page.locator(f'#queue tbody tr[data-id="{id}"]').wait_for()
    await page.locator("#live.on").wait_for()
    await page.screenshot(path=str(shots / "queued.png"), full_page=True)

    # A page on another loopback origin posts to the delete action: refused, nothing deleted.
    cross = await context.new_page()
    async with cross.expect_response(f"{base}/console/api/queue/delete") as answer:
        await cross.goto(str(evil.make_url("/")))
    assert (await answer.value).status == 403
    await cross.screenshot(path=str(shots / "cross-site-refused.png"))
    await cross.close()
    assert [q.id for q in await acme.relay.store.list_queue()] == [id]

    # The partner returns a minute later (past acme's memory of the failed look-up of its
    # document, which says whether it sends receipts); the operator presses Flush; the queue
    # runs; the receipt comes back.
    await globex.start()
    clock.advance(60)
    await page.fill("#q", id)
    await page.press("#q", "Enter")
    recipient = page.locator('#detail-recipients tbody tr[data-recipient="bob@globex.test"]')
    await recipient.locator(".badge.queued").wait_for()
    await destination.locator("button.flush").click()
    await page.locator("#notice", has_text="flushed: 1").wait_for()
    assert await acme.relay.sender.run_once() == 1  # sent to globex, which takes custody
    assert await globex.relay.sender.run_once() == 1  # globex's receipt back to acme
    await state.sample()
    await recipient.locator(".badge.delivered").wait_for()
    await page.locator('#detail-hops tbody tr[data-event="flushed"]').first.wait_for()
    await page.locator("#destinations tbody td.empty").wait_for()
    await page.locator("#chart-depth polyline").wait_for()
    await page.screenshot(path=str(shots / "delivered.png"), full_page=True)
