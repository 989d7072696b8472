"""Errors -> gRPC status, in one place.

Each `ServiceError` becomes a status with its code, its message and the google.rpc details
that say more to a program: an ErrorInfo with a fixed reason word (domain avatarsigner.v1)
where the error has one, a BadRequest with the field violations, a RetryInfo with the time
until a retry can succeed (RESOURCE_EXHAUSTED from a rate limit, UNAVAILABLE while the
rate-limit store cannot decide).
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import ERROR_DOMAIN, InvalidArgument, RateLimited, ServiceError, Unavailable


def status_code(error: ServiceError) -> grpc.StatusCode:
    """The grpc.StatusCode the error names."""
    return grpc.StatusCode[error.code]


def _packed(message: Message) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def details(error: ServiceError) -> list[any_pb2.Any]:
    """The google.rpc detail messages that go with the error."""
    found = []
    if error.error_info is not None:
        info = error_details_pb2.ErrorInfo(reason=error.error_info, domain=ERROR_DOMAIN)
        if isinstance(error, InvalidArgument):
            info.metadata["count"] = str(error.count)  # the BadRequest holds the first few
        found.append(_packed(info))
    return found + _specific(error)


def _specific(error: ServiceError) -> list[any_pb2.Any]:
    if isinstance(error, InvalidArgument):
        return [
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        ]
    retry_after = (
        error.retry_after_seconds if isinstance(error, RateLimited | Unavailable) else None
    )
    if retry_after is not None:
        delay = duration_pb2.Duration()
        # Whole milliseconds, rounded up: retrying at the advertised moment must succeed.
        delay.FromMilliseconds(max(1, math.ceil(retry_after * 1000)))
        return [_packed(error_details_pb2.RetryInfo(retry_delay=delay))]
    return []


def to_status(error: ServiceError) -> grpc.Status:
    """The error as a grpc.Status carrying a google.rpc.Status in its trailers."""
    status = status_pb2.Status(code=getattr(code_pb2, error.code), message=error.message)
    status.details.extend(details(error))
    return rpc_status.to_status(status)


async def abort_with(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    """End the call with the error's status (raises, as context.abort does)."""
    await context.abort_with_status(to_status(error))
