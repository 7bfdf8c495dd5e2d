"""A throwaway PostgreSQL cluster for the tests of the PostgreSQL store, one per test run.

`postgres_cluster` runs initdb into a temporary folder and starts the server with pg_ctl on a free port of
127.0.0.1 (and its socket in that folder), as the `postgres` user when the tests run as root (PostgreSQL
refuses to run as root), trusting local connections; it is stopped and removed at the end of the run.
`postgres_url` is a new, empty database on it per test. Without PostgreSQL's programs
(`bash scripts/install-postgres.sh`) the tests skip, and fail under CI.

Use from a test module: `from tests.postgres_support import postgres_cluster, postgres_url  # noqa: F401`.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ci import unavailable


def bindir() -> Path | None:
    """Where the newest installed PostgreSQL's programs are."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def start_cluster(folder: Path, programs: Path, durable: bool = False) -> str:
    """Initialize and start a cluster in `folder`; its URL without a database name. Not `durable`, for tests:
    commits are not flushed to disk, which PostgreSQL's defaults do (benchmarks keep those)."""
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()
    run = {"check": True, "capture_output": True, "text": True}
    subprocess.run(
        _as_postgres([str(programs / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]), **run
    )  # type: ignore[call-overload]
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=300"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    subprocess.run(
        _as_postgres([str(programs / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start"]), **run
    )  # type: ignore[call-overload]
    return f"postgresql://postgres@127.0.0.1:{port}"


def stop_cluster(folder: Path, programs: Path) -> None:
    subprocess.run(
        _as_postgres([str(programs / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop"]), capture_output=True
    )
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[str]:
    found = bindir()
    if found is None:
        unavailable("PostgreSQL is not installed (bash scripts/install-postgres.sh)")
    folder = Path(tempfile.mkdtemp(prefix="mcp-sessions-pg-"))
    folder.chmod(0o755)
    try:
        url = start_cluster(folder, found)
    except subprocess.CalledProcessError as e:
        shutil.rmtree(folder, ignore_errors=True)
        unavailable(f"a PostgreSQL cluster did not start: {e.stderr or e.stdout}")
    try:
        yield url
    finally:
        stop_cluster(folder, found)


def create_database(cluster: str) -> str:
    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(f"{cluster}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return f"{cluster}/{name}"


def drop_database(url: str) -> None:
    import psycopg

    cluster, _, name = url.rpartition("/")
    with psycopg.connect(f"{cluster}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


@pytest.fixture
def postgres_url(postgres_cluster: str) -> Iterator[str]:
    """A new, empty database for one test."""
    url = create_database(postgres_cluster)
    yield url
    drop_database(url)
