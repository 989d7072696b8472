"""The IAM and bucket documents the security model rests on, ready for the AWS CLI.

`avatar-signer policies --bucket B [--mode verified|direct] [--allowed-origin URL ...]
[--uploader-arn ARN --reader-arn ARN [--verifier-arn ARN]] [--distribution-arn ARN]`
prints `documents()` as one JSON object. Every grant is on one prefix and only for SigV4
presigned requests (s3:authType REST-QUERY-STRING) signed at most the longest life of
such a request ago (UPLOAD_MAX_TTL_SECONDS, DOWNLOAD_MAX_TTL_SECONDS, the verifier's own
requests; plus a minute of clock skew, s3:signatureAge): a leaked key cannot sign a
week-long URL, nor call S3 with a header-signed request.

    uploader_policy      IAM policy of the uploader: s3:PutObject and
                         s3:AbortMultipartUpload on the staging prefix (verified mode:
                         B/uploads/*; direct mode: the avatars, B/profiles/*)
    reader_policy        IAM policy of the reader: s3:GetObject on the avatars
                         (B/profiles/*)
    verifier_policy      verified mode only (else null): s3:GetObject on the staging
                         prefix, s3:PutObject and s3:DeleteObject on the avatars (it
                         publishes and deletes them); never read profiles/*, never write
                         uploads/*. With --versioned also s3:ListBucketVersions (on the
                         avatars' prefix) and s3:DeleteObjectVersion, for DELETE_OLD_VERSIONS
    bucket_policy        denies every request made without TLS; given the identities'
                         ARNs, denies each prefix's s3:PutObject and s3:GetObject to every
                         principal but the one identity whose job it is (so a broad grant
                         elsewhere in the account cannot write or read avatars; deleting,
                         e.g. for erasure, stays with the verifier and the account's admins);
                         with --distribution-arn also lets that distribution (Origin Access
                         Control) read the avatars, <prefix>*/avatar, and nothing else
    public_access_block  all four Block Public Access settings on
    ownership_controls   BucketOwnerEnforced (ACLs off)
    lifecycle            verified mode only (else null): staged uploads and unfinished
                         multipart uploads expire after a day, the service's markers and
                         deletion tombstones after two (no identity may delete them, so S3
                         cleans up)
    cors                 PUT and GET from the given origins, the upload headers a page
                         sets allowed (not Content-Length: the browser sets it), ETag
                         exposed; null without --allowed-origin (then no browser talks
                         to the bucket, and it needs no CORS)

    cloudfront           with --distribution-arn, the distribution's parts for avatars:
                         the Origin Access Control, the S3 origin, a cache policy, a
                         response headers policy and the cache behavior for <prefix>*
                         that ties them to the trusted key group; null without it

Each value has the shape its `aws iam` / `aws s3api` command takes (see APPLY_HELP).
`avatar-signer check` then proves, against the real bucket, that the policies hold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..settings.cloudfront import (
    EDGE_MAX_TTL_SECONDS,
    EDGE_TTL_SECONDS,
    VIEWER_MAX_AGE_SECONDS,
)
from ..settings.limits import DOWNLOAD_TTL, UPLOAD_TTL
from ..settings.uploads import UploadMode
from ..signing.cloudfront import SIGNING_PARAMETERS
from ..signing.object_keys import DEFAULT_PREFIX, DEFAULT_STAGING_PREFIX, ObjectKeys
from ..signing.url_signers import UploadSigner
from ..storage.objects import DEFAULT_EXPIRES_IN

VERSION = "2012-10-17"
CORS_MAX_AGE_SECONDS = 3000  # browsers cache a preflight this long (or their own cap)
STAGED_UPLOAD_DAYS = 1
# Markers and tombstones outlive the staged uploads they speak of (a repeated confirmation
# finds its marker; an upload staged before a deletion finds the tombstone).
MARKER_DAYS = 2
# A presigned request's signature may look this much older to S3 than its life: clocks differ.
CLOCK_SKEW_SECONDS = 60
# What viewers' browsers are told: private (access-controlled), fresh for a few minutes.
VIEWER_CACHE_CONTROL = f"private, max-age={VIEWER_MAX_AGE_SECONDS}"
# An image never runs script or loads anything, even opened directly as a page.
IMAGE_CSP = "default-src 'none'; sandbox"
_DISTRIBUTION_ARN = re.compile(r"arn:aws:cloudfront::\d{12}:distribution/[A-Z0-9]{1,64}")
_PRINCIPAL_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:(?:user|role)/[\w+=,.@/-]{1,512}")


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
    # The longest a URL of each kind lives (UPLOAD_MAX_TTL_SECONDS, DOWNLOAD_MAX_TTL_SECONDS).
    upload_max_ttl: int = UPLOAD_TTL.maximum
    download_max_ttl: int = DOWNLOAD_TTL.maximum

    @property
    def verified(self) -> bool:
        return self.mode is UploadMode.VERIFIED

    @property
    def avatars(self) -> str:
        """The ARN of what readers read: the avatars."""
        return objects_arn(self.bucket, self.key_prefix)

    @property
    def keys(self) -> ObjectKeys:
        return ObjectKeys(self.key_prefix, self.staging_prefix)

    @property
    def staged(self) -> str:
        """The ARN of what upload URLs write (direct mode: the avatars)."""
        return objects_arn(self.bucket, self.staging_prefix if self.verified else self.key_prefix)


@dataclass(frozen=True)
class Principals:
    """The identities' IAM user or role ARNs, for the bucket policy's denials of others."""

    uploader: str
    reader: str
    verifier: str | None = None


def principal_arn_problem(arn: str) -> str | None:
    """Why `arn` is not an IAM user or role ARN, or None."""
    if not _PRINCIPAL_ARN.fullmatch(arn):
        return "must be an IAM user or role ARN such as arn:aws:iam::123456789012:role/NAME"
    return None


def presigned_only(max_life_seconds: int) -> dict[str, Any]:
    """The condition of every grant: SigV4 presigned requests, signed no longer ago than
    such a request may live (plus the clock skew S3 may see)."""
    return {
        "StringEquals": {
            "s3:authType": "REST-QUERY-STRING",
            "s3:signatureversion": "AWS4-HMAC-SHA256",
        },
        "NumericLessThanEquals": {
            "s3:signatureAge": str((max_life_seconds + CLOCK_SKEW_SECONDS) * 1000)
        },
    }


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": VERSION, "Statement": list(statements)}


def _allow(action: str | list[str], resource: str, max_life_seconds: int) -> dict[str, Any]:
    return {
        "Effect": "Allow",
        "Action": action,
        "Resource": resource,
        "Condition": presigned_only(max_life_seconds),
    }


def uploader_policy(layout: Layout) -> dict[str, Any]:
    """Put objects (and abort multipart uploads): no Get, no Delete, no List."""
    return _policy(
        _allow(["s3:PutObject", "s3:AbortMultipartUpload"], layout.staged, layout.upload_max_ttl)
    )


def reader_policy(layout: Layout) -> dict[str, Any]:
    """Get objects, nothing else (download URLs, and its own short reads of markers)."""
    return _policy(
        _allow("s3:GetObject", layout.avatars, max(layout.download_max_ttl, DEFAULT_EXPIRES_IN))
    )


def verifier_policy(layout: Layout) -> dict[str, Any] | None:
    """Read staged uploads, write and delete avatars (verified mode; None in direct mode),
    with its own short-lived presigned requests."""
    if not layout.verified:
        return None
    life = DEFAULT_EXPIRES_IN
    statements = [
        _allow("s3:GetObject", layout.staged, life),
        _allow(["s3:PutObject", "s3:DeleteObject"], layout.avatars, life),
    ]
    if layout.versioned:
        listing = _allow("s3:ListBucketVersions", bucket_arn(layout.bucket), life)
        listing["Condition"]["StringLike"] = {"s3:prefix": f"{layout.key_prefix}*"}
        statements += [_allow("s3:DeleteObjectVersion", layout.avatars, life), listing]
    return _policy(*statements)


def lifecycle(layout: Layout) -> dict[str, Any] | None:
    """Expiry of what the service leaves behind (verified mode; None in direct mode)."""
    if not layout.verified:
        return None
    state = layout.keys.state_prefix()
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


def _only(sid: str, action: str, resource: str, arn: str) -> dict[str, Any]:
    """Deny `action` on `resource` to every principal but `arn`."""
    return {
        "Sid": sid,
        "Effect": "Deny",
        "Principal": "*",
        "Action": action,
        "Resource": resource,
        "Condition": {"ArnNotEquals": {"aws:PrincipalArn": arn}},
    }


def bucket_policy(
    layout: Layout, principals: Principals | None = None, distribution_arn: str | None = None
) -> dict[str, Any]:
    """Deny any request without TLS; given the ARNs, each prefix's reads and writes to all
    but the identity whose job they are; given a distribution, let it (and only it,
    through Origin Access Control) read the avatars."""
    statements = [
        {
            "Sid": "DenyRequestsWithoutTLS",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn(layout.bucket), objects_arn(layout.bucket)],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ]
    if principals is not None:
        if layout.verified:
            if principals.verifier is None:
                raise ValueError("verified mode has a third identity: give the verifier's ARN")
            statements += [
                _only("OnlyTheUploaderWritesStaged", "s3:PutObject", layout.staged,
                      principals.uploader),
                _only("OnlyTheVerifierReadsStaged", "s3:GetObject", layout.staged,
                      principals.verifier),
                _only("OnlyTheVerifierWritesAvatars", "s3:PutObject", layout.avatars,
                      principals.verifier),
            ]  # fmt: skip
        else:
            statements.append(
                _only("OnlyTheUploaderWritesAvatars", "s3:PutObject", layout.avatars,
                      principals.uploader)
            )  # fmt: skip
        reader = principals.reader
        reads = _only("OnlyTheReaderReadsAvatars", "s3:GetObject", layout.avatars, reader)
        if distribution_arn is not None:
            # CloudFront's requests carry no principal ARN but the distribution's SourceArn.
            reads["Condition"]["StringNotEquals"] = {"AWS:SourceArn": distribution_arn}
        statements.append(reads)
    if distribution_arn is not None:
        statements.append(
            {
                "Sid": "AllowCloudFrontToReadAvatars",
                "Effect": "Allow",
                "Principal": {"Service": "cloudfront.amazonaws.com"},
                "Action": "s3:GetObject",
                # The avatars only, in either mode: not staged uploads, markers or the
                # check's canary.
                "Resource": f"{bucket_arn(layout.bucket)}/{layout.keys.avatar_pattern()}",
                "Condition": {"StringEquals": {"AWS:SourceArn": distribution_arn}},
            }
        )
    return _policy(*statements)


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


def distribution_arn_problem(arn: str) -> str | None:
    """Why `arn` is not a CloudFront distribution's ARN, or None."""
    if not _DISTRIBUTION_ARN.fullmatch(arn):
        return (
            "must be a distribution ARN such as "
            "arn:aws:cloudfront::123456789012:distribution/EDFDVBD6EXAMPLE"
        )
    return None


def cloudfront(layout: Layout, region: str | None) -> dict[str, Any]:
    """The distribution's parts for avatars, each in the shape its `aws cloudfront` command
    takes; `<...-id>` marks an id AWS assigns when the part before it is created."""
    bucket, key_prefix = layout.bucket, layout.key_prefix
    name = f"avatar-signer-{bucket}"
    origin_id = f"{bucket}-s3"
    return {
        # aws cloudfront create-origin-access-control --origin-access-control-config
        "origin_access_control": {
            "Name": name,
            "Description": "avatar-signer: CloudFront signs every request to the bucket",
            "SigningProtocol": "sigv4",
            "SigningBehavior": "always",
            "OriginAccessControlOriginType": "s3",
        },
        # DistributionConfig.Origins.Items[]: the bucket, reached only through the OAC.
        "origin": {
            "Id": origin_id,
            "DomainName": f"{bucket}.s3.{region or '<region>'}.amazonaws.com",
            "OriginAccessControlId": "<origin-access-control-id>",
            "S3OriginConfig": {"OriginAccessIdentity": ""},
        },
        # aws cloudfront create-cache-policy --cache-policy-config
        "cache_policy": {
            "Name": name,
            "Comment": "avatar-signer: the path alone is the cache key; the signature "
            "parameters (" + ", ".join(SIGNING_PARAMETERS) + ") and cookies are not in it",
            # Stored avatars say `private, max-age=0`; the minimum TTL is what caches them.
            "DefaultTTL": EDGE_TTL_SECONDS,
            "MaxTTL": EDGE_MAX_TTL_SECONDS,
            "MinTTL": EDGE_TTL_SECONDS,
            "ParametersInCacheKeyAndForwardedToOrigin": {
                "EnableAcceptEncodingGzip": False,
                "EnableAcceptEncodingBrotli": False,
                "HeadersConfig": {"HeaderBehavior": "none"},
                "CookiesConfig": {"CookieBehavior": "none"},
                "QueryStringsConfig": {"QueryStringBehavior": "none"},
            },
        },
        # aws cloudfront create-response-headers-policy --response-headers-policy-config
        "response_headers_policy": {
            "Name": name,
            "Comment": "avatar-signer: images only, whatever headers were stored with them",
            "SecurityHeadersConfig": {
                "ContentTypeOptions": {"Override": True},
                "ContentSecurityPolicy": {"ContentSecurityPolicy": IMAGE_CSP, "Override": True},
            },
            "CustomHeadersConfig": {
                "Quantity": 2,
                "Items": [
                    {"Header": "Cache-Control", "Value": VIEWER_CACHE_CONTROL, "Override": True},
                    {"Header": "Content-Disposition", "Value": "inline", "Override": True},
                ],
            },
        },
        # DistributionConfig.CacheBehaviors.Items[] (or its DefaultCacheBehavior).
        "cache_behavior": {
            "PathPattern": f"{key_prefix}*",
            "TargetOriginId": origin_id,
            "ViewerProtocolPolicy": "https-only",
            "AllowedMethods": {
                "Quantity": 2,
                "Items": ["GET", "HEAD"],
                "CachedMethods": {"Quantity": 2, "Items": ["GET", "HEAD"]},
            },
            "TrustedKeyGroups": {"Enabled": True, "Quantity": 1, "Items": ["<key-group-id>"]},
            "CachePolicyId": "<cache-policy-id>",
            "ResponseHeadersPolicyId": "<response-headers-policy-id>",
            "Compress": False,
        },
    }


def documents(
    layout: Layout,
    origins: Sequence[str] = (),
    principals: Principals | None = None,
    distribution_arn: str | None = None,
    region: str | None = None,
) -> dict[str, Any]:
    """Everything `avatar-signer policies` prints (ValueError for a bad origin)."""
    return {
        "uploader_policy": uploader_policy(layout),
        "reader_policy": reader_policy(layout),
        "verifier_policy": verifier_policy(layout),
        "bucket_policy": bucket_policy(layout, principals, distribution_arn),
        "public_access_block": public_access_block(),
        "ownership_controls": ownership_controls(),
        "lifecycle": lifecycle(layout),
        "cors": cors(origins),
        "cloudfront": None if distribution_arn is None else cloudfront(layout, region),
    }


APPLY_HELP = """\
Prints one JSON object. Apply each part with the AWS CLI (jq picks a part out):

  avatar-signer policies --bucket "$BUCKET" --allowed-origin https://app.example.com \\
      --uploader-arn arn:aws:iam::123456789012:user/avatar-uploader \\
      --reader-arn arn:aws:iam::123456789012:user/avatar-reader \\
      --verifier-arn arn:aws:iam::123456789012:user/avatar-verifier > policies.json
  (Roles: give the role ARN; an assumed role's sessions carry it as aws:PrincipalArn.)

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
S3_KEY_PREFIX and S3_STAGING_PREFIX when those are set; UPLOAD_MAX_TTL_SECONDS and
DOWNLOAD_MAX_TTL_SECONDS bound s3:signatureAge as they bound the URLs. Then run
`avatar-signer check` with the service's settings: it proves against the real bucket that
each identity can do its one job and nothing else: the uploader cannot read, the reader
cannot write, the verifier cannot read avatars or write staged uploads, and none can
delete or list.

CloudFront in front of the bucket (--distribution-arn; see docs/cloudfront.md). The
bucket policy above then also lets that distribution, and only it, read the avatars:
apply it after the distribution exists (its ARN is in the condition). The parts:

  # The key CloudFront checks signatures with: its public half, in a key group.
  openssl pkey -in cloudfront-private.pem -pubout -out cloudfront-public.pem
  aws cloudfront create-public-key --public-key-config "$(jq -n \\
      --arg key "$(cat cloudfront-public.pem)" \\
      '{CallerReference: "avatar-signer-1", Name: "avatar-signer-1", EncodedKey: $key}')"
  aws cloudfront create-key-group --key-group-config \\
      '{"Name": "avatar-signer", "Items": ["<public-key-id>"]}'
  #   -> CLOUDFRONT_KEY_PAIR_ID is <public-key-id>; the key group id goes in the behavior.

  aws cloudfront create-origin-access-control --origin-access-control-config \\
      "$(jq -c .cloudfront.origin_access_control policies.json)"
  aws cloudfront create-cache-policy --cache-policy-config \\
      "$(jq -c .cloudfront.cache_policy policies.json)"
  aws cloudfront create-response-headers-policy --response-headers-policy-config \\
      "$(jq -c .cloudfront.response_headers_policy policies.json)"

  # Into the distribution's config (aws cloudfront get-distribution-config, edit,
  # update-distribution): .cloudfront.origin under Origins, .cloudfront.cache_behavior
  # under CacheBehaviors (or as the DefaultCacheBehavior), each <...-id> replaced by the
  # id its create command printed.

The cache policy keeps the signature parameters and cookies out of the cache key (one
cached copy per avatar, however it was signed); CloudFront still checks every signature.
The response headers policy adds X-Content-Type-Options: nosniff and a sandboxing CSP,
and replaces whatever Cache-Control and Content-Disposition an uploader stored on the
object. `avatar-signer check` verifies the CloudFront key; it cannot reach CloudFront.
"""
