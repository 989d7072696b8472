"""The docs' Python examples run as written: the README's against the real server and S3,
docs/clients.md's asyncio example against a real server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import run as make_run
from doc_examples import CLIENTS, README, fenced_blocks, section_blocks
from servers import ServerThread

EXAMPLE_TARGET = '"avatar-signer:50051"'


def test_readme_python_example_runs(verified_server: ServerThread, tmp_path: Path) -> None:
    blocks = fenced_blocks(README, "python")
    assert len(blocks) == 1, "the README has one Python example"
    assert EXAMPLE_TARGET in blocks[0]
    code = blocks[0].replace(EXAMPLE_TARGET, repr(verified_server.target))
    (tmp_path / "photo.png").write_bytes(make_run.sample_png(16, 16))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope: dict[str, object] = {}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    finally:
        os.chdir(cwd)
    assert [u.key for u in scope["urls"]] == ["profiles/alice/avatar", "profiles/bob/avatar"]  # type: ignore[attr-defined]
    confirmation = scope["result"].confirmation  # type: ignore[attr-defined]
    assert (confirmation.key, confirmation.width) == ("profiles/alice/avatar", 16)


def test_clients_doc_asyncio_example_runs_and_prints_what_it_says(
    server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    (example,) = section_blocks(CLIENTS, "### asyncio", "python")
    assert EXAMPLE_TARGET in example
    # The example's comment shows the start of what it prints.
    (_, promised) = example.split("print(error)  # ", 1)
    promised = promised.split("\n", 1)[0].removesuffix("...")
    code = example.replace(EXAMPLE_TARGET, repr(server.target))
    exec(compile(code, "docs/clients.md", "exec"), {"__name__": "__main__"})  # noqa: S102
    printed = capsys.readouterr().out
    assert printed.startswith(promised), printed
