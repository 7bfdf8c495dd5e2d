"""Putting a benchmark's results into BENCHMARKS.md, where each benchmark owns one `## ` section."""

from __future__ import annotations

import re
import shlex
import sys
import textwrap
from pathlib import Path

PREAMBLE = "# Benchmarks\n\nMeasured numbers, each with the command that produced them.\n"


def command_line() -> str:
    """How this benchmark was run, as a reader would type it again."""
    return " ".join(["python", *map(shlex.quote, sys.argv)])


def paragraph(*sentences: str) -> str:
    """Sentences as one paragraph, wrapped as the rest of BENCHMARKS.md is."""
    return textwrap.fill(" ".join(sentences), 100, break_long_words=False, break_on_hyphens=False)


def verdict(met: bool, target: str) -> str:
    return f"{target}: {'met' if met else 'MISSED'}"


def target_cell(median_ms: float, base_ms: float | None, max_ratio: float | None = None, max_ms: float | None = None) -> str:
    """A table's target column: a ratio to the baseline's median or a time the median must stay under."""
    if max_ratio is not None and base_ms:
        return verdict(median_ms / base_ms <= max_ratio, f"≤ {max_ratio:g}x")
    if max_ms is not None:
        limit = f"{max_ms / 1000:g} s" if max_ms >= 1000 else f"{max_ms:g} ms"
        return verdict(median_ms < max_ms, f"< {limit}")
    return ""


def write_section(path: Path, section: str) -> None:
    """Replace the section that starts with `section`'s heading line (up to the next `## `), or append it."""
    heading = section.split("\n", 1)[0]
    assert heading.startswith("## "), heading
    text = path.read_text() if path.exists() else PREAMBLE
    section = section.rstrip("\n") + "\n\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def publish(heading: str, intro: str, table: str, write: Path | None) -> None:
    """A section (heading, a paragraph, the command that made it, its table) printed, and put into `write`."""
    text = "\n".join([heading, "", intro, "", "```", command_line(), "```", "", table, ""])
    print(text)
    if write:
        write_section(write, text)
        print(f"written to {write}", file=sys.stderr)
