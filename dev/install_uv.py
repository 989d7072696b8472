"""Install the uv that uv.lock pins into this interpreter's environment, checked against the
hashes in the lock: `python dev/install_uv.py` (`make install` runs it with .venv's python;
the Dockerfile's build stage with its own).

uv is in the `dev` dependency group, so its version and the hashes of its files are written
once, in uv.lock; this reads them there and gives pip a `--require-hashes` requirement
(binary wheels only: uv's source distribution needs a Rust toolchain). After that, `uv sync`
keeps the same uv in .venv, and `uv lock --upgrade-package uv` is how it is upgraded.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "uv.lock"


def locked_requirement(lock: Path = LOCK) -> str:
    """`uv==VERSION --hash=sha256:...` for every wheel of uv in the lock."""
    with lock.open("rb") as stream:
        packages = tomllib.load(stream)["package"]
    (uv,) = [package for package in packages if package["name"] == "uv"]
    hashes = [wheel["hash"] for wheel in uv.get("wheels", [])]
    if not hashes:
        raise SystemExit(f"{lock}: uv {uv['version']} has no wheels listed")
    return " ".join([f"uv=={uv['version']}", *(f"--hash={digest}" for digest in hashes)])


def main() -> int:
    if importlib.util.find_spec("pip") is None:
        subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True)
    with tempfile.TemporaryDirectory() as scratch:
        requirements = Path(scratch) / "uv.txt"
        requirements.write_text(locked_requirement() + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
        command += ["--only-binary=:all:", "--require-hashes", "-r", str(requirements)]
        return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
