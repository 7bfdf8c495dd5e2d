"""The `memory` driver: sandboxes held in this process's memory, running a small subset of bash.

A real implementation of the driver contract (`sandbox_backends/base.py`) with no processes, no disk and
no engine to set up, so tests of the session layer run fast and the conformance suite holds a third,
independent driver to the contract. It ships as a plugin, found through its entry point only.

Each sandbox lives in `_SANDBOXES`, a table of this module keyed by sandbox id, the way an engine keeps
its containers: a new driver object (a restarted server) attaches by id and finds the files, the shell's
cwd and variables, the running command and the background jobs. A sandbox holds a file tree (folders,
files, symlinks) whose workspace is /workspace, with /tmp beside it.

Background jobs are anyio tasks on the memory engine, an event loop of its own on a daemon thread,
started on first use: they outlive the command, its caller and the driver object, as a container's
processes do, and stop when a command is interrupted, cancelled or times out, or the sandbox closes.
A job's output is dropped, as if it went to /dev/null. One event loop drives a sandbox's commands.

The shell, a subset of bash; anything else fails as bash would, with a message and exit code 127 for an
unknown command, 2 for syntax it does not know:
- lists: `;`, newlines, `&&`, `||`, `&` (background job), `( ... )` (subshell),
  `while LIST; do LIST; done`, `#` comments;
- words: '...', "...", `\\` escapes, `$NAME`, `${NAME}`, `$?`; unquoted expansions split on whitespace;
  `NAME=value` on its own sets a variable. No globs, pipes, `$(...)` or input redirections;
- redirections: `>`, `>>`, `2>`, `2>>`, `&>`, `>&2`, `2>&1`, `/dev/null` (stdout and stderr are one stream);
- commands: `:`, `true`, `false`, `echo [-n]`, `printf FORMAT [ARG...]` (%s %d %%, \\n \\t \\\\), `cd`,
  `pwd`, `export`, `unset`, `exit [N]`, `sleep SECONDS`, `cat FILE...`, `mkdir [-p]`, `rm [-f] FILE...`,
  `ln -s TARGET NAME`, `seq [FIRST] LAST` (the way to print a lot: streamed in 64 KiB chunks).
"""

from __future__ import annotations

import posixpath
import queue
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.from_thread import BlockingPortal

from sandbox_backends.base import (
    ClosesOnExit,
    ExecResult,
    FailureCallback,
    OutputCallback,
    PathNotAllowed,
    PhaseCallback,
    SandboxBusy,
    SandboxError,
    SandboxNotFound,
    SandboxSpec,
)
from sandbox_backends.output import OutputBuffer
from sandbox_backends.registry import DriverContext, DriverPlugin

WORKSPACE = "/workspace"
STOPPED = 130
"""The exit code of a command stopped by an interrupt, a cancel or a timeout, as bash's on SIGINT."""
STOP_WAIT_S = 10.0
"""How long stopping waits for each background job to end; a job checkpoints at every command."""
CHUNK = 65536
MAX_LINKS = 40
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED = {"if", "then", "elif", "else", "fi", "for", "until", "case", "esac", "select", "function", "{", "}"}


# -- the file tree -------------------------------------------------------------------------------


class _Folder:
    """The node of a folder."""


FOLDER = _Folder()


@dataclass(frozen=True)
class _Link:
    target: str


class _Files:
    """A sandbox's file tree: absolute normalised paths to nodes. Commands (on the caller's loop) and
    background jobs (on the engine's thread) share it, so every operation holds the lock."""

    def __init__(self) -> None:
        self.nodes: dict[str, bytes | _Folder | _Link] = {"/": FOLDER, "/tmp": FOLDER, WORKSPACE: FOLDER}
        self.lock = threading.Lock()

    def real(self, path: str, cwd: str, *, follow_last: bool = True) -> str:
        """`path` (absolute, or relative to `cwd`) with `.`, `..` and symlinks resolved, as `realpath -m`."""
        todo = [p for p in path.split("/") if p not in ("", ".")]
        done = "/" if path.startswith("/") else cwd
        hops = 0
        with self.lock:
            while todo:
                part = todo.pop(0)
                if part == "..":
                    done = posixpath.dirname(done)
                    continue
                step = posixpath.join(done, part)
                node = self.nodes.get(step)
                if isinstance(node, _Link) and (todo or follow_last):
                    hops += 1
                    if hops > MAX_LINKS:
                        raise OSError("Too many levels of symbolic links")
                    todo[:0] = [p for p in node.target.split("/") if p not in ("", ".")]
                    if node.target.startswith("/"):
                        done = "/"
                    continue
                done = step
        return done

    def get(self, real: str) -> bytes | _Folder | _Link | None:
        with self.lock:
            return self.nodes.get(real)

    def read(self, real: str) -> bytes:
        node = self.get(real)
        if node is None:
            raise FileNotFoundError("No such file or directory")
        if not isinstance(node, bytes):
            raise IsADirectoryError("Is a directory")
        return node

    def write(self, real: str, data: bytes, *, append: bool = False, parents: bool = False) -> None:
        with self.lock:
            if parents:
                self._make_folders(posixpath.dirname(real))
            self._parent_is_a_folder(real)
            node = self.nodes.get(real)
            if node is FOLDER:
                raise IsADirectoryError("Is a directory")
            self.nodes[real] = node + data if append and isinstance(node, bytes) else bytes(data)

    def mkdir(self, real: str, *, parents: bool) -> None:
        with self.lock:
            if parents:
                self._make_folders(real)
                return
            if real in self.nodes:
                raise FileExistsError("File exists")
            self._parent_is_a_folder(real)
            self.nodes[real] = FOLDER

    def remove(self, real: str) -> None:
        with self.lock:
            node = self.nodes.get(real)
            if node is None:
                raise FileNotFoundError("No such file or directory")
            if node is FOLDER:
                raise IsADirectoryError("Is a directory")
            del self.nodes[real]

    def link(self, target: str, real: str) -> None:
        with self.lock:
            if real in self.nodes:
                raise FileExistsError("File exists")
            self._parent_is_a_folder(real)
            self.nodes[real] = _Link(target)

    def _parent_is_a_folder(self, real: str) -> None:
        parent = self.nodes.get(posixpath.dirname(real))
        if parent is None:
            raise FileNotFoundError("No such file or directory")
        if parent is not FOLDER:
            raise NotADirectoryError("Not a directory")

    def _make_folders(self, real: str) -> None:
        path = "/"
        for part in real.split("/"):
            if part:
                path = posixpath.join(path, part)
                node = self.nodes.setdefault(path, FOLDER)
                if node is not FOLDER:
                    raise NotADirectoryError("Not a directory")


# -- parsing ---------------------------------------------------------------------------------------


class _Syntax(Exception):
    """A script this shell cannot parse, or syntax it does not support (bash's exit code 2)."""


@dataclass(frozen=True)
class _Word:
    parts: tuple[tuple[str, str, bool], ...]
    """(`lit` or `var`, text or variable name, quoted)."""

    @property
    def plain(self) -> str | None:
        """The text of a word that is one unquoted literal (a keyword, a file descriptor), else None."""
        if len(self.parts) == 1 and self.parts[0][0] == "lit" and not self.parts[0][2]:
            return self.parts[0][1]
        return None


@dataclass(frozen=True)
class _Op:
    text: str


@dataclass(frozen=True)
class _Redir:
    fd: int
    kind: str
    """`>`, `>>`, `>&` (to another descriptor) or `&>` (stdout and stderr)."""


Token = _Word | _Op | _Redir


def _show(token: Token | None) -> str:
    if token is None:
        return "newline"
    if isinstance(token, _Op):
        return "newline" if token.text == "\n" else token.text
    if isinstance(token, _Redir):
        return token.kind
    return "".join(text for _, text, _ in token.parts)


class _Lexer:
    """Splits a script into words, operators and redirections."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.tokens: list[Token] = []
        self.parts: list[tuple[str, str, bool]] = []
        self.started = False

    def add(self, kind: str, text: str, quoted: bool) -> None:
        self.started = True
        if kind == "lit" and self.parts and self.parts[-1][0] == "lit" and self.parts[-1][2] == quoted:
            self.parts[-1] = ("lit", self.parts[-1][1] + text, quoted)
        else:
            self.parts.append((kind, text, quoted))

    def end_word(self) -> None:
        if self.started:
            self.tokens.append(_Word(tuple(self.parts)))
        self.parts, self.started = [], False

    def run(self) -> list[Token]:
        src, i = self.src, 0
        while i < len(src):
            c = src[i]
            if c in " \t":
                self.end_word()
                i += 1
            elif src.startswith("\\\n", i):
                i += 2
            elif c == "#" and not self.started:
                while i < len(src) and src[i] != "\n":
                    i += 1
            elif c in ";\n()":
                self.end_word()
                self.tokens.append(_Op(c))
                i += 1
            elif c in "&|":
                self.end_word()
                two = src[i : i + 2]
                if two in ("&&", "||"):
                    self.tokens.append(_Op(two))
                    i += 2
                elif two == "&>":
                    self.tokens.append(_Redir(1, "&>"))
                    i += 2
                elif c == "|":
                    raise _Syntax("pipes (|) are not supported")
                else:
                    self.tokens.append(_Op("&"))
                    i += 1
            elif c in "<>":
                i = self.redirection(i)
            elif c == "'":
                end = src.find("'", i + 1)
                if end < 0:
                    raise _Syntax("unexpected end of file while looking for the matching `''")
                self.add("lit", src[i + 1 : end], True)
                i = end + 1
            elif c == '"':
                i = self.double_quoted(i + 1)
            elif c == "$":
                i = self.dollar(i, False)
            elif c == "`":
                raise _Syntax("command substitution is not supported")
            elif c == "\\":
                self.add("lit", src[i + 1 : i + 2], True)
                i += 2
            else:
                self.add("lit", c, False)
                i += 1
        self.end_word()
        return self.tokens

    def redirection(self, i: int) -> int:
        word = _Word(tuple(self.parts)).plain if self.started else None
        if word is not None and word.isdigit():
            fd = int(word)
            self.parts, self.started = [], False
        else:
            fd = 1
            self.end_word()
        if self.src[i] == "<":
            raise _Syntax("input redirections (<) are not supported")
        kind = ">>" if self.src.startswith(">>", i) else ">&" if self.src.startswith(">&", i) else ">"
        self.tokens.append(_Redir(fd, kind))
        return i + len(kind)

    def double_quoted(self, i: int) -> int:
        src = self.src
        self.add("lit", "", True)
        while i < len(src) and src[i] != '"':
            if src[i] == "\\" and src[i + 1 : i + 2] in ('"', "\\", "$", "`", "\n"):
                self.add("lit", src[i + 1].replace("\n", ""), True)
                i += 2
            elif src[i] == "$":
                i = self.dollar(i, True)
            elif src[i] == "`":
                raise _Syntax("command substitution is not supported")
            else:
                self.add("lit", src[i], True)
                i += 1
        if i >= len(src):
            raise _Syntax("unexpected end of file while looking for the matching `\"'")
        return i + 1

    def dollar(self, i: int, quoted: bool) -> int:
        src, nxt = self.src, self.src[i + 1 : i + 2]
        if nxt == "{":
            end = src.find("}", i + 2)
            name = src[i + 2 : end] if end > 0 else ""
            if name != "?" and not NAME.fullmatch(name):
                raise _Syntax(f"${{{name}}}: bad substitution")
            self.add("var", name, quoted)
            return end + 1
        if nxt == "?":
            self.add("var", "?", quoted)
            return i + 2
        if nxt == "(":
            raise _Syntax("command substitution $(...) is not supported")
        if nxt and nxt in "!$#@*-0123456789":
            raise _Syntax(f"${nxt} is not supported")
        found = NAME.match(src, i + 1)
        if found:
            self.add("var", found.group(), quoted)
            return found.end()
        self.add("lit", "$", quoted)
        return i + 1


@dataclass
class _Simple:
    assigns: list[tuple[str, _Word]]
    words: list[_Word]
    redirs: list[tuple[_Redir, _Word]]


@dataclass
class _Subshell:
    body: list[tuple[_AndOr, bool]]
    redirs: list[tuple[_Redir, _Word]]


@dataclass
class _While:
    cond: list[tuple[_AndOr, bool]]
    body: list[tuple[_AndOr, bool]]
    redirs: list[tuple[_Redir, _Word]]


Command = _Simple | _Subshell | _While


@dataclass
class _AndOr:
    first: Command
    rest: list[tuple[str, Command]]


Script = list[tuple[_AndOr, bool]]
"""Commands in order, each with whether it runs in the background (`&`)."""


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def at_op(self, *texts: str) -> bool:
        token = self.peek()
        return isinstance(token, _Op) and token.text in texts

    def at_word(self, *words: str) -> bool:
        token = self.peek()
        return isinstance(token, _Word) and token.plain in words

    def unexpected(self) -> _Syntax:
        return _Syntax(f"syntax error near unexpected token `{_show(self.peek())}'")

    def script(self) -> Script:
        body = self.sequence(())
        if self.peek() is not None:
            raise self.unexpected()
        return body

    def sequence(self, stops: tuple[str, ...]) -> Script:
        items: Script = []
        while True:
            while self.at_op("\n"):
                self.i += 1
            if self.peek() is None or (")" in stops and self.at_op(")")) or self.at_word(*stops):
                return items
            node = self.and_or()
            token = self.peek()
            if isinstance(token, _Op) and token.text in (";", "\n", "&"):
                self.i += 1
                items.append((node, token.text == "&"))
            else:
                items.append((node, False))
                return items

    def and_or(self) -> _AndOr:
        node = _AndOr(self.command(), [])
        while self.at_op("&&", "||"):
            op = self.peek()
            assert isinstance(op, _Op)
            self.i += 1
            while self.at_op("\n"):
                self.i += 1
            node.rest.append((op.text, self.command()))
        return node

    def expect(self, word: str) -> None:
        if not (self.at_op(word) or self.at_word(word)):
            raise self.unexpected()
        self.i += 1

    def command(self) -> Command:
        if self.at_op("("):
            self.i += 1
            body = self.sequence((")",))
            self.expect(")")
            return _Subshell(body, self.redirs())
        if self.at_word("while"):
            self.i += 1
            cond = self.sequence(("do",))
            self.expect("do")
            body = self.sequence(("done",))
            self.expect("done")
            return _While(cond, body, self.redirs())
        if self.at_word("do", "done"):
            raise self.unexpected()
        if self.at_word(*RESERVED):
            raise _Syntax(f"`{_show(self.peek())}' is not supported by this shell")
        node = _Simple([], [], [])
        while (token := self.peek()) is not None:
            if isinstance(token, _Redir):
                node.redirs.extend(self.redirs())
            elif isinstance(token, _Word):
                self.i += 1
                first = token.parts[0]
                name = NAME.match(first[1]) if first[0] == "lit" and not first[2] else None
                if not node.words and name and first[1][name.end() : name.end() + 1] == "=":
                    value = ("lit", first[1][name.end() + 1 :], False)
                    node.assigns.append((name.group(), _Word((value, *token.parts[1:]))))
                else:
                    node.words.append(token)
            else:
                break
        if not (node.assigns or node.words or node.redirs):
            raise self.unexpected()
        return node

    def redirs(self) -> list[tuple[_Redir, _Word]]:
        found = []
        while isinstance(token := self.peek(), _Redir):
            self.i += 1
            target = self.peek()
            if not isinstance(target, _Word):
                raise self.unexpected()
            self.i += 1
            found.append((token, target))
        return found


# -- running ---------------------------------------------------------------------------------------


class _Sink(Protocol):
    async def write(self, data: bytes) -> None: ...


class _Null:
    async def write(self, data: bytes) -> None:
        pass


NULL = _Null()


class _Stream:
    """A command's output: kept (head and tail) and streamed to the caller as it is written."""

    def __init__(self, buf: OutputBuffer, on_output: OutputCallback | None) -> None:
        self.buf = buf
        self.on_output = on_output

    async def write(self, data: bytes) -> None:
        self.buf.feed(data)
        if self.on_output is not None:
            await self.on_output(data)


class _FileSink:
    def __init__(self, files: _Files, real: str) -> None:
        self.files = files
        self.real = real

    async def write(self, data: bytes) -> None:
        self.files.write(self.real, data, append=True)


@dataclass
class _Io:
    out: _Sink
    err: _Sink

    async def fail(self, message: str, code: int = 1) -> int:
        await self.err.write(f"{message}\n".encode())
        return code


@dataclass
class _Ctx:
    """What a shell carries from one command to the next; a subshell or a job gets a copy."""

    cwd: str
    vars: dict[str, str]
    exported: set[str]
    status: int = 0

    def fork(self) -> _Ctx:
        return _Ctx(self.cwd, dict(self.vars), set(self.exported), self.status)


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


Builtin = Callable[["_Shell", list[str], _Ctx, _Io], Awaitable[int]]
BUILTINS: dict[str, Builtin] = {}


def builtin(*names: str) -> Callable[[Builtin], Builtin]:
    def register(func: Builtin) -> Builtin:
        for name in names:
            BUILTINS[name] = func
        return func

    return register


class _Shell:
    """Runs scripts against one sandbox's files; `spawn` starts a background job."""

    def __init__(self, files: _Files, spawn: Callable[[_AndOr, _Ctx], Awaitable[None]]) -> None:
        self.files = files
        self.spawn = spawn

    async def run_script(self, script: str, ctx: _Ctx, io: _Io) -> int:
        try:
            program = _Parser(_Lexer(script).run()).script()
        except _Syntax as e:
            return await io.fail(f"memory: {e}", 2)
        ctx.status = 0
        try:
            return await self.run_list(program, ctx, io)
        except _Exit as e:
            return e.code

    async def run_list(self, items: Script, ctx: _Ctx, io: _Io) -> int:
        for node, background in items:
            if background:
                await self.spawn(node, ctx.fork())
                ctx.status = 0
            else:
                ctx.status = await self.run_and_or(node, ctx, io)
        return ctx.status

    async def run_and_or(self, node: _AndOr, ctx: _Ctx, io: _Io) -> int:
        status = await self.run_command(node.first, ctx, io)
        for op, command in node.rest:
            ctx.status = status
            if (op == "&&") == (status == 0):
                status = await self.run_command(command, ctx, io)
        return status

    async def run_command(self, node: Command, ctx: _Ctx, io: _Io) -> int:
        await anyio.lowlevel.checkpoint()  # where an interrupt or a timeout lands, even in a busy loop
        redirected = await self.redirect(node.redirs, ctx, io)
        if redirected is None:
            return 1
        if isinstance(node, _Subshell):
            try:
                return await self.run_list(node.body, ctx.fork(), redirected)
            except _Exit as e:
                return e.code
        if isinstance(node, _While):
            status = 0
            while await self.run_list(node.cond, ctx, redirected) == 0:
                status = await self.run_list(node.body, ctx, redirected)
                await anyio.lowlevel.checkpoint()
            return status
        args = [f for word in node.words for f in self.fields(word, ctx)]
        if node.assigns and args:
            return await io.fail("memory: NAME=value before a command is not supported", 2)
        for name, word in node.assigns:
            ctx.vars[name] = self.text(word, ctx)
        if not args:
            return 0
        run = BUILTINS.get(args[0])
        if run is None:
            return await redirected.fail(f"memory: {args[0]}: command not found", 127)
        return await run(self, args[1:], ctx, redirected)

    async def redirect(self, redirs: list[tuple[_Redir, _Word]], ctx: _Ctx, io: _Io) -> _Io | None:
        sinks: dict[int, _Sink] = {1: io.out, 2: io.err}
        for redir, word in redirs:
            target = self.text(word, ctx)
            if redir.kind == ">&":
                if target not in ("1", "2") or redir.fd not in (1, 2):
                    await io.fail(f"memory: {target}: Bad file descriptor")
                    return None
                sinks[redir.fd] = sinks[int(target)]
                continue
            if redir.fd not in (1, 2):
                await io.fail(f"memory: {redir.fd}: Bad file descriptor")
                return None
            sink: _Sink = NULL
            if target != "/dev/null":
                try:
                    real = self.files.real(target, ctx.cwd)
                    self.files.write(real, b"", append=redir.kind == ">>")
                except OSError as e:
                    await io.fail(f"memory: {target}: {e}")
                    return None
                sink = _FileSink(self.files, real)
            if redir.kind == "&>":
                sinks[1] = sinks[2] = sink
            else:
                sinks[redir.fd] = sink
        return _Io(sinks[1], sinks[2])

    def fields(self, word: _Word, ctx: _Ctx) -> list[str]:
        """The word's fields after expansion: unquoted variables split on whitespace, as bash's default IFS."""
        found: list[str] = []
        current, have = "", False
        for kind, text, quoted in word.parts:
            value = text if kind == "lit" else self.var(text, ctx)
            if kind == "lit" or quoted:
                current += value
                have = have or quoted or bool(value)
                continue
            pieces = value.split()
            if value[:1].isspace() and have:
                found.append(current)
                current, have = "", False
            for n, piece in enumerate(pieces):
                if n:
                    found.append(current)
                    current = ""
                current += piece
                have = True
            if pieces and value[-1:].isspace():
                found.append(current)
                current, have = "", False
        if have:
            found.append(current)
        return found

    def text(self, word: _Word, ctx: _Ctx) -> str:
        return " ".join(self.fields(word, ctx))

    @staticmethod
    def var(name: str, ctx: _Ctx) -> str:
        return str(ctx.status) if name == "?" else ctx.vars.get(name, "")


@builtin(":", "true")
async def _true(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    return 0


@builtin("false")
async def _false(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    return 1


@builtin("echo")
async def _echo(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    end = "\n"
    while args and args[0] == "-n":
        args, end = args[1:], ""
    await io.out.write((" ".join(args) + end).encode())
    return 0


ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


def _format(fmt: str, args: list[str]) -> tuple[str, int]:
    """`fmt` filled from `args`; how many it used."""
    out, used, i = [], 0, 0
    while i < len(fmt):
        c, nxt = fmt[i], fmt[i + 1 : i + 2]
        if c == "\\" and nxt in ESCAPES:
            out.append(ESCAPES[nxt])
        elif c == "%" and nxt == "%":
            out.append("%")
        elif c == "%" and nxt in ("s", "d"):
            arg = args[used] if used < len(args) else ""
            used += used < len(args)
            out.append(arg if nxt == "s" else str(int(arg or 0)))
        elif c == "%":
            raise ValueError(f"%{nxt}: invalid format character")
        else:
            out.append(c)
            i += 1
            continue
        i += 2
    return "".join(out), used


@builtin("printf")
async def _printf(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    if not args:
        return await io.fail("printf: usage: printf format [arguments]", 2)
    fmt, rest, out = args[0], args[1:], []
    try:
        while True:  # as bash: the format is used again while arguments are left
            text, used = _format(fmt, rest)
            out.append(text)
            rest = rest[used:]
            if not rest or not used:
                break
    except ValueError as e:
        return await io.fail(f"printf: {e}")
    await io.out.write("".join(out).encode())
    return 0


@builtin("cd")
async def _cd(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    target = args[0] if args else ctx.vars.get("HOME", WORKSPACE)
    real = shell.files.real(target, ctx.cwd)
    node = shell.files.get(real)
    if node is not FOLDER:
        return await io.fail(f"cd: {target}: {'No such file or directory' if node is None else 'Not a directory'}")
    ctx.cwd = ctx.vars["PWD"] = real
    return 0


@builtin("pwd")
async def _pwd(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    await io.out.write(f"{ctx.cwd}\n".encode())
    return 0


@builtin("export")
async def _export(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    if not args:
        listing = "".join(f'declare -x {n}="{ctx.vars.get(n, "")}"\n' for n in sorted(ctx.exported))
        await io.out.write(listing.encode())
    for arg in args:
        name, eq, value = arg.partition("=")
        if not NAME.fullmatch(name):
            return await io.fail(f"export: `{arg}': not a valid identifier")
        if eq:
            ctx.vars[name] = value
        ctx.exported.add(name)
    return 0


@builtin("unset")
async def _unset(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    for name in args:
        ctx.vars.pop(name, None)
        ctx.exported.discard(name)
    return 0


@builtin("exit")
async def _exit(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    if args and not args[0].lstrip("-").isdigit():
        await io.fail(f"exit: {args[0]}: numeric argument required")
        raise _Exit(2)
    raise _Exit(int(args[0]) & 255 if args else ctx.status)


@builtin("sleep")
async def _sleep(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    try:
        seconds = float(args[0]) if len(args) == 1 else -1.0
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        return await io.fail(f"sleep: invalid time interval '{' '.join(args)}'")
    await anyio.sleep(seconds)
    return 0


async def _each(names: Iterable[str], io: _Io, failure: str, act: Callable[[str], Awaitable[None]]) -> int:
    """`act` on each name, going on past failures, each reported as `failure` says; 1 if any failed."""
    status = 0
    for name in names:
        try:
            await act(name)
        except OSError as e:
            status = await io.fail(failure.format(name=name, error=e))
    return status


@builtin("cat")
async def _cat(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    async def cat(name: str) -> None:
        await io.out.write(shell.files.read(shell.files.real(name, ctx.cwd)))

    return await _each(args, io, "cat: {name}: {error}", cat)  # with no name it reads stdin, which is empty


@builtin("mkdir")
async def _mkdir(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    async def mkdir(name: str) -> None:
        shell.files.mkdir(shell.files.real(name, ctx.cwd), parents="-p" in args)

    return await _each([a for a in args if a != "-p"], io, "mkdir: cannot create directory '{name}': {error}", mkdir)


@builtin("rm")
async def _rm(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    async def rm(name: str) -> None:
        try:
            shell.files.remove(shell.files.real(name, ctx.cwd, follow_last=False))
        except FileNotFoundError:
            if "-f" not in args:
                raise

    return await _each([a for a in args if a != "-f"], io, "rm: cannot remove '{name}': {error}", rm)


@builtin("ln")
async def _ln(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    if len(args) != 3 or args[0] != "-s":
        return await io.fail("ln: this shell only makes symbolic links: ln -s TARGET NAME")
    target, name = args[1], args[2]
    real = shell.files.real(name, ctx.cwd, follow_last=False)
    if shell.files.get(shell.files.real(name, ctx.cwd)) is FOLDER:  # as ln: a link inside that folder
        real = posixpath.join(shell.files.real(name, ctx.cwd), posixpath.basename(target.rstrip("/")))
    try:
        shell.files.link(target, real)
    except OSError as e:
        return await io.fail(f"ln: failed to create symbolic link '{name}': {e}")
    return 0


@builtin("seq")
async def _seq(shell: _Shell, args: list[str], ctx: _Ctx, io: _Io) -> int:
    try:
        first, last = (1, int(args[0])) if len(args) == 1 else (int(args[0]), int(args[1]))
    except (ValueError, IndexError):
        return await io.fail("seq: usage: seq [FIRST] LAST")
    chunk: list[str] = []
    size = 0
    for n in range(first, last + 1):
        line = f"{n}\n"
        chunk.append(line)
        size += len(line)
        if size >= CHUNK:
            await io.out.write("".join(chunk).encode())
            await anyio.lowlevel.checkpoint()
            chunk, size = [], 0
    if chunk:
        await io.out.write("".join(chunk).encode())
    return 0


# -- the engine, sandboxes and the driver ------------------------------------------------------------


class _Engine:
    """An event loop of its own on a daemon thread, where background jobs run, as a container's
    processes run in its engine: apart from whoever started them."""

    def __init__(self) -> None:
        self._portal: BlockingPortal | None = None
        self._lock = threading.Lock()

    def start(self, func: Callable[..., Awaitable[None]], *args: Any) -> Future[None]:
        """Start `func(*args)` as a task there; cancelling the future cancels it. Blocks: call from a thread."""
        return self._running().start_task_soon(func, *args)

    def _running(self) -> BlockingPortal:
        with self._lock:
            if self._portal is None:
                ready: queue.Queue[BlockingPortal] = queue.Queue()
                threading.Thread(target=anyio.run, args=(self._serve, ready), name="memory-engine", daemon=True).start()
                try:
                    self._portal = ready.get(timeout=STOP_WAIT_S)
                except queue.Empty:
                    raise SandboxError("The memory engine did not start.") from None
            return self._portal

    @staticmethod
    async def _serve(ready: queue.Queue[BlockingPortal]) -> None:
        async with BlockingPortal() as portal:
            ready.put(portal)
            await portal.sleep_until_stopped()


ENGINE = _Engine()


@dataclass(eq=False)
class _Job:
    done: threading.Event = field(default_factory=threading.Event)
    future: Future[None] | None = None


@dataclass(eq=False)
class _Run:
    """The command running in a sandbox, for whoever interrupts it."""

    buf: OutputBuffer
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    interrupted: bool = False


class _State:
    """One sandbox as the engine keeps it: what outlives every object that drives it."""

    def __init__(self, name: str, server_id: str, env: dict[str, str]) -> None:
        self.name = name
        self.server_id = server_id
        self.files = _Files()
        variables = {"HOME": WORKSPACE, "PWD": WORKSPACE, **env}
        self.ctx = _Ctx(WORKSPACE, variables, set(variables))
        self.shell = _Shell(self.files, self.spawn)
        self.run: _Run | None = None
        self.jobs: set[_Job] = set()
        self.lock = threading.Lock()

    async def spawn(self, node: _AndOr, ctx: _Ctx) -> None:
        job = _Job()
        with self.lock:
            self.jobs.add(job)
        job.future = await anyio.to_thread.run_sync(ENGINE.start, self._job, node, ctx, job)

    async def _job(self, node: _AndOr, ctx: _Ctx, job: _Job) -> None:
        """A background job, on the engine's loop; its output goes nowhere."""
        try:
            await self.shell.run_and_or(node, ctx, _Io(NULL, NULL))
        except _Exit:
            pass
        finally:
            with self.lock:
                self.jobs.discard(job)
            job.done.set()

    async def stop_jobs(self) -> None:
        """Cancel every background job and wait until each has ended."""
        with self.lock:
            jobs = list(self.jobs)
        for job in jobs:
            if job.future is not None:
                job.future.cancel()

        def wait() -> None:
            for job in jobs:
                job.done.wait(STOP_WAIT_S)

        if jobs:
            await anyio.to_thread.run_sync(wait)


_SANDBOXES: dict[str, _State] = {}
"""Every memory sandbox of this process by id, whichever driver object made it."""


class MemorySandbox(ClosesOnExit):
    """A handle on one sandbox of the table; any number of handles may drive the same one."""

    def __init__(self, sandbox_id: str) -> None:
        self._id = sandbox_id

    @property
    def id(self) -> str:
        return self._id

    @property
    def workspace(self) -> str:
        return WORKSPACE

    def describe(self) -> dict[str, object]:
        return {
            "driver": "memory",
            "id": self._id,
            "workspace": WORKSPACE,
            "network": "none",
            "limits": "not enforced by the memory driver",
        }

    def _state(self) -> _State:
        state = _SANDBOXES.get(self._id)
        if state is None:
            raise SandboxNotFound(f"The memory sandbox {self._id} no longer exists.")
        return state

    async def exec(
        self,
        script: str,
        *,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
        max_output_bytes: int = 65536,
    ) -> ExecResult:
        state = self._state()
        if state.run is not None:
            raise SandboxBusy("A command is already running in this sandbox.")
        run = state.run = _Run(OutputBuffer(max_output_bytes))
        stream = _Stream(run.buf, on_output)
        started = time.monotonic()
        code = STOPPED
        try:
            with anyio.move_on_after(timeout_s) as deadline, run.scope:
                code = await state.shell.run_script(script, state.ctx, _Io(stream, stream))
            if deadline.cancelled_caught:  # so is everything it started (`interrupt` stops them itself)
                await state.stop_jobs()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await state.stop_jobs()
            raise
        finally:
            state.run = None
            run.done.set()
        timed_out = deadline.cancelled_caught
        return run.buf.result(
            code, round(time.monotonic() - started, 3), timed_out=timed_out, interrupted=run.interrupted and not timed_out
        )

    async def interrupt(self) -> bool:
        state = _SANDBOXES.get(self._id)
        run = state.run if state is not None else None
        if state is None or run is None:
            return False
        run.interrupted = True
        run.scope.cancel()
        await run.done.wait()
        await state.stop_jobs()
        return True

    async def take_over(self) -> ExecResult | None:
        """A command runs only while its `exec` waits in this process; stopping it hands its output over."""
        run = self._state().run
        if run is None:
            return None
        await self.interrupt()
        return run.buf.result(STOPPED, 0.0, interrupted=True)

    def _inside(self, state: _State, path: str) -> str:
        if "\0" in path:
            raise PathNotAllowed("File paths cannot contain NUL bytes.")
        try:
            real = state.files.real(path, WORKSPACE)
        except OSError as e:
            raise SandboxError(f"Cannot resolve '{path}': {e}.") from e
        if real != WORKSPACE and not real.startswith(WORKSPACE + "/"):
            raise PathNotAllowed(f"'{path}' is outside the workspace {WORKSPACE}. Give a path relative to the workspace.")
        return real

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        state = self._state()
        node = state.files.get(self._inside(state, path))
        if node is None:
            raise FileNotFoundError(f"No such file in the workspace: '{path}'.")
        if not isinstance(node, bytes):
            raise IsADirectoryError(f"'{path}' is a folder, not a file.")
        if len(node) > max_bytes:
            raise SandboxError(f"'{path}' is {len(node)} bytes, over the {max_bytes}-byte limit for reading it here.")
        return node

    async def write_file(self, path: str, data: bytes) -> None:
        state = self._state()
        real = self._inside(state, path)
        if real == WORKSPACE:
            raise IsADirectoryError(f"'{path}' is the workspace folder, not a file.")
        try:
            state.files.write(real, data, parents=True)
        except IsADirectoryError:
            raise IsADirectoryError(f"'{path}' is a folder, not a file.") from None
        except NotADirectoryError:
            raise NotADirectoryError(f"A parent of '{path}' is a file, not a folder.") from None

    async def close(self, *, delete: bool = False) -> None:
        state = _SANDBOXES.get(self._id)
        if state is None:
            return
        await self.interrupt()
        await state.stop_jobs()
        if delete and _SANDBOXES.get(self._id) is state:
            del _SANDBOXES[self._id]


class MemoryDriver:
    """Makes `MemorySandbox`es in the module's table, under this server's id."""

    name = "memory"

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id

    async def create(self, spec: SandboxSpec, on_phase: PhaseCallback | None = None) -> MemorySandbox:
        if not spec.name:
            raise SandboxError("Invalid sandbox name ''.")
        if any(s.server_id == self.server_id and s.name == spec.name for s in _SANDBOXES.values()):
            raise SandboxError(f"A memory sandbox named {spec.name!r} already exists.")
        if on_phase:
            await on_phase("creating_sandbox", "in memory")
        sandbox_id = "mem-" + secrets.token_hex(8)
        _SANDBOXES[sandbox_id] = _State(spec.name, self.server_id, spec.env)
        return MemorySandbox(sandbox_id)

    async def attach(self, sandbox_id: str, spec: SandboxSpec) -> MemorySandbox:
        state = _SANDBOXES.get(sandbox_id)
        if state is None or (state.server_id, state.name) != (self.server_id, spec.name):
            raise SandboxNotFound(f"The memory sandbox {sandbox_id} no longer exists.")
        return MemorySandbox(sandbox_id)

    async def watch(self, on_failure: FailureCallback) -> None:
        """Nothing kills a memory sandbox behind the server's back."""
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        """Sandboxes stay in the table, for the next driver object to attach to."""


def _make(settings: object, context: DriverContext) -> MemoryDriver:
    return MemoryDriver(context.server_id)


plugin = DriverPlugin(
    name="memory",
    make=_make,
    summary="a sandbox in the server's memory running a small subset of bash (for tests)",
)
