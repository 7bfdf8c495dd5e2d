"""An orchestrator that delegates three subtasks to mcp-sessions and collects the results.

It starts the server over stdio with the official MCP client, exactly as Claude Desktop or an agent
framework would, then:

1. creates a parent session with a budget for the whole job (at most 10 turns, whoever runs them), and
   under it three child sessions in parallel, each with the files its subtask needs;
2. hands each a different subtask: run one shard of a small test suite, count lines of code, and
   build and run a tiny program followed by a "benchmark" that is too slow;
3. follows each with send_message(wait_s=...) and get_session(wait_s=...), never blocking a call for
   long, and interrupts the one that runs past its deadline;
4. meanwhile tries two fixes of a bug from the same state: a child session that reproduces a failing
   test is forked twice (each fork gets the workspace, the shell and the conversation), each fork tries
   one fix, and the one whose test passes is kept while the other is closed;
5. reads the usage rolled up over the tree, closes the parent, which closes and deletes its children too
   (the results are collected), and prints a summary table.

    python examples/orchestrator.py                    # local driver, throwaway state folder
    python examples/orchestrator.py --driver docker    # one hardened container per subtask
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

# The files each subtask starts with: workspace path -> text.
TEST_SUITE = {
    "calc.py": "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a * b\n",
    "test_add.py": (
        "import unittest\nfrom calc import add\n\n"
        "class Add(unittest.TestCase):\n"
        "    def test_small(self): self.assertEqual(add(2, 3), 5)\n"
        "    def test_negative(self): self.assertEqual(add(-2, -3), -5)\n"
    ),
    "test_mul.py": (
        "import unittest\nfrom calc import mul\n\n"
        "class Mul(unittest.TestCase):\n"
        "    def test_small(self): self.assertEqual(mul(2, 3), 6)\n"
        "    def test_zero(self): self.assertEqual(mul(7, 0), 0)\n"
    ),
}
SOURCES = {
    "app/main.py": "import util\n\nprint(util.greet('world'))\n",
    "app/util.py": "def greet(name):\n    return f'hello {name}'\n\n\ndef shout(name):\n    return greet(name).upper()\n",
    "app/README.md": "# app\n\nNot code: not counted.\n",
}
PROGRAM = {"hello/__main__.py": "import sys\nprint('built and running on', sys.platform)\n"}
BUG = {"calc.py": "def mul(a, b):\n    return a + b\n", "test_mul.py": TEST_SUITE["test_mul.py"]}
FIXES = {"a ** b": "sed -i 's/a + b/a ** b/' calc.py", "a * b": "sed -i 's/a + b/a * b/' calc.py"}
"""Two candidate fixes of the bug in BUG, each tried in a fork of the session that found it."""
TEST = "python3 -B -m unittest -q test_mul 2>&1 | tail -n 1"
"""-B: no bytecode cache, whose mtime check a fix of the same size made within the second would pass."""


@dataclass
class Subtask:
    name: str
    files: dict[str, str]
    steps: list[str]
    deadline_s: float
    session_id: str = ""
    outputs: list[str] = field(default_factory=list)
    outcome: str = "not started"
    seconds: float = 0.0


SUBTASKS = [
    Subtask("test shard 1/2", TEST_SUITE, ["python3 -m unittest -v test_add 2>&1 | tail -n 3"], deadline_s=60),
    Subtask(
        "count lines of code",
        SOURCES,
        ["find app -name '*.py' | sort | xargs wc -l"],
        deadline_s=60,
    ),
    Subtask(
        "build and run",
        PROGRAM,
        [
            "python3 -m zipapp hello -o hello.pyz && python3 hello.pyz",
            # A "benchmark" far slower than the orchestrator will wait for: it gets interrupted.
            "echo benchmark starting; sleep 600; echo benchmark done",
        ],
        deadline_s=4,
    ),
]


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    """Call a tool; a tool error becomes an exception carrying the server's sentence."""
    result = await client.call_tool(tool, args)
    if result.is_error:
        raise RuntimeError(result.content[0].text)
    return result.structured_content or {}


async def run_step(client: Client, task: Subtask, script: str, started: float) -> str:
    """Run one step: short waits in a loop, so no single call comes near a client's time-out."""
    reply = await call(client, "send_message", session_id=task.session_id, text=script, wait_s=2)
    while reply["status"] == "busy" or reply.get("turn_status") == "running":
        if time.monotonic() - started > task.deadline_s:
            await call(client, "interrupt", session_id=task.session_id)
            detail = await call(client, "get_session", session_id=task.session_id)
            task.outputs.append(detail["session"]["last_turn"]["output"])
            return "interrupted (deadline)"
        detail = await call(client, "get_session", session_id=task.session_id, wait_s=1)
        if detail["session"]["status"] != "busy":
            reply = {"status": "ready", **detail["session"]["last_turn"]}
            break
    task.outputs.append(reply["output"])
    return "ok" if reply.get("exit_code") == 0 else f"exit code {reply.get('exit_code')}"


async def run_subtask(client: Client, task: Subtask, driver: str, parent: str) -> None:
    started = time.monotonic()
    session = await call(
        client, "create_session", title=task.name, driver=driver, files=task.files, tags=["example"], parent_session_id=parent
    )
    task.session_id = session["id"]
    try:
        for script in task.steps:
            task.outcome = await run_step(client, task, script, started)
            if task.outcome != "ok":
                break
    finally:
        task.seconds = time.monotonic() - started


async def output_of(client: Client, session_id: str, script: str) -> str:
    """Run `script` in the session and wait for its turn to end, however long it takes: its output."""
    reply = await call(client, "send_message", session_id=session_id, text=script, wait_s=20)
    while reply["status"] == "busy":
        reply = (await call(client, "get_session", session_id=session_id, wait_s=20))["session"]["last_turn"]
        reply["status"] = "busy" if reply["status"] == "running" else "ready"
    return str(reply["output"]).strip()


async def try_fixes(client: Client, driver: str, parent: str) -> str:
    """Reproduce the bug once, fork the session for each candidate fix, keep the fork whose test passes."""
    found = await call(client, "create_session", title="bug", driver=driver, files=BUG, parent_session_id=parent)
    failing = await output_of(client, found["id"], TEST)
    assert failing.startswith("FAILED"), failing
    forks = {fix: await call(client, "fork_session", session_id=found["id"], title=f"fix: {fix}") for fix in FIXES}
    kept, tried = None, []
    for fix, fork in forks.items():
        assert fork["status"] == "ready", fork
        result = await output_of(client, fork["id"], f"{FIXES[fix]} && {TEST}")
        tried.append(f"{fix}: {result}")
        if result == "OK" and kept is None:
            kept = fix
        else:
            await call(client, "close_session", session_id=fork["id"])  # the fix that did not pass goes
    outcome = f"kept the fix {kept!r} of {len(FIXES)} tried in forks" if kept else "no fix passed"
    return outcome + " (" + "; ".join(tried) + ")"


def summary(tasks: list[Subtask]) -> str:
    rows = [("subtask", "session", "outcome", "seconds", "last output")]
    for t in tasks:
        last = (t.outputs[-1] if t.outputs else "").strip().splitlines()
        rows.append((t.name, t.session_id[:12] + "…", t.outcome, f"{t.seconds:.1f}", last[-1] if last else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


async def main(driver: str, home: str) -> None:
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_sessions", "--driver", driver], env={"MCP_SESSIONS_HOME": home}
    )
    async with Client(server, mode="legacy") as client:
        # The job's own session: its children are closed with it, and its budget binds every turn below it.
        parent = (await call(client, "create_session", title="orchestrator", driver=driver, max_turns=10))["id"]
        try:
            async with anyio.create_task_group() as tg:
                for task in SUBTASKS:
                    tg.start_soon(run_subtask, client, task, driver, parent)
                fixed = await try_fixes(client, driver, parent)
            tree = (await call(client, "get_session", session_id=parent))["usage_with_children"]
        finally:
            closed = await call(client, "close_session", session_id=parent, delete=True)
    print(summary(SUBTASKS))
    print(f"\n{fixed}")
    print(f"\ntree: {tree['sessions']} sessions, {tree['turns']} of 10 turns; {closed['closed_descendants']} children deleted")
    for task in SUBTASKS:
        print(f"\n== {task.name}\n" + "\n".join(o.rstrip() for o in task.outputs))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Delegate three subtasks to mcp-sessions.")
    parser.add_argument("--driver", choices=["local", "docker"], default="local")
    parser.add_argument("--home", help="state folder for the server (default: a throwaway one)")
    args = parser.parse_args()
    anyio.run(main, args.driver, args.home or tempfile.mkdtemp(prefix="orchestrator-"))
