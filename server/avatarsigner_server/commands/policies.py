"""The IAM and bucket documents the security model rests on, ready for the AWS CLI.

`avatar-signer policies --bucket B [--mode verified|direct] [--allowed-origin URL ...]`
prints `documents()` as one JSON object:

    uploader_policy      IAM policy of the uploader: s3:PutObject and
                         s3:AbortMultipartUpload on the staging prefix (verified mode:
                         B/uploads/*); direct mode: the original design's statement,
                         exactly (on B/*)
    reader_policy        IAM policy of the reader: s3:GetObject on the avatars
                         (verified: B/profiles/*; direct: the original statement, B/*)
    verifier_policy      verified mode only (else null): s3:GetObject on the staging
                         prefix, s3:PutObject and s3:DeleteObject on the avatars (it
                         publishes and deletes them); never read profiles/*, never write
                         uploads/*. With --versioned also s3:ListBucketVersions (on the
                         avatars' prefix) and s3:DeleteObjectVersion, for DELETE_OLD_VERSIONS
    bucket_policy        denies every request made without TLS
    public_access_block  all four Block Public Access settings on
    ownership_controls   BucketOwnerEnforced (ACLs off)
    lifecycle            verified mode only (else null): staged uploads and unfinished
                         multipart uploads expire after a day, the service's markers and
                         deletion tombstones after two (no identity may delete them, so S3
                         cleans up)
    cors                 PUT and GET from the given origins, the upload headers allowed,
                         ETag exposed; null without --allowed-origin (then no browser
                         talks to the bucket, and it needs no CORS)

Each value has the shape its `aws iam` / `aws s3api` command takes (see APPLY_HELP).
`avatar-signer check` then proves, against the real bucket, that the policies hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..settings.uploads import UploadMode
from ..signing.object_keys import DEFAULT_PREFIX, DEFAULT_STAGING_PREFIX, ObjectKeys
from ..signing.url_signers import UploadSigner

VERSION = "2012-10-17"
# The headers an upload URL signs and the uploader sends.
UPLOAD_HEADERS = UploadSigner.HEADERS
CORS_MAX_AGE_SECONDS = 3000  # the original design's value
STAGED_UPLOAD_DAYS = 1
# Markers and tombstones outlive the staged uploads they speak of (a repeated confirmation
# finds its marker; an upload staged before a deletion finds the tombstone).
MARKER_DAYS = 2


def bucket_arn(bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}"


def objects_arn(bucket: str, prefix: str = "") -> str:
    return f"{bucket_arn(bucket)}/{prefix}*"


@dataclass(frozen=True)
class Layout:
    """Where the bucket's objects live, and which upload design the service runs."""

    bucket: str
    mode: UploadMode = UploadMode.VERIFIED
    key_prefix: str = DEFAULT_PREFIX
    staging_prefix: str = DEFAULT_STAGING_PREFIX
    # The bucket keeps old versions, and the verifier deletes them (DELETE_OLD_VERSIONS).
    versioned: bool = False

    @property
    def verified(self) -> bool:
        return self.mode is UploadMode.VERIFIED

    @property
    def avatars(self) -> str:
        """The ARN of what readers read: the avatars (direct mode: the whole bucket)."""
        return objects_arn(self.bucket, self.key_prefix if self.verified else "")

    @property
    def staged(self) -> str:
        """The ARN of what upload URLs write (direct mode: the whole bucket)."""
        return objects_arn(self.bucket, self.staging_prefix if self.verified else "")


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": VERSION, "Statement": list(statements)}


def _allow(action: str | list[str], resource: str) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource}


def uploader_policy(layout: Layout) -> dict[str, Any]:
    """Put objects (and abort multipart uploads): no Get, no Delete, no List."""
    return _policy(_allow(["s3:PutObject", "s3:AbortMultipartUpload"], layout.staged))


def reader_policy(layout: Layout) -> dict[str, Any]:
    """Get objects, nothing else."""
    return _policy(_allow("s3:GetObject", layout.avatars))


def verifier_policy(layout: Layout) -> dict[str, Any] | None:
    """Read staged uploads, write and delete avatars (verified mode; None in direct mode)."""
    if not layout.verified:
        return None
    statements = [
        _allow("s3:GetObject", layout.staged),
        _allow(["s3:PutObject", "s3:DeleteObject"], layout.avatars),
    ]
    if layout.versioned:
        statements += [
            _allow("s3:DeleteObjectVersion", layout.avatars),
            {
                **_allow("s3:ListBucketVersions", bucket_arn(layout.bucket)),
                "Condition": {"StringLike": {"s3:prefix": f"{layout.key_prefix}*"}},
            },
        ]
    return _policy(*statements)


def lifecycle(layout: Layout) -> dict[str, Any] | None:
    """Expiry of what the service leaves behind (verified mode; None in direct mode)."""
    if not layout.verified:
        return None
    state = ObjectKeys(layout.key_prefix, layout.staging_prefix).state_prefix()
    return {
        "Rules": [
            {
                "ID": "expire-staged-uploads",
                "Filter": {"Prefix": layout.staging_prefix},
                "Status": "Enabled",
                "Expiration": {"Days": STAGED_UPLOAD_DAYS},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": STAGED_UPLOAD_DAYS},
            },
            {
                "ID": "expire-markers-and-tombstones",
                "Filter": {"Prefix": state},
                "Status": "Enabled",
                "Expiration": {"Days": MARKER_DAYS},
            },
        ]
    }


def bucket_policy(bucket: str) -> dict[str, Any]:
    """Deny any request to the bucket or its objects that does not use TLS."""
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "DenyRequestsWithoutTLS",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [bucket_arn(bucket), objects_arn(bucket)],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


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
                "AllowedHeaders": list(UPLOAD_HEADERS),
                "ExposeHeaders": ["ETag"],
                "MaxAgeSeconds": CORS_MAX_AGE_SECONDS,
            }
        ]
    }


def documents(layout: Layout, origins: Sequence[str] = ()) -> dict[str, Any]:
    """Everything `avatar-signer policies` prints (raises ValueError for a bad origin)."""
    return {
        "uploader_policy": uploader_policy(layout),
        "reader_policy": reader_policy(layout),
        "verifier_policy": verifier_policy(layout),
        "bucket_policy": bucket_policy(layout.bucket),
        "public_access_block": public_access_block(),
        "ownership_controls": ownership_controls(),
        "lifecycle": lifecycle(layout),
        "cors": cors(origins),
    }


APPLY_HELP = """\
Prints one JSON object. Apply each part with the AWS CLI (jq picks a part out):

  avatar-signer policies --bucket "$BUCKET" --allowed-origin https://app.example.com \\
      > policies.json

  # The identities (verified mode, the default, has three; direct mode two). IAM users
  # (static keys or key files):
  aws iam put-user-policy --user-name avatar-uploader --policy-name avatar-upload \\
      --policy-document "$(jq -c .uploader_policy policies.json)"
  aws iam put-user-policy --user-name avatar-reader --policy-name avatar-read \\
      --policy-document "$(jq -c .reader_policy policies.json)"
  aws iam put-user-policy --user-name avatar-verifier --policy-name avatar-verify \\
      --policy-document "$(jq -c .verifier_policy policies.json)"
  # ... or IAM roles (S3_UPLOAD_ROLE_ARN / S3_READ_ROLE_ARN / S3_VERIFY_ROLE_ARN): the
  # same documents with
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
  aws s3api put-bucket-lifecycle-configuration --bucket "$BUCKET" \\
      --lifecycle-configuration "$(jq -c .lifecycle policies.json)"
  aws s3api put-bucket-cors --bucket "$BUCKET" \\
      --cors-configuration "$(jq -c .cors policies.json)"
  # (cors is null without --allowed-origin: no browser talks to the bucket, so skip
  #  put-bucket-cors, or remove an old configuration with delete-bucket-cors.)

Terraform takes the same documents: aws_iam_user_policy / aws_iam_role_policy
(policy = jsonencode(...)), aws_s3_bucket_public_access_block,
aws_s3_bucket_ownership_controls, aws_s3_bucket_policy,
aws_s3_bucket_lifecycle_configuration and aws_s3_bucket_cors_configuration (their rule
blocks take the Rules and CORSRules fields).

--mode, --key-prefix and --staging-prefix default to the service's own UPLOAD_MODE,
S3_KEY_PREFIX and S3_STAGING_PREFIX when those are set. Then run `avatar-signer check`
with the service's settings: it proves against the real bucket that each identity can do
its one job and nothing else: the uploader cannot read, the reader cannot write, the
verifier cannot read avatars or write staged uploads, and none can delete or list.
"""
