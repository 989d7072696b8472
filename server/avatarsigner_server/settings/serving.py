"""How the server takes calls and lets them go: the drain at shutdown, connection age and
keepalive, and shedding calls whose callers have given up.

    SHUTDOWN_DRAIN_SECONDS                 5    after SIGTERM: health NOT_SERVING, calls still
                                                served, so balancers and probes move away
    GRPC_MAX_CONNECTION_AGE_SECONDS        300  a connection is closed (GOAWAY, ±10 % jitter)
                                                after this long, so clients rebalance over
                                                replicas; 0 = never
    GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS  30   calls on an aged connection get this long to
                                                finish; at least CONFIRM_TIMEOUT_SECONDS
    GRPC_KEEPALIVE_SECONDS                 60   the server pings a connection quiet this long;
                                                0 = gRPC's default (2 h)
    GRPC_KEEPALIVE_TIMEOUT_SECONDS         20   ... and closes it when no answer comes in time
    CALL_MIN_TIME_LEFT_MS                  30   a call with less time than this left of its
                                                deadline when its handler starts is refused
                                                (DEADLINE_EXCEEDED), not worked on; 0 = only
                                                calls whose deadline has passed
    GRPC_MAX_PENDING_CALLS                 10000  calls gRPC may hold before any handler takes
                                                them; past it (up to twice as many) gRPC core
                                                cancels new calls at random, which only the
                                                clients see (docs/operating.md, Overload)
"""

from __future__ import annotations

from dataclasses import dataclass

from .env import Env, SettingsError

DEFAULT_DRAIN_SECONDS = 5.0
DEFAULT_CONNECTION_AGE_SECONDS = 300
DEFAULT_CONNECTION_AGE_GRACE_SECONDS = 30
DEFAULT_KEEPALIVE_SECONDS = 60
DEFAULT_KEEPALIVE_TIMEOUT_SECONDS = 20
DEFAULT_MIN_TIME_LEFT_MS = 30
DEFAULT_MAX_PENDING_CALLS = 10_000
DAY = 86_400


@dataclass(frozen=True)
class Serving:
    """The settings above, in seconds (time left in seconds too); 0 means off where it may."""

    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    connection_age_seconds: int = DEFAULT_CONNECTION_AGE_SECONDS
    connection_age_grace_seconds: int = DEFAULT_CONNECTION_AGE_GRACE_SECONDS
    keepalive_seconds: int = DEFAULT_KEEPALIVE_SECONDS
    keepalive_timeout_seconds: int = DEFAULT_KEEPALIVE_TIMEOUT_SECONDS
    min_time_left_seconds: float = DEFAULT_MIN_TIME_LEFT_MS / 1000
    max_pending_calls: int = DEFAULT_MAX_PENDING_CALLS


def serving(env: Env, longest_call_seconds: float) -> Serving:
    """The settings, checked; `longest_call_seconds` is the longest a handler may run (the
    confirm timeout): an aged connection must give a call in flight that long."""
    age = env.integer("GRPC_MAX_CONNECTION_AGE_SECONDS", DEFAULT_CONNECTION_AGE_SECONDS, 0, DAY)
    grace = env.integer(
        "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", DEFAULT_CONNECTION_AGE_GRACE_SECONDS, 1, DAY
    )
    if age and grace < longest_call_seconds:
        raise SettingsError(
            "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS",
            f"must be at least CONFIRM_TIMEOUT_SECONDS ({longest_call_seconds:g}): a"
            " ConfirmUpload on an aged connection would be cut off",
        )
    return Serving(
        drain_seconds=env.number("SHUTDOWN_DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS, 0.0, 600.0),
        connection_age_seconds=age,
        connection_age_grace_seconds=grace,
        keepalive_seconds=env.integer("GRPC_KEEPALIVE_SECONDS", DEFAULT_KEEPALIVE_SECONDS, 0, DAY),
        keepalive_timeout_seconds=env.integer(
            "GRPC_KEEPALIVE_TIMEOUT_SECONDS", DEFAULT_KEEPALIVE_TIMEOUT_SECONDS, 1, 3600
        ),
        min_time_left_seconds=env.integer(
            "CALL_MIN_TIME_LEFT_MS", DEFAULT_MIN_TIME_LEFT_MS, 0, 60_000
        )
        / 1000,
        max_pending_calls=env.integer(
            "GRPC_MAX_PENDING_CALLS", DEFAULT_MAX_PENDING_CALLS, 1, 1_000_000
        ),
    )
