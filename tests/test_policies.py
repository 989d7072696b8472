"""`avatar-signer policies`: the documents the security model rests on, as one JSON object.

Direct mode's IAM statements and the CORS rule are compared with the reference JSON they
were specified with, copied verbatim below: the same actions, narrowed to the key prefix
and to presigned requests no older than they may live, so any other drift from it fails
here. Verified mode's three identities are prefix-scoped; the test S3 (dev/seaweed_s3.py)
creates its identities from these very documents, so the s3 tests (test_check,
test_verified_uploads) judge them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from avatarsigner_server.commands import policies
from avatarsigner_server.settings.uploads import UploadMode
from avatarsigner_server.signing.url_signers import OBJECT_HEADERS

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


SETTINGS = (
    "UPLOAD_MODE",
    "S3_KEY_PREFIX",
    "S3_STAGING_PREFIX",
    "UPLOAD_MAX_TTL_SECONDS",
    "DOWNLOAD_MAX_TTL_SECONDS",
)


def _policies(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "avatarsigner_server.commands.cli", "policies", *args],
        # The service's own settings would change the defaults: only those a test gives.
        env={k: v for k, v in os.environ.items() if k not in SETTINGS} | settings,
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
    """Direct mode: two identities, no verifier."""
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
    "cloudfront",
]


def test_prints_exactly_the_nine_documents(
    printed: dict[str, Any], verified: dict[str, Any]
) -> None:
    assert list(printed) == DOCUMENTS
    assert list(verified) == DOCUMENTS
    # Direct mode has no verifier and leaves nothing behind to expire.
    assert printed["verifier_policy"] is None and printed["lifecycle"] is None
    # No --distribution-arn: no CloudFront.
    assert printed["cloudfront"] is None and verified["cloudfront"] is None


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
            "Condition": _presigned_only(60),
        },
        {
            "Effect": "Allow",
            "Action": "s3:ListBucketVersions",
            "Resource": f"arn:aws:s3:::{ORIGINAL_BUCKET}",
            "Condition": {**_presigned_only(60), "StringLike": {"s3:prefix": "profiles/*"}},
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


def _presigned_only(max_life: int) -> dict[str, Any]:
    return {
        "StringEquals": {
            "s3:authType": "REST-QUERY-STRING",
            "s3:signatureversion": "AWS4-HMAC-SHA256",
        },
        "NumericLessThanEquals": {"s3:signatureAge": str((max_life + 60) * 1000)},
    }


def _narrowed(original: str, prefix: str, max_life: int) -> dict[str, Any]:
    """The reference statement on <bucket>/<prefix>* only, for presigned requests only."""
    statement = json.loads(original)
    statement["Resource"] = statement["Resource"].replace("/*", f"/{prefix}*")
    statement["Condition"] = _presigned_only(max_life)
    return {"Version": "2012-10-17", "Statement": [statement]}


def test_uploader_policy_is_the_original_statement_on_the_prefix(printed: dict[str, Any]) -> None:
    assert printed["uploader_policy"] == _narrowed(ORIGINAL_UPLOAD_STATEMENT, "profiles/", 1200)


def test_reader_policy_is_the_original_statement_on_the_prefix(printed: dict[str, Any]) -> None:
    assert printed["reader_policy"] == _narrowed(ORIGINAL_READ_STATEMENT, "profiles/", 1200)


def test_every_grant_is_for_presigned_requests_no_older_than_they_live(
    verified: dict[str, Any],
) -> None:
    lives = {"uploader_policy": 1200, "reader_policy": 1200, "verifier_policy": 60}
    for document, life in lives.items():
        for statement in verified[document]["Statement"]:
            assert statement["Condition"] == _presigned_only(life), document


@pytest.mark.slow
def test_policies_follow_the_key_prefix_and_the_max_ttls() -> None:
    result = _policies(
        "--bucket", ORIGINAL_BUCKET, "--mode", "direct",
        S3_KEY_PREFIX="tenants/a/", UPLOAD_MAX_TTL_SECONDS="900", DOWNLOAD_MAX_TTL_SECONDS="300",
    )  # fmt: skip
    printed = json.loads(result.stdout)
    assert printed["uploader_policy"] == _narrowed(ORIGINAL_UPLOAD_STATEMENT, "tenants/a/", 900)
    assert printed["reader_policy"] == _narrowed(ORIGINAL_READ_STATEMENT, "tenants/a/", 300)
    assert "does not deny other principals" in result.stderr


UPLOADER_ARN = "arn:aws:iam::123456789012:user/avatar-uploader"
READER_ARN = "arn:aws:iam::123456789012:role/avatar-reader"
VERIFIER_ARN = "arn:aws:iam::123456789012:role/avatar-verifier"


def _denials(document: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(action, resource) -> the one principal not denied it, from the bucket policy."""
    found = {}
    for statement in document["bucket_policy"]["Statement"][1:]:
        assert statement["Effect"] == "Deny" and statement["Principal"] == "*"
        arn = statement["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
        found[(statement["Action"], statement["Resource"])] = arn
    return found


@pytest.mark.slow
def test_bucket_policy_denies_each_prefix_to_all_but_its_identity() -> None:
    arns = ("--uploader-arn", UPLOADER_ARN, "--reader-arn", READER_ARN)
    staged = f"arn:aws:s3:::{ORIGINAL_BUCKET}/uploads/*"
    avatars = f"arn:aws:s3:::{ORIGINAL_BUCKET}/profiles/*"
    verified = _policies("--bucket", ORIGINAL_BUCKET, *arns, "--verifier-arn", VERIFIER_ARN)
    assert verified.returncode == 0, verified.stderr
    assert _denials(json.loads(verified.stdout)) == {
        ("s3:PutObject", staged): UPLOADER_ARN,
        ("s3:GetObject", staged): VERIFIER_ARN,
        ("s3:PutObject", avatars): VERIFIER_ARN,
        ("s3:GetObject", avatars): READER_ARN,
    }
    direct = _policies("--bucket", ORIGINAL_BUCKET, "--mode", "direct", *arns)
    assert direct.returncode == 0, direct.stderr
    assert _denials(json.loads(direct.stdout)) == {
        ("s3:PutObject", avatars): UPLOADER_ARN,
        ("s3:GetObject", avatars): READER_ARN,
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
    # Not the reference rule's "*": exactly the signed headers a page sets (tests/test_cors_rules.py
    # derives them from the upload signer; the browser sets Content-Length itself).
    assert rule["AllowedHeaders"] == [
        "content-type",
        "x-amz-checksum-sha256",
        "if-none-match",
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "expires",
    ]
    assert rule["ExposeHeaders"] == ["ETag"]


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


DISTRIBUTION = "arn:aws:cloudfront::123456789012:distribution/EDFDVBD6EXAMPLE"


@pytest.mark.parametrize("mode", list(UploadMode), ids=str)
def test_with_a_distribution_only_it_may_read_the_avatars(mode: UploadMode) -> None:
    layout = policies.Layout("avatars", mode, "media/avatars/")
    printed = policies.documents(layout, (), None, DISTRIBUTION, "eu-west-1")
    deny_tls, allow_cloudfront = printed["bucket_policy"]["Statement"]
    assert deny_tls["Sid"] == "DenyRequestsWithoutTLS"
    assert allow_cloudfront == {
        "Sid": "AllowCloudFrontToReadAvatars",
        "Effect": "Allow",
        "Principal": {"Service": "cloudfront.amazonaws.com"},
        "Action": "s3:GetObject",
        # The avatars only: not staged uploads, confirmation markers or the check's canary.
        "Resource": "arn:aws:s3:::avatars/media/avatars/*/avatar",
        "Condition": {"StringEquals": {"AWS:SourceArn": DISTRIBUTION}},
    }
    # Block Public Access stays on: a service principal bound to one ARN is not public.
    assert all(printed["public_access_block"].values())


def test_the_distribution_parts_for_avatars() -> None:
    layout = policies.Layout("avatars")
    parts = policies.documents(layout, (), None, DISTRIBUTION, "eu-west-1")["cloudfront"]
    assert parts["origin_access_control"]["SigningBehavior"] == "always"
    assert parts["origin_access_control"]["OriginAccessControlOriginType"] == "s3"
    assert parts["origin"]["DomainName"] == "avatars.s3.eu-west-1.amazonaws.com"
    key = parts["cache_policy"]["ParametersInCacheKeyAndForwardedToOrigin"]
    # The signature parameters and the signed cookies stay out of the cache key.
    assert key["QueryStringsConfig"] == {"QueryStringBehavior": "none"}
    assert key["CookiesConfig"] == {"CookieBehavior": "none"}
    assert key["HeadersConfig"] == {"HeaderBehavior": "none"}
    assert parts["cache_policy"]["MaxTTL"] <= 3600
    # What S3 URLs' viewers are told (`private, max-age=0`) must not keep edges from caching.
    assert "private" in OBJECT_HEADERS["Cache-Control"]
    assert 0 < parts["cache_policy"]["MinTTL"] == parts["cache_policy"]["DefaultTTL"]
    security = parts["response_headers_policy"]["SecurityHeadersConfig"]
    assert security["ContentTypeOptions"] == {"Override": True}  # X-Content-Type-Options: nosniff
    custom = {
        item["Header"]: item
        for item in parts["response_headers_policy"]["CustomHeadersConfig"]["Items"]
    }
    assert custom["Content-Disposition"]["Override"] is True
    assert custom["Cache-Control"]["Override"] is True
    behavior = parts["cache_behavior"]
    assert behavior["PathPattern"] == "profiles/*"
    assert behavior["TargetOriginId"] == parts["origin"]["Id"]
    assert behavior["ViewerProtocolPolicy"] == "https-only"
    assert behavior["AllowedMethods"]["Items"] == ["GET", "HEAD"]
    assert behavior["TrustedKeyGroups"]["Enabled"] is True


@pytest.mark.slow
def test_the_key_prefix_defaults_to_s3_key_prefix() -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "avatarsigner_server.commands.cli", "policies",
            "--bucket", "avatars", "--distribution-arn", DISTRIBUTION,
        ],
        env={**os.environ, "S3_KEY_PREFIX": "users/", "AWS_REGION": "us-east-2"},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    resource = printed["bucket_policy"]["Statement"][1]["Resource"]
    assert resource == "arn:aws:s3:::avatars/users/*/avatar"
    assert printed["cloudfront"]["cache_behavior"]["PathPattern"] == "users/*"
    assert printed["cloudfront"]["origin"]["DomainName"] == "avatars.s3.us-east-2.amazonaws.com"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--bucket", "avatars", "--distribution-arn", "EDFDVBD6EXAMPLE"], "--distribution-arn"),
        (["--bucket", "avatars", "--key-prefix", "../"], "--key-prefix"),
        (["--bucket", "avatars", "--region", "Europe"], "--region"),
        (["--bucket", "Bad_Bucket"], "--bucket"),
        (["--bucket", "avatars", "--allowed-origin", "*"], "--allowed-origin"),
        (["--bucket", "avatars", "--allowed-origin", "https://a.example/"], "--allowed-origin"),
        (["--bucket", "avatars", "--allowed-origin", "a.example"], "--allowed-origin"),
        (["--bucket", "avatars", "--allowed-origin", "https://*.example"], "--allowed-origin"),
        (["--bucket", "avatars", "--uploader-arn", "avatar-uploader"], "--uploader-arn"),
        (["--bucket", "avatars", "--uploader-arn", UPLOADER_ARN], "--reader-arn"),
        (
            ["--bucket", "avatars", "--uploader-arn", UPLOADER_ARN, "--reader-arn", READER_ARN],
            "--verifier-arn",
        ),
    ],
    ids=[
        "distribution-arn",
        "key-prefix",
        "region",
        "bucket-name",
        "wildcard",
        "trailing-slash",
        "no-scheme",
        "wildcard-subdomain",
        "arn-not-an-arn",
        "one-arn-only",
        "verified-mode-without-verifier",
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
        "aws cloudfront create-public-key",
        "aws cloudfront create-key-group",
        "jq -c .cloudfront.origin_access_control",
        "jq -c .cloudfront.cache_policy",
        "jq -c .cloudfront.response_headers_policy",
    ):
        assert command in result.stdout, command


def test_denying_other_readers_still_lets_the_distribution_read() -> None:
    """CloudFront's requests carry no principal ARN, only the distribution's SourceArn: the
    denial of every reader but the reader identity must except it, or OAC reads fail."""
    layout = policies.Layout("avatars")
    principals = policies.Principals(UPLOADER_ARN, READER_ARN, VERIFIER_ARN)
    statements = {
        statement["Sid"]: statement
        for statement in policies.bucket_policy(layout, principals, DISTRIBUTION)["Statement"]
    }
    deny = statements["OnlyTheReaderReadsAvatars"]
    assert deny["Effect"] == "Deny" and deny["Action"] == "s3:GetObject"
    assert deny["Condition"] == {
        "ArnNotEquals": {"aws:PrincipalArn": READER_ARN},
        "StringNotEquals": {"AWS:SourceArn": DISTRIBUTION},
    }
    assert statements["AllowCloudFrontToReadAvatars"]["Effect"] == "Allow"
    # Without a distribution the denial stays as it was.
    plain = policies.bucket_policy(layout, principals)["Statement"]
    (reads,) = [s for s in plain if s["Sid"] == "OnlyTheReaderReadsAvatars"]
    assert reads["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": READER_ARN}}
