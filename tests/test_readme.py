"""The README's Python example runs as written (against the real server and S3)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import run as make_run
from servers import ServerThread

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_example_runs(s3_server: ServerThread, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) == 1, "the README has one Python example"
    code = blocks[0].replace('"avatar-signer:50051"', repr(s3_server.target))
    (tmp_path / "photo.png").write_bytes(make_run.sample_png(16, 16))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope: dict[str, object] = {}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    finally:
        os.chdir(cwd)
    assert [u.key for u in scope["urls"]] == ["profiles/alice/avatar", "profiles/bob/avatar"]  # type: ignore[attr-defined]
