"""SIGTERM with calls in flight: how many calls fail during a drain, measured in one run.

For 1 and 2 workers, `avatar-signer serve` (SHUTDOWN_DRAIN_SECONDS=2) takes 64 callers of
CreateDownloadUrl on 8 connections through the Python client (its default service config:
retry UNAVAILABLE). After 2 s of load it gets SIGTERM; the callers keep going until it has
exited. Every call is kept with when it was sent and when it ended:

    in flight at SIGTERM   sent before, ended after
    before SIGTERM         every call sent before it, and how many failed (target: 0)
    after SIGTERM          calls sent during the drain, by status (OK while draining;
                           UNAVAILABLE once refusing or closed; never CANCELLED)

    python bench/drain.py        (also part of `make bench`)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from avatarsigner import AsyncAvatarSignerClient, AvatarSignerError

ROOT = Path(__file__).resolve().parent.parent
CALLERS = 64
CHANNELS = 8
DRAIN_SECONDS = 2.0
LOAD_BEFORE_SECONDS = 2.0
FAKE = {
    "S3_UPLOAD_KEY": "BENCHUPLOADERKEY01",
    "S3_UPLOAD_SECRET": "bench-uploader-secret",
    "S3_READ_KEY": "BENCHREADERKEY0001",
    "S3_READ_SECRET": "bench-reader-secret",
    "UPLOAD_MODE": "direct",
    "AWS_REGION": "eu-west-1",
    "S3_BUCKET": "avatars",
    "GRPC_HOST": "127.0.0.1",
    "METRICS_PORT": "0",
    "CREDENTIALS_PROBE_SECONDS": "0",
}


@dataclass
class DrainFigures:
    workers: int
    in_flight_at_sigterm: int = 0
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    exit_seconds: float = 0.0  # SIGTERM to exit
    returncode: int | None = None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_serving(target: str, deadline: float) -> None:
    async with AsyncAvatarSignerClient(target, timeout=1) as client:
        while time.monotonic() < deadline:
            try:
                if await client.health() == "SERVING":
                    return
            except AvatarSignerError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the server on {target} did not become SERVING")


async def _measure(workers: int, log: Path) -> DrainFigures:
    port = _free_port()
    target = f"127.0.0.1:{port}"
    env = (
        dict(os.environ)
        | FAKE
        | {
            "GRPC_PORT": str(port),
            "WORKERS": str(workers),
            "SHUTDOWN_DRAIN_SECONDS": str(DRAIN_SECONDS),
            "SHUTDOWN_GRACE_SECONDS": "10",
        }
    )
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "avatar-signer"), "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=stderr,
        )
    figures = DrainFigures(workers)
    calls: list[tuple[float, float, str]] = []  # sent, ended, status
    try:
        await _wait_serving(target, time.monotonic() + 60)
        clients = [AsyncAvatarSignerClient(target, timeout=5) for _ in range(CHANNELS)]
        exited = asyncio.Event()

        async def caller(index: int) -> None:
            client = clients[index % CHANNELS]
            while not exited.is_set():
                sent = time.monotonic()
                try:
                    await client.create_download_url(f"user{index}")
                    status = "OK"
                except AvatarSignerError as error:
                    status = error.code.name
                calls.append((sent, time.monotonic(), status))

        tasks = [asyncio.create_task(caller(i)) for i in range(CALLERS)]
        await asyncio.sleep(LOAD_BEFORE_SECONDS)
        sigterm_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        figures.returncode = await asyncio.to_thread(process.wait, 60)
        figures.exit_seconds = time.monotonic() - sigterm_at
        await asyncio.sleep(0.3)
        exited.set()
        await asyncio.gather(*tasks)
        for client in clients:
            await client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    for sent, ended, status in calls:
        side = figures.before if sent < sigterm_at else figures.after
        side[status] = side.get(status, 0) + 1
        if sent < sigterm_at <= ended:
            figures.in_flight_at_sigterm += 1
    return figures


def measure(workdir: Path) -> list[DrainFigures]:
    return [asyncio.run(_measure(n, workdir / f"drain-{n}.log")) for n in (1, 2)]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{code} {n:,}" for code, n in sorted(counts.items())) or "none"


def rows(all_figures: list[DrainFigures]) -> list[str]:
    """Table rows in bench/run.py's format."""
    found = []
    for f in all_figures:
        failed_before = sum(n for code, n in f.before.items() if code != "OK")
        cancelled = f.before.get("CANCELLED", 0) + f.after.get("CANCELLED", 0)
        met = "met" if failed_before == 0 and cancelled == 0 and f.returncode == 0 else "**missed**"
        found.append(
            f"| SIGTERM with {CALLERS} callers, {f.workers} worker{'s' if f.workers > 1 else ''} "
            f"(drain {DRAIN_SECONDS:g} s): {f.in_flight_at_sigterm} calls in flight at SIGTERM "
            f"| sent before: {_counts(f.before)}; failed {failed_before} "
            f"| sent after: {_counts(f.after)}; exit {f.returncode} after {f.exit_seconds:.1f} s "
            f"| — | 0 failed before, 0 CANCELLED: {met} |"
        )
    return found


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="avatar-bench-drain-") as tmp:
        figures = measure(Path(tmp))
    print("\n".join(rows(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
