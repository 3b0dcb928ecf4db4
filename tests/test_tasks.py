"""The A2A face's task services (relay/tasks/): the parts that need no server.

The task store, the reply tracker and the pushes run end to end, with real relays, agents and
webhooks, in test_a2a_bridge.py; here are their pure pieces (webhook configs) and the wake-up
the tracker sleeps on, against a real notifier.
"""

from __future__ import annotations

import re

import pytest
from a2a.types import AuthenticationInfo, StreamResponse, TaskPushNotificationConfig
from a2a.utils import errors as a2a

from relay.discovery.ssrf import AddressPolicy
from relay.store.base import Notifier, inbox_channel
from relay.tasks.push import PushSender, push_configs, push_json
from relay.tasks.store import OwnerInboxes

PUBLIC_ONLY = AddressPolicy.build(allow_private=False)


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        ("https://hooks.example/a2a", None),
        ("https://hooks.example:8443/a2a?task=1", None),
        ("http://hooks.example/a2a", "only https URLs"),
        ("ftp://hooks.example/a2a", "not an http(s) URL"),
        ("https:///a2a", "not an http(s) URL"),
        ("hooks.example/a2a", "not an http(s) URL"),
        ("https://127.0.0.1/a2a", "address 127.0.0.1 is not public"),
        ("https://[::1]/a2a", "address ::1 is not public"),
        ("https://10.1.2.3/a2a", "address 10.1.2.3 is not public"),
        ("https://user:secret@hooks.example/a2a", "URLs with user information are refused"),
    ],
)
def test_a_webhook_is_checked_before_it_is_stored(url: str, refusal: str | None) -> None:
    # A webhook is a URL a client chose: the SSRF rules of partners' documents apply
    # (SPEC.md §7.6), so a client cannot make the relay post into its own network.
    sender = PushSender(check_url=PUBLIC_ONLY.check_url)
    config = TaskPushNotificationConfig(url=url, token="t")
    if refusal is None:
        normal = sender.normalise("task-1", config)
        assert (normal.task_id, normal.id, normal.url, normal.token) == (
            "task-1",
            "task-1",
            url,
            "t",
        )
    else:
        with pytest.raises(a2a.InvalidParamsError, match=re.escape(refusal)) as info:
            sender.normalise("task-1", config)
        assert info.value.message.startswith("push notification URL refused: ")
        assert "secret" not in info.value.message


def test_a_webhook_keeps_its_own_id() -> None:
    config = TaskPushNotificationConfig(id="mine", task_id="other", url="https://hooks.example/")
    normal = PushSender().normalise("task-1", config)
    assert (normal.id, normal.task_id) == ("mine", "task-1")


def test_webhook_configs_round_trip_through_their_stored_form() -> None:
    configs = [
        TaskPushNotificationConfig(id="a", task_id="t", url="https://a.example/", token="x"),
        TaskPushNotificationConfig(
            id="b",
            task_id="t",
            url="https://b.example/hook",
            authentication=AuthenticationInfo(scheme="Bearer", credentials="c"),
        ),
    ]
    assert push_configs(push_json(configs)) == configs
    assert push_configs(push_json([])) == []


async def test_nothing_is_pushed_without_webhooks_or_a_session() -> None:
    event = StreamResponse()
    hook = push_json([TaskPushNotificationConfig(id="a", url="https://a.example/")])
    sender = PushSender()  # no session: nothing can be posted
    sender.send(hook, [event])
    sender.send("[]", [event])
    await sender.close()


async def test_the_tracker_wakes_for_mail_to_any_task_owner() -> None:
    notifier = Notifier()
    owners = OwnerInboxes(notifier)
    owners.add("alice")
    owners.add("alice")  # once per owner, however many tasks
    owners.add("bob")
    assert notifier.listener_count("inbox:") == 2
    notifier.notify([inbox_channel("carol")])
    assert not await owners.wake.wait(0)
    notifier.notify([inbox_channel("bob")])
    assert await owners.wake.wait(0)
    owners.clear()
    assert notifier.listener_count("inbox:") == 0
    notifier.notify([inbox_channel("alice")])
    assert not await owners.wake.wait(0)
