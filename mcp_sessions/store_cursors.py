"""Timestamps as the store writes them (fixed width, so string order is time order) and the cursors of
its pages."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

from .errors import InvalidInput

STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"
SESSION_ID = re.compile(r"ses_[0-9a-f]{32}")


def stamp(dt: datetime) -> str:
    """A fixed-width UTC timestamp, so string order is time order."""
    if dt.tzinfo is None:  # a time without an offset is UTC, as every time this server prints
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime(STAMP)


def parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, STAMP).replace(tzinfo=UTC)


def encode_cursor(created_at: str, session_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at}|{session_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The (created_at, id) a cursor points after; anything this server could not have issued is refused."""
    try:
        created_at, session_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        parse_stamp(created_at)
        if not SESSION_ID.fullmatch(session_id):
            raise ValueError(session_id)
        return created_at, session_id
    except (ValueError, UnicodeError):
        raise InvalidInput("The cursor is not one this server gave out. Call list_sessions without a cursor.") from None
