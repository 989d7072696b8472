"""Run the whole browser path locally: S3, CORS, AvatarSigner, and the profile web app.

    .venv/bin/python examples/web/run_local.py [--web-port 8000] [--grpc-port 50061]

1. a local S3 (SeaweedFS, dev/seaweed_s3.py) with the bucket and the two identities;
2. the CORS rules of `avatar-signer policies --allowed-origin <the app's origin>`, applied
   to the bucket (SeaweedFS without any CORS configuration answers every origin);
3. a callers file with one caller, the web app, and its bearer token;
4. `avatar-signer serve` with that callers file and, unless --no-end-user-binding,
   end-user tokens (the app's demo sign-in issues them);
5. the web app, whose URL is printed first. Ctrl-C stops everything.

The functions are also what the browser tests use to set up the same thing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BIN = Path(sys.executable).parent
sys.path[:0] = [str(HERE), str(ROOT / "dev")]

import seaweed_s3  # noqa: E402  (dev/)
from webapp.serving import Background  # noqa: E402
from webapp.settings import DemoIdentityProvider, WebSettings  # noqa: E402

WEB_CALLER = "profile-web"
#: What the web app calls; nothing else (the callers file's `allow`).
WEB_CALLER_RPCS = ("CreateUploadUrl", "CreateDownloadUrl", "BatchCreateDownloadUrls")
JWT_AUDIENCE = "avatar-signer"


def cors_rules(bucket: str, origins: Sequence[str]) -> dict[str, Any]:
    """The bucket CORS configuration `avatar-signer policies` generates for `origins`."""
    args = [str(BIN / "avatar-signer"), "policies", "--bucket", bucket]
    for origin in origins:
        args += ["--allowed-origin", origin]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"avatar-signer policies failed: {result.stderr.strip()}")
    cors: dict[str, Any] = json.loads(result.stdout)["cors"]
    return cors


def apply_cors(s3: seaweed_s3.LocalS3, rules: Mapping[str, Any] | None) -> None:
    """Put (or, with None, delete) the bucket's CORS configuration, as the admin."""
    client = s3.client("s3")
    if rules is None:
        client.delete_bucket_cors(Bucket=s3.bucket)
    else:
        client.put_bucket_cors(Bucket=s3.bucket, CORSConfiguration=dict(rules))


def write_callers_file(directory: Path) -> tuple[Path, Path]:
    """A callers file with the web app as the one caller, and its token file (0600)."""
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    callers = directory / "callers.toml"
    allow = ", ".join(f'"{rpc}"' for rpc in WEB_CALLER_RPCS)
    callers.write_text(
        f'[[caller]]\nname = "{WEB_CALLER}"\ntoken_sha256 = "{digest}"\nallow = [{allow}]\n'
    )
    token_file = directory / "web-app.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(token)
    return callers, token_file


def demo_identity_provider(web_origin: str) -> DemoIdentityProvider:
    """A fresh HS256 secret: the app issues user tokens with it, the service verifies."""
    return DemoIdentityProvider(
        secret=secrets.token_urlsafe(48), issuer=f"{web_origin}/demo-idp", audience=JWT_AUDIENCE
    )


def signer_env(
    s3: seaweed_s3.LocalS3,
    uploader: seaweed_s3.Identity,
    reader: seaweed_s3.Identity,
    *,
    port: int,
    callers_file: Path,
    identity_provider: DemoIdentityProvider | None,
) -> dict[str, str]:
    env: dict[str, str] = dict(os.environ)
    env |= seaweed_s3.service_env(s3, uploader, reader)
    env |= {
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(port),
        "METRICS_PORT": "0",
        "CALLERS_FILE": str(callers_file),
        "LOG_LEVEL": "WARNING",
    }
    if identity_provider is not None:
        env |= {
            "END_USER_JWT_SECRET": identity_provider.secret,
            "END_USER_JWT_ISSUER": identity_provider.issuer,
            "END_USER_JWT_AUDIENCE": identity_provider.audience,
        }
    return env


def start_signer(env: Mapping[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            [str(BIN / "avatar-signer"), "serve"],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_serving(target: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"avatar-signer exited with status {process.returncode}")
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"avatar-signer did not become SERVING on {target} in {timeout:.0f} s")


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--web-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=50061)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".run")
    parser.add_argument("--no-end-user-binding", action="store_true")
    args = parser.parse_args()

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    args.workdir.mkdir(parents=True, exist_ok=True)
    session = Path(tempfile.mkdtemp(prefix="web-", dir=args.workdir.resolve()))
    target = f"127.0.0.1:{args.grpc_port}"
    print("starting a local S3 (SeaweedFS) on 127.0.0.1 ...", file=sys.stderr, flush=True)
    s3, uploader, reader = seaweed_s3.start_with_identities(session / "seaweedfs")
    signer: subprocess.Popen[bytes] | None = None
    web: Background | None = None
    try:
        callers, token_file = write_callers_file(session)
        origin = f"http://127.0.0.1:{args.web_port}"
        idp = None if args.no_end_user_binding else demo_identity_provider(origin)
        apply_cors(s3, cors_rules(s3.bucket, [origin]))
        env = signer_env(
            s3, uploader, reader, port=args.grpc_port, callers_file=callers, identity_provider=idp
        )
        signer = start_signer(env, session / "avatar-signer.log")
        wait_serving(target, signer)
        web = Background(
            WebSettings(
                signer_target=target,
                signer_token=token_file.read_text(),
                port=args.web_port,
                identity_provider=idp,
            )
        )
        print(f"\nOpen {web.origin}/ to sign in, upload an avatar and see the feed.", flush=True)
        print(
            f"(AvatarSigner on {target} with a callers file"
            f"{' and end-user tokens' if idp else ''}; S3 at {s3.endpoint_url}, CORS for"
            f" {origin} only. Ctrl-C stops everything.)",
            file=sys.stderr,
            flush=True,
        )
        while not stopping and signer.poll() is None:
            time.sleep(0.2)
    finally:
        if web is not None:
            web.stop()
        stop_process(signer)
        print("stopping the local S3 ...", file=sys.stderr, flush=True)
        s3.stop()
        shutil.rmtree(session, ignore_errors=True)
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
