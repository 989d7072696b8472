"""`avatar-signer check` on the real local S3 (SeaweedFS verifies every signature).

It passes with the least-privilege policies, and fails, naming the identity and the action,
when the uploader may also read, when the reader may also write, and when the keys are
swapped. Identities with the wrong policies are made for each case; the session's two keep
the least-privilege policies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import leaks
import pytest
import seaweed_s3
from avatarsigner_server.commands import check
from avatarsigner_server.settings import load as load_settings
from avatarsigner_server.signing.object_keys import ObjectKeys
from conftest import s3_env
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

LocalS3 = tuple[seaweed_s3.LocalS3, seaweed_s3.Identity, seaweed_s3.Identity]


def _identity(s3: seaweed_s3.LocalS3, role: str, *extra: dict[str, Any]) -> seaweed_s3.Identity:
    """A new IAM user with the least-privilege policy for `role`, plus `extra` statements."""
    base = seaweed_s3.uploader_policy if role == "uploader" else seaweed_s3.reader_policy
    policy = base(s3.bucket)
    policy["Statement"] += list(extra)
    return s3.create_identity(f"check-{role}-{uuid.uuid4().hex[:8]}", policy)


def _allow(bucket: str, action: str) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": f"arn:aws:s3:::{bucket}/*"}


def _run(
    s3: seaweed_s3.LocalS3, uploader: seaweed_s3.Identity, reader: seaweed_s3.Identity
) -> dict[str, check.Result]:
    results = check.run(load_settings(s3_env(s3, uploader, reader)))
    return {r.check: r for r in results}


def _outcomes(rows: dict[str, check.Result]) -> dict[str, str]:
    return {name: row.outcome for name, row in rows.items()}


def test_check_passes_with_the_least_privilege_policies(local_s3: LocalS3) -> None:
    rows = _run(*local_s3)
    failed = {name: row.detail for name, row in rows.items() if row.outcome == check.FAIL}
    assert failed == {}
    assert _outcomes(rows) == {
        "uploader credentials": "PASS",
        "reader credentials": "PASS",
        "uploader can PUT the canary": "PASS",
        "uploader cannot GET": "PASS",
        "reader can GET the canary": "PASS",
        "reader cannot PUT (canary unchanged)": "PASS",
        "bucket is not publicly readable": "PASS",
        "bucket is not publicly writable": "PASS",
        "uploader cannot DELETE": "PASS",
        "reader cannot DELETE": "PASS",
        "uploader cannot LIST": "PASS",
        "reader cannot LIST": "PASS",
        "URLs use SigV4 for AWS_REGION": "PASS",
        # SeaweedFS is not AWS: no regional endpoint, and it ignores the region. Said so.
        "URLs use the regional endpoint": "SKIP",
        "bucket answers from AWS_REGION": "SKIP",
    }
    assert "endpoint is not AWS" in rows["URLs use the regional endpoint"].detail
    assert "endpoint is not AWS" in rows["bucket answers from AWS_REGION"].detail


@pytest.mark.slow  # the whole command, as an operator runs it
def test_check_adds_cloudfront_rows_and_says_it_cannot_reach_cloudfront(
    local_s3: LocalS3, tmp_path: Path
) -> None:
    key = tmp_path / "cloudfront.pem"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env = {
        **s3_env(*local_s3),
        "CLOUDFRONT_URL": "https://avatars.example.com",
        "CLOUDFRONT_KEY_PAIR_ID": "K2JCJMDEHXQW5F",
        "CLOUDFRONT_PRIVATE_KEY_FILE": str(key),
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_"))}
    result = subprocess.run(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "check"],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line[8:].split("  ")[0]: line[:6].strip() for line in result.stdout.splitlines()}
    assert rows["CloudFront key file"] == "PASS"
    assert rows["CloudFront URL verifies with the public key"] == "PASS"
    assert rows["CloudFront cookies verify with the public key"] == "PASS"
    assert rows["CloudFront serves them"] == "SKIP"
    assert "cannot reach CloudFront" in result.stdout
    assert "ok: " in result.stdout and " 0 failed" in result.stdout
    assert leaks.find(result.stdout.splitlines()) == []


def test_unsigned_put_is_tried_on_the_canary_and_refused(local_s3: LocalS3) -> None:
    rows = _run(*local_s3)
    row = rows["bucket is not publicly writable"]
    assert row.outcome == check.PASS and row.detail.startswith("unsigned PUT 403")


def test_check_wrote_the_canary_under_the_reserved_key(local_s3: LocalS3) -> None:
    s3, uploader, reader = local_s3
    _run(s3, uploader, reader)
    canary = ObjectKeys().canary_key()
    body = s3.client("s3").get_object(Bucket=s3.bucket, Key=canary)["Body"].read()
    assert body.startswith(b"avatar-signer check canary ")
    with pytest.raises(ValueError):
        ObjectKeys().key_for(canary.split("/")[1])  # no user id produces its segment


def test_check_fails_when_the_uploader_can_also_get(local_s3: LocalS3) -> None:
    s3, _, reader = local_s3
    greedy = _identity(s3, "uploader", _allow(s3.bucket, "s3:GetObject"))
    rows = _run(s3, greedy, reader)
    failed = {name for name, row in rows.items() if row.outcome == check.FAIL}
    assert failed == {"uploader cannot GET"}
    detail = rows["uploader cannot GET"].detail
    assert "uploader can read" in detail
    assert "remove s3:GetObject from the uploader's IAM policy" in detail


def test_check_fails_when_the_reader_can_also_put(local_s3: LocalS3) -> None:
    s3, uploader, _ = local_s3
    greedy = _identity(s3, "reader", _allow(s3.bucket, "s3:PutObject"))
    rows = _run(s3, uploader, greedy)
    failed = {name for name, row in rows.items() if row.outcome == check.FAIL}
    assert failed == {"reader cannot PUT (canary unchanged)"}
    detail = rows["reader cannot PUT (canary unchanged)"].detail
    assert "reader can overwrite objects" in detail
    assert "remove s3:PutObject from the reader's IAM policy" in detail


def test_check_fails_when_the_keys_are_swapped(local_s3: LocalS3) -> None:
    s3, uploader, reader = local_s3
    rows = _run(s3, reader, uploader)  # the reader's key as the uploader's, and back
    outcomes = _outcomes(rows)
    assert outcomes["uploader can PUT the canary"] == "FAIL"
    assert outcomes["reader can GET the canary"] == "FAIL"
    assert outcomes["reader cannot PUT (canary unchanged)"] == "FAIL"
    assert outcomes["uploader and reader not swapped"] == "FAIL"
    assert "look swapped" in rows["uploader and reader not swapped"].detail
    assert "s3:PutObject" in rows["uploader can PUT the canary"].detail


def test_check_fails_when_the_uploader_can_delete(local_s3: LocalS3) -> None:
    s3, _, reader = local_s3
    greedy = _identity(s3, "uploader", _allow(s3.bucket, "s3:DeleteObject"))
    rows = _run(s3, greedy, reader)
    failed = {name for name, row in rows.items() if row.outcome == check.FAIL}
    assert failed == {"uploader cannot DELETE"}
    assert "s3:DeleteObject" in rows["uploader cannot DELETE"].detail


def test_check_fails_on_a_wrong_secret(local_s3: LocalS3) -> None:
    s3, uploader, reader = local_s3
    wrong = seaweed_s3.Identity(uploader.name, uploader.access_key_id, "not-the-secret-0001")
    rows = _run(s3, wrong, reader)
    assert rows["uploader can PUT the canary"].outcome == "FAIL"
    assert "rejects the uploader's key pair" in rows["uploader can PUT the canary"].detail


@pytest.mark.slow
def test_check_command_prints_a_table_and_exits_1_on_failure(local_s3: LocalS3) -> None:
    s3, uploader, reader = local_s3
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_"))}

    def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "avatarsigner_server.commands.cli", "check"],
            env=clean | env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    good = run(s3_env(s3, uploader, reader))
    assert good.returncode == 0, good.stdout + good.stderr
    lines = good.stdout.splitlines()
    assert any(line.split()[:2] == ["RESULT", "CHECK"] for line in lines)
    assert "ok: 13 passed, 0 failed, 2 skipped" in good.stdout
    # What it cannot show is said under the table, every time.
    assert "Not proven by these requests:" in good.stdout
    for item in check.NOT_PROVEN:
        assert item in good.stdout

    swapped = run(s3_env(s3, reader, uploader))
    assert swapped.returncode == 1
    assert "FAILED:" in swapped.stdout
    for output in (good.stdout + good.stderr, swapped.stdout + swapped.stderr):
        assert uploader.secret_access_key not in output
        assert reader.secret_access_key not in output
        assert "X-Amz-" not in output  # no presigned URL, nor any part of one
