"""PostgreSQL against SQLite in one run: list_sessions over 10,000 sessions, a send_message round trip, and
the figures docs/SCALING.md sizes a deployment with.

    python bench/bench_postgres.py [--sessions 10000] [--calls 200] [--database-url URL] [--write BENCHMARKS.md]

Without --database-url it starts a throwaway PostgreSQL cluster (tests/postgres_support.py) with
PostgreSQL's default settings, on this machine, over TCP on 127.0.0.1; the store's connections do not wait
for each commit's flush (store_postgres.py says why).

- list: SessionManager.list_sessions with a status filter, first page of 50 (what the list_sessions tool
  calls), over `--sessions` sessions filled through Store.insert (bench_list.py's records), each store
  timed in alternation with the other. Target: PostgreSQL at most 2x SQLite.
- send_message `true`: through the MCP SDK client to `python -m mcp_sessions` over stdio, local driver,
  one server per store, alternated. Target: PostgreSQL at most 2 ms more than SQLite.
- Per turn on PostgreSQL: transactions committed and rows written (pg_stat_database), the server's CPU
  time (its /proc/PID/stat), and the server's memory per idle session (RSS before and after 200 more).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from bench_list import OTHER_FILTERS, make_record
from mcp import Client, StdioServerParameters
from report import paragraph, publish, target_cell
from timing import interleaved

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mcp_sessions.app import open_manager, open_store
from mcp_sessions.settings import Settings
from tests.postgres_support import bindir, create_database, start_cluster, stop_cluster

SECTION = "## PostgreSQL against SQLite"
LIST_RATIO = 2.0
TURN_EXTRA_MS = 2.0
IDLE_SESSIONS = 200


def ms(samples: list[float]) -> tuple[float, float]:
    values = sorted(s * 1000 for s in samples)
    return statistics.median(values), statistics.quantiles(values, n=10)[8]


async def fill(settings: Settings, count: int) -> None:
    rng = random.Random(10_000)
    start = datetime.now(UTC) - timedelta(days=30)
    store = await open_store(settings)
    try:
        for i in range(count):
            await store.insert(make_record(rng, i, start), [("session.created", {})])
    finally:
        await store.aclose()


async def lists(sqlite: Settings, postgres: Settings, calls: int) -> tuple[list[float], list[float]]:
    async with open_manager(sqlite) as lite, open_manager(postgres) as pg:
        for manager in (lite, pg):
            assert len((await manager.list_sessions(statuses=["ready"])).sessions) == 50

        async def on_pg() -> None:
            await pg.list_sessions(statuses=["ready"])

        async def on_lite() -> None:
            await lite.list_sessions(statuses=["ready"])

        return await interleaved(calls, on_pg, on_lite, warmup=20)


def env_of(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SESSIONS_")}
    env |= {"MCP_SESSIONS_HOME": str(settings.home), "MCP_SESSIONS_IDLE_TIMEOUT_S": "0"}
    if settings.database_url:
        env["MCP_SESSIONS_DATABASE_URL"] = settings.database_url
    return env


def server_pid(home: Path) -> int:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                environ = Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if b"mcp_sessions" in cmd and f"MCP_SESSIONS_HOME={home}".encode() in environ:
                return int(entry.name)
    raise LookupError(home)


def cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(pid)


@asynccontextmanager
async def stdio(settings: Settings) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_sessions"], env=env_of(settings))
    async with Client(params, mode="legacy") as client:
        yield client


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error and result.structured_content is not None, result.content
    return result.structured_content


def indexes_sqlite(db: Path, sql: str, args: tuple[str, ...]) -> str:
    conn = sqlite3.connect(db)
    try:
        steps = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
    finally:
        conn.close()
    return ", ".join(
        m[1] if (m := re.search(r"INDEX (\w+)", step)) else step.lower() for step in steps if "SCAN" in step or "SEARCH" in step
    )


def indexes_postgres(url: str, sql: str, args: tuple[str, ...]) -> str:
    import psycopg

    from mcp_sessions.store_postgres import translate

    with psycopg.connect(url, autocommit=True) as conn:
        plan = conn.execute("EXPLAIN (FORMAT JSON) " + translate(sql), args).fetchone()[0][0]["Plan"]  # type: ignore[index]
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            found.append(node["Index Name"])
        elif node.get("Node Type") == "Seq Scan":
            found.append(f"scan {node['Relation Name']}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    return ", ".join(found)


def plans(db: Path, url: str) -> str:
    """The indexes each list filter's statements read, on both databases."""
    rows = ["| filter | statement | SQLite reads | PostgreSQL reads |", "| --- | --- | --- | --- |"]
    for name, _, where, args in [("a status", {}, "status IN (?)", ("ready",)), *OTHER_FILTERS]:
        for kind, sql in (
            ("count", f"SELECT COUNT(*) FROM sessions WHERE {where}"),
            ("page", f"SELECT created_at, id FROM sessions WHERE {where} ORDER BY created_at DESC, id DESC LIMIT 51"),
        ):
            rows.append(f"| {name} | {kind} | {indexes_sqlite(db, sql, args)} | {indexes_postgres(url, sql, args)} |")
    return "\n".join(rows)


def vacuum(url: str) -> None:
    """What autovacuum does to a table in service: statistics for the planner, and the visibility map that
    lets COUNT(*) read only the index (without it, a freshly filled table is scanned whole)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE sessions")


def db_counters(url: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname=current_database()"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


async def turns(sqlite: Settings, postgres: Settings, calls: int) -> dict[str, Any]:
    async with stdio(sqlite) as lite, stdio(postgres) as pg:
        lite_sid = (await call(lite, "create_session", driver="local", wait_s=50))["id"]
        pg_sid = (await call(pg, "create_session", driver="local", wait_s=50))["id"]

        async def on_pg() -> None:
            assert (await call(pg, "send_message", session_id=pg_sid, text="true"))["turn_status"] == "completed"

        async def on_lite() -> None:
            assert (await call(lite, "send_message", session_id=lite_sid, text="true"))["turn_status"] == "completed"

        pg_times, lite_times = await interleaved(calls, on_pg, on_lite, warmup=5)

        assert postgres.database_url is not None
        await anyio.sleep(1.0)  # pg_stat_database lags its backends by up to 0.5 s
        pid = server_pid(postgres.home)
        commits, rows = db_counters(postgres.database_url)
        cpu = cpu_s(pid)
        for _ in range(calls):
            await on_pg()
        cpu = cpu_s(pid) - cpu
        await anyio.sleep(1.0)
        commits2, rows2 = db_counters(postgres.database_url)
        before = rss_mb(pid)
        for _ in range(IDLE_SESSIONS):
            await call(pg, "create_session", driver="local")
        after = rss_mb(pid)
        return {
            "pg": pg_times,
            "lite": lite_times,
            "commits": (commits2 - commits) / calls,
            "rows": (rows2 - rows) / calls,
            "cpu_ms": cpu * 1000 / calls,
            "kb_per_session": (after - before) * 1024 / IDLE_SESSIONS,
            "rss_mb": after,
        }


def render(count: int, list_times: tuple[list[float], list[float]], turn: dict[str, Any], indexes: str) -> tuple[str, str]:
    pg_list, lite_list = ms(list_times[0]), ms(list_times[1])
    pg_turn, lite_turn = ms(turn["pg"]), ms(turn["lite"])
    extra = pg_turn[0] - lite_turn[0]
    rows = [
        "| measure | SQLite median (p90) | PostgreSQL median (p90) | target |",
        "| --- | --- | --- | --- |",
        f"| list_sessions, status filter, page of 50, {count:,} sessions (server) | {lite_list[0]:.2f} ms ({lite_list[1]:.2f}) "
        f"| {pg_list[0]:.2f} ms ({pg_list[1]:.2f}) | {target_cell(pg_list[0], lite_list[0], max_ratio=LIST_RATIO)} |",
        f"| send_message `true` over stdio, local driver | {lite_turn[0]:.2f} ms ({lite_turn[1]:.2f}) | {pg_turn[0]:.2f} ms "
        f"({pg_turn[1]:.2f}) | ≤ +{TURN_EXTRA_MS:g} ms: {'met' if extra <= TURN_EXTRA_MS else 'MISSED'} ({extra:+.2f} ms) |",
        "",
        "| per turn on PostgreSQL (send_message `true`) | figure |",
        "| --- | --- |",
        f"| transactions committed (a read outside a transaction counts as one) | {turn['commits']:.1f} |",
        f"| rows inserted, updated or deleted | {turn['rows']:.1f} |",
        f"| server CPU time (user + system) | {turn['cpu_ms']:.1f} ms |",
        f"| server memory per idle session (RSS over {IDLE_SESSIONS} more) | {turn['kb_per_session']:.0f} KiB "
        f"(RSS {turn['rss_mb']:.0f} MiB) |",
        "",
        indexes,
    ]
    intro = paragraph(
        f"One run, each store timed in alternation with the other on {platform.machine()}, {os.cpu_count()} cores",
        "(shared); PostgreSQL 15 on the same machine over TCP, commits not waiting for their flush as the",
        "store sets by default (SQLite in WAL, synchronous=NORMAL, as shipped: the same durability), the table",
        "vacuumed and analyzed after the fill, as autovacuum keeps it in service.",
        "The server runs every PostgreSQL call in its worker thread, one round trip or more each. The last",
        "table names the indexes each list filter's statements read (EXPLAIN on both, after the fill).",
    )
    return intro, "\n".join(rows)


async def run(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
    cluster_dir = None
    try:
        url = args.database_url
        if url is None:
            programs = bindir()
            if programs is None:
                sys.exit("PostgreSQL is not installed: bash scripts/install-postgres.sh, or give --database-url")
            cluster_dir = Path(tempfile.mkdtemp(prefix="bench-pg-cluster-"))
            cluster_dir.chmod(0o755)
            url = create_database(start_cluster(cluster_dir, programs, durable=True))
        sqlite = Settings(home=folder / "sqlite")
        postgres = Settings(home=folder / "postgres", database_url=url)
        for settings in (sqlite, postgres):
            await fill(settings, args.sessions)
        vacuum(url)
        list_times = await lists(sqlite, postgres, args.calls)
        sqlite2 = Settings(home=folder / "sqlite-turns")
        postgres2 = Settings(home=folder / "postgres-turns", database_url=create_database(url.rpartition("/")[0]))
        turn = await turns(sqlite2, postgres2, args.calls)
        intro, table = render(args.sessions, list_times, turn, plans(sqlite.db_path, url))
        publish(SECTION, intro, table, args.write)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if cluster_dir is not None and (programs := bindir()) is not None:
            stop_cluster(cluster_dir, programs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000, help="sessions to fill each store with")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per store and measure")
    parser.add_argument("--database-url", help="a PostgreSQL database to use (default: a throwaway cluster)")
    parser.add_argument("--write", type=Path, metavar="FILE", help="put the results in this Markdown file")
    anyio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
