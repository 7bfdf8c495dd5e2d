"""A control shell that misbehaves, run inside a real container where the real one would run.

`hostile_image` builds, from the sandbox image, one whose `python3` runs /workspace/.control.py instead
of the control shell whenever that file exists (and is the real python3 otherwise). A test writes the
program it wants there (`hostile_program(mode)`), and every control connection opened from then on,
through the driver's own `docker exec` transport, talks to it: the server sees what a broken control
shell, or a container taken over, would send. Removing the file brings the real control shell back.

The program reads the boot input and requests as the real one does, answers `hello` and `ping`, and
does what its mode says to the first other request; then, but for `flood`, it stops answering.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox_backends.docker.container import LABEL_SERVER
from tests.docker_support import IMAGE

PROGRAM_PATH = ".control.py"
"""Where in the workspace the image's python3 looks for a program to run instead of the control shell."""

WRAPPER = """#!/bin/sh
# A control shell started while /workspace/.control.py exists runs that program instead.
for arg do
  if [ "$arg" = mcp-sessions-control ] && [ -f /workspace/.control.py ]; then
    exec /usr/bin/python3.11 /workspace/.control.py
  fi
done
exec /usr/bin/python3.11 "$@"
"""

DOCKERFILE = f"""FROM {IMAGE}
USER root
RUN rm /usr/bin/python3
COPY python3 /usr/bin/python3
USER 1000:1000
"""

PROGRAM = r'''
import json, marshal, os, select, sys, time

MODE = "@MODE@"


def rd(n):
    b = b""
    while len(b) < n:
        c = os.read(0, n - len(b))
        if not c:
            sys.exit(0)
        b += c
    return b


def raw(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def frame(kind, payload):
    raw(kind + len(payload).to_bytes(4, "big") + payload)


def reply(req, **kw):
    frame(b"J", json.dumps(dict(kw, req=req)).encode())


def data(kind, req, payload):
    r = req.encode()
    frame(kind, bytes([len(r)]) + r + payload)


def requests():
    while True:
        msg = marshal.loads(rd(int.from_bytes(rd(4), "big")))
        if msg.get("size"):
            rd(msg["size"])
        yield msg


def stdin_waiting():
    return bool(select.select([0], [], [], 0)[0])


def flood(req):
    """Output frames of one byte, as fast as the server takes them, until it sends a request."""
    reply(req, ev="started", run="r", pid=os.getpid())
    one = b"O" + (2 + len(req)).to_bytes(4, "big") + bytes([len(req)]) + req.encode() + b"x"
    batch = one * 256
    end = time.monotonic() + 120
    while not stdin_waiting() and time.monotonic() < end:
        raw(batch)
    reply(req, ev="exit", run="r", rc=0, interrupted=False)


def giant_json(req):
    """One JSON frame of 62 MB of empty objects, the shape that took 1.7 GB to parse."""
    item = b"{},"
    count = 20_000_000
    frame_size = 2 + len(item) * count
    raw(b"J" + frame_size.to_bytes(4, "big") + b"[")
    block = item * 100_000
    for _ in range(count // 100_000):
        raw(block)
    raw(b"{}]")


def attack(msg, req):
    run = {"req": req, "ev": "exit", "run": "r", "rc": 0, "interrupted": False}
    if MODE == "json-list":
        frame(b"J", b"[1, 2, 3]")
    elif MODE == "json-string":
        frame(b"J", b'"exit"')
    elif MODE == "json-number":
        frame(b"J", b"42")
    elif MODE == "json-invalid":
        frame(b"J", b"{not json")
    elif MODE == "json-deep":
        frame(b"J", b"[" * 60000)
    elif MODE == "req-not-text":
        frame(b"J", json.dumps(dict(run, req=7)).encode())
    elif MODE == "req-not-in-flight":
        frame(b"J", json.dumps(dict(run, req="q9999")).encode())
    elif MODE == "rc-not-a-number":
        frame(b"J", json.dumps(dict(run, rc="0")).encode())
    elif MODE == "rc-huge":
        frame(b"J", json.dumps(dict(run, rc=10**30)).encode())
    elif MODE == "unknown-kind":
        frame(b"Z", b"junk")
    elif MODE == "file-content-unasked":
        data(b"D", req, b"content nobody asked for")
    elif MODE == "output-for-a-read":
        data(b"O", req, b"output where a file was asked for")
    elif MODE == "file-over-its-max":
        data(b"D", req, b"x" * (int(msg.get("max", 0)) + 1))
    elif MODE == "output-too-big":
        raw(b"O" + (50 << 20).to_bytes(4, "big") + bytes([len(req)]) + req.encode())
    elif MODE == "stream-too-big":  # a connection "opened", then a 50 MB stream frame for it
        reply(req, ev="open")
        raw(b"S" + (50 << 20).to_bytes(4, "big") + bytes([len(req)]) + req.encode())
    elif MODE == "stream-before-open":  # a connection's data before it is open
        data(b"S", req, b"z")
    elif MODE == "stream-over-window":  # a connection accepted, then more of its data than its window
        reply(req, ev="listening", port=1234)
        reply(req, ev="accept", sid="a1")
        for _ in range(5):
            data(b"S", "a1", b"z" * (64 << 10))
    elif MODE == "stream-ack-unsent":  # the server's data acknowledged before it was sent
        reply(req, ev="open")
        reply(req, ev="ack", n=1)
    elif MODE == "stuck-header":
        raw(b"J" + (60000).to_bytes(4, "big") + b'{"req": "q')
    elif MODE == "giant-json":
        giant_json(req)
    elif MODE == "read-then-big-json":
        size = 80_000_002
        raw(b"J" + size.to_bytes(4, "big") + b'"')
        block = b"a" * 1_000_000
        for _ in range(80):
            raw(block)
        raw(b'"')
    elif MODE == "flood":
        flood(req)
        return
    elif MODE == "silent":
        pass
    else:
        raise SystemExit("unknown mode " + MODE)
    time.sleep(3600)  # stay up, reading nothing: the server must notice and let go


rd(4)  # the boot input: bytecode magic, compiled program, source
rd(int.from_bytes(rd(4), "big"))
rd(int.from_bytes(rd(4), "big"))
attacked = False
for msg in requests():
    op, req = msg.get("op"), msg.get("req", "")
    if op == "hello":
        reply(req, ok=True, pid=os.getpid(), ws_writable=True, python=sys.version.split()[0])
    elif op == "ping":
        reply(req, ok=True)
    elif op == "done":
        pass
    elif op == "read" and MODE == "read-then-big-json":
        data(b"D", req, b"a small file")
    elif not attacked:
        attacked = True
        attack(msg, req)
    elif op == "stop":
        reply(req, ok=True, was_running=False, run=None)
'''


def hostile_program(mode: str) -> bytes:
    """The program for /workspace/.control.py that misbehaves as `mode` says (see PROGRAM)."""
    return PROGRAM.replace("@MODE@", mode).encode()


@pytest.fixture(scope="session")
def hostile_image(docker_engine: Any, docker_server_id: str) -> Iterator[str]:
    """The sandbox image with a python3 that runs /workspace/.control.py in place of the control shell."""
    tag = f"mcp-sessions-test-hostile:{docker_server_id}"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text, mode in (("Dockerfile", DOCKERFILE, 0o644), ("python3", WRAPPER, 0o755)):
            blob = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(blob), mode
            tar.addfile(info, io.BytesIO(blob))
    context.seek(0)
    docker_engine.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, pull=False)
    yield tag
    # Only this run's: every build of the hostile image is the same image, so another test run's containers
    # (on a shared engine) match an `ancestor` filter too, and were once removed under its running tests.
    mine = {"ancestor": tag, "label": f"{LABEL_SERVER}={docker_server_id}"}
    for container in docker_engine.containers.list(all=True, filters=mine):
        container.remove(force=True)
    docker_engine.images.remove(tag, force=True)
