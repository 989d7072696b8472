"""What to fix, in words, for each way the least-privilege check can fail.

Each function returns the DETAIL text of one FAIL row: what S3 showed, and which policy
statement or setting to change. Nothing here holds a secret or a URL.
"""

from __future__ import annotations

from collections.abc import Sequence


def rejected_key_pair(identity: str, reply: object) -> str:
    return f"S3 rejects the {identity}'s key pair ({reply}): wrong or deleted key"


_VERBS = {"s3:GetObject": "read", "s3:PutObject": "write"}


def may_not(identity: str, action: str, what: str, arn: str, reply: object) -> str:
    """The identity was refused what its one job needs."""
    return (
        f"the {identity} may not {_VERBS[action]} {what} ({reply}): its IAM policy needs "
        f"{action} on {arn}"
    )


def can_read(identity: str, what: str, arn: str, reply: object) -> str:
    """The identity can read what it must not (a 404 too: the GET was authorized)."""
    return (
        f"the {identity} can read {what} ({reply}): remove s3:GetObject from the "
        f"{identity}'s IAM policy (no statement may allow it on {arn})"
    )


def can_write(identity: str, what: str, arn: str, reply: object) -> str:
    """The identity can write what it must not."""
    return (
        f"the {identity} can overwrite objects: {what} ({reply}): remove s3:PutObject from "
        f"the {identity}'s IAM policy (no statement may allow it on {arn})"
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


VERSIONED = (
    "the bucket keeps old versions (versioning is on): a deleted avatar would stay in it; "
    "set DELETE_OLD_VERSIONS=true and apply the verifier policy of "
    "`avatar-signer policies --versioned`"
)

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
