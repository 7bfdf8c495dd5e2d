"""The store on its own, on SQLite and on PostgreSQL alike: filters and keyset pages over many sessions, and
schema versions. What only one of them has (SQLite's locking and its write-ahead log) is tested on that one."""

from __future__ import annotations

import base64
import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_sessions.errors import InvalidInput
from mcp_sessions.models import Message, Session, SessionRecord, TextBlock, summary_json
from mcp_sessions.store import SCHEMA_VERSION, Store, stamp
from tests.postgres_support import create_database, drop_database, postgres_cluster  # noqa: F401

pytestmark = pytest.mark.anyio
BACKENDS = ["sqlite", "postgres"]


class Place:
    """Where one test's database lives: a file for SQLite, a database of the test cluster for PostgreSQL."""

    def __init__(self, path: Path | None = None, url: str | None = None) -> None:
        self.path, self.url = path, url

    async def open(self) -> Store:
        if self.url is not None:
            from mcp_sessions.store_postgres import PostgresStore

            return await PostgresStore.connect(self.url)
        assert self.path is not None
        return await Store.open(self.path)

    def version(self) -> int:
        if self.url is not None:
            from mcp_sessions.store_postgres import schema_version

            return schema_version(self.url)
        assert self.path is not None
        return user_version(self.path)

    def at_version(self, version: int) -> Any:
        """A connection to the database brought to schema `version` only (as an older release left it),
        taking sqlite3's calls; close it before opening a store."""
        if self.url is not None:
            from mcp_sessions.store_postgres import migrate, open_connection

            conn = open_connection(self.url)
            migrate(conn, self.url, upto=version)
            return conn
        assert self.path is not None
        conn = sqlite3.connect(self.path, isolation_level=None)
        for target in range(1, version + 1):
            Store._migrate(conn, target)
        return conn


def make_place(request: pytest.FixtureRequest, folder: Path) -> Iterator[Place]:
    if request.param == "sqlite":
        yield Place(path=folder / "sessions.db")
        return
    url = create_database(request.getfixturevalue("postgres_cluster"))
    yield Place(url=url)
    drop_database(url)


@pytest.fixture(params=BACKENDS)
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    yield from make_place(request, tmp_path)


COUNT = 1000
STATUSES = ["creating", "ready", "busy", "failed", "dead"]
TAGS = ["red", "green", "blue", "big"]
DRIVERS = ["local", "docker", "remote"]
AGENTS = ["shell", "llm"]
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def make_sessions() -> list[Session]:
    """Varied sessions; every three share a creation time, so the id must break ties in the order."""
    rng = random.Random(20261122)
    sessions = [
        Session(
            id=f"ses_{rng.getrandbits(128):032x}",
            status=rng.choice(STATUSES),
            tags=sorted(rng.sample(TAGS, rng.randint(0, len(TAGS)))),
            driver=rng.choice(DRIVERS),
            agent=rng.choice(AGENTS),
            created_at=BASE + timedelta(milliseconds=1234 * (i // 3), microseconds=i // 3),
            command_timeout_s=600,
        )
        for i in range(COUNT)
    ]
    rng.shuffle(sessions)  # insertion order is not time order
    return sessions


@pytest.fixture(scope="module", params=BACKENDS)
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Place, list[Session]]]:
    """A database holding COUNT sessions inserted through Store.insert, shared by the read-only tests here."""
    for place in make_place(request, tmp_path_factory.mktemp("store")):
        anyio.run(fill, place)
        yield place, make_sessions()


async def fill(place: Place) -> None:
    store = await place.open()
    try:
        for s in make_sessions():
            await store.insert(SessionRecord(session=s), [("session.created", {})])
    finally:
        await store.aclose()


@pytest.fixture
async def store(filled: tuple[Place, list[Session]]) -> Any:
    opened = await filled[0].open()
    yield opened
    await opened.aclose()


def newest_first(sessions: list[Session], keep: Callable[[Session], bool]) -> list[str]:
    wanted = [s for s in sessions if keep(s)]
    wanted.sort(key=lambda s: (stamp(s.created_at), s.id), reverse=True)
    return [s.id for s in wanted]


async def walk(store: Store, limit: int, **filters: Any) -> tuple[list[str], set[int]]:
    """Every page from the first to the one without a next cursor: the ids in order and the totals seen."""
    ids: list[str] = []
    totals: set[int] = set()
    cursor = None
    while True:
        page, total, cursor = await store.query(limit=limit, cursor=cursor, **filters)
        assert len(page) <= limit
        if cursor is not None:
            assert len(page) == limit, "a page with a next cursor is full"
        elif ids:
            assert page, "the last page is not an empty one after a full page"
        ids += [r.id for r in page]
        totals.add(total)
        if cursor is None:
            return ids, totals


async def test_every_page_size_walks_every_session_once_newest_first(store: Store, filled: Any) -> None:
    expected = newest_first(filled[1], lambda s: True)
    assert len(expected) == COUNT
    for limit in range(1, 201):
        ids, totals = await walk(store, limit)
        assert ids == expected, f"limit {limit}"
        assert totals == {COUNT}


async def test_every_page_size_walks_a_filtered_set_once_newest_first(store: Store, filled: Any) -> None:
    wanted = {"ready", "dead"}
    expected = newest_first(filled[1], lambda s: s.status in wanted)
    for limit in range(1, 201):
        ids, totals = await walk(store, limit, statuses=sorted(wanted), tags=["red"] if limit % 2 else None)
        if limit % 2:
            assert ids == newest_first(filled[1], lambda s: s.status in wanted and "red" in s.tags), f"limit {limit}"
        else:
            assert ids == expected, f"limit {limit}"
        assert totals == {len(ids)}


FILTERS: list[tuple[str, dict[str, Any], Callable[[Session], bool]]] = [
    ("one status", {"statuses": ["busy"]}, lambda s: s.status == "busy"),
    ("statuses are any of", {"statuses": ["failed", "creating"]}, lambda s: s.status in ("failed", "creating")),
    ("one tag", {"tags": ["green"]}, lambda s: "green" in s.tags),
    ("tags are all of", {"tags": ["red", "big"]}, lambda s: {"red", "big"} <= set(s.tags)),
    ("three tags", {"tags": ["red", "green", "blue"]}, lambda s: {"red", "green", "blue"} <= set(s.tags)),
    ("an unknown tag", {"tags": ["nope"]}, lambda s: False),
    ("driver", {"driver": "docker"}, lambda s: s.driver == "docker"),
    ("agent", {"agent": "llm"}, lambda s: s.agent == "llm"),
    (
        "everything at once",
        {"statuses": ["ready", "busy"], "tags": ["blue"], "driver": "local", "agent": "shell"},
        lambda s: s.status in ("ready", "busy") and "blue" in s.tags and s.driver == "local" and s.agent == "shell",
    ),
]


@pytest.mark.parametrize(("name", "filters", "keep"), FILTERS, ids=[f[0] for f in FILTERS])
@pytest.mark.parametrize("limit", [1, 7, 50, 200])
async def test_filters_select_exactly_the_matching_sessions(
    store: Store, filled: Any, name: str, filters: dict[str, Any], keep: Callable[[Session], bool], limit: int
) -> None:
    expected = newest_first(filled[1], keep)
    ids, totals = await walk(store, limit, **filters)
    assert ids == expected
    assert totals == {len(expected)}


async def test_tags_are_all_of_not_any_of(store: Store, filled: Any) -> None:
    only_red = [s.id for s in filled[1] if s.tags == ["red"]]
    assert only_red, "the data has sessions tagged only red"
    ids, _ = await walk(store, 200, tags=["red", "green"])
    assert ids and not set(only_red) & set(ids)


async def test_created_after_and_before_include_their_bounds(store: Store, filled: Any) -> None:
    times = sorted({s.created_at for s in filled[1]})
    low, high = times[40], times[290]
    cases = [
        ({"created_after": low}, lambda s: s.created_at >= low),
        ({"created_before": high}, lambda s: s.created_at <= high),
        ({"created_after": low, "created_before": high}, lambda s: low <= s.created_at <= high),
        ({"created_after": low, "created_before": low}, lambda s: s.created_at == low),
        ({"created_after": high, "created_before": low}, lambda s: False),
        ({"created_after": low, "statuses": ["dead"]}, lambda s: s.created_at >= low and s.status == "dead"),
    ]
    for filters, keep in cases:
        expected = newest_first(filled[1], keep)
        for limit in (1, 3, 50):
            ids, totals = await walk(store, limit, **filters)
            assert ids == expected, filters
            assert totals == {len(expected)}
    # Three sessions share each time: both bounds keep all three.
    assert len(newest_first(filled[1], lambda s: s.created_at == low)) == 3
    # The same instant in another zone is the same bound.
    two_hours_east = low.astimezone(timezone(timedelta(hours=2)))
    assert (await walk(store, 50, created_after=two_hours_east))[0] == newest_first(filled[1], lambda s: s.created_at >= low)


async def test_a_cursor_stays_valid_while_newer_sessions_arrive(place: Place) -> None:
    """Keyset pages: sessions created after the first page do not shift or repeat the later pages."""
    store = await place.open()
    try:
        old = make_sessions()[:30]
        for s in old:
            await store.insert(SessionRecord(session=s), [])
        first, total, cursor = await store.query(limit=10)
        assert total == 30
        newer = Session(
            id="ses_" + "f" * 32, driver="local", agent="shell", command_timeout_s=1, created_at=BASE + timedelta(days=400)
        )
        await store.insert(SessionRecord(session=newer), [])
        rest, total, _ = await walk_from(store, cursor, limit=10)
        assert total == 31
        assert [r.id for r in first] + rest == newest_first(old, lambda s: True)
    finally:
        await store.aclose()


async def walk_from(store: Store, cursor: str | None, limit: int) -> tuple[list[str], int, None]:
    ids: list[str] = []
    total = 0
    while cursor is not None:
        page, total, cursor = await store.query(limit=limit, cursor=cursor)
        ids += [r.id for r in page]
    return ids, total, None


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!!",
        cursor_of("no separator"),
        cursor_of("a|b|c"),
        base64.urlsafe_b64encode(b"\xff\xfe|\x80").decode(),
    ],
    ids=["not base64", "no base64 letters", "no separator", "two separators", "not utf-8"],
)
async def test_a_cursor_that_was_not_issued_is_refused_clearly(store: Store, cursor: str) -> None:
    with pytest.raises(InvalidInput, match="cursor is not one this server gave out"):
        await store.query(cursor=cursor)


async def test_a_well_formed_cursor_that_was_not_issued_is_refused(store: Store) -> None:
    with pytest.raises(InvalidInput):
        await store.query(cursor=cursor_of("yesterday|ses_x"))


# -- schema versions ---------------------------------------------------------------------------------


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


async def round_trip(place: Place) -> None:
    store = await place.open()
    try:
        s = Session(id="ses_" + "a" * 32, driver="local", agent="shell", command_timeout_s=1, tags=["x"])
        await store.insert(SessionRecord(session=s), [("session.created", {})])
        got = await store.get(s.id)
        assert got is not None and got.session.tags == ["x"]
        page, total, _ = await store.query(tags=["x"])
        assert total == 1 and page[0].id == s.id
        assert [e.type for e in await store.events(s.id)] == ["session.created"]
    finally:
        await store.aclose()


async def test_a_fresh_database_gets_the_current_schema(place: Place) -> None:
    if place.path is not None:
        place.path = place.path.parent / "new" / "sessions.db"
    await round_trip(place)
    assert place.version() == SCHEMA_VERSION


async def test_an_empty_existing_file_gets_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    path.write_bytes(b"")
    await round_trip(Place(path=path))
    assert user_version(path) == SCHEMA_VERSION


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
async def test_a_database_of_an_older_schema_is_migrated_forward_keeping_its_sessions(place: Place, version: int) -> None:
    """A database as version `version` left it: its sessions survive every later migration."""
    conn = place.at_version(version)
    try:
        s = Session(
            id="ses_" + "b" * 32, title="old", driver="local", agent="shell", command_timeout_s=1, status="ready", tags=["p", "q"]
        )
        row = {
            "id": s.id,
            "created_at": stamp(s.created_at),
            "status": s.status,
            "driver": s.driver,
            "agent": s.agent,
            "owner": None,
            "tags": '["p", "q"]',
            "record": SessionRecord(session=s).model_dump_json(),
        }
        if version >= 3:
            row["summary"] = summary_json(s)
        conn.execute(f"INSERT INTO sessions({','.join(row)}) VALUES({','.join('?' * len(row))})", list(row.values()))
        if version >= 4:
            conn.executemany("INSERT INTO session_tags(tag, session_id) VALUES(?,?)", [("p", s.id), ("q", s.id)])
    finally:
        conn.close()
    store = await place.open()
    try:
        got = await store.get(s.id)
        assert got is not None and got.session.status == "ready"
        page, total, _ = await store.query(statuses=["ready"])
        assert total == 1 and page[0].id == s.id and page[0].title == "old" and page[0].status == "ready"
        for filters in ({"tags": ["p"]}, {"tags": ["p", "q"]}, {"driver": "local"}, {"agent": "shell"}):
            assert (await store.query(**filters))[1] == 1, filters  # type: ignore[arg-type]
        assert (await store.query(tags=["z"]))[1] == 0
        assert (await store.query(parent=s.id))[1] == 0 and page[0].parent_session_id is None
        child = Session(id="ses_" + "c" * 32, driver="local", agent="shell", command_timeout_s=1, parent_session_id=s.id)
        await store.insert(SessionRecord(session=child), [])  # a session of the old schema becomes a parent
        assert [row.id for row in (await store.query(parent=s.id))[0]] == [child.id]
        assert [sid for sid, _ in await store.descendants(s.id)] == [child.id]
    finally:
        await store.aclose()
    assert place.version() == SCHEMA_VERSION
    await round_trip(place)


async def test_many_connections_opening_a_new_database_at_once_all_get_the_schema(tmp_path: Path) -> None:
    # Several servers starting together on a new state folder race to switch it to WAL; the race is
    # lost only now and then, so it is run on a number of fresh databases.
    for round_ in range(25):
        path = tmp_path / f"sessions-{round_}.db"
        opened: list[Store] = []

        async def open_one(path: Path = path, opened: list[Store] = opened) -> None:
            opened.append(await Store.open(path))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(open_one)
        for store in opened:
            await store.aclose()
        assert len(opened) == 8
        assert user_version(path) == SCHEMA_VERSION
    await round_trip(Place(path=path))


async def test_tag_filters_follow_tags_changed_by_an_update_and_a_delete(store: Store) -> None:
    s = Session(id="ses_" + "c" * 32, driver="local", agent="shell", command_timeout_s=1, tags=["old", "kept"])
    await store.insert(SessionRecord(session=s), [])

    def retag(r: SessionRecord) -> None:
        r.session.tags = ["kept", "new"]

    await store.update(s.id, retag)
    assert [(await store.query(tags=[t]))[1] for t in ("old", "kept", "new")] == [0, 1, 1]
    await store.delete(s.id)
    assert [(await store.query(tags=[t]))[1] for t in ("old", "kept", "new")] == [0, 0, 0]


async def test_messages_are_read_from_a_turn_on_and_the_restores_marks_kept(store: Store) -> None:
    """What a page that has the earlier turns asks for: turns 10 and 11 of twelve (past 9, so the turn is
    compared as a number, not as text), in the order they were written, with a restore's marks."""
    s = Session(id="ses_" + "e" * 32, driver="local", agent="shell", command_timeout_s=1)
    await store.insert(SessionRecord(session=s), [])
    written = [
        Message(role=role, content=[TextBlock(text=f"{role} {turn}")], turn=turn)
        for turn in range(1, 13)
        for role in ("user", "assistant")
    ]
    await store.update(s.id, lambda r: None, written)
    try:
        assert [m.text() for m in await store.messages(s.id, from_turn=11)] == [
            "user 11",
            "assistant 11",
            "user 12",
            "assistant 12",
        ]
        assert len(await store.messages(s.id, from_turn=0)) == 24 and await store.messages(s.id, from_turn=13) == []
        await store.mark_undone(s.id, after_turn=11)
        assert [(m.turn, m.undone) for m in await store.messages(s.id, from_turn=11)] == [(11, False)] * 2 + [(12, True)] * 2
    finally:
        await store.delete(s.id)


@pytest.fixture
async def one_session(tmp_path: Path) -> AsyncIterator[tuple[Path, Store, str]]:
    """A store on a new database holding one session: (the database's path, the store, the session id)."""
    path = tmp_path / "sessions.db"
    store = await Store.open(path)
    s = Session(id="ses_" + "d" * 32, driver="local", agent="shell", command_timeout_s=1)
    await store.insert(SessionRecord(session=s), [])
    yield path, store, s.id
    await store.aclose()


async def test_an_update_waits_for_another_server_holding_the_database_without_freezing_the_loop(
    one_session: tuple[Path, Store, str],
) -> None:
    path, store, sid = one_session
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another server in the middle of a write
    other.execute("UPDATE sessions SET status=status")
    done: list[str] = []
    ticks = 0

    def retitle(r: SessionRecord) -> list[Any]:
        r.session.title = "after"
        return [("phase", {"phase": "renamed"})]

    def retag(r: SessionRecord) -> list[Any]:
        r.session.tags = ["waited"]
        return [("phase", {"phase": "tagged"})]

    async def update(name: str, mutate: Callable[[SessionRecord], list[Any]]) -> None:
        await store.update(sid, mutate)
        done.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(update, "title", retitle)  # two calls waiting at once
        tg.start_soon(update, "tags", retag)
        for _ in range(20):  # the loop keeps running while they wait for the lock
            await anyio.sleep(0.01)
            ticks += 1
        assert not done, "an update went through a database another connection was writing"
        other.execute("COMMIT")
    other.close()
    assert ticks == 20 and sorted(done) == ["tags", "title"]
    got = await store.get(sid)
    assert got is not None and got.session.title == "after" and got.session.tags == ["waited"]
    assert sorted(e.data["phase"] for e in await store.events(sid)) == ["renamed", "tagged"]


async def test_a_reader_holding_the_database_does_not_stop_quick_writes(one_session: tuple[Path, Store, str]) -> None:
    path, store, sid = one_session
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1
    with anyio.fail_after(10):  # under the 15 s a blocked writer would wait
        await store.append_events(sid, [("text.delta", {"text": "a"}), ("text.delta", {"text": "b"})])
    assert await store.last_seq(sid) == 2
    reader.execute("COMMIT")
    reader.close()


async def test_the_write_ahead_log_stays_bounded_over_many_writes(one_session: tuple[Path, Store, str]) -> None:
    path, store, sid = one_session
    payload = {"text": "x" * 3000}  # an event a page long or so: 2,000 writes would make an 8 MB log
    for _ in range(2000):
        await store.append_events(sid, [("tool.output", payload)])
    wal = path.with_name(path.name + "-wal").stat().st_size
    assert wal < 4 << 20, f"the write-ahead log grew to {wal} bytes: it is not checkpointed"
    assert await store.last_seq(sid) == 2000


# -- several servers on one database -------------------------------------------------------------------


async def test_servers_writing_one_session_at_once_lose_no_change_and_number_events_in_order(place: Place) -> None:
    """Each server's read-modify-write of a record and its event numbering stay whole while others write."""
    stores = [await place.open() for _ in range(3)]
    try:
        s = Session(id="ses_" + "e" * 32, driver="local", agent="shell", command_timeout_s=1)
        await stores[0].insert(SessionRecord(session=s), [])

        def count(r: SessionRecord) -> list[Any]:
            r.session.turns += 1
            return [("phase", {"phase": "counted"})]

        async def write(store: Store) -> None:
            for _ in range(40):
                await store.update(s.id, count)
                await store.append_events(s.id, [("text.delta", {"text": "a"}), ("text.delta", {"text": "b"})])

        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(write, store)
        got = await stores[1].get(s.id)
        assert got is not None and got.session.turns == 120
        assert [e.seq for e in await stores[2].events(s.id, limit=1000)] == list(range(1, 361))
    finally:
        for store in stores:
            await store.aclose()


async def test_a_write_on_one_postgres_server_wakes_the_change_feed_of_another(postgres_cluster: str) -> None:  # noqa: F811
    from mcp_sessions.store_postgres import PostgresStore

    place = Place(url=create_database(postgres_cluster))
    writer, follower = await place.open(), await place.open()
    try:
        assert isinstance(follower, PostgresStore)
        follower.fallback_poll_s = 3600  # only the notice can end the wait
        s = Session(id="ses_" + "f" * 32, driver="local", agent="shell", command_timeout_s=1)
        woke = anyio.Event()

        async def follow() -> None:
            await follower.wait_for_change(0)
            woke.set()

        with anyio.fail_after(30):  # only turns a hang into a failure
            await writer.insert(SessionRecord(session=s), [])
            await follower.wait_for_change(0)  # the notice of that insert, so that the next wait is for the next one
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await anyio.wait_all_tasks_blocked()
                await writer.append_events(s.id, [("text.delta", {"text": "hello"})])
                await woke.wait()
        assert await follower.last_seq(s.id) == 1
    finally:
        await writer.aclose()
        await follower.aclose()
        drop_database(place.url or "")
