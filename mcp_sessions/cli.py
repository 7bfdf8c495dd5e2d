"""The `mcp-sessions` command. With no arguments it serves MCP over stdio with the embedded defaults."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .errors import StoreError
from .settings import ENV_PREFIX, Settings

FLAGS = [
    # (flag, settings field, type, help)
    ("--home", "home", str, "state folder: database and local workspaces (default ~/.local/share/mcp-sessions)"),
    ("--driver", "driver", str, "default sandbox driver for new sessions: local or docker (default local)"),
    ("--agent", "agent", str, "default agent for new sessions (default shell)"),
    ("--image", "image", str, "default image for the docker driver (default mcp-sessions-sandbox:bookworm)"),
    ("--docker-pool", "docker_pool", int, "docker containers kept warm for fast creates (default 0 = off)"),
    ("--command-timeout", "command_timeout_s", float, "default limit on one command's run time, seconds (default 600)"),
    ("--max-command-timeout", "max_command_timeout_s", float, "largest command timeout a caller may ask for (default 86400)"),
    ("--max-output-bytes", "max_output_bytes", int, "output kept per turn, head and tail (default 32768)"),
    ("--max-message-bytes", "max_message_bytes", int, "largest message a caller may send (default 1000000)"),
    ("--max-file-bytes", "max_file_bytes", int, "largest file read or written through the server (default 5000000)"),
    ("--create-timeout", "create_timeout_s", float, "a session still creating after this many seconds fails (default 300)"),
    ("--log-level", "log_level", str, "level of the server's own log on stderr (default WARNING)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-sessions",
        description="An MCP server that runs agent sessions in sandboxes. Serves MCP over stdio.",
        epilog=(
            f"Every option can also be set with an environment variable: {ENV_PREFIX}<FIELD>, e.g. "
            f"{ENV_PREFIX}HOME, {ENV_PREFIX}DRIVER, {ENV_PREFIX}COMMAND_TIMEOUT_S. Flags win over variables."
        ),
    )
    parser.add_argument("--version", action="version", version=f"mcp-sessions {__version__}")
    for flag, field, type_, help_ in FLAGS:
        parser.add_argument(flag, dest=field, type=type_, default=None, help=help_)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(**vars(args))
    except ValueError as e:
        sys.exit(f"mcp-sessions: invalid configuration: {e}")
    logging.basicConfig(
        stream=sys.stderr, level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from .server import create_server
    from .store import Store

    try:
        Store.check(settings.db_path)
    except StoreError as e:
        sys.exit(f"mcp-sessions: {e}")
    try:
        create_server(settings).run("stdio")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
