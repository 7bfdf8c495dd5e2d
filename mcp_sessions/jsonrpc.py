"""What answers a message that is not a JSON-RPC message, the same on every transport.

The SDK's stdio transport only logs such a line, and its streamable HTTP transport answers a batch array
or an object that is no message with -32602 and a pydantic dump. JSON-RPC wants -32700 (Parse error)
for text that is not JSON and -32600 (Invalid Request) for JSON that is not a message, a batch array
included (MCP has no batches), with the request's id when it has a usable one.
"""

from __future__ import annotations

import json

import mcp_types as types
import pydantic_core


class InvalidMessage(Exception):
    """Text that is not a JSON-RPC message, with the error that answers it."""

    def __init__(self, code: int, message: str, request_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.request_id = code, message, request_id

    def reply(self) -> types.JSONRPCError:
        return types.JSONRPCError(jsonrpc="2.0", id=self.request_id, error=types.ErrorData(code=self.code, message=self.message))


def parse(data: bytes, unit: str) -> types.JSONRPCMessage:
    """The message in `data` (one stdio line or one HTTP body, as `unit` says); InvalidMessage if it is none."""
    try:
        return types.jsonrpc_message_adapter.validate_json(data, by_name=False)
    except ValueError:
        raise invalid(data, unit) from None


def check(data: bytes, unit: str) -> None:
    """Raise InvalidMessage if `data` is JSON but not a message, as `parse` would; text that is not JSON
    passes (the SDK's HTTP transport answers it with -32700 itself)."""
    try:
        document = pydantic_core.from_json(data)
    except ValueError:
        return
    try:
        types.jsonrpc_message_adapter.validate_python(document, by_name=False)
    except ValueError:
        raise invalid(data, unit) from None


def invalid(data: bytes, unit: str) -> InvalidMessage:
    """Why `data` is not a message, as the JSON-RPC error that answers it."""
    try:
        document = json.loads(data)
    except ValueError:
        return InvalidMessage(types.PARSE_ERROR, f"Parse error: the {unit} is not JSON. Send one JSON-RPC message per {unit}.")
    if isinstance(document, list):
        return InvalidMessage(
            types.INVALID_REQUEST,
            f"Invalid Request: batches (JSON arrays) are not supported; send one JSON-RPC message per {unit}.",
        )
    request_id = document.get("id") if isinstance(document, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
        request_id = None
    return InvalidMessage(
        types.INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 request, notification or response.", request_id
    )
