"""What a model pays to see the tools: the size of what `tools/list` puts in front of it.

    python bench/bench_tools_footprint.py [--write BENCHMARKS.md]

An assistant sends each tool's name, description and input schema to its model with every call that
can use the tools, so these bytes are paid again and again; output schemas and annotations go to the
client, and most clients keep them from the model. The script lists the tools of a server with the
built-in plugins, through the real MCP client, and measures each part as compact JSON (what goes on the
wire), with tokens estimated at 4 bytes each (a rough rule for English and JSON; a real tokenizer differs
by some tens of percent either way). Deterministic: the same code gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from report import command_line, paragraph, write_section

from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

BYTES_PER_TOKEN = 4


def compact(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


async def measure() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as home:
        async with Client(create_server(Settings(home=Path(home)))) as client:
            tools = (await client.list_tools()).tools
    rows = []
    for tool in tools:
        seen = {"name": tool.name, "description": tool.description or "", "inputSchema": tool.input_schema}
        rows.append(
            {
                "name": tool.name,
                "description": len((tool.description or "").encode()),
                "input": compact(tool.input_schema),
                "model": compact(seen),
                "output": compact(tool.output_schema) if tool.output_schema else 0,
                "parameters": len(tool.input_schema.get("properties", {})),
            }
        )
    return rows


def section(rows: list[dict[str, Any]]) -> str:
    total = sum(r["model"] for r in rows)
    lines = [
        "## What a model pays to see the tools",
        "",
        paragraph(
            "The bytes of `tools/list` that an assistant puts in front of its model with every call that can use",
            "the tools: each tool's name, description and input schema, as compact JSON, with the built-in",
            "drivers and agents installed (each plugin's create options add to `create_session`). Tokens are",
            f"estimated at {BYTES_PER_TOKEN} bytes each. Output schemas go to the client, which checks replies",
            "against them; most clients keep them from the model.",
        ),
        "",
        "```",
        command_line(),
        "```",
        "",
        "| tool | parameters | description bytes | input schema bytes | seen by the model, bytes | ~tokens | output schema bytes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tokens = round(r["model"] / BYTES_PER_TOKEN)
        lines.append(
            f"| `{r['name']}` | {r['parameters']} | {r['description']} | {r['input']} | {r['model']} | {tokens} | {r['output']} |"
        )
    lines.append(
        f"| all | {sum(r['parameters'] for r in rows)} | {sum(r['description'] for r in rows)} | "
        f"{sum(r['input'] for r in rows)} | {total} | {round(total / BYTES_PER_TOKEN)} | {sum(r['output'] for r in rows)} |"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, metavar="FILE", help="put the section into this Markdown file")
    args = parser.parse_args()
    text = section(anyio.run(measure))
    print(text)
    if args.write:
        write_section(args.write, text)


if __name__ == "__main__":
    main()
