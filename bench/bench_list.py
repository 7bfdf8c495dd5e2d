"""How long list_sessions takes with a status filter and the default page of 50, over 10,000 sessions.

    python bench/bench_list.py [--sessions 10000] [--calls 200] [--status ready] [--write BENCHMARKS.md]

Fills a fresh state folder through Store.insert (mixed statuses, turn outputs of realistic sizes), then
times the same query at each layer, in one run:

- sqlite3: the store's two statements (COUNT(*) and the page) on a plain connection, no decoding;
- sqlite3 + decode: the same plus parsing each row's stored summary into a SessionSummary, as the server does
  (and, for comparison, decoding the whole records instead, as schema 2 had to);
- server: SessionManager.list, what the list_sessions tool calls (also with the other filters);
- stdio, raw: `python -m mcp_sessions` driven with JSON-RPC lines written and read by hand;
- stdio: the list_sessions tool through the MCP Python SDK client against `python -m mcp_sessions`.

Median and p90 over `--calls` calls after a warm-up. With --write, the table replaces this benchmark's
section of the given Markdown file (or is appended to it), with the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from report import command_line, target_cell, write_section

from mcp_sessions.app import open_manager
from mcp_sessions.models import SUMMARY_FIELDS, Session, SessionRecord, SessionSummary, TextBlock, TurnSummary
from mcp_sessions.settings import Settings
from mcp_sessions.store import Store

SECTION = "## list_sessions: a status filter and the first page"
TARGETS = {"server": 5.0, "stdio": 15.0}
STATUS_MIX = [("dead", 60), ("ready", 20), ("failed", 10), ("busy", 5), ("creating", 5)]
WORDS = [
    "make",
    "the",
    "tests",
    "pass",
    "fix",
    "the",
    "build",
    "read",
    "the",
    "logs",
    "update",
    "deps",
    "run",
    "lint",
    "refactor",
    "module",
    "add",
    "docs",
]


# -- filling -------------------------------------------------------------------------------------


def output_size(rng: random.Random) -> int:
    """Bytes of the last turn's output: mostly short, some long, a few at the 32 KiB cap."""
    roll = rng.random()
    if roll < 0.70:
        return rng.randint(0, 2000)
    if roll < 0.95:
        return rng.randint(2000, 16000)
    return 32768


def make_record(rng: random.Random, i: int, start: datetime) -> SessionRecord:
    status = rng.choices([s for s, _ in STATUS_MIX], [w for _, w in STATUS_MIX])[0]
    created = start + timedelta(seconds=i * 7 + rng.random())
    text = " ".join(rng.choices(WORDS, k=12))
    output = "".join(rng.choices("abcdefghij klmnop\n", k=output_size(rng)))
    finished = status in ("dead", "failed")
    turns = 0 if status == "creating" else rng.randint(1, 20)
    session = Session(
        id=f"ses_{rng.getrandbits(128):032x}",
        title=text[:40] if rng.random() < 0.5 else None,
        tags=rng.sample(["ci", "nightly", "repo-a", "repo-b", "urgent"], rng.randint(0, 3)),
        driver=rng.choice(["local", "docker"]),
        owner=rng.choice([None, "team-a", "team-b", "team-c"]),
        agent="shell",
        status=status,  # type: ignore[arg-type]
        phase="queued" if status == "creating" else "ready",
        failure_reason="sandbox exited with code 137" if status == "failed" else None,
        close_reason="closed" if status == "dead" else None,
        created_at=created,
        started_at=created + timedelta(seconds=1),
        last_activity_at=created + timedelta(seconds=60),
        finished_at=created + timedelta(seconds=90) if finished else None,
        command_timeout_s=600,
        turns=turns,
        preview=text,
        last_response=[TextBlock(text=output)] if turns else [],
        output_preview=output[-500:] if turns else None,
        last_turn=TurnSummary(
            turn=turns,
            status="completed",
            started_at=created,
            finished_at=created,
            duration_s=1.5,
            exit_code=0,
            output=output,
            output_bytes=len(output),
        )
        if turns
        else None,
        workspace=f"/srv/mcp-sessions/workspaces/{i}/workspace",
    )
    return SessionRecord(session=session, env={"CI": "1"})


async def fill(home: Path, count: int) -> dict[str, int]:
    rng = random.Random(10_000)
    start = datetime.now(UTC) - timedelta(days=30)
    store = await Store.open(home / "sessions.db")
    statuses: dict[str, int] = {}
    try:
        for i in range(count):
            record = make_record(rng, i, start)
            statuses[record.session.status] = statuses.get(record.session.status, 0) + 1
            await store.insert(record, [("session.created", {})])
    finally:
        await store.aclose()
    return statuses


# -- timing --------------------------------------------------------------------------------------


def summarize(samples_ns: list[int]) -> tuple[float, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    return statistics.median(ms), statistics.quantiles(ms, n=10)[8]


def time_sync(fn: Callable[[], Any], calls: int, warmup: int) -> list[int]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return samples


async def time_async(fn: Callable[[], Awaitable[Any]], calls: int, warmup: int) -> list[int]:
    for _ in range(warmup):
        await fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        await fn()
        samples.append(time.perf_counter_ns() - t0)
    return samples


# The statements Store.query runs for `statuses=[status]`, limit 50 (it asks for one row more).
COUNT_SQL = "SELECT COUNT(*) FROM sessions WHERE status IN (?)"
PAGE_SQL = "SELECT created_at, id FROM sessions WHERE status IN (?) ORDER BY created_at DESC, id DESC LIMIT ?"
SUMMARIES_SQL = "SELECT id, summary FROM sessions WHERE id IN ({})"
RECORDS_SQL = PAGE_SQL.replace("id FROM", "id, record FROM")


def raw_sqlite(db: Path, status: str, calls: int, warmup: int) -> dict[str, Any]:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        plans = {
            name: [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
            for name, sql, args in (("count", COUNT_SQL, (status,)), ("page", PAGE_SQL, (status, 51)))
        }

        def count() -> int:
            return conn.execute(COUNT_SQL, (status,)).fetchone()[0]

        def page() -> list[Any]:
            ids = [r[1] for r in conn.execute(PAGE_SQL, (status, 51)).fetchall()[:50]]
            return conn.execute(SUMMARIES_SQL.format(",".join("?" * len(ids))), ids).fetchall()

        def both() -> None:
            count()
            page()

        def both_decoded() -> None:
            count()
            for row in page():
                SessionSummary.model_validate_json(row[1])

        def from_records() -> None:
            count()
            for row in conn.execute(RECORDS_SQL, (status, 51)).fetchall()[:50]:
                session = SessionRecord.model_validate_json(row[2]).session
                SessionSummary.model_validate(session.model_dump(include=SUMMARY_FIELDS))

        other_counts = []
        for _, _, where, where_args in OTHER_FILTERS:
            sql = f"SELECT COUNT(*) FROM sessions WHERE {where}"
            plan = "; ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, where_args))
            samples = time_sync(lambda sql=sql, args=where_args: conn.execute(sql, args).fetchone(), calls, warmup)
            other_counts.append((samples, plan))

        rows = page()
        return {
            "other_counts": other_counts,
            "plans": plans,
            "total": count(),
            "page_json_bytes": sum(len(r[1]) for r in rows),
            "records_json_bytes": sum(len(r[2]) for r in conn.execute(RECORDS_SQL, (status, 51)).fetchall()[:50]),
            "count": time_sync(count, calls, warmup),
            "page": time_sync(page, calls, warmup),
            "both": time_sync(both, calls, warmup),
            "decoded": time_sync(both_decoded, calls, warmup),
            "from_records": time_sync(from_records, calls, warmup),
        }
    finally:
        conn.close()


TAG_SQL = "id IN (SELECT session_id FROM session_tags WHERE tag=?)"
OTHER_FILTERS: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    # (name, SessionManager.list arguments, the WHERE clause Store.query makes of them, its arguments)
    ("no filter", {}, "1", ()),
    ("the live statuses", {"statuses": ["creating", "ready", "busy"]}, "status IN (?,?,?)", ("creating", "ready", "busy")),
    ("a tag", {"tags": ["urgent"]}, TAG_SQL, ("urgent",)),
    ("a driver", {"driver": "docker"}, "driver=?", ("docker",)),
    ("a status and a tag", {"statuses": ["ready"], "tags": ["urgent"]}, f"status IN (?) AND {TAG_SQL}", ("ready", "urgent")),
    ("an owner (every list over HTTP with tokens)", {"owner": "team-a"}, "owner=?", ("team-a",)),
    ("an owner and a status", {"owner": "team-a", "statuses": ["ready"]}, "status IN (?) AND owner=?", ("ready", "team-a")),
]


async def in_server(home: Path, status: str, calls: int, warmup: int) -> tuple[list[int], list[list[int]]]:
    """The status filter of the targets, then the other filters, through SessionManager.list."""
    async with open_manager(Settings(home=home)) as manager:
        page = await manager.list_sessions(statuses=[status])
        assert len(page.sessions) == 50, page.total
        main = await time_async(lambda: manager.list_sessions(statuses=[status]), calls, warmup)
        others = []
        for _, filters, _, _ in OTHER_FILTERS:
            others.append(await time_async(lambda filters=filters: manager.list_sessions(**filters), calls, warmup))
        return main, others


def server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SESSIONS_")}
    env["MCP_SESSIONS_HOME"] = str(home)
    return env


async def over_stdio_raw(home: Path, status: str, calls: int, warmup: int) -> tuple[list[int], int]:
    """JSON-RPC lines written and read by hand: the server and the pipe, without a client library's work."""
    from anyio.streams.buffered import BufferedByteReceiveStream

    async with await anyio.open_process([sys.executable, "-m", "mcp_sessions"], env=server_env(home)) as server:
        assert server.stdin is not None and server.stdout is not None
        lines = BufferedByteReceiveStream(server.stdout)
        last_id = 0
        size = 0

        async def request(method: str, params: dict[str, Any]) -> dict[str, Any]:
            nonlocal last_id, size
            last_id += 1
            message = {"jsonrpc": "2.0", "id": last_id, "method": method, "params": params}
            await server.stdin.send(json.dumps(message).encode() + b"\n")
            while True:
                line = await lines.receive_until(b"\n", 64 * 1024 * 1024)
                reply = json.loads(line)
                if reply.get("id") == last_id:
                    size = len(line)
                    return reply

        client = {"name": "bench", "version": "0"}
        await request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client})
        await server.stdin.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')

        async def call() -> None:
            reply = await request("tools/call", {"name": "list_sessions", "arguments": {"statuses": [status]}})
            assert len(reply["result"]["structuredContent"]["sessions"]) == 50

        samples = await time_async(call, calls, warmup)
        await server.stdin.aclose()
        return samples, size


async def over_stdio(home: Path, status: str, calls: int, warmup: int, mode: str) -> tuple[list[int], list[int]]:
    """Tool calls through the SDK client; then, alone, the schema check the client makes of each reply."""
    from jsonschema import exceptions, validators
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_sessions"], env=server_env(home))
    async with Client(params, mode=mode) as client:
        reply: dict[str, Any] = {}

        async def call() -> None:
            result = await client.call_tool("list_sessions", {"statuses": [status]})
            assert not result.is_error and result.structured_content is not None
            assert len(result.structured_content["sessions"]) == 50
            reply.update(result.structured_content)

        samples = await time_async(call, calls, warmup)
        schema = next(t for t in (await client.list_tools()).tools if t.name == "list_sessions").output_schema
    validator = validators.validator_for(schema)(schema)  # compiled once, as the client caches it
    check = time_sync(lambda: exceptions.best_match(validator.iter_errors(reply)), calls, warmup)
    return samples, check


# -- reporting -----------------------------------------------------------------------------------


def table(rows: list[tuple[str, str, list[int]]], targets: bool = True) -> str:
    lines = ["| layer | what is timed | median ms | p90 ms |" + (" target |" if targets else "")]
    lines.append("|---|---|---:|---:|" + ("---|" if targets else ""))
    for layer, what, samples in rows:
        median, p90 = summarize(samples)
        line = f"| {layer} | {what} | {median:.2f} | {p90:.2f} |"
        if targets:
            line += f" {target_cell(median, None, max_ms=TARGETS.get(layer))} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000, help="sessions to fill the state folder with")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per layer")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per layer first")
    parser.add_argument("--status", default="ready", help="the status filter (default ready)")
    parser.add_argument("--mode", default="legacy", choices=["legacy", "auto"], help="MCP protocol era of the stdio client")
    parser.add_argument("--home", type=Path, help="state folder to fill (default: a fresh temporary one); must not exist")
    parser.add_argument("--write", type=Path, metavar="FILE", help="put the results in this Markdown file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-list-") as tmp:
        home = args.home or Path(tmp) / "home"
        if home.exists():
            parser.error(f"{home} exists; the benchmark needs a fresh state folder")
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        mix = anyio.run(fill, home, args.sessions)
        fill_s = time.perf_counter() - t0
        db = home / "sessions.db"
        print(f"filled {db} with {args.sessions} sessions in {fill_s:.1f} s: {mix}", file=sys.stderr)

        raw = raw_sqlite(db, args.status, args.calls, args.warmup)
        server, others = anyio.run(in_server, home, args.status, args.calls, args.warmup)
        raw_stdio, reply_bytes = anyio.run(over_stdio_raw, home, args.status, args.calls, args.warmup)
        stdio, schema_check = anyio.run(over_stdio, home, args.status, args.calls, args.warmup, args.mode)
        db_mb = db.stat().st_size / 1e6

    rows = [
        ("sqlite3", "`COUNT(*)` alone", raw["count"]),
        ("sqlite3", "the page's 51 ids, then the 50 summaries, not decoded", raw["page"]),
        ("sqlite3", "both statements, no decoding (the baseline)", raw["both"]),
        (
            "sqlite3 + decode",
            "both, and the 50 stored summaries parsed into `SessionSummary` (the server's work)",
            raw["decoded"],
        ),
        (
            "sqlite3 + decode",
            "for comparison: whole records read and cut down to summaries instead (schema 2)",
            raw["from_records"],
        ),
        ("server", "`SessionManager.list_sessions(statuses=[...])`, limit 50", server),
        (
            "stdio, raw",
            f"`tools/call list_sessions` as JSON-RPC lines by hand, no client library ({reply_bytes / 1e3:.0f} KB reply)",
            raw_stdio,
        ),
        ("stdio", f"`list_sessions` through the MCP Python SDK client ({args.mode} era)", stdio),
        ("client", "of that: the SDK's jsonschema check of one reply against the output schema, alone", schema_check),
    ]
    other_lines = [
        "| filter | server median ms | server p90 ms | of which `COUNT(*)` alone, median ms | plan of the `COUNT(*)` |",
        "|---|---:|---:|---:|---|",
    ]
    for (name, filters, _, _), samples, (count_samples, plan) in zip(OTHER_FILTERS, others, raw["other_counts"], strict=True):
        median, p90 = summarize(samples)
        shown = ", ".join(f"{k}={v}" for k, v in filters.items()) or "none"
        other_lines.append(f"| {name} (`{shown}`) | {median:.2f} | {p90:.2f} | {summarize(count_samples)[0]:.2f} | `{plan}` |")
    command = command_line()
    med = {
        name: summarize(samples)[0]
        for name, samples in (
            ("sql", raw["both"]),
            ("decode", raw["decoded"]),
            ("old", raw["from_records"]),
            ("server", server),
            ("raw", raw_stdio),
            ("sdk", stdio),
            ("check", schema_check),
        )
    }
    reading = (
        f"Where the time goes: SQLite answers both statements in {med['sql']:.2f} ms; parsing the 50 stored "
        f"summaries takes {med['decode'] - med['sql']:.2f} ms more (decoding the whole records instead, each carrying "
        f"its last turn's output twice, took {med['old'] - med['sql']:.2f} ms); the server answers in "
        f"{med['server']:.2f} ms. Over stdio the server "
        f"answers a hand-written client in {med['raw']:.2f} ms; the MCP Python SDK client adds "
        f"{med['sdk'] - med['raw']:.2f} ms; checking one reply against the tool's output schema with jsonschema, as "
        f"it does on every call, takes {med['check']:.2f} ms on its own."
    )
    section = "\n".join(
        [
            SECTION,
            "",
            f'`list_sessions(statuses=["{args.status}"])`, default page of 50, over {args.sessions:,} sessions '
            f"({', '.join(f'{n:,} {s}' for s, n in sorted(mix.items(), key=lambda kv: -kv[1]))}; {raw['total']:,} match). "
            f"Records carry turn outputs of realistic sizes (most under 2 KB, 5% at the 32 KiB cap): the page's 50 "
            f"records are {raw['records_json_bytes'] / 1e3:,.0f} KB of JSON, their stored summaries "
            f"{raw['page_json_bytes'] / 1e3:,.0f} KB; the database is {db_mb:,.0f} MB. "
            f"{args.calls} timed calls per layer after {args.warmup} warm-up calls.",
            "",
            "```",
            command,
            "```",
            "",
            table(rows),
            "",
            f"Query plans: count `{'; '.join(raw['plans']['count'])}`, page `{'; '.join(raw['plans']['page'])}`.",
            "",
            reading,
            "",
            "The other filters, first page of 50 through `SessionManager.list`, in the same run; each has an index "
            "(tags through the `session_tags` table), so `COUNT(*)` (the `total`) does not read every row:",
            "",
            "\n".join(other_lines),
            "",
            f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"{datetime.now(UTC):%Y-%m-%d}; load average {load_before:.2f} before the run, "
            f"{os.getloadavg()[0]:.2f} after (other work on the machine shows up in the p90s).",
            "",
        ]
    )
    print(section)
    if args.write:
        write_section(args.write, section)
        print(f"written to {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()
