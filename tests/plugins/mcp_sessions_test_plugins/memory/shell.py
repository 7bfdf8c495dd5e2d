"""Running the parsed commands: the memory shell, its output streams, and the commands it knows."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.lowlevel

from sandbox_backends.base import (
    OutputCallback,
)
from sandbox_backends.output import OutputBuffer

from .files import FOLDER, Files
from .parse import AndOr, Command, Lexer, Parser, Redir, Script, Subshell, Syntax, While, Word

WORKSPACE = "/workspace"
STOPPED = 130
"""The exit code of a command stopped by an interrupt, a cancel or a timeout, as bash's on SIGINT."""
STOP_WAIT_S = 10.0
"""How long stopping waits for each background job to end; a job checkpoints at every command."""
CHUNK = 65536
MAX_LINKS = 40
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED = {"if", "then", "elif", "else", "fi", "for", "until", "case", "esac", "select", "function", "{", "}"}


# -- running ---------------------------------------------------------------------------------------


class Sink(Protocol):
    async def write(self, data: bytes) -> None: ...


class Null:
    async def write(self, data: bytes) -> None:
        pass


NULL = Null()


class Stream:
    """A command's output: kept (head and tail) and streamed to the caller as it is written."""

    def __init__(self, buf: OutputBuffer, on_output: OutputCallback | None) -> None:
        self.buf = buf
        self.on_output = on_output

    async def write(self, data: bytes) -> None:
        self.buf.feed(data)
        if self.on_output is not None:
            await self.on_output(data)


class FileSink:
    def __init__(self, files: Files, real: str) -> None:
        self.files = files
        self.real = real

    async def write(self, data: bytes) -> None:
        self.files.write(self.real, data, append=True)


@dataclass
class Io:
    out: Sink
    err: Sink

    async def fail(self, message: str, code: int = 1) -> int:
        await self.err.write(f"{message}\n".encode())
        return code


@dataclass
class Ctx:
    """What a shell carries from one command to the next; a subshell or a job gets a copy."""

    cwd: str
    vars: dict[str, str]
    exported: set[str]
    status: int = 0

    def fork(self) -> Ctx:
        return Ctx(self.cwd, dict(self.vars), set(self.exported), self.status)


class Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


Builtin = Callable[["Shell", list[str], Ctx, Io], Awaitable[int]]
BUILTINS: dict[str, Builtin] = {}


def builtin(*names: str) -> Callable[[Builtin], Builtin]:
    def register(func: Builtin) -> Builtin:
        for name in names:
            BUILTINS[name] = func
        return func

    return register


class Shell:
    """Runs scripts against one sandbox's files; `spawn` starts a background job."""

    def __init__(self, files: Files, spawn: Callable[[AndOr, Ctx], Awaitable[None]]) -> None:
        self.files = files
        self.spawn = spawn

    async def run_script(self, script: str, ctx: Ctx, io: Io) -> int:
        try:
            program = Parser(Lexer(script).run()).script()
        except Syntax as e:
            return await io.fail(f"memory: {e}", 2)
        ctx.status = 0
        try:
            return await self.run_list(program, ctx, io)
        except Exit as e:
            return e.code

    async def run_list(self, items: Script, ctx: Ctx, io: Io) -> int:
        for node, background in items:
            if background:
                await self.spawn(node, ctx.fork())
                ctx.status = 0
            else:
                ctx.status = await self.run_and_or(node, ctx, io)
        return ctx.status

    async def run_and_or(self, node: AndOr, ctx: Ctx, io: Io) -> int:
        status = await self.run_command(node.first, ctx, io)
        for op, command in node.rest:
            ctx.status = status
            if (op == "&&") == (status == 0):
                status = await self.run_command(command, ctx, io)
        return status

    async def run_command(self, node: Command, ctx: Ctx, io: Io) -> int:
        await anyio.lowlevel.checkpoint()  # where an interrupt or a timeout lands, even in a busy loop
        redirected = await self.redirect(node.redirs, ctx, io)
        if redirected is None:
            return 1
        if isinstance(node, Subshell):
            try:
                return await self.run_list(node.body, ctx.fork(), redirected)
            except Exit as e:
                return e.code
        if isinstance(node, While):
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

    async def redirect(self, redirs: list[tuple[Redir, Word]], ctx: Ctx, io: Io) -> Io | None:
        sinks: dict[int, Sink] = {1: io.out, 2: io.err}
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
            sink: Sink = NULL
            if target != "/dev/null":
                try:
                    real = self.files.real(target, ctx.cwd)
                    self.files.write(real, b"", append=redir.kind == ">>")
                except OSError as e:
                    await io.fail(f"memory: {target}: {e}")
                    return None
                sink = FileSink(self.files, real)
            if redir.kind == "&>":
                sinks[1] = sinks[2] = sink
            else:
                sinks[redir.fd] = sink
        return Io(sinks[1], sinks[2])

    def fields(self, word: Word, ctx: Ctx) -> list[str]:
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

    def text(self, word: Word, ctx: Ctx) -> str:
        return " ".join(self.fields(word, ctx))

    @staticmethod
    def var(name: str, ctx: Ctx) -> str:
        return str(ctx.status) if name == "?" else ctx.vars.get(name, "")


@builtin(":", "true")
async def _true(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
    return 0


@builtin("false")
async def _false(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
    return 1


@builtin("echo")
async def _echo(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
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
async def _printf(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
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
async def _cd(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
    target = args[0] if args else ctx.vars.get("HOME", WORKSPACE)
    real = shell.files.real(target, ctx.cwd)
    node = shell.files.get(real)
    if node is not FOLDER:
        return await io.fail(f"cd: {target}: {'No such file or directory' if node is None else 'Not a directory'}")
    ctx.cwd = ctx.vars["PWD"] = real
    return 0


@builtin("pwd")
async def _pwd(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
    await io.out.write(f"{ctx.cwd}\n".encode())
    return 0


@builtin("export")
async def _export(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
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
async def _unset(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
    for name in args:
        ctx.vars.pop(name, None)
        ctx.exported.discard(name)
    return 0


@builtin("exit")
async def _exit(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
    if args and not args[0].lstrip("-").isdigit():
        await io.fail(f"exit: {args[0]}: numeric argument required")
        raise Exit(2)
    raise Exit(int(args[0]) & 255 if args else ctx.status)


@builtin("sleep")
async def _sleep(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
    try:
        seconds = float(args[0]) if len(args) == 1 else -1.0
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        return await io.fail(f"sleep: invalid time interval '{' '.join(args)}'")
    await anyio.sleep(seconds)
    return 0


async def _each(names: Iterable[str], io: Io, failure: str, act: Callable[[str], Awaitable[None]]) -> int:
    """`act` on each name, going on past failures, each reported as `failure` says; 1 if any failed."""
    status = 0
    for name in names:
        try:
            await act(name)
        except OSError as e:
            status = await io.fail(failure.format(name=name, error=e))
    return status


@builtin("cat")
async def _cat(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
    async def cat(name: str) -> None:
        await io.out.write(shell.files.read(shell.files.real(name, ctx.cwd)))

    return await _each(args, io, "cat: {name}: {error}", cat)  # with no name it reads stdin, which is empty


@builtin("mkdir")
async def _mkdir(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
    async def mkdir(name: str) -> None:
        shell.files.mkdir(shell.files.real(name, ctx.cwd), parents="-p" in args)

    return await _each([a for a in args if a != "-p"], io, "mkdir: cannot create directory '{name}': {error}", mkdir)


@builtin("rm")
async def _rm(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
    async def rm(name: str) -> None:
        try:
            shell.files.remove(shell.files.real(name, ctx.cwd, follow_last=False))
        except FileNotFoundError:
            if "-f" not in args:
                raise

    return await _each([a for a in args if a != "-f"], io, "rm: cannot remove '{name}': {error}", rm)


@builtin("ln")
async def _ln(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
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
async def _seq(shell: Shell, args: list[str], ctx: Ctx, io: Io) -> int:
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
