"""Reissuing an agent's bearer token (``synq agent token NAME --rotate``): the store's part, on
every backend. The command itself is tested in tests/test_cli.py, over HTTP against a running
relay in tests/test_process.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.core.errors import Conflict
from relay.core.ids import hash_token
from relay.store import Store, open_store
from tests import pg
from tests.test_store import HERE, T0, new


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'relay.db'}"
    else:
        url = pg.database_url(request)
    opened = await open_store(url, domain=HERE)
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_new_token_hash_replaces_the_old_and_the_inbox_stays(store: Store) -> None:
    bob = await store.create_agent("bob", "inbox", hash_token("old"), None, T0)
    await store.create_agent("carol", "inbox", hash_token("carols"), None, T0)
    await store.accept(new("e1", local=["bob"]), T0)
    assert await store.set_agent_token("bob", hash_token("new")) is True
    assert await store.agent_for_token(hash_token("old")) is None
    assert await store.agent_for_token(hash_token("new")) == bob
    assert [i.id for i in await store.inbox("bob", limit=10)] == ["e1"]
    # A hash names one agent at most; nothing changes when it is taken.
    with pytest.raises(Conflict):
        await store.set_agent_token("bob", hash_token("carols"))
    assert await store.agent_for_token(hash_token("new")) == bob
    assert await store.set_agent_token("ghost", hash_token("x")) is False
