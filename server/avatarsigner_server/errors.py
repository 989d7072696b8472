"""The errors a caller (or the server's own configuration) can cause, as one family.

Every error a handler raises on purpose is a `ServiceError`; `abort_with()` turns it into a
gRPC status with rich details (google.rpc.Status) in one place. Messages are written for the
caller: they name the field and the rule, never echo secrets, tokens or URLs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path (``user_ids[3]``, ``ttl``) and what rule it broke."""

    field: str
    description: str


class ServiceError(Exception):
    """Base of every error a handler reports to its caller on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # A short, fixed snake_case word for audit lines and metrics labels (never a value
        # from the request); defaults to the status code's name.
        self.reason = reason or self.code.name.lower()

    def details(self) -> list[any_pb2.Any]:
        return []

    def to_status(self) -> grpc.Status:
        status = status_pb2.Status(code=getattr(code_pb2, self.code.name), message=self.message)
        status.details.extend(self.details())
        return rpc_status.to_status(status)


class InvalidArgument(ServiceError):
    """INVALID_ARGUMENT with a google.rpc.BadRequest: one violation per bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations = tuple(violations)
        if not self.violations:
            raise ValueError("InvalidArgument needs at least one violation")
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations[:5])
        more = len(self.violations) - 5
        if more > 0:
            summary += f"; and {more} more"
        super().__init__(f"invalid request: {summary}")

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in self.violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        return [detail]


class CredentialsUnavailable(ServiceError):
    """FAILED_PRECONDITION: the server's own credentials cannot sign what was asked."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class RateLimited(ServiceError):
    """RESOURCE_EXHAUSTED with a google.rpc.RetryInfo saying when a retry can succeed."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, reason: str, retry_after_seconds: float) -> None:
        super().__init__(message, reason)
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[any_pb2.Any]:
        delay = duration_pb2.Duration()
        # Whole milliseconds, rounded up: retrying at the advertised moment must succeed.
        delay.FromMilliseconds(max(1, math.ceil(self.retry_after_seconds * 1000)))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return [detail]


async def abort_with(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    """End the call with the error's status (raises, as context.abort does)."""
    await context.abort_with_status(error.to_status())
