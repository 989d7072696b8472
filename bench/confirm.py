"""ConfirmUpload's cost, measured against a real S3 (SeaweedFS) in one run.

For a 200 KB and a 5 MiB JPEG (a photo-like image, so the decoder does real work):

    confirm  p50 of ConfirmUpload on a real `avatar-signer serve` (verified mode): read the
             staged object, verify and decode it, write the avatar and the marker
    bare     p50 of the two transfers alone, the same bytes with the same HTTP client and
             the verifier's own signed requests: GET the staged object, PUT it to a key

The ratio confirm / bare is what verification adds over moving the bytes (target: at most
1.25). Then 16 ConfirmUploads of 5 MiB images in flight at once, and the server's peak RSS
(VmHWM) before and after: CONFIRM_CONCURRENCY bounds how many decode at once.

    python bench/confirm.py        (also part of `make bench`)
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.credentials.sources import StaticCredentials
from avatarsigner_server.settings.uploads import UploadMode
from avatarsigner_server.signing.key_pairs import Credentials
from avatarsigner_server.signing.url_signers import BucketEndpoint
from avatarsigner_server.storage.objects import ObjectStore
from avatarsigner_server.storage.s3_http import send
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "dev"))
import seaweed_s3  # noqa: E402 - dev/ holds the local S3, not an installed package

BIN = Path(sys.executable).parent
SIZES = {"200 KB": 200 * 1024, "5 MiB": 5 * 1024 * 1024 - 64 * 1024}
REPEATS = {"200 KB": 15, "5 MiB": 5}
IN_FLIGHT = 16


@dataclass(frozen=True)
class ConfirmFigures:
    confirm_ms: dict[str, float]
    bare_ms: dict[str, float]
    pixels: dict[str, str]
    rss_before_mb: float
    rss_after_mb: float
    in_flight_ok: int
    in_flight_seconds: float
    concurrency: int


def photo(target_bytes: int) -> bytes:
    """A JPEG of about target_bytes: noise over a gradient, so it compresses like a photo."""
    side = int((target_bytes / 0.55) ** 0.5)  # about 0.55 bytes per pixel at quality 95
    for _ in range(6):
        rng = os.urandom(side * side)
        noise = Image.frombytes("L", (side, side), rng).convert("RGB")
        gradient = Image.linear_gradient("L").resize((side, side)).convert("RGB")
        picture = Image.blend(noise, gradient, 0.6)
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=95)
        data = out.getvalue()
        if abs(len(data) - target_bytes) < target_bytes * 0.1:
            return data
        side = max(64, int(side * (target_bytes / len(data)) ** 0.5))
    return data


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wait_serving(target: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit("avatar-signer exited during the confirm benchmark")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise SystemExit("avatar-signer did not become SERVING")


def _stage(stub: pb_grpc.AvatarSignerStub, user: str, data: bytes) -> str:
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    upload = stub.CreateUploadUrl(
        pb.CreateUploadUrlRequest(
            user_id=user,
            content_type="image/jpeg",
            content_length=len(data),
            checksum_sha256=checksum,
        ),
        timeout=30,
    )
    reply = send("PUT", upload.url, data, dict(upload.headers), timeout=60)
    if reply.status != 200:
        raise SystemExit(f"staging a benchmark upload failed: {reply}")
    upload_id: str = upload.upload_id
    return upload_id


def measure(workdir: Path) -> ConfirmFigures:
    s3, identities = seaweed_s3.start_with_identities(
        workdir / "s3", mode=UploadMode.VERIFIED, region="eu-west-1"
    )
    port = seaweed_s3._free_ports(1)[0]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_"))},
        **seaweed_s3.service_env(s3, identities),
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(port),
        "METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
        "UPLOADS_PER_USER_PER_SECOND": "0",
        "UPLOADS_PER_CALLER_PER_SECOND": "0",
    }
    server = subprocess.Popen(
        [str(BIN / "avatar-signer"), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = f"127.0.0.1:{port}"
    verifier = identities["verifier"]
    store = ObjectStore(
        StaticCredentials(Credentials(verifier.access_key_id, verifier.secret_access_key)),
        BucketEndpoint(s3.bucket, s3.region, s3.endpoint_url),
        s3.region,
    )
    try:
        _wait_serving(target, server)
        confirm_ms: dict[str, float] = {}
        bare_ms: dict[str, float] = {}
        pixels: dict[str, str] = {}
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.AvatarSignerStub(channel)
            for label, size in SIZES.items():
                data = photo(size)
                with Image.open(io.BytesIO(data)) as image:
                    pixels[label] = f"{len(data) // 1024} KB, {image.width}x{image.height}"
                confirms, bares = [], []
                for n in range(REPEATS[label]):
                    user = f"bench-{label.replace(' ', '')}-{n}-{os.getpid()}"
                    upload_id = _stage(stub, user, data)
                    started = time.perf_counter()
                    stub.ConfirmUpload(
                        pb.ConfirmUploadRequest(user_id=user, upload_id=upload_id), timeout=120
                    )
                    confirms.append(time.perf_counter() - started)
                    staging_key = f"uploads/{user}/{upload_id}"
                    started = time.perf_counter()
                    got = store.get(staging_key, max_bytes=len(data))
                    put = store.put(
                        f"profiles/{user}/bare", got.body, {"Content-Type": "image/jpeg"}
                    )
                    bares.append(time.perf_counter() - started)
                    if got.status != 200 or not 200 <= put.status < 300:
                        raise SystemExit(f"bare transfers failed: {got}, {put}")
                confirm_ms[label] = statistics.median(confirms) * 1000
                bare_ms[label] = statistics.median(bares) * 1000

            big = photo(SIZES["5 MiB"])
            users = [f"bench-rss-{n}-{os.getpid()}" for n in range(IN_FLIGHT)]
            staged = [(user, _stage(stub, user, big)) for user in users]
            before = _vm_hwm_mb(server.pid)

            def confirm(item: tuple[str, str]) -> bool:
                user, upload_id = item
                try:
                    stub.ConfirmUpload(
                        pb.ConfirmUploadRequest(user_id=user, upload_id=upload_id), timeout=300
                    )
                except grpc.RpcError:
                    return False
                return True

            started = time.perf_counter()
            with ThreadPoolExecutor(IN_FLIGHT) as pool:
                outcomes = list(pool.map(confirm, staged))
            took = time.perf_counter() - started
            after = _vm_hwm_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
        s3.stop()
    return ConfirmFigures(
        confirm_ms,
        bare_ms,
        pixels,
        before,
        after,
        sum(outcomes),
        took,
        int(os.environ.get("CONFIRM_CONCURRENCY", "2")),
    )


def rows(figures: ConfirmFigures, target: float = 1.25) -> list[str]:
    """Table rows in bench/run.py's format."""
    found = []
    for label in SIZES:
        confirm, bare = figures.confirm_ms[label], figures.bare_ms[label]
        ratio = confirm / bare if bare else 0.0
        met = "met" if ratio <= target else "**missed**"
        found.append(
            f"| ConfirmUpload p50, {label} JPEG ({figures.pixels[label]}) | {confirm:.0f} ms "
            f"| S3 GET + PUT of the same bytes {bare:.0f} ms | {ratio:.2f}x "
            f"| ≤ {target:.2f}x: {met} |"
        )
    found.append(
        f"| {IN_FLIGHT} ConfirmUploads of 5 MiB in flight (CONFIRM_CONCURRENCY="
        f"{figures.concurrency}): server peak RSS | {figures.rss_after_mb:.0f} MB "
        f"({figures.in_flight_ok}/{IN_FLIGHT} OK in {figures.in_flight_seconds:.1f} s) "
        f"| before them {figures.rss_before_mb:.0f} MB | — | bounded |"
    )
    return found


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="avatar-bench-confirm-") as tmp:
        figures = measure(Path(tmp))
    print("\n".join(rows(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
