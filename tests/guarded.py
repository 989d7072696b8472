"""Test helpers for callers, tokens and the refusals a guarded server gives.

Every token, hash and JWT made here is registered with `leaks.remember`, so the suite-wide
check fails a test whose server logged one.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import leaks
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from servers import ServerThread, settings_from

ALL_RPCS = ("CreateUploadUrl", "CreateDownloadUrl", "BatchCreateDownloadUrls")


@dataclass(frozen=True)
class CallerSpec:
    """A calling service: its name, its bearer token, what the callers file says of it."""

    name: str
    allow: tuple[str, ...]
    token: str | None = None
    tls_identity: str | None = None
    account_deletion: bool = False

    @property
    def token_sha256(self) -> str | None:
        return None if self.token is None else hashlib.sha256(self.token.encode()).hexdigest()

    def metadata(self, **extra: str) -> tuple[tuple[str, str], ...]:
        pairs = [] if self.token is None else [("authorization", f"Bearer {self.token}")]
        return (*pairs, *extra.items())


def new_token() -> str:
    token = secrets.token_urlsafe(32)
    leaks.remember(token)
    return token


def caller(
    name: str,
    allow: Sequence[str],
    *,
    token: bool = True,
    tls_identity: str | None = None,
    account_deletion: bool = False,
) -> CallerSpec:
    made = CallerSpec(
        name, tuple(allow), new_token() if token else None, tls_identity, account_deletion
    )
    if made.token_sha256:
        leaks.remember(made.token_sha256)
    return made


def callers_toml(callers: Iterable[CallerSpec]) -> str:
    """The callers file for these callers, in the documented shape."""
    blocks = []
    for each in callers:
        lines = ["[[caller]]", f'name = "{each.name}"']
        if each.token_sha256:
            lines.append(f'token_sha256 = "{each.token_sha256}"')
        if each.tls_identity:
            lines.append(f'tls_identity = "{each.tls_identity}"')
        lines.append("allow = [" + ", ".join(f'"{rpc}"' for rpc in each.allow) + "]")
        if each.account_deletion:
            lines.append("account_deletion = true")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_callers(path: Path, callers: Iterable[CallerSpec]) -> Path:
    """Write the file whole, then move it into place (as a ConfigMap update does)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(callers_toml(callers))
    temporary.replace(path)
    return path


def server_with_callers(
    folder: Path, callers: Iterable[CallerSpec], **settings: str
) -> ServerThread:
    """A real server whose callers file (in `folder`) lists `callers`."""
    path = write_callers(folder / "callers.toml", callers)
    return ServerThread(settings_from(CALLERS_FILE=str(path), **settings))


def call(stub: pb_grpc.AvatarSignerStub, rpc: str, metadata: Sequence[tuple[str, str]]) -> Any:
    """One call of `rpc` with a valid request, returning the response (or raising)."""
    if rpc == "CreateUploadUrl":
        request: Any = pb.CreateUploadUrlRequest(
            user_id="alice", content_type="image/png", content_length=10
        )
    elif rpc == "CreateDownloadUrl":
        request = pb.CreateDownloadUrlRequest(user_id="alice")
    else:
        request = pb.BatchCreateDownloadUrlsRequest(user_ids=["alice", "bob"])
    return getattr(stub, rpc)(request, metadata=tuple(metadata), timeout=10)


def code_of(stub: pb_grpc.AvatarSignerStub, rpc: str, metadata: Sequence[tuple[str, str]]) -> str:
    """The status code name of one call: OK, UNAUTHENTICATED, PERMISSION_DENIED, ..."""
    try:
        call(stub, rpc, metadata)
    except grpc.RpcError as error:
        return str(error.code().name)
    return "OK"


def retry_delay(error: grpc.RpcError) -> float:
    """The google.rpc.RetryInfo delay of a RESOURCE_EXHAUSTED error, in seconds."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    raise AssertionError("no google.rpc.RetryInfo in the status details")
