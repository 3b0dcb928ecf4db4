"""JSON-RPC carried in envelopes (SPEC.md "MCP mapping", "Any MCP message"): the pure
translation, by table."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.mcp import translate as t
from relay.core import status as st


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"method": "resources/read", "params": {"uri": "a://b"}},
            t.RpcMessage("resources/read", {"uri": "a://b"}),
        ),
        ({"method": "prompts/list"}, t.RpcMessage("prompts/list", {})),
        ({"method": "prompts/list", "params": None}, t.RpcMessage("prompts/list", {})),
        (
            {"method": "tools/call", "params": {"name": "x"}, "id": "r1", "protocolVersion": "v"},
            t.RpcMessage("tools/call", {"name": "x"}, "r1", "v"),
        ),
    ],
)
def test_a_request_body_round_trips(body: dict[str, Any], expected: t.RpcMessage) -> None:
    parsed = t.parse_message(body, t.CLIENT_METHODS)
    assert parsed == expected
    assert t.parse_message(t.message_body(parsed), t.CLIENT_METHODS) == parsed


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (["resources/list"], st.MEDIA_ERROR, "must be an object"),
        ({"method": "initialize"}, st.INVALID_COMMAND, "does not cross"),
        ({"method": "sampling/createMessage"}, st.INVALID_COMMAND, "does not cross"),
        ({"params": {}}, st.INVALID_COMMAND, "does not cross"),
        ({"method": "prompts/list", "params": [1]}, st.MEDIA_ERROR, "params must be an object"),
        ({"method": "prompts/list", "id": 7}, st.MEDIA_ERROR, "id must be a string"),
        ({"method": "prompts/list", "id": "x" * 101}, st.MEDIA_ERROR, "id must be a string"),
        ({"method": "prompts/list", "protocolVersion": 1}, st.MEDIA_ERROR, "protocolVersion"),
    ],
)
def test_a_body_that_is_not_a_carried_request_is_refused(
    body: Any, status: st.Status, reason: str
) -> None:
    with pytest.raises(t.CallRefused) as refused:
        t.parse_message(body, t.CLIENT_METHODS)
    assert refused.value.status == status
    assert reason in refused.value.reason


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (t.RpcAnswer("a", result={"x": 1}), {"id": "a", "result": {"x": 1}}),
        (t.RpcAnswer(None, result=None), {"result": {}}),
        (
            t.RpcAnswer("a", error={"code": -32601, "message": "no"}),
            {"id": "a", "error": {"code": -32601, "message": "no"}},
        ),
    ],
)
def test_an_answer_round_trips(answer: t.RpcAnswer, body: dict[str, Any]) -> None:
    assert t.answer_body(answer) == body
    parsed = t.parse_answer(body)
    assert parsed is not None
    assert t.answer_body(parsed) == body


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"id": 3, "result": {}},
        {"id": "a"},
        {"id": "a", "result": [1]},
        {"id": "a", "error": {"code": "x", "message": "m"}},
        {"id": "a", "error": {"code": 1}},
    ],
)
def test_what_is_not_an_answer(body: Any) -> None:
    assert t.parse_answer(body) is None


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("tools/call", {"result": {"content": [{"type": "text", "text": "why"}], "isError": True}}),
        ("prompts/get", {"error": {"code": t.INTERNAL_ERROR, "message": "why"}}),
    ],
)
def test_a_request_without_an_answer_fails_as_its_method_expects(
    method: str, expected: dict[str, Any]
) -> None:
    assert t.answer_body(t.failed_answer(method, None, "why")) == expected


def test_server_and_client_methods_do_not_overlap() -> None:
    assert not t.CLIENT_METHODS & t.SERVER_METHODS
    assert not t.SERVER_NOTIFICATIONS & t.CLIENT_NOTIFICATIONS
