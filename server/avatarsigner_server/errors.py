"""The errors a caller (or the server's own configuration) can cause, as one family.

Every error a handler reports on purpose is a `ServiceError`. Each names its gRPC status
code as a plain string (`code`), so the layers that raise them (signing, credentials,
access) need no gRPC; `api.status` turns an error into a gRPC status with rich details
(google.rpc.Status) in one place. Messages are written for the caller: they name the
field and the rule, never echo secrets, tokens or URLs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path (``user_ids[3]``, ``ttl``) and what rule it broke."""

    field: str
    description: str


ERROR_DOMAIN = "avatarsigner.v1"
"""google.rpc.ErrorInfo.domain of the reasons this service gives."""


class ServiceError(Exception):
    """Base of every error a handler reports to its caller on purpose."""

    #: The gRPC status code's name (a `grpc.StatusCode` member name).
    code: str = "UNKNOWN"

    def __init__(
        self, message: str, reason: str | None = None, *, error_info: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        # A short, fixed snake_case word for audit lines and metrics labels (never a value
        # from the request); defaults to the status code's name.
        self.reason = reason or self.code.lower()
        # A fixed UPPER_SNAKE word a program can switch on (google.rpc.ErrorInfo.reason in
        # ERROR_DOMAIN), or None when the status code says enough.
        self.error_info = error_info


class InvalidArgument(ServiceError):
    """INVALID_ARGUMENT: one violation per bad field (a google.rpc.BadRequest).

    At most MAX_REPORTED violations travel to the caller, with the total count in the
    message and in an ErrorInfo (reason FIELD_VIOLATIONS, metadata `count`): a batch of a
    thousand bad ids must not make a status trailer larger than clients accept (some refuse
    metadata over 8 KiB).
    """

    code = "INVALID_ARGUMENT"
    MAX_REPORTED = 10

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        found = tuple(violations)
        if not found:
            raise ValueError("InvalidArgument needs at least one violation")
        self.count = len(found)
        self.violations = found[: self.MAX_REPORTED]
        summary = "; ".join(f"{v.field}: {v.description}" for v in found[:3])
        if self.count > 3:
            summary += f"; and {self.count - 3} more ({self.count} bad fields in all)"
        super().__init__(f"invalid request: {summary}", error_info="FIELD_VIOLATIONS")


class CredentialsUnavailable(ServiceError):
    """FAILED_PRECONDITION: the server's own credentials cannot sign what was asked."""

    code = "FAILED_PRECONDITION"


class NotConfigured(ServiceError):
    """FAILED_PRECONDITION: the RPC needs a feature this server is not configured for."""

    code = "FAILED_PRECONDITION"


class Unauthenticated(ServiceError):
    code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code = "PERMISSION_DENIED"


class RateLimited(ServiceError):
    """RESOURCE_EXHAUSTED, saying (google.rpc.RetryInfo) when a retry can succeed."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, reason: str, retry_after_seconds: float) -> None:
        super().__init__(message, reason)
        self.retry_after_seconds = retry_after_seconds


class UploadRefused(ServiceError):
    """FAILED_PRECONDITION: ConfirmUpload does not publish this upload, and says why."""

    code = "FAILED_PRECONDITION"

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message, f"upload_{why.lower()}", error_info=why)


class DeletionRefused(ServiceError):
    """FAILED_PRECONDITION: DeleteAvatar cannot run here, and says why."""

    code = "FAILED_PRECONDITION"

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message, f"delete_{why.lower()}", error_info=why)


class Overloaded(ServiceError):
    """RESOURCE_EXHAUSTED: the server cannot take this work now; a retry may succeed."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message, why.lower(), error_info=why)


class DeadlineExceeded(ServiceError):
    """DEADLINE_EXCEEDED: the work did not finish in the time it was given."""

    code = "DEADLINE_EXCEEDED"


class Unavailable(ServiceError):
    """UNAVAILABLE: a dependency (S3) did not answer as it must; a retry may succeed."""

    code = "UNAVAILABLE"

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message, why.lower(), error_info=why)
