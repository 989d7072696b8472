"""In-process parts of the benchmark: the signers head to head, and where a URL's time goes.

Timings are interleaved rounds (every contender once per round) and the median round is
kept, so a burst of load from elsewhere on the machine hits all contenders alike.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner_server import settings as config
from avatarsigner_server.app import wiring
from avatarsigner_server.credentials.sources import StaticCredentials
from avatarsigner_server.credentials.watcher import build_watcher
from avatarsigner_server.signing import sigv4
from avatarsigner_server.signing.key_pairs import Credentials
from avatarsigner_server.signing.url_signers import BucketEndpoint, DownloadSigner, UploadSigner
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotocoreCredentials

ROUNDS = 7
ROUND_SECONDS = 0.08
USERS = [f"user{index:05d}" for index in range(1000)]
PUT_HEADERS = {"Content-Type": "image/png", "Content-Length": "123456"}
SIGNED_AT = datetime(2030, 1, 1, tzinfo=UTC)
# The parts of a URL's time inside the batch handler, by the functions that do them.
WATCHED = {
    "sign": ("DownloadSigner.sign",),
    "log": ("Audit.signed", "signed_url"),
    "handler": ("BatchCreateDownloadUrls",),
}


@dataclass(frozen=True)
class Timing:
    microseconds: float  # median over rounds, per URL

    @property
    def per_second(self) -> float:
        return 1e6 / self.microseconds


def _contenders(env: Mapping[str, str]) -> dict[str, Callable[[str], object]]:
    settings = config.load(env)
    region, bucket = settings.region, settings.bucket
    reader, uploader = settings.reader, settings.uploader
    assert isinstance(reader, Credentials) and isinstance(uploader, Credentials)
    endpoint = BucketEndpoint(bucket, region)
    ours_get = DownloadSigner(StaticCredentials(reader), endpoint, region)
    ours_put = UploadSigner(StaticCredentials(uploader), endpoint, region)
    client = boto3.session.Session().client(
        "s3",
        region_name=region,
        aws_access_key_id=reader.access_key_id,
        aws_secret_access_key=reader.secret_access_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "virtual"}),
    )
    get_creds = BotocoreCredentials(reader.access_key_id, reader.secret_access_key)
    put_creds = BotocoreCredentials(uploader.access_key_id, uploader.secret_access_key)

    def botocore_direct(method: str, creds: Any, ttl: int, headers: dict[str, str]) -> Any:
        def sign(key: str) -> str:
            request = AWSRequest(method=method, url=f"{endpoint.origin}/{key}", headers=headers)
            S3SigV4QueryAuth(creds, "s3", region, expires=ttl).add_auth(request)
            return str(request.url)

        return sign

    def sigv4_core(key: str) -> str:
        """sigv4.presign alone: what a GET URL costs without the signer's clock/credentials."""
        return sigv4.presign(
            method="GET",
            origin=endpoint.origin,
            host=endpoint.host,
            path=endpoint.path(key),
            access_key_id=reader.access_key_id,
            secret_access_key=reader.secret_access_key,
            session_token=None,
            region=region,
            signed_at=SIGNED_AT,
            expires_in=300,
        )

    return {
        "sigv4 core GET": sigv4_core,
        "ours GET": lambda key: ours_get.sign(key, ttl_seconds=300),
        "ours PUT": lambda key: ours_put.sign(
            key,
            content_type="image/png",
            content_length=123456,
            checksum_sha256=None,
            ttl_seconds=600,
        ),
        "boto3 GET": lambda key: client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300
        ),
        "boto3 PUT": lambda key: client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": bucket,
                "Key": key,
                "ContentType": "image/png",
                "ContentLength": 123456,
            },
            ExpiresIn=600,
        ),
        "botocore GET": botocore_direct("GET", get_creds, 300, {}),
        "botocore PUT": botocore_direct("PUT", put_creds, 600, PUT_HEADERS),
    }


def _calibrate(sign: Callable[[str], object]) -> int:
    """How many URLs take about ROUND_SECONDS."""
    count = 1
    while True:
        started = time.perf_counter()
        for index in range(count):
            sign(f"profiles/{USERS[index % 1000]}/avatar")
        if time.perf_counter() - started >= ROUND_SECONDS / 4:
            return max(1, int(count * ROUND_SECONDS / (time.perf_counter() - started)))
        count *= 4


def compare_signers(env: Mapping[str, str]) -> dict[str, Timing]:
    contenders = _contenders(env)
    counts = {name: _calibrate(sign) for name, sign in contenders.items()}
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    keys = [f"profiles/{user}/avatar" for user in USERS]
    for _ in range(ROUNDS):
        for name, sign in contenders.items():
            count = counts[name]
            started = time.perf_counter()
            for index in range(count):
                sign(keys[index % 1000])
            samples[name].append((time.perf_counter() - started) / count * 1e6)
    return {name: Timing(statistics.median(values)) for name, values in samples.items()}


class _Context:
    """Just enough of a grpc.aio.ServicerContext for a handler that succeeds."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


def url_breakdown(env: Mapping[str, str], batch_size: int = 100) -> dict[str, float]:
    """µs per URL inside BatchCreateDownloadUrls (the handler called in-process, no gRPC).

    Profiled with pyinstrument: the whole handler, and within it the signer, the audit log
    line (one JSON line per call, queued for the log's writer thread, which writes it to
    /dev/null here; that thread's own work is not in this profile) and the rest (validation,
    response messages, Timestamp). Functions are found by name; a missing one reads 0.
    """
    from avatarsigner_server.telemetry import logs as observability
    from pyinstrument import Profiler

    settings = config.load(env)
    sink = open(os.devnull, "w")  # closed below
    observability.configure_logging(settings.log_level, fd=sink.fileno())
    service = wiring.build_servicer(settings, build_watcher(settings))
    request = pb.BatchCreateDownloadUrlsRequest(user_ids=USERS[:batch_size])
    calls = 300

    async def batch() -> None:
        context = _Context()
        for _ in range(calls):
            await service.BatchCreateDownloadUrls(request, context)

    asyncio.run(batch())  # warm up
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        asyncio.run(batch())
        timings.append(time.perf_counter() - started)
    handler_us = statistics.median(timings) / (calls * batch_size) * 1e6

    # Where the time goes: shares from a sampling profile of the same loop.
    profiler = Profiler(interval=0.0002, async_mode="disabled")
    profiler.start()
    asyncio.run(batch())
    profiler.stop()
    observability.configure_logging(settings.log_level)  # back to stderr
    sink.close()

    session = profiler.last_session
    frame_root = session.root_frame() if session is not None else None
    found = dict.fromkeys(WATCHED, 0.0)

    def walk(frame: Any, inside: frozenset[str]) -> None:
        name = f"{frame.class_name}.{frame.function}" if frame.class_name else frame.function
        entered = set(inside)
        for part, names in WATCHED.items():
            if part not in inside and (name in names or frame.function in names):
                found[part] += frame.time
                entered.add(part)
        for child in frame.children:
            walk(child, frozenset(entered))

    if frame_root is not None:
        walk(frame_root, frozenset())
    profiled = found.pop("handler")
    per_url = {
        part: (seconds / profiled * handler_us if profiled else 0.0)
        for part, seconds in found.items()
    }
    per_url["rest"] = max(0.0, handler_us - sum(per_url.values()))
    per_url["handler"] = handler_us
    return per_url
