"""The IAM and bucket documents the security model rests on, ready for the AWS CLI.

`avatar-signer policies --bucket B [--allowed-origin URL ...] [--uploader-arn ARN
--reader-arn ARN]` prints `documents()` as one JSON object. S3_KEY_PREFIX,
UPLOAD_MAX_TTL_SECONDS and DOWNLOAD_MAX_TTL_SECONDS are read from the environment, as
`serve` reads them:

    uploader_policy      IAM policy of the uploader: the seed's actions (s3:PutObject and
                         s3:AbortMultipartUpload) on B/<prefix>* only, and only by a SigV4
                         presigned URL (s3:authType REST-QUERY-STRING) signed at most
                         UPLOAD_MAX_TTL_SECONDS (+ a minute of clock skew) ago
                         (s3:signatureAge): a leaked key cannot sign a week-long URL, nor
                         call S3 with a header-signed request
    reader_policy        the same for s3:GetObject, with DOWNLOAD_MAX_TTL_SECONDS
    bucket_policy        denies every request made without TLS; with both ARNs, denies
                         s3:PutObject on B/<prefix>* to every principal but the uploader
                         and s3:GetObject to every principal but the reader (so a broad
                         grant elsewhere in the account cannot write or read avatars;
                         deleting, e.g. for erasure, stays with the account's admins)
    public_access_block  all four Block Public Access settings on
    ownership_controls   BucketOwnerEnforced (ACLs off)
    cors                 PUT and GET from the given origins, the upload headers a page
                         sets allowed, ETag exposed; null without --allowed-origin (then no browser
                         talks to the bucket, and it needs no CORS)

Each value has the shape its `aws iam` / `aws s3api` command takes (see APPLY_HELP).
`avatar-signer check` then proves, against the real bucket, that the policies hold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ..settings.limits import DOWNLOAD_TTL, UPLOAD_TTL
from ..signing.object_keys import DEFAULT_PREFIX
from ..signing.url_signers import UploadSigner

VERSION = "2012-10-17"
# A presigned URL's signature may look this much older to S3 than its ttl: clocks differ.
CLOCK_SKEW_SECONDS = 60
_PRINCIPAL_ARN = re.compile(r"arn:aws[a-z-]*:(?:iam|sts)::\d{12}:[A-Za-z-]+/[\w+=,.@/-]{1,512}")
# The headers an upload URL signs and the uploader sends.
UPLOAD_HEADERS = UploadSigner.HEADERS
CORS_MAX_AGE_SECONDS = 3000  # the seed's value


def bucket_arn(bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}"


def objects_arn(bucket: str, prefix: str = "") -> str:
    """The objects under prefix (all of them by default)."""
    return f"{bucket_arn(bucket)}/{prefix}*"


def principal_arn_problem(arn: str) -> str | None:
    """Why `arn` is not an IAM user or role ARN, or None."""
    if not _PRINCIPAL_ARN.fullmatch(arn):
        return "must be an IAM user or role ARN such as arn:aws:iam::123456789012:role/NAME"
    return None


def presigned_only(max_ttl_seconds: int) -> dict[str, Any]:
    """The condition of both identities' grants: SigV4 presigned URLs, no older than a URL
    may live (plus the clock skew S3 may see)."""
    return {
        "StringEquals": {
            "s3:authType": "REST-QUERY-STRING",
            "s3:signatureversion": "AWS4-HMAC-SHA256",
        },
        "NumericLessThanEquals": {
            "s3:signatureAge": str((max_ttl_seconds + CLOCK_SKEW_SECONDS) * 1000)
        },
    }


def uploader_policy(
    bucket: str, prefix: str = DEFAULT_PREFIX, max_ttl_seconds: int = UPLOAD_TTL.maximum
) -> dict[str, Any]:
    """Put objects under prefix (and abort multipart uploads), by presigned URL only."""
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": objects_arn(bucket, prefix),
                "Condition": presigned_only(max_ttl_seconds),
            }
        ],
    }


def reader_policy(
    bucket: str, prefix: str = DEFAULT_PREFIX, max_ttl_seconds: int = DOWNLOAD_TTL.maximum
) -> dict[str, Any]:
    """Get objects under prefix, by presigned URL only; nothing else."""
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": objects_arn(bucket, prefix),
                "Condition": presigned_only(max_ttl_seconds),
            }
        ],
    }


def bucket_policy(
    bucket: str,
    prefix: str = DEFAULT_PREFIX,
    uploader_arn: str | None = None,
    reader_arn: str | None = None,
) -> dict[str, Any]:
    """Deny any request without TLS; with both ARNs, writes and reads of the avatars by
    anyone but the uploader and the reader."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "DenyRequestsWithoutTLS",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn(bucket), objects_arn(bucket)],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ]
    if uploader_arn and reader_arn:
        for sid, action, arn in (
            ("DenyAvatarWritesButTheUploaders", "s3:PutObject", uploader_arn),
            ("DenyAvatarReadsButTheReaders", "s3:GetObject", reader_arn),
        ):
            statements.append(
                {
                    "Sid": sid,
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": action,
                    "Resource": objects_arn(bucket, prefix),
                    "Condition": {"ArnNotEquals": {"aws:PrincipalArn": arn}},
                }
            )
    return {"Version": VERSION, "Statement": statements}


def public_access_block() -> dict[str, bool]:
    return {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }


def ownership_controls() -> dict[str, Any]:
    return {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}


def origin_problem(origin: str) -> str | None:
    """Why `origin` is not a browser origin (scheme://host[:port]), or None."""
    if "*" in origin:
        return f"{origin!r}: name each origin; wildcards are refused"
    parts = urlsplit(origin)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return f"{origin!r}: invalid port"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"{origin!r}: must be https://host[:port] (or http:// for local development)"
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        return f"{origin!r}: an origin is scheme://host[:port] only, no path or trailing '/'"
    return None


def cors(origins: Sequence[str]) -> dict[str, Any] | None:
    """Browsers at `origins` may PUT with an upload URL and GET with a download URL."""
    if not origins:
        return None
    for origin in origins:
        problem = origin_problem(origin)
        if problem:
            raise ValueError(problem)
    return {
        "CORSRules": [
            {
                "AllowedOrigins": list(dict.fromkeys(origins)),
                "AllowedMethods": ["PUT", "GET"],
                "AllowedHeaders": list(UploadSigner.HEADERS_A_BROWSER_MAY_SET),
                "ExposeHeaders": ["ETag"],
                "MaxAgeSeconds": CORS_MAX_AGE_SECONDS,
            }
        ]
    }


def documents(
    bucket: str,
    origins: Sequence[str] = (),
    *,
    prefix: str = DEFAULT_PREFIX,
    upload_max_ttl: int = UPLOAD_TTL.maximum,
    download_max_ttl: int = DOWNLOAD_TTL.maximum,
    uploader_arn: str | None = None,
    reader_arn: str | None = None,
) -> dict[str, Any]:
    """Everything `avatar-signer policies` prints (raises ValueError for a bad origin)."""
    return {
        "uploader_policy": uploader_policy(bucket, prefix, upload_max_ttl),
        "reader_policy": reader_policy(bucket, prefix, download_max_ttl),
        "bucket_policy": bucket_policy(bucket, prefix, uploader_arn, reader_arn),
        "public_access_block": public_access_block(),
        "ownership_controls": ownership_controls(),
        "cors": cors(origins),
    }


APPLY_HELP = """\
Prints one JSON object. Apply each part with the AWS CLI (jq picks a part out):

  avatar-signer policies --bucket "$BUCKET" --allowed-origin https://app.example.com \\
      --uploader-arn arn:aws:iam::123456789012:user/avatar-uploader \\
      --reader-arn arn:aws:iam::123456789012:user/avatar-reader > policies.json

  (S3_KEY_PREFIX, UPLOAD_MAX_TTL_SECONDS and DOWNLOAD_MAX_TTL_SECONDS come from the
  environment, as for serve: the policies cover that prefix and those lifetimes only.
  Roles: give the role ARN; an assumed role's sessions carry it as aws:PrincipalArn.)

  # The two identities. IAM users (static keys or key files):
  aws iam put-user-policy --user-name avatar-uploader --policy-name avatar-upload \\
      --policy-document "$(jq -c .uploader_policy policies.json)"
  aws iam put-user-policy --user-name avatar-reader --policy-name avatar-read \\
      --policy-document "$(jq -c .reader_policy policies.json)"
  # ... or IAM roles (S3_UPLOAD_ROLE_ARN / S3_READ_ROLE_ARN): the same documents with
  #   aws iam put-role-policy --role-name ROLE --policy-name NAME --policy-document ...
  # and a trust policy on each role that lets the pod's own role (IRSA or EKS Pod
  # Identity) call sts:AssumeRole; that base role needs nothing else.

  # The bucket:
  aws s3api put-public-access-block --bucket "$BUCKET" \\
      --public-access-block-configuration "$(jq -c .public_access_block policies.json)"
  aws s3api put-bucket-ownership-controls --bucket "$BUCKET" \\
      --ownership-controls "$(jq -c .ownership_controls policies.json)"
  aws s3api put-bucket-policy --bucket "$BUCKET" \\
      --policy "$(jq -c .bucket_policy policies.json)"
  aws s3api put-bucket-cors --bucket "$BUCKET" \\
      --cors-configuration "$(jq -c .cors policies.json)"
  # (cors is null without --allowed-origin: no browser talks to the bucket, so skip
  #  put-bucket-cors, or remove an old configuration with delete-bucket-cors.)

Terraform takes the same documents: aws_iam_user_policy / aws_iam_role_policy
(policy = jsonencode(...)), aws_s3_bucket_public_access_block,
aws_s3_bucket_ownership_controls, aws_s3_bucket_policy and
aws_s3_bucket_cors_configuration (its cors_rule blocks take the CORSRules fields).

Then run `avatar-signer check` with the service's settings: it proves against the real
bucket that the uploader cannot read, the reader cannot write, and neither can delete
or list.
"""
