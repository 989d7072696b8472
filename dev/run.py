"""`make run`: a local S3 (SeaweedFS), the service against it, the reference web app, and
commands to try.

Starts SeaweedFS on 127.0.0.1 with the bucket and verified mode's three identities
(uploader, reader, verifier: exactly the policies `avatar-signer policies` prints), the
profile web app of examples/web on 127.0.0.1:8000, puts the bucket CORS rule
`avatar-signer policies --allowed-origin <the app's origin>` prints (so browsers on other
origins are refused), starts `avatar-signer serve` with those credentials, waits until it
is SERVING, then prints the page's URL and commands that work as pasted. Ctrl-C (or
SIGTERM) stops everything cleanly: the app, the service, the S3.

    python dev/run.py [--port 50051] [--web-port 8000] [--workdir .run]

The service runs without a callers file (open, for local development), so the printed
grpcurl commands need no token, and the app calls it without one. Other settings pass
through the environment (e.g. METRICS_PORT=9465 GRPC_PORT=50052 WEB_PORT=8001 for a second
run; MAX_UPLOAD_BYTES and ALLOWED_CONTENT_TYPES reach both the service and the app).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Protocol

import seaweed_s3
from avatarsigner_server.commands import policies
from avatarsigner_server.settings.uploads import UploadMode
from avatarsigner_server.signing.url_signers import OBJECT_HEADERS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVICE = "avatarsigner.v1.AvatarSigner"
WEB_APP = ROOT / "examples" / "web"


class WebApp(Protocol):
    origin: str

    def stop(self) -> None: ...


def start_web_app(target: str, port: int) -> WebApp:
    """The profile web app on 127.0.0.1:`port`, calling the service at `target` (no token:
    the service is open). Raises SystemExit with one line when it cannot start."""
    sys.path.insert(0, str(WEB_APP))
    from webapp.serving import Background
    from webapp.settings import SettingsError, load

    env = dict(os.environ) | {"AVATAR_SIGNER_TARGET": target, "WEB_PORT": str(port)}
    env.pop("AVATAR_SIGNER_TOKEN", None)
    env.pop("AVATAR_SIGNER_TOKEN_FILE", None)
    try:
        settings = load(env)
    except SettingsError as error:
        raise SystemExit(f"make run: the web app's settings: {error}") from None
    try:
        return Background(dataclasses.replace(settings, host="127.0.0.1"))
    except OSError as error:
        raise SystemExit(
            f"make run: the web app cannot listen on 127.0.0.1:{port} ({error.strerror});"
            " pick another port: make run WEB_PORT=8001"
        ) from None


def sample_png(width: int = 48, height: int = 48) -> bytes:
    """A small valid RGB PNG (a gradient), so the tour uploads a real image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 5 % 256, y * 5 % 256, 160)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def wait_serving(target: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"avatar-signer exited with status {process.returncode}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise SystemExit(f"avatar-signer did not become SERVING on {target} within {timeout:.0f}s")


FAKE_IMAGE = b"<html><script>alert('not an avatar')</script></html>\n"


def tour(target: str, sample: Path, fake: Path, downloaded: Path, env_file: Path) -> str:
    """The commands printed for a person to paste, one block per step."""
    data = sample.read_bytes()
    size = len(data)
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    grpcurl = shlex.quote(str(BIN / "grpcurl"))
    client = shlex.quote(str(BIN / "avatar-signer-client"))
    server = shlex.quote(str(BIN / "avatar-signer"))
    python = shlex.quote(str(BIN / "python"))
    field = "json_field"
    define_field = (
        f"json_field() {{ {python} -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "
        '"$1"; }'
    )
    # The headers every upload URL signs with fixed values (what S3 would store and replay).
    fixed_headers = " ".join(f"-H {shlex.quote(f'{k}: {v}')}" for k, v in OBJECT_HEADERS.items())

    def upload_body(user: str, length: int, sha256: str | None) -> str:
        body = {"user_id": user, "content_type": "image/png", "content_length": length}
        if sha256:
            body["checksum_sha256"] = sha256
        return shlex.quote(json.dumps(body))

    confirm_body = '"{\\"user_id\\": \\"%s\\", \\"upload_id\\": \\"$%s\\"}"'
    download_body = shlex.quote('{"user_id": "alice"}')
    file = shlex.quote(str(sample))
    fake_file = shlex.quote(str(fake))
    copy = shlex.quote(str(downloaded))
    put = f"curl -fsS -X PUT -H 'Content-Type: image/png' -H 'If-None-Match: *' {fixed_headers}"
    put_again = put.replace("-fsS", "-sS -o /dev/null -w 'second PUT: %{http_code}\\n'")
    upload_alice = upload_body("alice", size, checksum)
    upload_fake = upload_body("mallory", len(FAKE_IMAGE), None)
    confirm_alice = confirm_body % ("alice", "UPLOAD_ID")
    confirm_fake = confirm_body % ("mallory", "FAKE_ID")
    return f"""
# 1. What the server offers (reflection), and its health:
{grpcurl} -plaintext {target} list
{grpcurl} -plaintext {target} grpc.health.v1.Health/Check

# 2. Ask for an upload URL for alice's avatar: a {size}-byte PNG with this SHA-256. The
#    answer: url, the headers to send (If-None-Match: * too: the URL writes once),
#    expires_at, the staging key, and the upload_id to confirm with:
{grpcurl} -plaintext -d {upload_alice} {target} {SERVICE}/CreateUploadUrl

# 3. Upload: keep the answer, then PUT the raw bytes with exactly the returned headers:
{define_field}
UPLOAD=$({grpcurl} -plaintext -d {upload_alice} {target} {SERVICE}/CreateUploadUrl)
UPLOAD_URL=$(echo "$UPLOAD" | {field} url); UPLOAD_ID=$(echo "$UPLOAD" | {field} upload_id)
{put} -H 'Content-Length: {size}' -H 'x-amz-checksum-sha256: {checksum}' --data-binary @{file} "$UPLOAD_URL" && echo uploaded

# 4. Nobody sees it yet. Confirm: the service checks it really is a PNG within the limits,
#    removes its metadata and publishes exactly those bytes (width, height, what it removed):
{grpcurl} -plaintext -d {confirm_alice} {target} {SERVICE}/ConfirmUpload

# 5. The upload URL cannot write again (S3 answers 412 Precondition Failed):
{put_again} -H 'Content-Length: {size}' -H 'x-amz-checksum-sha256: {checksum}' --data-binary @{file} "$UPLOAD_URL"

# 6. Download it back and compare (this PNG had no metadata, so the bytes are the same):
DOWNLOAD_URL=$({grpcurl} -plaintext -d {download_body} {target} {SERVICE}/CreateDownloadUrl | {field} url)
curl -fsS -o {copy} "$DOWNLOAD_URL" && cmp {copy} {file} && echo "same bytes"

# 7. A fake: HTML named .png uploads fine (S3 checks type, length and signature, not
#    content), but ConfirmUpload refuses it (FailedPrecondition, reason NOT_AN_IMAGE) and
#    nothing is published:
FAKE=$({grpcurl} -plaintext -d {upload_fake} {target} {SERVICE}/CreateUploadUrl)
FAKE_URL=$(echo "$FAKE" | {field} url); FAKE_ID=$(echo "$FAKE" | {field} upload_id)
{put} -H 'Content-Length: {len(FAKE_IMAGE)}' --data-binary @{fake_file} "$FAKE_URL" && echo uploaded
{grpcurl} -plaintext -format-error -d {confirm_fake} {target} {SERVICE}/ConfirmUpload || echo "refused, as it should be"

# 8. The same upload with the Python client (detects the type, signs the SHA-256, confirms):
{client} --target {target} upload {file} --user bob
{client} --target {target} download-url --user bob

# 9. Prove the least privilege on this S3 with the service's own settings: each of the
#    three identities can do its one job and nothing else, none can delete or list:
(set -a; . {shlex.quote(str(env_file))}; {server} check)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRPC_PORT", "50051")))
    parser.add_argument("--web-port", type=int, default=int(os.environ.get("WEB_PORT", "8000")))
    parser.add_argument("--workdir", type=Path, default=ROOT / ".run")
    args = parser.parse_args()

    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    sample = workdir / "sample-avatar.png"
    sample.write_bytes(sample_png())
    fake = workdir / "not-an-avatar.png"
    fake.write_bytes(FAKE_IMAGE)
    target = f"127.0.0.1:{args.port}"
    # Each run its own S3 data and settings (another `make run` may be running beside it).
    session = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    env_file = session / "s3.env"

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    print("starting a local S3 (SeaweedFS) on 127.0.0.1 ...", file=sys.stderr, flush=True)
    try:
        s3, identities = seaweed_s3.start_with_identities(
            session / "seaweedfs", mode=UploadMode.VERIFIED
        )
    except seaweed_s3.LocalS3Error as error:
        shutil.rmtree(session, ignore_errors=True)
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"make run: the local S3 did not start: {first_line}", file=sys.stderr)
        return 1
    server: subprocess.Popen[bytes] | None = None
    web: WebApp | None = None
    try:
        web = start_web_app(target, args.web_port)
        # Browsers on the app's origin may PUT and GET; every other origin is refused.
        s3.put_cors(policies.cors([web.origin]))
        # The service's S3 settings, also for `avatar-signer check` (mode 0600, removed on exit).
        seaweed_s3.write_env_file(env_file, s3, identities)
        env = dict(os.environ) | seaweed_s3.service_env(s3, identities)
        env |= {"GRPC_HOST": "127.0.0.1", "GRPC_PORT": str(args.port)}
        server = subprocess.Popen(
            [str(BIN / "avatar-signer"), "serve"], env=env, start_new_session=True
        )
        wait_serving(target, server)
        print(
            f"Open {web.origin}/ in a browser: sign in with any name, upload a picture,"
            " see the feed.",
            flush=True,
        )
        print(
            f"\navatar-signer is SERVING on {target}; S3 at {s3.endpoint_url}, bucket "
            f"{s3.bucket!r} (CORS: {web.origin} only).\nPaste these in another terminal"
            " (Ctrl-C here stops everything):",
            flush=True,
        )
        print(tour(target, sample, fake, workdir / "downloaded-avatar.png", env_file), flush=True)
        while not stopping and server.poll() is None:
            time.sleep(0.2)
    except SystemExit as error:
        print(error, file=sys.stderr)
    finally:
        if web is not None:
            web.stop()
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        print("stopping the local S3 ...", file=sys.stderr, flush=True)
        s3.stop()
        shutil.rmtree(session, ignore_errors=True)
    code = server.returncode if server is not None else 1
    ended = f"avatar-signer exit status {code}" if server is not None else "it did not start"
    print(f"stopped ({ended})", file=sys.stderr)
    return 0 if stopping and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
