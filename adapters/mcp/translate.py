"""MCP ⇄ envelope translation without I/O (SPEC.md "MCP mapping").

Everything here is a pure function of JSON values, so it is tested with tables:

* **calls in** — an ``application/mcp-call+json`` body ``{"tool", "arguments"}``, or an A2A
  Message (``application/a2a+json``) whose data part is ``{"tool", "arguments"}``, becomes a
  :class:`ToolCall`; anything else is refused with the RFC 3463 status the sender's DSN carries;
* **arguments** — checked against the tool's ``inputSchema`` before the call crosses to the MCP
  server (JSON Schema 2020-12 unless the schema names another dialect: MCP 2025-11-25
  "Tools" §Tool, SEP-1613);
* **answers out** — progress notifications (MCP 2025-11-25 "Progress") and the
  ``CallToolResult`` (content blocks, ``structuredContent``, ``isError``) become A2A 1.0
  ``StreamResponse`` objects: progress is a ``statusUpdate`` in ``TASK_STATE_WORKING``, the result
  a ``task`` in ``TASK_STATE_COMPLETED`` (content as the parts of one artifact) or, when
  ``isError`` is true or the call failed, ``TASK_STATE_FAILED`` (content as the parts of the
  status message) — the shapes an A2A client sees when an A2A agent completes or fails a task;
* **answers back** — the inverse, for the relay's ``/mcp/<address>`` face: a ``task`` body gives
  back the exact ``CallToolResult``, a ``statusUpdate`` the progress triple;
* **any MCP message** — a JSON-RPC request, its answer, or a notification carried whole
  (``application/mcp-request+json``, ``…-result+json``, ``…-notification+json``): what
  ``/mcp/<address>`` sends for every client request, and what comes back.

Content blocks map to A2A parts without loss: the block's bulky field moves into the part
(``text`` → ``text``, ``data``/``blob`` → ``raw``, a resource link's ``uri`` → ``url``) and the
rest of the block rides in the part's ``metadata.mcp``, so the reverse mapping rebuilds it exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from jsonschema import SchemaError
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, validator_for
from referencing import Registry
from referencing.exceptions import Unresolvable

from relay.core import status as st
from relay.core.errors import AttemptFailed
from relay.core.jsonutil import dumps
from relay.core.status import Status

#: Content types an MCP-backed agent takes (SPEC.md §3.1).
MCP_CALL_CONTENT_TYPE: Final = "application/mcp-call+json"
A2A_CONTENT_TYPE: Final = "application/a2a+json"
#: A2A extension on the agent card that carries the tools and their schemas (A2A 1.0 §4.6).
MCP_TOOLS_EXTENSION: Final = "urn:synq:ext:mcp-tools:1"

#: Largest encoded reply body a tool result may become. An envelope holds at most
#: ``MAX_ENVELOPE_BYTES`` (256 KiB); this leaves room for the envelope's own fields and the A2A
#: framing. Stops a server's enormous result from turning into an envelope that cannot be sent
#: (or into unbounded storage): a larger result becomes a failed reply that says so.
MAX_TOOL_RESULT_BYTES: Final = 192 * 1024
#: Longest schema error or failure text quoted back to a sender; a hostile schema or server
#: cannot make the DSN or failed reply arbitrarily long.
MAX_REASON_CHARS: Final = 1000

STATE_WORKING: Final = "TASK_STATE_WORKING"
STATE_COMPLETED: Final = "TASK_STATE_COMPLETED"
STATE_FAILED: Final = "TASK_STATE_FAILED"
ROLE_AGENT: Final = "ROLE_AGENT"

#: Statuses a refused call bounces with (SPEC.md §5.1).
UNKNOWN_TOOL: Final = st.INVALID_COMMAND
BAD_ARGUMENTS: Final = st.INVALID_PARAMETER
BAD_CALL: Final = st.MEDIA_ERROR


class CallRefused(AttemptFailed):
    """The envelope cannot become a ``tools/call``; the sender gets a DSN with this status.
    Its own class because the HTTP server lists its tools again before a refusal stands."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(status, clip(reason))


@dataclass(frozen=True, slots=True)
class ToolCall:
    tool: str
    arguments: dict[str, Any]
    #: A2A task and context ids of the answers: the call envelope's id and its thread.
    task_id: str
    context_id: str


def clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- calls in -----------------------------------------------------------------------------------


def _call_object(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(value, Mapping):
        raise CallRefused(BAD_CALL, f"{where} must be an object {{tool, arguments}}")
    tool = value.get("tool")
    if not isinstance(tool, str) or not tool:
        raise CallRefused(BAD_CALL, f"{where}: tool must be a non-empty string")
    arguments = value.get("arguments", {})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise CallRefused(BAD_CALL, f"{where}: arguments must be an object")
    return tool, dict(arguments)


def parse_call(content_type: str, body: Any, envelope_id: str, thread: str | None) -> ToolCall:
    """The ``tools/call`` an envelope asks for (SPEC.md "MCP mapping", calls)."""
    if content_type == MCP_CALL_CONTENT_TYPE:
        tool, arguments = _call_object(body, "the body")
    elif content_type == A2A_CONTENT_TYPE:
        if not isinstance(body, Mapping) or not isinstance(body.get("parts"), list):
            raise CallRefused(BAD_CALL, "the body must be an A2A Message with parts")
        calls = [
            p["data"]
            for p in body["parts"]
            if isinstance(p, Mapping) and isinstance(p.get("data"), Mapping) and "tool" in p["data"]
        ]
        if len(calls) != 1:
            raise CallRefused(
                BAD_CALL,
                "an A2A message to an MCP agent needs exactly one data part {tool, arguments}",
            )
        tool, arguments = _call_object(calls[0], "the data part")
    else:
        raise CallRefused(
            BAD_CALL,
            f"an MCP agent takes {MCP_CALL_CONTENT_TYPE} or {A2A_CONTENT_TYPE} with a data part "
            f"{{tool, arguments}}, not {content_type}",
        )
    return ToolCall(tool, arguments, task_id=envelope_id, context_id=thread or envelope_id)


# --- arguments ----------------------------------------------------------------------------------


def compile_schema(schema: Mapping[str, Any]) -> Validator | None:
    """A validator for a tool's input schema, or None when the schema itself is not valid JSON
    Schema (then the server, which wrote it, is left to judge the arguments).

    The registry is empty: a ``$ref`` resolves only inside the schema document, so a schema
    from a server can never make the relay fetch a URL (SSRF) — the rule the SDK's client uses
    for output schemas too.
    """
    document = dict(schema)
    cls = validator_for(document, default=Draft202012Validator)
    try:
        cls.check_schema(document)
    except SchemaError:
        return None
    validator: Validator = cls(document, registry=Registry())
    return validator


def schema_error(validator: Validator, arguments: Mapping[str, Any]) -> str | None:
    """The most relevant validation error as one line (``path: message``), or None."""
    try:
        error = best_match(validator.iter_errors(dict(arguments)))
    except Unresolvable as exc:
        return clip(f"the input schema cannot be resolved: {exc}")
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
    return clip(f"{where}: {error.message}")


# --- content blocks ⇄ A2A parts -----------------------------------------------------------------


def _meta_of(block: Mapping[str, Any], *moved: str) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in block.items() if k not in moved}


def block_to_part(block: Any) -> dict[str, Any]:
    """One MCP content block (MCP 2025-11-25 "Tools" §Tool Result) as one A2A part."""
    if not isinstance(block, Mapping):
        return {"data": block, "metadata": {"mcp": {"verbatim": True}}}
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return {"text": block["text"], "metadata": {"mcp": _meta_of(block, "text")}}
    if kind in ("image", "audio") and isinstance(block.get("data"), str):
        part: dict[str, Any] = {"raw": block["data"], "metadata": {"mcp": _meta_of(block, "data")}}
        if isinstance(block.get("mimeType"), str):
            part["mediaType"] = block["mimeType"]
        return part
    if kind == "resource" and isinstance(block.get("resource"), Mapping):
        resource = block["resource"]
        for field, key in (("text", "text"), ("blob", "raw")):
            if isinstance(resource.get(field), str):
                meta = _meta_of(block, "resource")
                meta["resource"] = _meta_of(resource, field)
                part = {key: resource[field], "metadata": {"mcp": meta}}
                if isinstance(resource.get("mimeType"), str):
                    part["mediaType"] = resource["mimeType"]
                return part
    if kind == "resource_link" and isinstance(block.get("uri"), str):
        part = {"url": block["uri"], "metadata": {"mcp": _meta_of(block)}}
        if isinstance(block.get("name"), str):
            part["filename"] = block["name"]
        if isinstance(block.get("mimeType"), str):
            part["mediaType"] = block["mimeType"]
        return part
    # A block type this relay does not know (a later MCP revision): carried whole.
    return {"data": copy.deepcopy(dict(block)), "metadata": {"mcp": {"verbatim": True}}}


def part_to_block(part: Mapping[str, Any]) -> dict[str, Any] | None:
    """The inverse of :func:`block_to_part`; a part from a non-MCP agent becomes the nearest
    block (text, a resource link, JSON text). None for a structured-content part."""
    meta = part.get("metadata")
    mcp = meta.get("mcp") if isinstance(meta, Mapping) else None
    if isinstance(mcp, Mapping):
        if mcp.get("structuredContent"):
            return None
        if mcp.get("verbatim"):
            data = part.get("data")
            return dict(data) if isinstance(data, Mapping) else {"type": "text", "text": str(data)}
        block = copy.deepcopy(dict(mcp))
        kind = block.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            block["text"] = part["text"]
            return block
        if kind in ("image", "audio") and isinstance(part.get("raw"), str):
            block["data"] = part["raw"]
            return block
        if kind == "resource" and isinstance(block.get("resource"), Mapping):
            resource = dict(block["resource"])
            if isinstance(part.get("text"), str):
                resource["text"] = part["text"]
            elif isinstance(part.get("raw"), str):
                resource["blob"] = part["raw"]
            block["resource"] = resource
            return block
        if kind == "resource_link":
            return block
    # A part written by an A2A agent rather than this mapping.
    if isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if isinstance(part.get("url"), str):
        link: dict[str, Any] = {
            "type": "resource_link",
            "uri": part["url"],
            "name": str(part.get("filename") or part["url"]),
        }
        if isinstance(part.get("mediaType"), str):
            link["mimeType"] = part["mediaType"]
        return link
    if isinstance(part.get("raw"), str):
        media = str(part.get("mediaType") or "application/octet-stream")
        kind = (
            "image" if media.startswith("image/") else "audio" if media.startswith("audio/") else ""
        )
        if kind:
            return {"type": kind, "data": part["raw"], "mimeType": media}
        return {
            "type": "resource",
            "resource": {"uri": f"data:{media}", "mimeType": media, "blob": part["raw"]},
        }
    if "data" in part:
        return {"type": "text", "text": dumps(part["data"]).decode("utf-8")}
    return None


def result_to_parts(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    content = result.get("content")
    parts = [block_to_part(b) for b in content] if isinstance(content, list) else []
    if "structuredContent" in result and result["structuredContent"] is not None:
        parts.append(
            {
                "data": copy.deepcopy(result["structuredContent"]),
                "mediaType": "application/json",
                "metadata": {"mcp": {"structuredContent": True}},
            }
        )
    return parts


def parts_to_result(parts: Iterable[Any], *, is_error: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    result: dict[str, Any] = {"content": content}
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        meta = part.get("metadata")
        mcp = meta.get("mcp") if isinstance(meta, Mapping) else None
        if isinstance(mcp, Mapping) and mcp.get("structuredContent") and "data" in part:
            result["structuredContent"] = copy.deepcopy(part["data"])
            continue
        block = part_to_block(part)
        if block is not None:
            content.append(block)
    if is_error:
        result["isError"] = True
    return result


# --- answers out ----------------------------------------------------------------------------------


def _agent_message(call: ToolCall, suffix: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "messageId": f"{call.task_id}.{suffix}",
        "contextId": call.context_id,
        "taskId": call.task_id,
        "role": ROLE_AGENT,
        "parts": parts,
    }


def progress_body(
    call: ToolCall, seq: int, progress: float, total: float | None, message: str | None
) -> dict[str, Any]:
    """A ``notifications/progress`` (MCP 2025-11-25 "Progress") as an A2A status update."""
    numbers: dict[str, Any] = {"progress": progress}
    if total is not None:
        numbers["total"] = total
    parts: list[dict[str, Any]] = []
    if message:
        parts.append({"text": clip(message)})
    parts.append(
        {"data": numbers, "mediaType": "application/json", "metadata": {"mcp": {"progress": True}}}
    )
    return {
        "statusUpdate": {
            "taskId": call.task_id,
            "contextId": call.context_id,
            "status": {
                "state": STATE_WORKING,
                "message": _agent_message(call, f"progress.{seq}", parts),
            },
            "metadata": {"mcp": {"tool": call.tool}},
        }
    }


def result_body(call: ToolCall, result: Mapping[str, Any]) -> dict[str, Any]:
    """A ``CallToolResult`` as the A2A task that ends: completed, or failed when ``isError``."""
    parts = result_to_parts(result)
    is_error = bool(result.get("isError"))
    metadata: dict[str, Any] = {"mcp": {"tool": call.tool, "isError": is_error}}
    if isinstance(result.get("_meta"), Mapping):
        metadata["mcp"]["_meta"] = copy.deepcopy(dict(result["_meta"]))
    task: dict[str, Any] = {"id": call.task_id, "contextId": call.context_id, "metadata": metadata}
    if is_error:
        task["status"] = {
            "state": STATE_FAILED,
            "message": _agent_message(call, "result", parts),
        }
    else:
        task["status"] = {"state": STATE_COMPLETED}
        task["artifacts"] = [
            {"artifactId": f"{call.task_id}.result", "name": "result", "parts": parts}
        ]
    return {"task": task}


def failure_body(call: ToolCall, status: Status, reason: str) -> dict[str, Any]:
    """A call that crossed to the server but produced no usable result (timeout, the server
    exited, an oversized result): a failed task whose message says why."""
    text = clip(reason)
    return {
        "task": {
            "id": call.task_id,
            "contextId": call.context_id,
            "status": {
                "state": STATE_FAILED,
                "message": _agent_message(
                    call, "result", [{"text": text, "metadata": {"mcp": {"type": "text"}}}]
                ),
            },
            "metadata": {
                "mcp": {"tool": call.tool, "isError": True},
                "synq": {"status": status.code, "reason": text},
            },
        }
    }


# --- answers back (the relay's /mcp/<address> face) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    progress: float
    total: float | None
    message: str | None


def progress_from_body(body: Any) -> Progress | None:
    """The progress a ``statusUpdate`` body reports, or None if it is not one."""
    if not isinstance(body, Mapping) or not isinstance(body.get("statusUpdate"), Mapping):
        return None
    status = body["statusUpdate"].get("status")
    message = status.get("message") if isinstance(status, Mapping) else None
    parts = message.get("parts") if isinstance(message, Mapping) else None
    if not isinstance(parts, list):
        return None
    progress: float | None = None
    total: float | None = None
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        data = part.get("data")
        if isinstance(data, Mapping) and isinstance(data.get("progress"), int | float):
            progress = float(data["progress"])
            if isinstance(data.get("total"), int | float):
                total = float(data["total"])
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])
    if progress is None:
        return None
    return Progress(progress, total, " ".join(texts) or None)


def result_from_body(body: Any) -> dict[str, Any] | None:
    """The ``CallToolResult`` JSON a final ``task`` body carries, or None if the body is not a
    task in a final state."""
    if not isinstance(body, Mapping) or not isinstance(body.get("task"), Mapping):
        return None
    task = body["task"]
    status = task.get("status")
    state = status.get("state") if isinstance(status, Mapping) else None
    if state == STATE_COMPLETED:
        parts: list[Any] = []
        for artifact in task.get("artifacts") or []:
            if isinstance(artifact, Mapping) and isinstance(artifact.get("parts"), list):
                parts.extend(artifact["parts"])
        result = parts_to_result(parts, is_error=False)
    elif isinstance(state, str) and state in (
        STATE_FAILED,
        "TASK_STATE_REJECTED",
        "TASK_STATE_CANCELED",
    ):
        assert isinstance(status, Mapping)
        message = status.get("message")
        failed_parts = message.get("parts") if isinstance(message, Mapping) else None
        result = parts_to_result(
            failed_parts if isinstance(failed_parts, list) else [], is_error=True
        )
        if not result["content"]:
            result["content"] = [{"type": "text", "text": f"the task ended: {state}"}]
    else:
        return None
    metadata = task.get("metadata")
    mcp = metadata.get("mcp") if isinstance(metadata, Mapping) else None
    if isinstance(mcp, Mapping) and isinstance(mcp.get("_meta"), Mapping):
        result["_meta"] = copy.deepcopy(dict(mcp["_meta"]))
    return result


def error_result(text: str) -> dict[str, Any]:
    """A ``CallToolResult`` reporting a failure to the model (``isError``: MCP 2025-11-25
    "Tools" §Error Handling: tool execution errors are results, so the model can react)."""
    return {"content": [{"type": "text", "text": clip(text)}], "isError": True}


# --- agent cards --------------------------------------------------------------------------------


def tool_to_wire(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The card's copy of one MCP Tool: the fields a client needs to call it."""
    keep = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
    return {k: copy.deepcopy(tool[k]) for k in keep if k in tool and tool[k] is not None}


def tool_skill(tool: Mapping[str, Any]) -> dict[str, Any]:
    name = str(tool["name"])
    return {
        "id": name,
        "name": str(tool.get("title") or name),
        "description": str(tool.get("description") or f"MCP tool {name}"),
        "tags": ["mcp", "tool"],
        "inputModes": [MCP_CALL_CONTENT_TYPE, A2A_CONTENT_TYPE],
        "outputModes": [A2A_CONTENT_TYPE],
    }


def tools_from_card(card: Any) -> list[dict[str, Any]] | None:
    """The tools an agent card publishes in the MCP tools extension; None when the card has no
    such extension (the address is not MCP-backed)."""
    if not isinstance(card, Mapping):
        return None
    caps = card.get("capabilities")
    exts = caps.get("extensions") if isinstance(caps, Mapping) else None
    for ext in exts if isinstance(exts, list) else []:
        if isinstance(ext, Mapping) and ext.get("uri") == MCP_TOOLS_EXTENSION:
            params = ext.get("params")
            tools = params.get("tools") if isinstance(params, Mapping) else None
            if isinstance(tools, list):
                return [
                    dict(t)
                    for t in tools
                    if isinstance(t, Mapping)
                    and isinstance(t.get("name"), str)
                    and isinstance(t.get("inputSchema"), Mapping)
                ]
            return []
    return None


# --- JSON-RPC across the relay (SPEC.md "MCP mapping", "Any MCP message") ------------------------

#: A JSON-RPC request carried whole: from a gateway to an MCP-backed agent (a client's request),
#: or from that agent back to the caller (a server's request of its client, during a call).
MCP_REQUEST_CONTENT_TYPE: Final = "application/mcp-request+json"
#: The answer to an ``application/mcp-request+json`` envelope: its JSON-RPC result or error.
MCP_RESULT_CONTENT_TYPE: Final = "application/mcp-result+json"
#: A JSON-RPC notification: the server's (progress, log messages, list changes, resource
#: updates) to the caller, or the client's ``notifications/cancelled`` to the agent.
MCP_NOTIFICATION_CONTENT_TYPE: Final = "application/mcp-notification+json"

#: What a client may ask of a server across the relay (MCP 2025-11-25 "Server Features",
#: "Utilities"; 2026-07-28 keeps them). ``initialize``, ``ping`` and ``server/discover`` stay
#: with the relay that serves the client; they describe that hop, not the partner's server.
CLIENT_METHODS: Final = frozenset(
    {
        "tools/call",
        "tools/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "subscriptions/listen",
    }
)
#: What a server may ask of its client during a request (MCP 2025-11-25 "Client Features").
SERVER_METHODS: Final = frozenset({"sampling/createMessage", "elicitation/create", "roots/list"})
#: Server notifications carried back to the caller.
SERVER_NOTIFICATIONS: Final = frozenset(
    {
        "notifications/progress",
        "notifications/message",
        "notifications/resources/updated",
        "notifications/resources/list_changed",
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/subscriptions/acknowledged",
    }
)
#: The ``_meta`` key by which a 2026-07-28 server tags what it sends on a
#: ``subscriptions/listen`` stream with that request's JSON-RPC id (SEP-2575): each hop's id.
SUBSCRIPTION_ID_META_KEY: Final = "io.modelcontextprotocol/subscriptionId"
#: Client notifications carried to the agent.
CLIENT_NOTIFICATIONS: Final = frozenset({"notifications/cancelled"})
#: Longest JSON-RPC id a request envelope may name (ids are the relay's own UUIDs).
MAX_RPC_ID_CHARS: Final = 100
#: The JSON-RPC error an agent answers when the request could not be carried out at its end
#: (MCP uses JSON-RPC 2.0 §5.1 codes; -32603 is "Internal error").
INTERNAL_ERROR: Final = -32603
#: The JSON-RPC error a timed-out request ends with (the mcp SDK's ``REQUEST_TIMEOUT``).
REQUEST_TIMEOUT_ERROR: Final = -32001


@dataclass(frozen=True, slots=True)
class RpcMessage:
    """One JSON-RPC request or notification as an envelope body carries it. ``id`` is set for a
    request the sender waits an answer for; ``protocol`` names the MCP revision the client spoke
    to the gateway (the agent's relay speaks it to the server where it can)."""

    method: str
    params: dict[str, Any]
    id: str | None = None
    protocol: str | None = None


@dataclass(frozen=True, slots=True)
class RpcAnswer:
    """The answer to a request: exactly one of ``result`` and ``error`` is set."""

    id: str | None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


def message_body(message: RpcMessage) -> dict[str, Any]:
    """The body of an ``application/mcp-request+json`` or ``…-notification+json`` envelope."""
    body: dict[str, Any] = {"method": message.method, "params": copy.deepcopy(message.params)}
    if message.id is not None:
        body["id"] = message.id
    if message.protocol is not None:
        body["protocolVersion"] = message.protocol
    return body


def parse_message(body: Any, allowed: frozenset[str]) -> RpcMessage:
    """The request or notification a body carries, if its method is one of ``allowed``."""
    if not isinstance(body, Mapping):
        raise CallRefused(BAD_CALL, "the body must be an object {method, params}")
    method = body.get("method")
    if not isinstance(method, str) or method not in allowed:
        raise CallRefused(UNKNOWN_TOOL, f"the method {clip(str(method), 100)!r} does not cross")
    params = body.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise CallRefused(BAD_CALL, "params must be an object")
    rpc_id = body.get("id")
    if rpc_id is not None and (not isinstance(rpc_id, str) or len(rpc_id) > MAX_RPC_ID_CHARS):
        raise CallRefused(BAD_CALL, f"id must be a string of at most {MAX_RPC_ID_CHARS} chars")
    protocol = body.get("protocolVersion")
    if protocol is not None and not isinstance(protocol, str):
        raise CallRefused(BAD_CALL, "protocolVersion must be a string")
    return RpcMessage(method, copy.deepcopy(dict(params)), rpc_id, protocol)


def answer_body(answer: RpcAnswer) -> dict[str, Any]:
    """The body of an ``application/mcp-result+json`` envelope."""
    body: dict[str, Any] = {}
    if answer.id is not None:
        body["id"] = answer.id
    if answer.error is not None:
        body["error"] = copy.deepcopy(answer.error)
    else:
        body["result"] = copy.deepcopy(answer.result or {})
    return body


def parse_answer(body: Any) -> RpcAnswer | None:
    """The answer a body carries, or None when it is not one."""
    if not isinstance(body, Mapping):
        return None
    rpc_id = body.get("id")
    if rpc_id is not None and not isinstance(rpc_id, str):
        return None
    error = body.get("error")
    if isinstance(error, Mapping):
        if not isinstance(error.get("code"), int) or not isinstance(error.get("message"), str):
            return None
        return RpcAnswer(rpc_id, error=copy.deepcopy(dict(error)))
    result = body.get("result")
    if isinstance(result, Mapping):
        return RpcAnswer(rpc_id, result=copy.deepcopy(dict(result)))
    return None


def rpc_error(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": clip(message)}


def failed_answer(method: str, rpc_id: str | None, reason: str) -> RpcAnswer:
    """A request that crossed to the server but produced no answer (timeout, exit, oversized):
    a failed tool result for ``tools/call`` (MCP 2025-11-25 "Tools" §Error Handling: the model
    sees it), a JSON-RPC error for anything else."""
    if method == "tools/call":
        return RpcAnswer(rpc_id, result=error_result(reason))
    return RpcAnswer(rpc_id, error=rpc_error(INTERNAL_ERROR, reason))


#: What a card keeps of each resource, resource template and prompt.
RESOURCE_FIELDS: Final = ("uri", "name", "title", "description", "mimeType", "size")
TEMPLATE_FIELDS: Final = ("uriTemplate", "name", "title", "description", "mimeType")
PROMPT_FIELDS: Final = ("name", "title", "description", "arguments")


def template_skill(template: Mapping[str, Any]) -> dict[str, Any]:
    return resource_skill(template, template=True)


def resource_skill(resource: Mapping[str, Any], *, template: bool = False) -> dict[str, Any]:
    """A resource (or resource template) as a card skill, so a reader of the card sees it."""
    key = "uriTemplate" if template else "uri"
    uri = str(resource.get(key) or "")
    name = str(resource.get("name") or uri)
    return {
        "id": f"resource:{uri}",
        "name": str(resource.get("title") or name),
        "description": str(resource.get("description") or f"MCP resource {uri}"),
        "tags": ["mcp", "resource-template" if template else "resource"],
        "inputModes": [MCP_REQUEST_CONTENT_TYPE],
        "outputModes": [MCP_RESULT_CONTENT_TYPE],
    }


def prompt_skill(prompt: Mapping[str, Any]) -> dict[str, Any]:
    name = str(prompt.get("name") or "")
    return {
        "id": f"prompt:{name}",
        "name": str(prompt.get("title") or name),
        "description": str(prompt.get("description") or f"MCP prompt {name}"),
        "tags": ["mcp", "prompt"],
        "inputModes": [MCP_REQUEST_CONTENT_TYPE],
        "outputModes": [MCP_RESULT_CONTENT_TYPE],
    }
