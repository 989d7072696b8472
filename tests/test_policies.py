"""`avatar-signer policies`: the documents the security model rests on, as one JSON object.

The IAM statements are compared with the seed's own JSON, copied verbatim below from
the design this service grows from (shared/seed/000_8f11b302f288d0cb.txt, sections 4 and
13): the same actions, narrowed to the key prefix and to presigned URLs no older than a
URL may live, so any other drift from the seed fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import seaweed_s3
from avatarsigner_server.commands import policies
from avatarsigner_server.credentials.sources import StaticCredentials
from avatarsigner_server.signing.key_pairs import Credentials
from avatarsigner_server.signing.url_signers import BucketEndpoint, UploadSigner

SEED_BUCKET = "myapp-profile-images"
SEED_UPLOAD_STATEMENT = """
{
  "Effect": "Allow",
  "Action": [
    "s3:PutObject",
    "s3:AbortMultipartUpload"
  ],
  "Resource": "arn:aws:s3:::myapp-profile-images/*"
}
"""
SEED_READ_STATEMENT = """
{
  "Effect": "Allow",
  "Action": "s3:GetObject",
  "Resource": "arn:aws:s3:::myapp-profile-images/*"
}
"""
SEED_CORS = """
[
  {
    "AllowedOrigins": ["https://yourapp.com"],
    "AllowedMethods": ["GET", "PUT"],
    "AllowedHeaders": ["*"],
    "MaxAgeSeconds": 3000
  }
]
"""


def _policies(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "policies", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def printed() -> dict[str, Any]:
    result = _policies("--bucket", SEED_BUCKET, "--allowed-origin", "https://yourapp.com")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)  # one JSON object, nothing else
    return document


def test_prints_exactly_the_six_documents(printed: dict[str, Any]) -> None:
    assert list(printed) == [
        "uploader_policy",
        "reader_policy",
        "bucket_policy",
        "public_access_block",
        "ownership_controls",
        "cors",
    ]


def _presigned_only(max_ttl: int) -> dict[str, Any]:
    return {
        "StringEquals": {
            "s3:authType": "REST-QUERY-STRING",
            "s3:signatureversion": "AWS4-HMAC-SHA256",
        },
        "NumericLessThanEquals": {"s3:signatureAge": str((max_ttl + 60) * 1000)},
    }


def _narrowed(seed: str, prefix: str, max_ttl: int) -> dict[str, Any]:
    """The seed's statement on <bucket>/<prefix>* only, for presigned URLs only."""
    statement = json.loads(seed)
    statement["Resource"] = statement["Resource"].replace("/*", f"/{prefix}*")
    statement["Condition"] = _presigned_only(max_ttl)
    return {"Version": "2012-10-17", "Statement": [statement]}


def test_uploader_policy_is_the_seeds_statement_on_the_prefix(printed: dict[str, Any]) -> None:
    assert printed["uploader_policy"] == _narrowed(SEED_UPLOAD_STATEMENT, "profiles/", 1200)


def test_reader_policy_is_the_seeds_statement_on_the_prefix(printed: dict[str, Any]) -> None:
    assert printed["reader_policy"] == _narrowed(SEED_READ_STATEMENT, "profiles/", 1200)


@pytest.mark.slow
def test_policies_follow_the_key_prefix_and_the_max_ttls() -> None:
    result = _policies(
        "--bucket", SEED_BUCKET,
        S3_KEY_PREFIX="tenants/a/", UPLOAD_MAX_TTL_SECONDS="900", DOWNLOAD_MAX_TTL_SECONDS="300",
    )  # fmt: skip
    printed = json.loads(result.stdout)
    assert printed["uploader_policy"] == _narrowed(SEED_UPLOAD_STATEMENT, "tenants/a/", 900)
    assert printed["reader_policy"] == _narrowed(SEED_READ_STATEMENT, "tenants/a/", 300)
    assert "does not deny other principals" in result.stderr


@pytest.mark.slow
def test_bucket_policy_denies_other_principals_the_prefix() -> None:
    uploader = "arn:aws:iam::123456789012:user/avatar-uploader"
    reader = "arn:aws:iam::123456789012:role/avatar-reader"
    result = _policies(
        "--bucket", SEED_BUCKET, "--uploader-arn", uploader, "--reader-arn", reader,
        S3_KEY_PREFIX="tenants/a/",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _, writes, reads = json.loads(result.stdout)["bucket_policy"]["Statement"]
    expected = ((writes, "s3:PutObject", uploader), (reads, "s3:GetObject", reader))
    for statement, action, arn in expected:
        assert statement["Effect"] == "Deny" and statement["Principal"] == "*"
        assert statement["Action"] == action
        assert statement["Resource"] == f"arn:aws:s3:::{SEED_BUCKET}/tenants/a/*"
        assert statement["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": arn}}


def test_the_test_s3_grants_the_same_actions() -> None:
    """SeaweedFS in the tests carries the seed's statements (dev/seaweed_s3.py): the same
    actions; the prefix and the conditions are AWS's to enforce (its policy evaluator
    there knows neither s3:authType nor s3:signatureAge)."""
    for seaweed, ours in (
        (seaweed_s3.uploader_policy("avatars"), policies.uploader_policy("avatars")),
        (seaweed_s3.reader_policy("avatars"), policies.reader_policy("avatars")),
    ):
        (theirs,) = seaweed["Statement"]
        (mine,) = ours["Statement"]
        assert (theirs["Effect"], theirs["Action"]) == (mine["Effect"], mine["Action"])


def test_bucket_policy_denies_requests_without_tls(printed: dict[str, Any]) -> None:
    (statement,) = printed["bucket_policy"]["Statement"]  # no ARNs given: TLS only
    assert printed["bucket_policy"]["Version"] == "2012-10-17"
    assert statement["Effect"] == "Deny"
    assert statement["Principal"] == "*"
    assert statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert sorted(statement["Resource"]) == [
        f"arn:aws:s3:::{SEED_BUCKET}",
        f"arn:aws:s3:::{SEED_BUCKET}/*",
    ]


def test_public_access_is_blocked_and_acls_are_off(printed: dict[str, Any]) -> None:
    assert printed["public_access_block"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    assert printed["ownership_controls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}


def test_cors_allows_put_and_get_from_the_origins_with_upload_headers_only(
    printed: dict[str, Any],
) -> None:
    (seed_rule,) = json.loads(SEED_CORS)
    (rule,) = printed["cors"]["CORSRules"]
    assert rule["AllowedOrigins"] == seed_rule["AllowedOrigins"]
    assert sorted(rule["AllowedMethods"]) == sorted(seed_rule["AllowedMethods"])
    assert rule["MaxAgeSeconds"] == seed_rule["MaxAgeSeconds"]
    # Not the seed's "*": exactly the headers an upload URL signs that a page sets (the
    # browser sets Content-Length itself).
    assert rule["AllowedHeaders"] == [
        "content-type",
        "x-amz-checksum-sha256",
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "expires",
    ]
    assert rule["ExposeHeaders"] == ["ETag"]


def test_cors_headers_are_the_ones_upload_urls_ask_for() -> None:
    creds = StaticCredentials(Credentials("AKIDEXAMPLE0001", "secret-example-0001"))
    signed = UploadSigner(creds, BucketEndpoint("b-1", "eu-west-1"), "eu-west-1").sign(
        "profiles/alice/avatar",
        content_type="image/png",
        content_length=10,
        checksum_sha256="a" * 43 + "=",
        ttl_seconds=60,
    )
    assert {name.lower() for name in signed.headers} == set(policies.UPLOAD_HEADERS)
    (rule,) = policies.cors(["https://app.example"])["CORSRules"]  # type: ignore[index]
    assert set(rule["AllowedHeaders"]) == set(policies.UPLOAD_HEADERS) - {"content-length"}


@pytest.mark.slow
def test_several_origins_and_none() -> None:
    result = _policies(
        "--bucket", "avatars", "--allowed-origin", "https://a.example", "--allowed-origin",
        "http://localhost:3000",
    )  # fmt: skip
    (rule,) = json.loads(result.stdout)["cors"]["CORSRules"]
    assert rule["AllowedOrigins"] == ["https://a.example", "http://localhost:3000"]
    # Without an origin no browser talks to the bucket: no CORS at all.
    assert json.loads(_policies("--bucket", "avatars").stdout)["cors"] is None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--bucket", "Bad_Bucket"], "--bucket"),
        (["--bucket", "avatars", "--allowed-origin", "*"], "--allowed-origin"),
        (["--bucket", "avatars", "--allowed-origin", "https://a.example/"], "--allowed-origin"),
        (["--bucket", "avatars", "--allowed-origin", "a.example"], "--allowed-origin"),
        (["--bucket", "avatars", "--allowed-origin", "https://*.example"], "--allowed-origin"),
        (["--bucket", "avatars", "--uploader-arn", "avatar-uploader"], "--uploader-arn"),
        (
            ["--bucket", "avatars", "--uploader-arn", "arn:aws:iam::123456789012:user/u"],
            "--reader-arn",
        ),
    ],
    ids=[
        "bucket-name",
        "wildcard",
        "trailing-slash",
        "no-scheme",
        "wildcard-subdomain",
        "arn-not-an-arn",
        "one-arn-only",
    ],
)
def test_bad_argument_is_one_line_naming_it(args: list[str], named: str) -> None:
    result = _policies(*args)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert named in line
    assert result.stdout == ""


@pytest.mark.slow
def test_help_explains_how_to_apply_each_document() -> None:
    result = _policies("--help")
    assert result.returncode == 0
    for command in (
        "aws iam put-user-policy",
        "aws iam put-role-policy",
        "jq -c .uploader_policy",
        "jq -c .reader_policy",
        "aws s3api put-bucket-policy",
        "aws s3api put-public-access-block",
        "aws s3api put-bucket-ownership-controls",
        "aws s3api put-bucket-cors",
        "avatar-signer check",
    ):
        assert command in result.stdout, command
