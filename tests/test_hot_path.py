"""The request path: our own SigV4 (never boto3/botocore), and its speed-ups change nothing.

boto3 and botocore stay for credentials and for anything that talks to AWS (such as
`avatar-signer check`), never for signing a URL. The hot path's caches and shortcuts are
checked here against the plain computation they replace.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import logging
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import avatarsigner_server
import botocore.auth
import botocore.signers
import pytest
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.api import servicer as service
from avatarsigner_server.signing import sigv4
from avatarsigner_server.telemetry import logs as observability
from google.protobuf import timestamp_pb2

# The modules a signing request runs through (see avatarsigner_server/__init__.py).
REQUEST_PATH = (
    "api/servicer.py",
    "api/validation.py",
    "signing/url_signers.py",
    "signing/sigv4.py",
    "signing/object_keys.py",
)


def _imported_modules(source: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_request_path_modules_do_not_import_boto3_or_botocore() -> None:
    package = Path(avatarsigner_server.__file__).parent
    for name in REQUEST_PATH:
        imported = _imported_modules(package / name)
        assert not {m for m in imported if m.split(".")[0] in ("boto3", "botocore")}, name


def test_every_rpc_signs_without_botocore(stub: pb_grpc.AvatarSignerStub) -> None:
    refuse = mock.Mock(side_effect=AssertionError("botocore signed on the request path"))
    with (
        mock.patch.object(botocore.auth.SigV4Auth, "signature", refuse),
        mock.patch.object(botocore.auth.S3SigV4QueryAuth, "add_auth", refuse),
        mock.patch.object(botocore.signers.RequestSigner, "generate_presigned_url", refuse),
        mock.patch.object(botocore.signers.RequestSigner, "sign", refuse),
    ):
        upload = stub.CreateUploadUrl(
            pb.CreateUploadUrlRequest(user_id="alice", content_type="image/png", content_length=1)
        )
        download = stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(user_id="alice"))
        batch = stub.BatchCreateDownloadUrls(
            pb.BatchCreateDownloadUrlsRequest(user_ids=["alice", "bob"])
        )
    assert "X-Amz-Signature=" in upload.url and "X-Amz-Signature=" in download.url
    assert len(batch.urls) == 2
    refuse.assert_not_called()


# --- the shortcuts equal what they replace ---------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 32, 63, 64, 65, 200])
def test_signature_is_hmac_sha256_for_any_key_length(length: int) -> None:
    rng = random.Random(length)
    for _ in range(20):
        key = rng.randbytes(length)
        message = "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(300)))
        expected = hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()
        assert sigv4.signature(key, message) == expected


def test_amz_date_cache_tells_equal_instants_in_other_zones_apart() -> None:
    utc = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    plus_two = utc.astimezone(timezone(timedelta(hours=2)))
    assert utc == plus_two
    assert sigv4.amz_date(utc) == "20300101T120000Z"
    assert sigv4.amz_date(plus_two) == plus_two.strftime("%Y%m%dT%H%M%SZ")


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2030, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 28, 1, 2, 3, 456789, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=-7))),
        datetime(2026, 6, 1, 12, 0, 0, 999999),  # naive: UTC, as FromDatetime reads it
    ],
    ids=["epoch-aligned", "micros", "before-epoch", "other-zone", "naive"],
)
def test_response_timestamp_equals_from_datetime(moment: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment)
    assert service._timestamp(moment) == expected


def test_json_log_line_is_what_json_dumps_writes() -> None:
    record = logging.makeLogRecord(
        {"msg": "allowed", "levelname": "INFO", "name": "avatarsigner.audit", "user_id": "é"}
    )
    record.created = 1_800_000_000.25
    line = observability.JsonFormatter().format(record)
    parsed = json.loads(line)
    assert line == json.dumps(parsed, default=str, ensure_ascii=False)
    assert parsed["ts"] == "2027-01-15T08:00:00.250+00:00" and parsed["user_id"] == "é"


def test_a_record_for_several_urls_renders_one_full_line_each() -> None:
    items = [{"user_id": f"u{i}", "key": f"profiles/u{i}/avatar"} for i in range(3)]
    record = logging.makeLogRecord(
        {
            "msg": "allowed",
            "levelname": "INFO",
            "name": "avatarsigner.audit",
            "rpc": "BatchCreateDownloadUrls",
            observability.EACH: items,
        }
    )
    lines = observability.JsonFormatter().format(record).splitlines()
    parsed = [json.loads(line) for line in lines]
    assert [p["user_id"] for p in parsed] == ["u0", "u1", "u2"]
    for item, line in zip(items, parsed, strict=True):
        assert line["rpc"] == "BatchCreateDownloadUrls" and line["msg"] == "allowed"
        assert line["key"] == item["key"] and observability.EACH not in line
