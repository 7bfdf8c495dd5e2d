"""Bounded command output: keep the head and the tail, count what was cut from the middle."""

from __future__ import annotations

from .base import ExecResult


class OutputBuffer:
    """Holds at most `limit` bytes of a stream: the first half and the most recent half.

    Memory stays bounded whatever a command prints; `render()` marks the gap with the number of bytes cut.
    """

    def __init__(self, limit: int) -> None:
        if limit < 2:
            raise ValueError("limit must be at least 2 bytes")
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data[-self._tail_limit :]
            excess = len(self._tail) - self._tail_limit
            if excess > 0:
                del self._tail[:excess]

    @property
    def cut(self) -> int:
        return self.total - len(self._head) - len(self._tail)

    def render(self) -> str:
        head = self._head.decode("utf-8", errors="replace")
        tail = self._tail.decode("utf-8", errors="replace")
        if self.cut:
            return f"{head}\n[... {self.cut} bytes cut from the middle of the output ...]\n{tail}"
        return head + tail

    def result(
        self,
        exit_code: int | None,
        duration_s: float,
        *,
        timed_out: bool = False,
        interrupted: bool = False,
        failure: str | None = None,
    ) -> ExecResult:
        """The outcome of the command whose output this buffer kept."""
        return ExecResult(
            exit_code=exit_code,
            output=self.render(),
            output_bytes=self.total,
            cut_bytes=self.cut,
            duration_s=duration_s,
            timed_out=timed_out,
            interrupted=interrupted,
            failure=failure,
        )
