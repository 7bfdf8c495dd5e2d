"""The `mcp-sessions` command.

With no subcommand (or `serve`) it serves MCP over stdio with the embedded defaults. `ls`, `show`,
`events`, `close`, `pause`, `fork`, `checkpoint` and `restore` are for people: they open the same state database through the same
SessionManager a server uses (so recovery of orphaned turns applies), and work while servers run.
Only the serve path keeps stdout clean; the other commands print their answers there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, Union, get_args, get_origin

from pydantic import Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from . import __version__
from .errors import InvalidInput, SessionError, SessionNotFound, StoreError
from .inputs import PageSize, Seq, one_line
from .models import Event, SessionDetail, SessionPage, Status, Usage
from .plugins import catalog
from .settings import ENV_PREFIX, Settings, flag_name, is_secret

if TYPE_CHECKING:
    from .manager import SessionManager

log = logging.getLogger(__name__)

PROG = "mcp-sessions"
CLIENT_FLAGS = ("--home", "--log-level")
"""The server options that matter to the commands for people; they may also follow the command's name."""
STATUSES: tuple[str, ...] = get_args(Status)
EVENTS_PAGE = 1000
TITLE_WIDTH = 60
FORK_WAIT_S = 50.0
"""How long `fork` waits for the copy (the most any wait is): the command ends after, and so would the copy."""


class Parser(argparse.ArgumentParser):
    """Reports a usage mistake in one line, naming where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _when(text: str) -> datetime:
    """An ISO 8601 time; without an offset it is UTC, as every time this command prints."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time, e.g. 2026-05-01 or 2026-05-01T12:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _in_range(kind: Any) -> Callable[[str], Any]:
    """An argparse type for a bounded number of inputs.py: the same range, the same words, as the API's."""
    adapter: TypeAdapter[Any] = TypeAdapter(kind)

    def parse(text: str) -> Any:
        try:
            return adapter.validate_python(text)
        except ValidationError as e:
            raise argparse.ArgumentTypeError(f"{e.errors()[0]['msg']}, not {text!r}") from None

    return parse


@dataclass(frozen=True)
class Flag:
    """A settings field as a command-line flag."""

    flag: str
    field: str
    type: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None


def _flag(name: str, info: FieldInfo) -> Flag:
    annotation: Any = info.annotation
    args = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) in (Union, UnionType) else []
    if len(args) == 1:
        annotation = args[0]
    choices = tuple(get_args(annotation)) if get_origin(annotation) is Literal else None
    kind = annotation if annotation in (int, float) else str
    default = info.get_default(call_default_factory=False)
    text = (info.description or "").rstrip(".")
    if default not in (None, PydanticUndefined) and info.default_factory is None:
        text += f" (default {default:g})" if isinstance(default, float) else f" (default {default})"
    return Flag(flag_name(name), name, kind, text.replace("%", "%%"), choices)


def settings_flags() -> list[tuple[str, list[Flag]]]:
    """Every settings field that may be given as a flag (all but secrets), grouped: the core settings, then
    one group per plugin with settings."""
    groups = [
        ("options", Settings.model_fields),
        *((title + " options", model.model_fields) for title, model in catalog().settings_sections()),
    ]
    return [(title, [_flag(n, i) for n, i in fields.items() if not is_secret(i)]) for title, fields in groups]


def _add_settings_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None, default: Any) -> None:
    for title, flags in settings_flags():
        group = parser if title == "options" else parser.add_argument_group(title)
        for f in flags:
            if only is None or f.flag in only:
                group.add_argument(f.flag, dest=f.field, type=f.type, choices=f.choices, default=default, help=f.help)


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description=(
            "An MCP server that runs agent sessions in sandboxes. With no command it serves MCP over stdio. "
            "The commands ls, show, events and close read and close the sessions in the state folder, "
            "also while servers are running on it."
        ),
        epilog=(
            f"Every option can also be set with an environment variable: {ENV_PREFIX}<FIELD>, e.g. "
            f"{ENV_PREFIX}HOME, {ENV_PREFIX}DRIVER, {ENV_PREFIX}COMMAND_TIMEOUT_S. Flags win over variables. "
            f"Run '{PROG} COMMAND --help' for a command's own options."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_settings_flags(parser, None, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    # A subcommand's copy of a flag defaults to SUPPRESS so it does not hide the same flag given before the command.
    serve = commands.add_parser(
        "serve",
        help="serve MCP over stdio (what no command does), or over HTTP with the REST API",
        description="Serve MCP over stdio, or with --http: MCP at /mcp, the REST API at /api/v1 and /healthz.",
    )
    serve.add_argument("--http", action="store_true", help="serve HTTP on --host/--port instead of stdio")
    _add_settings_flags(serve, None, argparse.SUPPRESS)

    ls = commands.add_parser(
        "ls",
        help="list sessions, newest first",
        description="List sessions, newest first, with the filters of the list_sessions tool. Times are UTC.",
    )
    ls.add_argument(
        "--status",
        dest="statuses",
        action="append",
        choices=STATUSES,
        metavar="STATUS",
        help=f"only this status ({', '.join(STATUSES)}); repeat for any of several",
    )
    ls.add_argument(
        "--tag", dest="tags", action="append", metavar="TAG", help="only sessions with this tag; repeat for all of several"
    )
    ls.add_argument("--driver", dest="filter_driver", metavar="NAME", help="only sessions on this driver")
    ls.add_argument("--agent", dest="filter_agent", metavar="NAME", help="only sessions with this agent")
    ls.add_argument("--parent", metavar="ID", help="only the children of this session")
    ls.add_argument(
        "--created-after",
        type=_when,
        metavar="TIME",
        help="only sessions created at or after this ISO 8601 time (UTC if no offset)",
    )
    ls.add_argument(
        "--created-before",
        type=_when,
        metavar="TIME",
        help="only sessions created at or before this ISO 8601 time (UTC if no offset)",
    )
    ls.add_argument("--limit", type=_in_range(PageSize), default=50, metavar="N", help="rows per page, 1..200 (default 50)")
    ls.add_argument("--cursor", help="the next-page cursor printed by the previous page (give the same filters)")
    ls.add_argument("--json", action="store_true", help="print the page as JSON")
    _add_settings_flags(ls, CLIENT_FLAGS, argparse.SUPPRESS)

    show = commands.add_parser(
        "show", help="a session's state and whole transcript", description="Print a session's state and its whole transcript."
    )
    show.add_argument("session_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print the state and transcript as JSON")
    _add_settings_flags(show, CLIENT_FLAGS, argparse.SUPPRESS)

    events = commands.add_parser(
        "events",
        help="a session's events, one per line",
        description="Print a session's events, one per line: seq, time (UTC), type, data as JSON.",
    )
    events.add_argument("session_id", metavar="ID")
    events.add_argument("--after", type=_in_range(Seq), default=0, metavar="N", help="only events after sequence number N")
    events.add_argument(
        "--follow", action="store_true", help="keep printing new events until the session is dead or failed (or Ctrl-C)"
    )
    events.add_argument("--json", action="store_true", help="print each event as a JSON object")
    _add_settings_flags(events, CLIENT_FLAGS, argparse.SUPPRESS)

    close = commands.add_parser(
        "close",
        help="close a session",
        description="Stop anything running in a session and its descendants and free their sandboxes. "
        "The transcripts stay readable.",
    )
    close.add_argument("session_id", metavar="ID")
    close.add_argument("--delete", action="store_true", help="also delete the transcripts, events and workspaces")
    close.add_argument("--keep-children", action="store_true", help="leave the session's descendants open")
    _add_settings_flags(close, CLIENT_FLAGS, argparse.SUPPRESS)

    expose = commands.add_parser(
        "expose",
        help="print the preview URL of a port in a session",
        description="Print the URL on the HTTP server (serve --http, at --host and --port) that proxies HTTP and "
        "websockets to PORT inside the session's sandbox, until the session closes.",
    )
    expose.add_argument("session_id", metavar="ID")
    expose.add_argument("port", metavar="PORT", type=_in_range(Annotated[int, Field(ge=1, le=65535)]))
    _add_settings_flags(expose, (*CLIENT_FLAGS, "--host", "--port"), argparse.SUPPRESS)

    attach = commands.add_parser(
        "attach",
        help="a terminal in an idle session's sandbox, through a server's HTTP API",
        description="Take the keyboard of a session's shell (its cwd and environment) while no turn runs; what you "
        "type and see is recorded as a human turn. Leave with exit or Ctrl-D. Needs 'serve --http' running; "
        "a token, if it has tokens, in MCP_SESSIONS_TOKEN (not a flag: others could read it in the process list).",
    )
    attach.add_argument("session_id", metavar="ID")
    attach.add_argument("--url", metavar="URL", help="the server (default http://HOST:PORT of --host and --port)")
    _add_settings_flags(attach, ("--host", "--port", "--log-level"), argparse.SUPPRESS)
    pause = commands.add_parser(
        "pause",
        help="pause a session",
        description="Stop a ready session's sandbox, keeping its workspace and shell state; its next use resumes it.",
    )
    pause.add_argument("session_id", metavar="ID")
    _add_settings_flags(pause, CLIENT_FLAGS, argparse.SUPPRESS)

    fork = commands.add_parser(
        "fork",
        help="fork a session",
        description="Make a new session, a child of ID, with a copy of its workspace, shell state and conversation; "
        "print its id.",
    )
    fork.add_argument("session_id", metavar="ID")
    fork.add_argument("--title", help="the new session's title")
    _add_settings_flags(fork, CLIENT_FLAGS, argparse.SUPPRESS)

    for verb, what in (
        ("checkpoint", "save a ready session's workspace and shell state as checkpoint NAME"),
        ("restore", "take a session's workspace, shell and conversation back to checkpoint NAME"),
    ):
        command = commands.add_parser(verb, help=what, description=what[0].upper() + what[1:] + ".")
        command.add_argument("session_id", metavar="ID")
        command.add_argument("name", metavar="NAME")
        _add_settings_flags(command, CLIENT_FLAGS, argparse.SUPPRESS)
    return parser


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(**{f.field: getattr(args, f.field, None) for _, flags in settings_flags() for f in flags})
    except ValidationError as e:
        fail(f"invalid configuration: {one_line(e)}")
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        fail(f"invalid configuration: log level {settings.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    if settings.price_file is not None:
        from .agents.pricing import PriceTable

        try:
            PriceTable.load(settings.price_file)
        except ValueError as e:
            fail(f"invalid configuration: {e}")
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve" and args.http:
        serve_http(settings)
    elif args.command in (None, "serve"):
        serve(settings)
    elif args.command == "attach":
        import anyio

        from .attach_client import TOKEN_ENV, attach

        url = args.url or f"http://{settings.host}:{settings.port}"
        sys.exit(anyio.run(attach, url, os.environ.get(TOKEN_ENV), args.session_id))
    else:
        sys.exit(run_command(args, settings))


def serve(settings: Settings) -> None:
    """The MCP server on stdio. Nothing but the protocol may reach stdout here."""
    from .app import check_store
    from .server import create_server

    try:
        check_store(settings)
    except StoreError as e:
        fail(str(e))
    if sys.stdin.isatty():
        sys.stderr.write(GREETING.format(prog=PROG, version=__version__, port=settings.port))
        sys.stderr.flush()
    try:
        create_server(settings).run("stdio")
    except KeyboardInterrupt:
        pass


GREETING = """{prog} {version}: an MCP server, now waiting for an MCP client on stdin and stdout.
An MCP client (Claude Desktop, Claude Code, VS Code) starts it; lines typed here are not the protocol.
  connect a client:      claude mcp add sessions -- {prog}   (README: Client set-up)
  serve HTTP instead:    {prog} serve --http   (MCP at http://127.0.0.1:{port}/mcp, REST at /api/v1)
  see the sessions:      {prog} ls
Quit with Ctrl-C or Ctrl-D.
"""
"""Said on stderr when a person starts the stdio server in a terminal, which would otherwise seem to hang."""


def serve_http(settings: Settings) -> None:
    """MCP and the REST API over HTTP, until Ctrl-C."""
    from .app import check_store
    from .auth import ConfigError
    from .http import serve_http as run

    try:
        check_store(settings)
        run(settings)
    except (ConfigError, StoreError) as e:
        fail(str(e), 2)
    except KeyboardInterrupt:
        pass


# -- the commands for people ---------------------------------------------------------------------


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of the commands for people (not `serve`); the exit status. Errors become one line on stderr."""
    import anyio

    from sandbox_backends.base import SandboxError

    if not settings.database_url and not settings.db_path.exists():
        fail(f"no state database at {settings.db_path}. Check --home or {ENV_PREFIX}HOME (a server creates it on start).")
    try:
        return anyio.run(_run_command, args, settings)
    except KeyboardInterrupt:
        return 130
    except BaseException as group:
        error = _single(group)
        if isinstance(error, KeyboardInterrupt):
            return 130
        if isinstance(error, SessionNotFound):
            fail(f"no session {args.session_id!r} in {settings.db_path}. Run '{PROG} ls' to see the sessions there.")
        if isinstance(error, BrokenPipeError):
            _quiet_stdout()
            return 0
        if isinstance(error, (SessionError, SandboxError)):
            fail(str(error))
        if isinstance(error, sqlite3.Error):
            fail(f"the state database {settings.db_path} failed: {error}")
        if isinstance(error, OSError):
            fail(f"{error.strerror or error}{f': {error.filename}' if error.filename else ''}")
        if isinstance(error, Exception):
            log.debug("unexpected error", exc_info=error)
            fail(f"unexpected error: {type(error).__name__}: {error} (run with --log-level DEBUG for details)")
        raise


def _single(error: BaseException) -> BaseException:
    """The one error inside nested exception groups, as task groups may wrap it."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _quiet_stdout() -> None:
    """The reader of stdout went away (`| head`): stop writing there without a second error at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


async def _run_command(args: argparse.Namespace, settings: Settings) -> int:
    from .app import open_manager

    async with open_manager(settings, serving=False) as manager:  # a one-shot command starts no warm pools
        if args.command == "ls":
            return await list_sessions(manager, args)
        if args.command == "show":
            return await show_session(manager, args)
        if args.command == "events":
            return await print_events(manager, args)
        if args.command == "close":
            reply = await manager.close(args.session_id, delete=args.delete, keep_children=args.keep_children)
            print(reply.message)
            return 0
        if args.command == "expose":
            from .previews import expose_port

            print((await expose_port(manager, None, args.session_id, args.port)).url)
        if args.command == "pause":
            paused = await manager.pause(args.session_id)
            print(f"Session '{paused.id}' is paused; its next use resumes it.")
            return 0
        if args.command == "checkpoint":
            saved = await manager.checkpoint(args.session_id, args.name)
            print(f"Checkpoint {saved.name!r} of turn {saved.turn} holds {saved.size_mb} MiB.")
            return 0
        if args.command == "restore":
            await manager.restore(args.session_id, args.name)
            print(f"Session '{args.session_id}' is back at checkpoint {args.name!r}.")
            return 0
        if args.command == "fork":
            forked = await manager.fork(args.session_id, title=args.title, wait_s=FORK_WAIT_S)
            if forked.status != "ready":
                fail(f"the fork {forked.id} is {forked.status}: {forked.failure_reason or forked.phase}")
            print(forked.id)
            return 0
    raise AssertionError(args.command)


def _time(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "-"


def _flat(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(page: SessionPage) -> str:
    header = ("ID", "STATUS", "DRIVER/AGENT", "TURNS", "CREATED", "TITLE / FIRST MESSAGE")
    rows = [header]
    for s in page.sessions:
        label = s.title if s.title else (f"> {s.preview}" if s.preview else "")
        rows.append((s.id, s.status, f"{s.driver}/{s.agent}", str(s.turns), _time(s.created_at), _flat(label, TITLE_WIDTH)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i == 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=False))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


async def list_sessions(manager: SessionManager, args: argparse.Namespace) -> int:
    try:
        page = await manager.list_sessions(
            statuses=args.statuses,
            tags=args.tags,
            driver=args.filter_driver,
            agent=args.filter_agent,
            created_after=args.created_after,
            created_before=args.created_before,
            limit=args.limit,
            cursor=args.cursor,
            parent=args.parent,
        )
    except InvalidInput as e:
        if args.cursor and "cursor" in str(e):
            raise InvalidInput(
                f"--cursor {args.cursor!r} is not a cursor that '{PROG} ls' printed. Leave it out for the first page."
            ) from e
        raise InvalidInput(str(e).replace("limit must", "--limit must")) from e
    if args.json:
        print(page.model_dump_json(indent=2))
        return 0
    if page.sessions:
        print(format_table(page))
    print(f"{len(page.sessions)} of {page.total} matching session(s) shown.", end="")
    if page.next_cursor:
        print(f" Next page: add --cursor {page.next_cursor}")
    else:
        print()
    return 0


def _usage(u: Usage) -> str:
    return f"{u.input_tokens} input, {u.output_tokens} output, {u.total_tokens} total tokens; ${u.cost_usd:.4f}"


def format_state(detail: SessionDetail) -> str:
    s = detail.session
    rows: list[tuple[str, str]] = [("session", s.id + (f"  {s.title!r}" if s.title else ""))]
    status = f"{s.status} (phase {s.phase}{f': {s.phase_detail}' if s.phase_detail else ''})"
    if s.failure_reason:
        status += f", failed: {s.failure_reason}"
    if s.close_reason:
        status += f", closed: {s.close_reason}"
    rows.append(("status", status))
    rows.append(
        (
            "driver",
            f"{s.driver}, agent {s.agent}"
            + (f", model {s.model}" if s.model else "")
            + (f", image {s.image}" if s.image else ""),
        )
    )
    if s.tags:
        rows.append(("tags", ", ".join(s.tags)))
    if s.metadata:
        rows.append(("metadata", json.dumps(s.metadata, ensure_ascii=False)))
    times = f"{_time(s.created_at)}, last activity {_time(s.last_activity_at)}"
    if s.finished_at:
        times += f", finished {_time(s.finished_at)}"
    rows.append(("created", times))
    last = s.last_turn
    if last is None:
        rows.append(("turns", "0"))
    else:
        parts = [f"turn {last.turn} {last.status}"]
        if last.exit_code is not None:
            parts.append(f"exit code {last.exit_code}")
        if last.duration_s is not None:
            parts.append(f"{last.duration_s:.3f} s")
        if last.output_cut_bytes:
            parts.append(f"{last.output_cut_bytes} output bytes cut")
        if last.reason:
            parts.append(last.reason)
        rows.append(("turns", f"{s.turns}; last: {', '.join(parts)}"))
    rows.append(("usage", _usage(s.usage)))
    if s.parent_session_id:
        rows.append(("parent", s.parent_session_id))
    if detail.children:
        tree = detail.usage_with_children
        rows.append(("children", f"{detail.children}; with all descendants: {tree.sessions} sessions, {tree.turns} turns"))
        rows.append(("tree usage", f"{_usage(tree)}; turns ran {tree.turn_time_s:.1f} s"))
    if s.budget:
        rows.append(("budget", ", ".join(f"{k}={v:g}" for k, v in s.budget.set().items()) + " (with descendants)"))
    if s.workspace:
        rows.append(("workspace", s.workspace))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


async def show_session(manager: SessionManager, args: argparse.Namespace) -> int:
    detail = await manager.get(args.session_id)
    transcript = await manager.transcript(args.session_id)
    if args.json:
        tree = {"children": detail.children, "usage_with_children": detail.usage_with_children.model_dump(mode="json")}
        print(json.dumps({"session": detail.session.model_dump(mode="json"), **tree, "transcript": transcript}, indent=2))
    else:
        print(format_state(detail))
        print()
        print(transcript, end="")
    return 0


def format_event(event: Event) -> str:
    when = event.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return f"{event.seq} {when} {event.type} {json.dumps(event.data, ensure_ascii=False, separators=(',', ':'))}"


async def print_events(manager: SessionManager, args: argparse.Namespace) -> int:
    async def batches() -> AsyncIterator[list[Event]]:
        if args.follow:
            async for batch in manager.follow(args.session_id, args.after):
                yield batch
            return
        after = args.after
        while batch := await manager.events(args.session_id, after=after, limit=EVENTS_PAGE):
            yield batch
            after = batch[-1].seq

    await manager.get(args.session_id)  # an unknown session is an error, not an empty list
    async for batch in batches():
        for event in batch:
            print(event.model_dump_json() if args.json else format_event(event))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    main()
