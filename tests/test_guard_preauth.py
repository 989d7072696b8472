"""Before a caller is known it costs little: refusals are counted but their audit lines are
sampled per peer address, and the request is parsed only after authentication (real
server, real gRPC calls)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from avatarsigner.contract import METHOD_PREFIX
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.access.guard import UNIDENTIFIED_LINES
from avatarsigner_server.telemetry.logs import JsonFormatter
from guarded import caller, new_token, server_with_callers
from servers import ServerThread
from test_metrics import scrape

FEED = caller("feed-service", ["CreateDownloadUrl", "BatchCreateDownloadUrls"])
WRONG_TOKEN_CALLS = 300
BATCH = pb.BatchCreateDownloadUrlsRequest(user_ids=[f"user-{i:04d}" for i in range(1000)])


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(json.loads(line) for line in self.format(record).splitlines())


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[ServerThread]:
    running = server_with_callers(tmp_path, [FEED])
    yield running
    running.stop()


@pytest.fixture
def audit_lines() -> Iterator[list[dict[str, object]]]:
    handler = _Lines()
    logger = logging.getLogger("avatarsigner.audit")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def test_unidentified_refusals_are_all_counted_but_sampled_per_peer(
    guarded: ServerThread, audit_lines: list[dict[str, object]]
) -> None:
    wrong = (("authorization", f"Bearer {new_token()}"),)
    started = time.monotonic()
    with guarded.channel() as channel:
        stub = pb_grpc.AvatarSignerStub(channel)
        for _ in range(WRONG_TOKEN_CALLS):
            with pytest.raises(grpc.RpcError) as refused:
                stub.BatchCreateDownloadUrls(BATCH, metadata=wrong, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    elapsed = time.monotonic() - started
    denied = [line for line in audit_lines if line["msg"] == "denied"]
    # A burst, then about one line a second from this address (whatever the machine's speed).
    assert 1 <= len(denied) <= UNIDENTIFIED_LINES.burst + UNIDENTIFIED_LINES.rate * elapsed + 1
    left_out = sum(int(line.get("left_out", 0)) for line in denied)  # type: ignore[call-overload]
    assert len(denied) + left_out <= WRONG_TOKEN_CALLS
    metrics = scrape(guarded.server.metrics_port)
    counted = (
        "avatarsigner_denials_total",
        (("method", "BatchCreateDownloadUrls"), ("reason", "unknown_token")),
    )
    assert metrics[counted] == WRONG_TOKEN_CALLS


def test_identified_callers_refusals_are_each_logged(
    guarded: ServerThread, audit_lines: list[dict[str, object]]
) -> None:
    with guarded.channel() as channel:
        stub = pb_grpc.AvatarSignerStub(channel)
        for _ in range(30):
            with pytest.raises(grpc.RpcError):
                stub.CreateUploadUrl(pb.CreateUploadUrlRequest(), metadata=FEED.metadata())
    assert sum(line["reason"] == "rpc_not_allowed" for line in audit_lines) == 30


def _raw_call(target: str, body: bytes, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD_PREFIX + "BatchCreateDownloadUrls")
        try:
            call(body, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


# Bytes that are no BatchCreateDownloadUrlsRequest (field 1 says 1 GB follow).
NOT_A_MESSAGE = b"\x0a\xff\xff\xff\xff\x03garbage"


def test_unauthenticated_caller_is_refused_before_its_request_is_parsed(
    guarded: ServerThread,
) -> None:
    wrong = (("authorization", f"Bearer {new_token()}"),)
    assert _raw_call(guarded.target, NOT_A_MESSAGE, wrong) == grpc.StatusCode.UNAUTHENTICATED


def test_known_caller_sending_no_message_gets_invalid_argument(guarded: ServerThread) -> None:
    assert _raw_call(guarded.target, NOT_A_MESSAGE, FEED.metadata()) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
