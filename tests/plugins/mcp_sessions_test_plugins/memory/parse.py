"""The memory shell's parser: words, redirections, simple commands, subshells, `while`, `&&`/`||` lists."""

from __future__ import annotations

import re
from dataclasses import dataclass

WORKSPACE = "/workspace"
STOPPED = 130
"""The exit code of a command stopped by an interrupt, a cancel or a timeout, as bash's on SIGINT."""
STOP_WAIT_S = 10.0
"""How long stopping waits for each background job to end; a job checkpoints at every command."""
CHUNK = 65536
MAX_LINKS = 40
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED = {"if", "then", "elif", "else", "fi", "for", "until", "case", "esac", "select", "function", "{", "}"}


# -- parsing ---------------------------------------------------------------------------------------


class Syntax(Exception):
    """A script this shell cannot parse, or syntax it does not support (bash's exit code 2)."""


@dataclass(frozen=True)
class Word:
    parts: tuple[tuple[str, str, bool], ...]
    """(`lit` or `var`, text or variable name, quoted)."""

    @property
    def plain(self) -> str | None:
        """The text of a word that is one unquoted literal (a keyword, a file descriptor), else None."""
        if len(self.parts) == 1 and self.parts[0][0] == "lit" and not self.parts[0][2]:
            return self.parts[0][1]
        return None


@dataclass(frozen=True)
class Op:
    text: str


@dataclass(frozen=True)
class Redir:
    fd: int
    kind: str
    """`>`, `>>`, `>&` (to another descriptor) or `&>` (stdout and stderr)."""


Token = Word | Op | Redir


def _show(token: Token | None) -> str:
    if token is None:
        return "newline"
    if isinstance(token, Op):
        return "newline" if token.text == "\n" else token.text
    if isinstance(token, Redir):
        return token.kind
    return "".join(text for _, text, _ in token.parts)


class Lexer:
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
            self.tokens.append(Word(tuple(self.parts)))
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
                self.tokens.append(Op(c))
                i += 1
            elif c in "&|":
                self.end_word()
                two = src[i : i + 2]
                if two in ("&&", "||"):
                    self.tokens.append(Op(two))
                    i += 2
                elif two == "&>":
                    self.tokens.append(Redir(1, "&>"))
                    i += 2
                elif c == "|":
                    raise Syntax("pipes (|) are not supported")
                else:
                    self.tokens.append(Op("&"))
                    i += 1
            elif c in "<>":
                i = self.redirection(i)
            elif c == "'":
                end = src.find("'", i + 1)
                if end < 0:
                    raise Syntax("unexpected end of file while looking for the matching `''")
                self.add("lit", src[i + 1 : end], True)
                i = end + 1
            elif c == '"':
                i = self.double_quoted(i + 1)
            elif c == "$":
                i = self.dollar(i, False)
            elif c == "`":
                raise Syntax("command substitution is not supported")
            elif c == "\\":
                self.add("lit", src[i + 1 : i + 2], True)
                i += 2
            else:
                self.add("lit", c, False)
                i += 1
        self.end_word()
        return self.tokens

    def redirection(self, i: int) -> int:
        word = Word(tuple(self.parts)).plain if self.started else None
        if word is not None and word.isdigit():
            fd = int(word)
            self.parts, self.started = [], False
        else:
            fd = 1
            self.end_word()
        if self.src[i] == "<":
            raise Syntax("input redirections (<) are not supported")
        kind = ">>" if self.src.startswith(">>", i) else ">&" if self.src.startswith(">&", i) else ">"
        self.tokens.append(Redir(fd, kind))
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
                raise Syntax("command substitution is not supported")
            else:
                self.add("lit", src[i], True)
                i += 1
        if i >= len(src):
            raise Syntax("unexpected end of file while looking for the matching `\"'")
        return i + 1

    def dollar(self, i: int, quoted: bool) -> int:
        src, nxt = self.src, self.src[i + 1 : i + 2]
        if nxt == "{":
            end = src.find("}", i + 2)
            name = src[i + 2 : end] if end > 0 else ""
            if name != "?" and not NAME.fullmatch(name):
                raise Syntax(f"${{{name}}}: bad substitution")
            self.add("var", name, quoted)
            return end + 1
        if nxt == "?":
            self.add("var", "?", quoted)
            return i + 2
        if nxt == "(":
            raise Syntax("command substitution $(...) is not supported")
        if nxt and nxt in "!$#@*-0123456789":
            raise Syntax(f"${nxt} is not supported")
        found = NAME.match(src, i + 1)
        if found:
            self.add("var", found.group(), quoted)
            return found.end()
        self.add("lit", "$", quoted)
        return i + 1


@dataclass
class Simple:
    assigns: list[tuple[str, Word]]
    words: list[Word]
    redirs: list[tuple[Redir, Word]]


@dataclass
class Subshell:
    body: list[tuple[AndOr, bool]]
    redirs: list[tuple[Redir, Word]]


@dataclass
class While:
    cond: list[tuple[AndOr, bool]]
    body: list[tuple[AndOr, bool]]
    redirs: list[tuple[Redir, Word]]


Command = Simple | Subshell | While


@dataclass
class AndOr:
    first: Command
    rest: list[tuple[str, Command]]


Script = list[tuple[AndOr, bool]]
"""Commands in order, each with whether it runs in the background (`&`)."""


class Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def at_op(self, *texts: str) -> bool:
        token = self.peek()
        return isinstance(token, Op) and token.text in texts

    def at_word(self, *words: str) -> bool:
        token = self.peek()
        return isinstance(token, Word) and token.plain in words

    def unexpected(self) -> Syntax:
        return Syntax(f"syntax error near unexpected token `{_show(self.peek())}'")

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
            if isinstance(token, Op) and token.text in (";", "\n", "&"):
                self.i += 1
                items.append((node, token.text == "&"))
            else:
                items.append((node, False))
                return items

    def and_or(self) -> AndOr:
        node = AndOr(self.command(), [])
        while self.at_op("&&", "||"):
            op = self.peek()
            assert isinstance(op, Op)
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
            return Subshell(body, self.redirs())
        if self.at_word("while"):
            self.i += 1
            cond = self.sequence(("do",))
            self.expect("do")
            body = self.sequence(("done",))
            self.expect("done")
            return While(cond, body, self.redirs())
        if self.at_word("do", "done"):
            raise self.unexpected()
        if self.at_word(*RESERVED):
            raise Syntax(f"`{_show(self.peek())}' is not supported by this shell")
        node = Simple([], [], [])
        while (token := self.peek()) is not None:
            if isinstance(token, Redir):
                node.redirs.extend(self.redirs())
            elif isinstance(token, Word):
                self.i += 1
                first = token.parts[0]
                name = NAME.match(first[1]) if first[0] == "lit" and not first[2] else None
                if not node.words and name and first[1][name.end() : name.end() + 1] == "=":
                    value = ("lit", first[1][name.end() + 1 :], False)
                    node.assigns.append((name.group(), Word((value, *token.parts[1:]))))
                else:
                    node.words.append(token)
            else:
                break
        if not (node.assigns or node.words or node.redirs):
            raise self.unexpected()
        return node

    def redirs(self) -> list[tuple[Redir, Word]]:
        found = []
        while isinstance(token := self.peek(), Redir):
            self.i += 1
            target = self.peek()
            if not isinstance(target, Word):
                raise self.unexpected()
            self.i += 1
            found.append((token, target))
        return found
