"""The OpenAPI 3.1 document of the HTTP server, made from what is served, so that it cannot drift from it:
the REST endpoints of http_api.py and the models they parse and return, the statuses the gate in front of
them answers (http.py), /healthz, this document, and MCP at /mcp.

Each operation lists the statuses it can answer and no other: its own (`Endpoint.errors`) and the gate's.
The tests run schemathesis against a live server with this document (tests/test_schemathesis.py), which
fails on any status, content type, body or event the document does not describe.
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from sandbox_backends.registry import PluginError

from . import __version__
from .http_api import API, Endpoint, ErrorBody, Health, endpoints
from .inputs import Seq
from .models import Event, EventType

ERRORS = {
    400: "Invalid request: a parameter, a header or the body is malformed or out of range; the message says which",
    401: "Missing or unknown bearer token",
    403: "Origin not allowed",
    404: "No such session (or not yours), or no such file in its workspace",
    409: "The session cannot do that now (busy, failed, closed), or at all (its driver cannot)",
    413: "Request body (or a file or message in it) too large",
    421: "Host is not this loopback server",
    429: "Rate limit or session limit reached; see Retry-After",
    501: "The session's driver cannot do this",
    502: "The sandbox failed",
    503: "The state database cannot be used",
}
MCP_ANSWERS = {
    200: "A JSON-RPC response, as JSON or as Server-Sent Events",
    202: "A notification or response accepted",
    400: "Not a valid MCP request: a JSON-RPC error, or a line of text",
    404: "Unknown or ended MCP session (Mcp-Session-Id)",
    405: "Not served in this protocol era; see Allow",
    406: "Accept must allow application/json and text/event-stream",
    409: "A notification stream is already open for this MCP session",
    415: "Content-Type must be application/json",
    503: "Too many MCP sessions open",
}
"""What the MCP SDK's transport answers at /mcp; its bodies are the MCP specification's, not described here."""

SSE_EVENT = {
    "type": "object",
    "description": "One event of the stream: id = the event's seq, event = its type, data = the Event as JSON. "
    "A comment line every 15 s keeps the connection open.",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string", "enum": list(typing.get_args(EventType))},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/Event"},
        },
    },
}


def _error(status: int) -> dict[str, Any]:
    return {
        "description": ERRORS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


def document(gated: tuple[int, ...], public: tuple[int, ...], secured: bool) -> dict[str, Any]:
    """The whole document. `gated`: the statuses the gate answers before a route runs; `public`: those it
    answers for /healthz and this document; `secured`: whether a bearer token is required."""
    served = endpoints()
    wanted: list[tuple[type[BaseModel], Any]] = [
        (ErrorBody, "serialization"),
        (Health, "serialization"),
        (Event, "serialization"),
    ]
    for ep in served:
        wanted += [(model, "validation") for model in (ep.body, ep.query) if model]
        if ep.response:
            wanted.append((ep.response, "serialization"))
    refs, defs = models_json_schema(wanted, ref_template="#/components/schemas/{model}")
    schemas = defs.get("$defs", {})
    paths: dict[str, Any] = {}
    for ep in served:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep, refs, schemas, gated)
    paths["/healthz"] = {"get": _public("Liveness.", "healthz", "#/components/schemas/Health", public)}
    paths[API + "/openapi.json"] = {"get": _public("This document.", "openapi", None, public)}
    paths["/mcp"] = {
        method: {
            "summary": f"MCP streamable HTTP ({what}); see the MCP specification.",
            "operationId": f"mcp_{method}",
            "responses": {
                str(status): {"description": ERRORS[status] if status in gated else MCP_ANSWERS[status]}
                for status in sorted({*MCP_ANSWERS, *gated})
            },
        }
        for method, what in (("post", "requests"), ("get", "the notification stream"), ("delete", "end the MCP session"))
    }
    _check_unique_ids(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mcp-sessions",
            "version": __version__,
            "description": "Agent sessions in sandboxes: REST and SSE; MCP at /mcp. Every number a request carries "
            "is bounded (minimum and maximum below); one outside its range is refused with 400 and a message "
            "that says the range.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            **({"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}} if secured else {}),
        },
        **({"security": [{"bearer": []}]} if secured else {}),
    }


def _check_unique_ids(paths: dict[str, Any]) -> None:
    """A client generator names a method after each operationId, so two alike would make one of the two
    operations unreachable; a tool plugin is the only way that can happen (a tool's route takes its name)."""
    seen: dict[str, str] = {}
    for path, ops in paths.items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            if (first := seen.setdefault(op["operationId"], where)) != where:
                raise PluginError(
                    f"The operationId '{op['operationId']}' of {where} is also that of {first}: "
                    "a tool plugin must not take the name of another operation of the HTTP API; rename it."
                )


def _operation(ep: Endpoint, refs: dict[Any, Any], schemas: dict[str, Any], gated: tuple[int, ...]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": ep.summary, "operationId": ep.operation_id, "parameters": []}
    if "{session_id}" in ep.path:
        op["parameters"].append(
            {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^ses_[0-9a-f]{32}$"}}
        )
    if ep.query:
        op["parameters"] += _query_parameters(refs[(ep.query, "validation")], schemas)
    if ep.sse:
        op["parameters"].append(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "Replay the events after this seq (what an EventSource sends when it reconnects).",
                "schema": TypeAdapter(Seq).json_schema(),
            }
        )
    if ep.body:
        # A body whose every field is optional may be left out (`POST /sessions` with none makes a default session).
        required = any(f.is_required() for f in ep.body.model_fields.values())
        op["requestBody"] = {"required": required, "content": {"application/json": {"schema": refs[(ep.body, "validation")]}}}
    responses: dict[str, Any] = {}
    for status in ep.status:
        if ep.sse:
            content = {"text/event-stream": {"schema": SSE_EVENT}}
        elif ep.binary:
            content = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
        else:
            content = {"application/json": {"schema": refs[(ep.response, "serialization")]}}
        responses[str(status)] = {"description": "OK" if status < 300 else "Accepted", "content": content}
    op["responses"] = responses | {str(status): _error(status) for status in sorted({*ep.errors, *gated})}
    return op


def _query_parameters(ref: dict[str, Any], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    """A query model's fields as query parameters (the model itself leaves the components)."""
    schema = schemas.pop(ref["$ref"].rsplit("/", 1)[-1])
    return [
        {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", []),
            "schema": prop,
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema["properties"].items()
    ]


def _public(summary: str, operation_id: str, schema: str | None, public: tuple[int, ...]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if schema:
        ok["content"] = {"application/json": {"schema": {"$ref": schema}}}
    return {
        "summary": summary,
        "security": [],
        "operationId": operation_id,
        "responses": {"200": ok, **{str(status): _error(status) for status in public}},
    }


def dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
