"""MCP ⇄ envelope translation (adapters/mcp/translate.py) as tables: no servers."""

from __future__ import annotations

from typing import Any

import pytest
from a2a.types import StreamResponse
from google.protobuf import json_format

from adapters.mcp import translate as t
from relay.core import status as st

CALL = t.ToolCall("lookup", {"q": "x"}, task_id="env-1", context_id="ctx-1")
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/mcp-call+json", {"tool": "a", "arguments": {"x": 1}}, ("a", {"x": 1})),
        ("application/mcp-call+json", {"tool": "a"}, ("a", {})),
        ("application/mcp-call+json", {"tool": "a", "arguments": None}, ("a", {})),
        (
            "application/a2a+json",
            {"messageId": "m", "role": "ROLE_USER",
             "parts": [{"text": "please"}, {"data": {"tool": "b", "arguments": {"y": [2]}}}]},
            ("b", {"y": [2]}),
        ),
    ],
)  # fmt: skip
def test_calls_in(content_type: str, body: Any, expected: tuple[str, dict[str, Any]]) -> None:
    call = t.parse_call(content_type, body, "env-9", None)
    assert (call.tool, call.arguments) == expected
    assert (call.task_id, call.context_id) == ("env-9", "env-9")


@pytest.mark.parametrize(
    ("content_type", "body", "reason"),
    [
        ("text/plain", "run lookup", "an MCP agent takes"),
        ("application/mcp-call+json", ["lookup"], "must be an object"),
        ("application/mcp-call+json", {"tool": ""}, "tool must be a non-empty string"),
        ("application/mcp-call+json", {"tool": "a", "arguments": [1]}, "arguments must be an object"),
        ("application/a2a+json", {"parts": [{"text": "hi"}]}, "exactly one data part"),
        ("application/a2a+json", {"parts": [{"data": {"tool": "a"}}, {"data": {"tool": "b"}}]},
         "exactly one data part"),
        ("application/a2a+json", "not a message", "A2A Message with parts"),
    ],
)  # fmt: skip
def test_calls_refused_with_5_6_0(content_type: str, body: Any, reason: str) -> None:
    with pytest.raises(t.CallRefused) as info:
        t.parse_call(content_type, body, "env-9", "th")
    assert info.value.status == st.MEDIA_ERROR
    assert reason in info.value.reason


BLOCKS: list[dict[str, Any]] = [
    {"type": "text", "text": "plain"},
    {"type": "text", "text": "noted", "annotations": {"audience": ["user"], "priority": 0.5}},
    {"type": "image", "data": PNG, "mimeType": "image/png"},
    {"type": "audio", "data": "UklGRiYAAABXQVZF", "mimeType": "audio/wav", "_meta": {"k": 1}},
    {"type": "resource",
     "resource": {"uri": "test://doc", "mimeType": "text/plain", "text": "embedded"}},
    {"type": "resource", "resource": {"uri": "test://bin", "blob": PNG}},
    {"type": "resource_link", "uri": "file:///r.txt", "name": "r.txt", "mimeType": "text/plain",
     "description": "a file"},
    {"type": "hologram", "frames": 3},
]  # fmt: skip


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: str(b["type"]))
def test_every_content_block_survives_the_round_trip(block: dict[str, Any]) -> None:
    result = {"content": [block]}
    body = t.result_body(CALL, result)
    assert t.result_from_body(body) == result


@pytest.mark.parametrize("is_error", [False, True])
def test_a_whole_result_survives_the_round_trip(is_error: bool) -> None:
    result: dict[str, Any] = {
        "content": BLOCKS,
        "structuredContent": {"temperature": 21.5, "city": "Oslo"},
        "_meta": {"trace": "abc"},
    }
    if is_error:
        result["isError"] = True
    body = t.result_body(CALL, result)
    state = body["task"]["status"]["state"]
    assert state == ("TASK_STATE_FAILED" if is_error else "TASK_STATE_COMPLETED")
    assert t.result_from_body(body) == result


def test_progress_becomes_a_working_status_update_and_back() -> None:
    body = t.progress_body(CALL, 2, 50, 100, "half way")
    assert body["statusUpdate"]["status"]["state"] == "TASK_STATE_WORKING"
    assert body["statusUpdate"]["taskId"] == "env-1"
    assert t.progress_from_body(body) == t.Progress(50, 100, "half way")
    assert t.result_from_body(body) is None
    assert t.progress_from_body(t.result_body(CALL, {"content": []})) is None


def test_failures_are_failed_tasks_with_the_reason() -> None:
    body = t.failure_body(CALL, st.NO_ANSWER, "the tool did not answer within 300 s")
    assert body["task"]["metadata"]["synq"] == {
        "status": "4.4.1",
        "reason": "the tool did not answer within 300 s",
    }
    assert t.result_from_body(body) == {
        "content": [{"type": "text", "text": "the tool did not answer within 300 s"}],
        "isError": True,
    }


@pytest.mark.parametrize(
    "body",
    [
        t.progress_body(CALL, 1, 1, None, None),
        t.result_body(CALL, {"content": BLOCKS, "structuredContent": {"a": [1, {"b": None}]}}),
        t.result_body(CALL, {"content": BLOCKS[:3], "isError": True}),
        t.failure_body(CALL, st.TOO_BIG, "too big"),
    ],
)
def test_answers_are_a2a_stream_responses_an_a2a_client_can_read(body: dict[str, Any]) -> None:
    """The A2A mapping's ``task.update`` body: a StreamResponse with one event (A2A 1.0)."""
    event = json_format.ParseDict(body, StreamResponse())
    assert event.WhichOneof("payload") in ("task", "status_update")


def test_answers_from_agents_that_are_not_mcp_servers() -> None:
    task = {
        "task": {
            "id": "x",
            "status": {"state": "TASK_STATE_COMPLETED"},
            "artifacts": [
                {"parts": [{"text": "hi"}, {"url": "https://e.example/r", "filename": "r"}]},
                {"parts": [{"data": {"n": 1}}, {"raw": PNG, "mediaType": "image/png"}]},
            ],
        }
    }
    assert t.result_from_body(task) == {
        "content": [
            {"type": "text", "text": "hi"},
            {"type": "resource_link", "uri": "https://e.example/r", "name": "r"},
            {"type": "text", "text": '{"n":1}'},
            {"type": "image", "data": PNG, "mimeType": "image/png"},
        ]
    }
    rejected = {"task": {"id": "x", "status": {"state": "TASK_STATE_REJECTED"}}}
    assert t.result_from_body(rejected) == {
        "content": [{"type": "text", "text": "the task ended: TASK_STATE_REJECTED"}],
        "isError": True,
    }
    assert t.result_from_body({"task": {"status": {"state": "TASK_STATE_WORKING"}}}) is None


SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 1}, "tags": {"type": "array"}},
    "required": ["n"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"n": 2}, None),
        ({}, "(arguments): 'n' is a required property"),
        ({"n": 0}, "n: 0 is less than the minimum of 1"),
        ({"n": 1, "tags": "x"}, "tags: 'x' is not of type 'array'"),
        ({"n": 1, "extra": True}, "Additional properties are not allowed"),
    ],
)
def test_arguments_against_the_input_schema(arguments: dict[str, Any], error: str | None) -> None:
    validator = t.compile_schema(SCHEMA)
    assert validator is not None
    found = t.schema_error(validator, arguments)
    if error is None:
        assert found is None
    else:
        assert found is not None
        assert error in found


def test_a_schema_cannot_make_the_relay_fetch_a_url() -> None:
    """SSRF: ``$ref`` resolves inside the document only (empty registry)."""
    validator = t.compile_schema({"$ref": "http://169.254.169.254/latest/meta-data"})
    assert validator is not None
    error = t.schema_error(validator, {})
    assert error is not None
    assert "cannot be resolved" in error


def test_an_invalid_schema_is_left_to_the_server() -> None:
    assert t.compile_schema({"type": 12}) is None


def test_tools_from_cards() -> None:
    tool = {"name": "a", "inputSchema": {"type": "object"}}
    card = {
        "capabilities": {
            "extensions": [{"uri": t.MCP_TOOLS_EXTENSION, "params": {"tools": [tool, {"x": 1}]}}]
        }
    }
    assert t.tools_from_card(card) == [tool]
    assert t.tools_from_card({"capabilities": {"extensions": []}}) is None
    assert t.tools_from_card("nope") is None
    assert t.tool_skill({"name": "a"})["description"] == "MCP tool a"
