"""The client's pure parts: image sniffing, checksums, error decoding, results, CLI usage.

Nothing here talks to a server or to S3; calls against real ones live in other modules.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from avatarsigner import (
    AvatarSignerError,
    DownloadUrl,
    FieldViolation,
    UploadError,
    UploadUrl,
    cli,
    detect_content_type,
    sha256_base64,
)
from avatarsigner.client import _s3_error_code, _ttl_field
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

SECRET_URL = (
    "https://avatars.s3.eu-west-1.amazonaws.com/profiles/u1/avatar"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=deadbeefSECRET"
)
EXPIRES = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


# --- images.detect_content_type ------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg", id="jpeg-jfif"),
        pytest.param(b"\xff\xd8\xff\xe1\x00\x10Exif", "image/jpeg", id="jpeg-exif"),
        pytest.param(PNG, "image/png", id="png"),
        pytest.param(b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp", id="webp"),
        pytest.param(b"GIF87a\x01\x00", "image/gif", id="gif87a"),
        pytest.param(b"GIF89a\x01\x00", "image/gif", id="gif89a"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"\xff\xd8", None, id="jpeg-truncated"),
        pytest.param(b"\x89PNG\r\n", None, id="png-truncated"),
        pytest.param(b"\x89PNG\n\r\x1a\n", None, id="png-line-endings-mangled"),
        pytest.param(b"RIFF\x24\x00\x00\x00WAVEfmt ", None, id="riff-wave-not-webp"),
        pytest.param(b"RIFFWEBP", None, id="riff-without-size"),
        pytest.param(b"GIF88a", None, id="gif-unknown-version"),
        pytest.param(b"<html><script>alert(1)</script>", None, id="html"),
        pytest.param(b'<svg xmlns="http://www.w3.org/2000/svg"/>', None, id="svg"),
        pytest.param(b"BM\x36\x00\x00\x00", None, id="bmp"),
        pytest.param(b"%PDF-1.7", None, id="pdf"),
        pytest.param(b" \xff\xd8\xff", None, id="jpeg-magic-not-at-start"),
    ],
)
def test_detect_content_type_judges_by_magic_bytes(data: bytes, expected: str | None) -> None:
    assert detect_content_type(data) == expected


# --- images.sha256_base64 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", id="empty"),
        pytest.param(b"abc", "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=", id="abc"),
    ],
)
def test_sha256_base64_known_vectors(data: bytes, expected: str) -> None:
    assert sha256_base64(data) == expected


def test_sha256_base64_is_the_form_checksum_sha256_takes() -> None:
    data = PNG * 1000
    value = sha256_base64(data)
    assert len(value) == 44
    assert base64.b64decode(value, validate=True) == hashlib.sha256(data).digest()


# --- error decoding ------------------------------------------------------------------


def _bad_request_status(
    *violations: tuple[str, str], code: int = code_pb2.INVALID_ARGUMENT
) -> grpc.Status:
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in violations
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad_request)
    status = status_pb2.Status(code=code, message="invalid request", details=[detail])
    return rpc_status.to_status(status)


def test_error_decodes_every_field_violation_in_order() -> None:
    status = _bad_request_status(
        ("user_ids[1]", "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"),
        ("ttl", "must be between 1s and 300s"),
    )
    error = AvatarSignerError.from_status(status)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "invalid request"
    assert error.field_violations == (
        FieldViolation("user_ids[1]", "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"),
        ("ttl", "must be between 1s and 300s"),
    )
    assert str(error) == (
        "INVALID_ARGUMENT: user_ids[1]: must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$; "
        "ttl: must be between 1s and 300s"
    )


def test_error_decodes_from_an_aio_rpc_error_trailing_metadata() -> None:
    status = _bad_request_status(("user_id", "must match the rule"))
    aio_error = grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )
    error = AvatarSignerError.from_rpc_error(aio_error)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations == (("user_id", "must match the rule"),)


def test_error_without_details_keeps_code_and_message() -> None:
    error = AvatarSignerError.from_status(
        rpc_status.to_status(status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message="no"))
    )
    assert (error.code, error.message, error.field_violations) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "no",
        (),
    )
    assert str(error) == "PERMISSION_DENIED: no"


def test_error_ignores_details_that_describe_another_status() -> None:
    status = _bad_request_status(("user_id", "bad"), code=code_pb2.NOT_FOUND)
    forged = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details="invalid request",
    )
    assert AvatarSignerError.from_rpc_error(forged).field_violations == ()


def test_error_ignores_undecodable_details() -> None:
    garbage = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\xff\xff")),
        details="invalid request",
    )
    error = AvatarSignerError.from_rpc_error(garbage)
    assert (error.code, error.field_violations) == (grpc.StatusCode.INVALID_ARGUMENT, ())


@pytest.mark.parametrize("count", ["\u00b2", "9" * 5000], ids=["superscript-digit", "huge"])
def test_error_ignores_a_violation_count_that_is_no_number(count: str) -> None:
    """A count the server (or anyone on the way) got wrong leaves the error decodable."""
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f"user_ids[{i}]", description="bad")
            for i in range(2)
        ]
    )
    info = error_details_pb2.ErrorInfo(reason="INVALID", metadata={"count": count})
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="invalid request")
    status.details.add().Pack(bad_request)
    status.details.add().Pack(info)
    error = AvatarSignerError.from_status(rpc_status.to_status(status))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.violation_count == 2
    assert str(error).endswith("user_ids[1]: bad")


def test_error_line_stays_short_for_a_batch_of_bad_ids() -> None:
    status = _bad_request_status(*((f"user_ids[{i}]", "must match") for i in range(1000)))
    error = AvatarSignerError.from_status(status)
    assert len(error.field_violations) == 1000
    assert str(error).endswith("user_ids[4]: must match; and 995 more")


def test_error_without_a_message_is_just_the_code() -> None:
    assert str(AvatarSignerError(grpc.StatusCode.NOT_FOUND, "")) == "NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(
            b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch'
            b"</Code><Message>The request signature we calculated does not match"
            b"</Message></Error>",
            "SignatureDoesNotMatch",
            id="signature",
        ),
        pytest.param(b"<Error><Code>BadDigest</Code></Error>", "BadDigest", id="bad-digest"),
        pytest.param(b"", None, id="empty-body"),
        pytest.param(b"<html>502 Bad Gateway</html>", None, id="proxy-page"),
        pytest.param(b"<Error><Code><script>x</script></Code></Error>", None, id="markup"),
    ],
)
def test_s3_error_code_is_read_from_the_xml_body(body: bytes, code: str | None) -> None:
    assert _s3_error_code(body) == code


def test_upload_error_names_status_and_s3_code_only() -> None:
    assert str(UploadError(403, "SignatureDoesNotMatch", "Forbidden")) == (
        "upload refused by S3: 403 SignatureDoesNotMatch"
    )
    assert str(UploadError(None, None, "timed out")) == "cannot reach S3: timed out"


# --- ttl -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [
        pytest.param(timedelta(minutes=2), 120, id="timedelta"),
        pytest.param(90, 90, id="int-seconds"),
        pytest.param(30.0, 30, id="float-seconds"),
    ],
)
def test_ttl_accepts_timedelta_or_seconds(ttl: timedelta | float, seconds: int) -> None:
    duration = _ttl_field(ttl)
    assert duration is not None
    assert (duration.seconds, duration.nanos) == (seconds, 0)


def test_ttl_none_means_the_server_default() -> None:
    assert _ttl_field(None) is None


def test_ttl_fraction_is_sent_as_is_for_the_server_to_judge() -> None:
    duration = _ttl_field(1.5)
    assert duration is not None
    assert (duration.seconds, duration.nanos) == (1, 500_000_000)


@pytest.mark.parametrize("ttl", [float("nan"), float("inf"), 1e30], ids=["nan", "inf", "huge"])
def test_ttl_refuses_what_no_duration_can_hold(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        _ttl_field(ttl)


@pytest.mark.parametrize("ttl", [True, "60"], ids=["bool", "str"])
def test_ttl_refuses_other_types(ttl: object) -> None:
    with pytest.raises(TypeError, match="ttl"):
        _ttl_field(ttl)  # type: ignore[arg-type]


# --- results never show their URL ----------------------------------------------------


def test_upload_url_repr_hides_the_presigned_url() -> None:
    upload = UploadUrl(
        url=SECRET_URL,
        method="PUT",
        headers={"Content-Type": "image/png", "Content-Length": "12"},
        expires_at=EXPIRES,
        key="profiles/u1/avatar",
    )
    for text in (repr(upload), str(upload), f"{upload}", repr([upload])):
        assert "SECRET" not in text
        assert "X-Amz" not in text
        assert "profiles/u1/avatar" in text
    assert upload.url == SECRET_URL


def test_download_url_repr_hides_the_presigned_url() -> None:
    download = DownloadUrl("u1", SECRET_URL, EXPIRES, "profiles/u1/avatar")
    assert "SECRET" not in repr(download)
    assert "u1" in repr(download)
    assert download.url == SECRET_URL


def test_results_are_frozen() -> None:
    download = DownloadUrl("u1", SECRET_URL, EXPIRES, "profiles/u1/avatar")
    with pytest.raises(dataclasses.FrozenInstanceError):
        download.url = "https://elsewhere"  # type: ignore[misc]


# --- CLI usage errors: exit 2, one line, no traceback, no URL --------------------------


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["download-url"], id="missing-user"),
        pytest.param(["batch-download-url"], id="batch-without-users"),
        pytest.param(["upload-url", "--user", "u1", "--content-type", "image/png"], id="no-length"),
        pytest.param(
            ["upload-url", "--user", "u1", "--content-type", "image/png", "--content-length", "x"],
            id="length-not-a-number",
        ),
        pytest.param(["--timeout", "0", "health"], id="zero-timeout"),
        pytest.param(["--timeout", "soon", "health"], id="timeout-not-a-number"),
        pytest.param(["download-url", "--user", "u1", "--ttl", "nan"], id="ttl-nan"),
        pytest.param(["download-url", "--user", "u1", "--bogus"], id="unknown-option"),
        pytest.param(["upload", "/nonexistent/avatar.png", "--user", "u1"], id="missing-file"),
        pytest.param(["--ca-file", "/nonexistent/ca.pem", "health"], id="missing-ca-file"),
    ],
)
def test_cli_usage_error_exits_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("avatar-signer-client: ")
    assert "Traceback" not in err


def test_cli_refuses_a_file_that_is_not_an_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "avatar.png"
    page.write_bytes(b"<html><script>alert(1)</script></html>")
    assert cli.main(["upload", str(page), "--user", "u1"]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1
    assert "not a JPEG, PNG, WebP or GIF image" in err


def test_cli_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "upload-url" in capsys.readouterr().out


def test_cli_error_lines_never_carry_a_url(capsys: pytest.CaptureFixture[str]) -> None:
    cli._fail(f"something mentioned {SECRET_URL}\nacross lines")
    err = capsys.readouterr().err
    assert "SECRET" not in err
    assert "X-Amz" not in err
    assert err == "avatar-signer-client: something mentioned <url> across lines\n"
