"""`avatar-signer policies`: the documents the security model rests on, as one JSON object.

Direct mode's IAM statements and the CORS rule are compared with the original design's own
JSON, copied verbatim below, so a drift from it fails here. Verified mode's three
identities are prefix-scoped; the test S3 (dev/seaweed_s3.py) creates its identities from
these very documents, so the s3 tests (test_check, test_verified_uploads) judge them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from avatarsigner_server.commands import policies
from avatarsigner_server.credentials.sources import StaticCredentials
from avatarsigner_server.signing.key_pairs import Credentials
from avatarsigner_server.signing.url_signers import BucketEndpoint, UploadSigner

ORIGINAL_BUCKET = "myapp-profile-images"
ORIGINAL_UPLOAD_STATEMENT = """
{
  "Effect": "Allow",
  "Action": [
    "s3:PutObject",
    "s3:AbortMultipartUpload"
  ],
  "Resource": "arn:aws:s3:::myapp-profile-images/*"
}
"""
ORIGINAL_READ_STATEMENT = """
{
  "Effect": "Allow",
  "Action": "s3:GetObject",
  "Resource": "arn:aws:s3:::myapp-profile-images/*"
}
"""
ORIGINAL_CORS = """
[
  {
    "AllowedOrigins": ["https://yourapp.com"],
    "AllowedMethods": ["GET", "PUT"],
    "AllowedHeaders": ["*"],
    "MaxAgeSeconds": 3000
  }
]
"""


def _policies(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "policies", *args],
        # The service's own settings would change the defaults: not in these tests.
        env={
            k: v
            for k, v in os.environ.items()
            if k not in ("UPLOAD_MODE", "S3_KEY_PREFIX", "S3_STAGING_PREFIX")
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def _printed(*args: str) -> dict[str, Any]:
    origin = ("--allowed-origin", "https://yourapp.com")
    result = _policies("--bucket", ORIGINAL_BUCKET, *origin, *args)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)  # one JSON object, nothing else
    return document


@pytest.fixture(scope="module")
def printed() -> dict[str, Any]:
    """Direct mode: the original two-identity design."""
    return _printed("--mode", "direct")


@pytest.fixture(scope="module")
def verified() -> dict[str, Any]:
    """Verified mode, the default (the environment's UPLOAD_MODE is not set in tests)."""
    return _printed()


DOCUMENTS = [
    "uploader_policy",
    "reader_policy",
    "verifier_policy",
    "bucket_policy",
    "public_access_block",
    "ownership_controls",
    "lifecycle",
    "cors",
]


def test_prints_exactly_the_eight_documents(
    printed: dict[str, Any], verified: dict[str, Any]
) -> None:
    assert list(printed) == DOCUMENTS
    assert list(verified) == DOCUMENTS
    # Direct mode has no verifier and leaves nothing behind to expire.
    assert printed["verifier_policy"] is None and printed["lifecycle"] is None


def test_verified_identities_each_have_one_prefix_scoped_job(verified: dict[str, Any]) -> None:
    staged = f"arn:aws:s3:::{ORIGINAL_BUCKET}/uploads/*"
    avatars = f"arn:aws:s3:::{ORIGINAL_BUCKET}/profiles/*"

    def allowed(document: str) -> set[tuple[str, str]]:
        found = set()
        for statement in verified[document]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"]
            for action in [actions] if isinstance(actions, str) else actions:
                found.add((action, statement["Resource"]))
        return found

    assert allowed("uploader_policy") == {
        ("s3:PutObject", staged),
        ("s3:AbortMultipartUpload", staged),
    }
    assert allowed("reader_policy") == {("s3:GetObject", avatars)}
    assert allowed("verifier_policy") == {
        ("s3:GetObject", staged),
        ("s3:PutObject", avatars),
        ("s3:DeleteObject", avatars),
    }


def test_versioned_buckets_let_the_verifier_delete_old_versions_only() -> None:
    statements = _printed("--versioned")["verifier_policy"]["Statement"]
    extra = statements[2:]
    assert extra == [
        {
            "Effect": "Allow",
            "Action": "s3:DeleteObjectVersion",
            "Resource": f"arn:aws:s3:::{ORIGINAL_BUCKET}/profiles/*",
        },
        {
            "Effect": "Allow",
            "Action": "s3:ListBucketVersions",
            "Resource": f"arn:aws:s3:::{ORIGINAL_BUCKET}",
            "Condition": {"StringLike": {"s3:prefix": "profiles/*"}},
        },
    ]


def test_lifecycle_expires_staged_uploads_and_markers(verified: dict[str, Any]) -> None:
    rules = {rule["Filter"]["Prefix"]: rule for rule in verified["lifecycle"]["Rules"]}
    assert rules["uploads/"]["Expiration"] == {"Days": 1}
    assert rules["uploads/"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert rules["profiles/.avatar-signer/"]["Expiration"] == {"Days": 2}  # markers, tombstones
    assert all(rule["Status"] == "Enabled" for rule in rules.values())


def test_prefixes_follow_the_flags_and_may_not_overlap() -> None:
    custom = _printed("--key-prefix", "img/p/", "--staging-prefix", "img/u/")
    assert custom["reader_policy"]["Statement"][0]["Resource"] == (
        f"arn:aws:s3:::{ORIGINAL_BUCKET}/img/p/*"
    )
    overlapping = _policies("--bucket", "avatars", "--staging-prefix", "profiles/in/")
    assert overlapping.returncode == 2
    assert overlapping.stderr.startswith("avatar-signer: configuration error: --staging-prefix:")


def test_uploader_policy_is_the_original_statement_exactly(printed: dict[str, Any]) -> None:
    assert printed["uploader_policy"] == {
        "Version": "2012-10-17",
        "Statement": [json.loads(ORIGINAL_UPLOAD_STATEMENT)],
    }


def test_reader_policy_is_the_original_statement_exactly(printed: dict[str, Any]) -> None:
    assert printed["reader_policy"] == {
        "Version": "2012-10-17",
        "Statement": [json.loads(ORIGINAL_READ_STATEMENT)],
    }


def test_bucket_policy_denies_requests_without_tls(printed: dict[str, Any]) -> None:
    (statement,) = printed["bucket_policy"]["Statement"]
    assert printed["bucket_policy"]["Version"] == "2012-10-17"
    assert statement["Effect"] == "Deny"
    assert statement["Principal"] == "*"
    assert statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert sorted(statement["Resource"]) == [
        f"arn:aws:s3:::{ORIGINAL_BUCKET}",
        f"arn:aws:s3:::{ORIGINAL_BUCKET}/*",
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
    (original_rule,) = json.loads(ORIGINAL_CORS)
    (rule,) = printed["cors"]["CORSRules"]
    assert rule["AllowedOrigins"] == original_rule["AllowedOrigins"]
    assert sorted(rule["AllowedMethods"]) == sorted(original_rule["AllowedMethods"])
    assert rule["MaxAgeSeconds"] == original_rule["MaxAgeSeconds"]
    # Not the original "*": exactly the headers an upload URL signs.
    assert rule["AllowedHeaders"] == [
        "content-type",
        "content-length",
        "x-amz-checksum-sha256",
        "if-none-match",
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
        write_once=True,
    )
    assert {name.lower() for name in signed.headers} == set(policies.UPLOAD_HEADERS)


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
    ],
    ids=["bucket-name", "wildcard", "trailing-slash", "no-scheme", "wildcard-subdomain"],
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
