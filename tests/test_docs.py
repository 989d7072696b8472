"""The Markdown docs hold together: every relative link and anchor points at something that
exists, and the docs speak only of the project itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from doc_examples import ROOT, headings

# Markdown a reader of the repository sees (generated BENCHMARKS.md included).
DOCS = sorted([*ROOT.glob("*.md"), ROOT / "client" / "README.md", *(ROOT / "docs").rglob("*.md")])
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def slug(title: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for _, _, title in headings(path.read_text("utf-8")):
        base = slug(title)
        name, n = base, 0
        while name in found:  # repeated headings get -1, -2, ...
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def links(path: Path) -> list[str]:
    """The targets of the inline links and images of a Markdown file, outside code."""
    text = _CODE_SPAN.sub("code", _FENCE.sub("", path.read_text("utf-8")))
    return _LINK.findall(text)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of `path` whose file or anchor does not exist (or that leaves
    `root`), with why."""
    broken = []
    for target in links(path):
        if _SCHEME.match(target):
            continue  # https:, mailto: ... are not checked here
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif root not in resolved.parents and resolved != root:
            broken.append(f"{target}: outside the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    return broken


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_relative_link_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_the_docs_are_linked_together() -> None:
    """Every file under docs/ is reachable from the README, directly or through docs/."""
    readme = ROOT / "README.md"
    seen, todo = {readme}, [readme]
    while todo:
        page = todo.pop()
        for target in links(page):
            file_part = target.partition("#")[0]
            if _SCHEME.match(target) or not file_part:
                continue
            resolved = (page.parent / file_part).resolve()
            if resolved.is_dir() and (resolved / "README.md").exists():
                resolved = resolved / "README.md"
            if resolved.suffix == ".md" and resolved.exists() and resolved not in seen:
                seen.add(resolved)
                todo.append(resolved)
    assert {p for p in DOCS if "docs" in p.relative_to(ROOT).parts} <= seen


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## The `callers` file: rules\n")
    page.write_text(
        "[ok](other.md#the-callers-file-rules) [gone](missing.md) [bad](other.md#nothing)\n"
        "[self](#top) `[in code](missing.md)`\n\n# Top\n\n```\n[fenced](missing.md)\n```\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "missing.md: no such file",
        "other.md#nothing: no heading with anchor #nothing",
    ]


# Words from outside the project: how it was planned and by whom, not what it does.
_OUTSIDE_WORDS = re.compile(r"\b[Ss]eed(?:'s)?\b|\bDESIGN\.md|\b[Ii]ssue #?\d+|\b[Tt]ickets?\b")


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_docs_speak_only_of_the_project(path: Path) -> None:
    text = path.read_text("utf-8")
    assert [m.group(0) for m in _OUTSIDE_WORDS.finditer(text)] == []
