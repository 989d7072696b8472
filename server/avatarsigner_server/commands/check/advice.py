"""What to fix, in words, for each way the least-privilege check can fail.

Each function returns the DETAIL text of one FAIL row: what S3 showed, and which policy
statement or setting to change. Nothing here holds a secret or a URL.
"""

from __future__ import annotations

from collections.abc import Sequence


def rejected_key_pair(identity: str, reply: object) -> str:
    return f"S3 rejects the {identity}'s key pair ({reply}): wrong or deleted key"


def uploader_cannot_upload(reply: object, objects: str) -> str:
    return (
        f"the uploader may not upload ({reply}): its IAM policy needs "
        f"s3:PutObject on {objects}"
    )


def uploader_can_read(objects: str) -> str:
    return (
        "the uploader can read objects: remove s3:GetObject from the uploader's "
        f"IAM policy (its statement on {objects} must allow only "
        "s3:PutObject and s3:AbortMultipartUpload)"
    )


UPLOADER_GET_AUTHORIZED = (
    "the uploader's GET was authorized (404, no such key): remove s3:GetObject "
    "from the uploader's IAM policy"
)


def reader_cannot_read(reply: object, objects: str) -> str:
    return f"the reader may not read ({reply}): its IAM policy needs s3:GetObject on {objects}"


def reader_can_write(reply: object, objects: str) -> str:
    return (
        f"the reader can overwrite objects ({reply}; the canary was replaced): "
        "remove s3:PutObject from the reader's IAM policy (its statement on "
        f"{objects} must allow only s3:GetObject)"
    )


def public(what: str, reply: object) -> str:
    return (
        f"anyone can {what} without a signature ({reply}): "
        "turn on Block Public Access and drop public grants and policy statements "
        "(see `avatar-signer policies`)"
    )


def can_delete(identity: str, reply: object) -> str:
    return (
        f"the {identity} can delete objects ({reply}): remove s3:DeleteObject (or "
        f"s3:* / s3:Delete*) from the {identity}'s IAM policy"
    )


def can_list(identity: str, reply: object, bucket: str) -> str:
    return (
        f"the {identity} can list the bucket ({reply}): remove s3:ListBucket on "
        f"{bucket} from the {identity}'s IAM policy (avatars are fetched by key, never listed)"
    )


def wrong_region(actual: str, region: str) -> str:
    return f"the bucket is in {actual}, not AWS_REGION={region}: set AWS_REGION={actual}"


def redirected(reply: object, region: str) -> str:
    return f"S3 redirected ({reply}): the bucket is not in AWS_REGION={region}"


def wrong_hosts(hosts: Sequence[str], expected: str) -> str:
    return f"hosts {sorted(hosts)}, expected https://{expected}"


SWAPPED = (
    "the uploader's key reads but cannot write and the reader's writes but "
    "cannot read: the S3_UPLOAD_* and S3_READ_* credentials look swapped"
)


def store_unreachable(address: object, reason: str, detail: str) -> str:
    """The rate-limit store did not run a check (`reason`: timeout, connection, error)."""
    if reason == "timeout":
        fix = (
            "is it reachable from here, and does it answer within "
            "RATE_LIMIT_REDIS_TIMEOUT_SECONDS?"
        )
    elif reason == "connection":
        fix = "is RATE_LIMIT_REDIS_URL's host and port right, and reachable from here?"
    else:
        fix = (
            "check the password (RATE_LIMIT_REDIS_PASSWORD_FILE or the URL's), the user's "
            "ACL (EVALSHA, SCRIPT LOAD, INFO) and that the server is Redis >= 5 or Valkey"
        )
    return f"{address} did not run a rate-limit check ({reason}: {detail}): {fix}"
