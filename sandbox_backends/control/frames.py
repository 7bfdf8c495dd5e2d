"""What the server accepts from a control shell: the frame caps and the shape of every answer.

Apart from the client because it is the one place that says what a sandbox may send the server. A
control shell runs in the sandbox, and a broken one, or a container taken over through a kernel bug or
an image's own root process, can write anything into the stream. So every frame is checked against
small caps before its payload is buffered, and every answer against the fields the driver reads,
before anything else sees it; a frame that fails is a `ProtocolError`, which costs the connection.

The caps:
- a JSON answer: `MAX_JSON_FRAME` (64 KiB). The largest the control shell sends is an error whose
  message carries an OS error text or a path (PATH_MAX is 4 KiB, 24 KiB if every byte is escaped as
  \\uXXXX); everything else is under 200 bytes. 64 KiB leaves room for that and keeps the worst a
  parser can be made to build from one frame (about 20,000 empty objects) near 1.5 MB.
- output: the chunk the control shell reads a run's output in (`OUTPUT_CHUNK`), plus the request id.
- file content: only for a read in flight, and no more than the `max` that read asked for.
- stream data (`KIND_STREAM`): only for a byte stream that is open, at most `STREAM_CHUNK` a frame and
  no more than the stream's window the server has granted and not yet seen used (`STREAM_WINDOW` at
  most). So what a connection's streams can make the server hold is `MAX_STREAMS` windows (16 MiB), however
  slowly the server's side reads them.
"""

from __future__ import annotations

import json
from typing import Any

HEADER = 5
"""kind (1 byte) + payload size (4 bytes, big-endian)."""
KIND_JSON, KIND_OUTPUT, KIND_DATA, KIND_STREAM = b"JODS"
"""The frame kinds: a JSON answer, a run's output, a file's content, a byte stream's data."""
MAX_JSON_FRAME = 64 << 10
OUTPUT_CHUNK = 1 << 20
"""The size the control shell reads a run's output in (it is given this value): one O frame at most."""
MAX_REQ_ID = 255
"""A request id is sent in one length byte."""
MAX_OUTPUT_FRAME = 1 + MAX_REQ_ID + OUTPUT_CHUNK
STREAM_CHUNK = 64 << 10
"""The most data one stream frame carries, either way."""
STREAM_WINDOW = 256 << 10
"""Bytes one side may send on a stream before the other says it took them (flow control per stream, so a
stream nobody reads holds up neither the connection nor the others, and buffers no more than this)."""
MAX_STREAMS = 64
"""Byte streams open at once on one connection (connections made plus connections accepted)."""
MAX_STREAM_FRAME = 1 + MAX_REQ_ID + STREAM_CHUNK

MAX_INT = 1 << 53
MIN_INT = -(1 << 31)
_FIELDS: dict[str, tuple[type, ...]] = {
    "req": (str,),
    "ev": (str,),
    "error": (str,),
    "message": (str,),
    "kind": (str,),
    "seconds": (int, float),
    "python": (str,),
    "run": (str, type(None)),
    "rc": (int, type(None)),
    "oom": (int,),
    "pid": (int,),
    "size": (int,),
    "bytes": (int,),
    "kb": (int,),
    "unreadable": (str, type(None)),
    "ok": (bool,),
    "interrupted": (bool,),
    "was_running": (bool,),
    "running": (bool,),
    "ws_writable": (bool,),
    "sid": (str,),
    "n": (int,),
    "port": (int,),
    "saved": (bool,),
    "path": (str,),
    "entries": (list,),
    "total": (int,),
    "all": (bool,),
}
"""Every field the driver reads from an answer, with the types it may have (others are ignored)."""


class ProtocolError(Exception):
    """A frame the control shell must never send; the message names what was wrong with it."""


def type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def parse_answer(payload: bytes) -> dict[str, Any]:
    """A JSON answer as the driver may read it: an object with a string `req` and the known fields typed."""
    try:
        msg = json.loads(payload)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"a JSON frame that is not valid JSON ({type(e).__name__})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"a JSON frame that is {type_name(msg)}, not an object")
    if "req" not in msg:
        raise ProtocolError("a JSON frame without a request id")
    for key, allowed in _FIELDS.items():
        if key not in msg:
            continue
        value = msg[key]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ProtocolError(f"a JSON frame whose {key!r} is {type_name(value)}")
        if isinstance(value, int) and not isinstance(value, bool) and not MIN_INT <= value < MAX_INT:
            raise ProtocolError(f"a JSON frame whose {key!r} is out of range")
    if "entries" in msg:
        check_entries(msg["entries"])
    return msg


ENTRY_KINDS = frozenset(("file", "folder", "symlink", "other"))


def check_entries(entries: list[Any]) -> None:
    """A folder listing's entries as the driver reads them: `[name, kind, size, mtime]` each, the name one path
    part (no "/", not "." or ".."), the kind one of ENTRY_KINDS, size and mtime integers in range."""
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 4):
            raise ProtocolError("a folder listing whose entry is not [name, kind, size, mtime]")
        name, kind, size, mtime = entry
        if not isinstance(name, str) or not name or "/" in name or "\0" in name or name in (".", ".."):
            raise ProtocolError("a folder listing with an entry name that is not one path part")
        if kind not in ENTRY_KINDS:
            raise ProtocolError("a folder listing with an unknown entry kind")
        for number in (size, mtime):
            if isinstance(number, bool) or not isinstance(number, int) or not MIN_INT <= number < MAX_INT:
                raise ProtocolError("a folder listing whose entry size or mtime is not an integer in range")


def describe_kind(kind: int) -> str:
    return repr(chr(kind)) if 0x20 < kind < 0x7F else f"0x{kind:02x}"
