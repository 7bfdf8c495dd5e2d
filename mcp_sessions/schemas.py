"""Tool schemas in a shape clients check quickly and models read cheaply.

MCP clients check every tool result against the tool's outputSchema (the Python SDK does it with
jsonschema on each call). Pydantic writes nested models as `$ref`s into `$defs` and optional fields as
`anyOf: [X, {"type": "null"}]`; a validator resolves each `$ref` per item and tries each `anyOf` branch.
The same constraints written inline, with `"type": [X, "null"]`, accept and refuse exactly the same
documents and check about twice as fast (a list_sessions page of 50 rows: ~9 ms -> ~4 ms).
"""

from __future__ import annotations

from typing import Any

DEFS = "#/$defs/"
# Keywords whose values are data, not schemas: left as they are.
DATA_KEYWORDS = frozenset({"default", "examples", "enum", "const"})
# A branch with any of these cannot be merged with `null` by widening its type.
UNMERGEABLE = frozenset({"enum", "const", "anyOf", "oneOf", "allOf", "not", "$ref", "if", "then", "else"})
NULL = {"type": "null"}


def flatten(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$defs` inlined (recursive ones stay referenced) and unions of types as type lists."""
    defs: dict[str, Any] = schema.get("$defs", {})
    still_referenced: set[str] = set()

    def walk(node: Any, expanding: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(item, expanding) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(DEFS):
            name = ref[len(DEFS) :]
            if name in expanding or name not in defs:
                still_referenced.add(name)
                return node
            siblings = {k: walk(v, expanding) for k, v in node.items() if k != "$ref"}
            return {**walk(defs[name], (*expanding, name)), **siblings}
        out = {k: v if k in DATA_KEYWORDS else walk(v, expanding) for k, v in node.items() if k != "$defs"}
        return _unions_as_type_lists(out)

    flat = walk(schema, ())
    if still_referenced:
        flat["$defs"] = defs
    return flat


def _unions_as_type_lists(node: dict[str, Any]) -> dict[str, Any]:
    branches = node.get("anyOf")
    if "type" in node or not isinstance(branches, list) or not all(isinstance(b, dict) for b in branches):
        return node
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if all(b.keys() == {"type"} and isinstance(b["type"], str) for b in branches):  # str | int | None
        return {**rest, "type": [b["type"] for b in branches]}
    if len(branches) != 2 or NULL not in branches:
        return node
    other = branches[0] if branches[1] == NULL else branches[1]
    if not isinstance(other.get("type"), str):
        return node
    if other.keys() == {"enum", "type"} and isinstance(other["enum"], list):
        # Literal[...] | None: null joins the enum, which then says all a type would (its values are the type's).
        return {**rest, "enum": [*other["enum"], None]}
    if UNMERGEABLE & other.keys():
        return node
    return {**other, **rest, "type": [other["type"], "null"]}


MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
"""Keywords whose values map names to schemas: their keys are names (a parameter may be called `title`)."""


def _empty(value: Any) -> bool:
    return value is None or value is False or value == [] or value == {}


def unannotated(schema: Any) -> Any:
    """`schema` without the annotations that tell a model nothing: the `title`s pydantic derives from names
    (`"max_steps"` -> `"Max Steps"`), and defaults that are the empty value of their type (null, false, [],
    {}: what leaving the parameter out means anyway; a description says what the server uses then). A model
    reads every input schema with every call; neither is an assertion, so what the schema accepts stays."""
    if isinstance(schema, list):
        return [unannotated(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    lean: dict[str, Any] = {}
    for key, value in schema.items():
        if (key == "title" and isinstance(value, str)) or (key == "default" and _empty(value)):
            continue
        if key in MAPS and isinstance(value, dict):
            lean[key] = {name: unannotated(sub) for name, sub in value.items()}
        elif key in DATA_KEYWORDS:
            lean[key] = value
        else:
            lean[key] = unannotated(value)
    return lean


def lean_input(schema: dict[str, Any]) -> dict[str, Any]:
    """A tool's input schema as a model sees it: unions as type lists, `$defs` inlined, no derived titles or
    empty defaults, and no argument but those it lists (the server refuses others: see `server.unknown_arguments`)."""
    result: dict[str, Any] = unannotated(flatten(schema))
    result["additionalProperties"] = False
    return result
