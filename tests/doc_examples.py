"""The examples the docs show, read from where the docs keep them, for the tests that use them.

A test that runs or loads an example reads it through here, so when a section moves, one
place changes and the tests keep checking what a reader sees.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECURITY = ROOT / "docs" / "security.md"
CLIENTS = ROOT / "docs" / "clients.md"


def fenced_blocks(path: Path, language: str) -> list[str]:
    """The bodies of the ```<language> blocks of a Markdown file, in order."""
    return re.findall(rf"```{re.escape(language)}\n(.*?)```", path.read_text("utf-8"), re.S)


def headings(text: str) -> list[tuple[int, int, str]]:
    """(line number, level, title) of each Markdown heading, skipping fenced code blocks."""
    found = []
    fenced = False
    for number, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"(#{1,6}) (.+)", line)):
            found.append((number, len(match.group(1)), match.group(2).strip()))
    return found


def section(path: Path, heading: str) -> str:
    """The text under `heading` (a whole heading line, e.g. "### The callers file") up to
    the next heading of its level or higher."""
    text = path.read_text("utf-8")
    lines = text.splitlines()
    marks, title = heading.split(" ", 1)
    found = headings(text)
    for index, (number, level, name) in enumerate(found):
        if (level, name) == (len(marks), title):
            after = [n for n, lvl, _ in found[index + 1 :] if lvl <= level]
            return "\n".join(lines[number + 1 : after[0] if after else len(lines)]) + "\n"
    raise AssertionError(f"{path.relative_to(ROOT)} has no heading {heading!r}")


def section_blocks(path: Path, heading: str, language: str) -> list[str]:
    """The bodies of the ```<language> blocks in the section under `heading`, in order."""
    return re.findall(rf"```{re.escape(language)}\n(.*?)```", section(path, heading), re.S)


def callers_file_example() -> str:
    """The example callers file (TOML) in docs/security.md."""
    blocks = section_blocks(SECURITY, "### The callers file", "toml")
    assert blocks, "docs/security.md, 'The callers file': no TOML example"
    return blocks[0]
