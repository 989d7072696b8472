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


class ServiceError(Exception):
    """Base of every error a handler reports to its caller on purpose."""

    #: The gRPC status code's name (a `grpc.StatusCode` member name).
    code: str = "UNKNOWN"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # A short, fixed snake_case word for audit lines and metrics labels (never a value
        # from the request); defaults to the status code's name.
        self.reason = reason or self.code.lower()


class InvalidArgument(ServiceError):
    """INVALID_ARGUMENT: one violation per bad field (a google.rpc.BadRequest)."""

    code = "INVALID_ARGUMENT"

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations = tuple(violations)
        if not self.violations:
            raise ValueError("InvalidArgument needs at least one violation")
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations[:5])
        more = len(self.violations) - 5
        if more > 0:
            summary += f"; and {more} more"
        super().__init__(f"invalid request: {summary}")


class CredentialsUnavailable(ServiceError):
    """FAILED_PRECONDITION: the server's own credentials cannot sign what was asked."""

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


class Unavailable(ServiceError):
    """UNAVAILABLE: something the service needs cannot answer now (the rate-limit store, in
    closed mode); a google.rpc.RetryInfo says when a retry may succeed."""

    code = "UNAVAILABLE"

    def __init__(self, message: str, reason: str, retry_after_seconds: float) -> None:
        super().__init__(message, reason)
        self.retry_after_seconds = retry_after_seconds
