"""Delegate a small coding task to the built-in `llm` agent and print what it did and what it cost.

The agent's loop runs in the server, with the model your environment configures; only its tool calls
(bash, file reads, writes and edits) run in the session's sandbox, which never sees a key.

    OPENAI_API_KEY=...   python examples/delegate_to_llm.py --model gpt-4o-mini
    ANTHROPIC_API_KEY=... python examples/delegate_to_llm.py --model claude-sonnet-4-5
    OPENAI_BASE_URL=http://localhost:11434/v1 python examples/delegate_to_llm.py --model qwen2.5-coder   # Ollama
    python examples/delegate_to_llm.py --driver docker ...                                             # in a container

With no provider configured it says what to set and exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

PROVIDER_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY")
TASK = (
    "The tests in test_fizzbuzz.py fail. Fix fizzbuzz.py (not the tests) so that "
    "`python3 -m unittest -q` passes, and run the tests to show it."
)
FILES = {
    "fizzbuzz.py": (
        "def fizzbuzz(n):\n"
        "    if n % 3 == 0:\n"
        "        return 'Fizz'\n"
        "    if n % 5 == 0:\n"
        "        return 'Buzz'\n"
        "    if n % 15 == 0:\n"
        "        return 'FizzBuzz'\n"
        "    return str(n)\n"
    ),
    "test_fizzbuzz.py": (
        "import unittest\nfrom fizzbuzz import fizzbuzz\n\n"
        "class FizzBuzz(unittest.TestCase):\n"
        "    def test_words(self):\n"
        "        self.assertEqual([fizzbuzz(n) for n in (3, 5, 15, 7)], ['Fizz', 'Buzz', 'FizzBuzz', '7'])\n"
    ),
}


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    if result.is_error:
        raise RuntimeError(result.content[0].text)
    return result.structured_content or {}


async def main(driver: str, model: str | None, home: str) -> None:
    args = ["-m", "mcp_sessions", "--driver", driver, "--agent", "llm"]
    if model:
        args += ["--model", model]
    # The server reads the provider's variables from its environment; the sandbox never gets them.
    env = {k: v for k, v in os.environ.items() if k in PROVIDER_VARIABLES or k.startswith("MCP_SESSIONS_")}
    env["MCP_SESSIONS_HOME"] = home
    async with Client(StdioServerParameters(command=sys.executable, args=args, env=env), mode="legacy") as client:
        session = await call(client, "create_session", title="fix fizzbuzz", files=FILES)
        if session["status"] != "ready":
            sys.exit(f"The session could not start: {session['failure_reason']}")
        sid = session["id"]
        reply = await call(client, "send_message", session_id=sid, text=TASK, wait_s=20)
        while reply.get("status") == "busy":  # a model takes a while: follow with short waits
            print(f"... still working (turn {reply.get('turn', '?')})", file=sys.stderr)
            detail = await call(client, "get_session", session_id=sid, wait_s=30)
            reply = {"status": detail["session"]["status"], **(detail["session"]["last_turn"] or {})}
        transcript = (await client.read_resource(f"session://{sid}/transcript")).contents[0].text
        fixed = (await client.read_resource(f"session://{sid}/files/fizzbuzz.py")).contents[0].text
        usage = (await call(client, "get_session", session_id=sid))["session"]["usage"]
        await call(client, "close_session", session_id=sid, delete=True)
    print(transcript)
    print("== fizzbuzz.py after the turn\n" + fixed)
    print(
        f"== usage: {usage['input_tokens']} input, {usage['output_tokens']} output tokens; "
        f"cost ${usage['cost_usd']:.6f} " + " ".join(f"({m}: ${c:.6f})" for m, c in usage["cost_by_model"].items())
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Delegate a small coding task to the llm agent.")
    parser.add_argument("--driver", choices=["local", "docker"], default="local")
    parser.add_argument("--model", default=os.environ.get("MCP_SESSIONS_MODEL"), help="model name (or MCP_SESSIONS_MODEL)")
    parser.add_argument("--home", help="state folder for the server (default: a throwaway one)")
    options = parser.parse_args()
    if not any(os.environ.get(name) for name in PROVIDER_VARIABLES):
        print(
            "No model provider is configured. Set one of:\n"
            "  OPENAI_API_KEY=...                         (OpenAI; add OPENAI_BASE_URL for LiteLLM, vLLM, ...)\n"
            "  OPENAI_BASE_URL=http://localhost:11434/v1  (Ollama or llama.cpp's server, no key)\n"
            "  ANTHROPIC_API_KEY=...                      (Anthropic)\n"
            "and pass --model (or MCP_SESSIONS_MODEL)."
        )
        sys.exit(0)
    anyio.run(main, options.driver, options.model, options.home or tempfile.mkdtemp(prefix="delegate-"))
