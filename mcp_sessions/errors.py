"""Errors the session layer raises. Each message names the problem and the next step.

`code` is stable and machine-readable, for adapters that map errors to their own protocol.
"""

from __future__ import annotations


class SessionError(Exception):
    code = "invalid_request"


class InvalidInput(SessionError):
    code = "invalid_request"


class SessionNotFound(SessionError):
    code = "session_not_found"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"No session '{session_id}'. Call list_sessions to see existing sessions.")


class SessionBusy(SessionError):
    code = "session_busy"


class SessionClosed(SessionError):
    code = "session_closed"


class Forbidden(SessionError):
    """The caller's token may not do this (reach another owner's sessions)."""

    code = "forbidden"


class Unsupported(SessionError):
    """What the session cannot do, whenever asked: its driver cannot (list folders, pause, fork), or it is mirrored."""

    code = "unsupported"


class Conflict(SessionError):
    """What the session's state does not allow as asked: a checkpoint name taken or unknown, a bound reached."""

    code = "conflict"


class PayloadTooLarge(SessionError):
    code = "payload_too_large"


class TooManySessions(SessionError):
    """The caller's owner already has as many live sessions as the server allows."""

    code = "too_many_sessions"


class StoreError(SessionError):
    """The state database cannot be used (corrupt, newer schema, disk full)."""

    code = "store_error"
