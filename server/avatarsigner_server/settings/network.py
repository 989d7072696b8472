"""Where the server listens and how many processes serve: GRPC_HOST, METRICS_HOST, the
ports, WORKERS and how long a silent worker is given (WORKER_HEARTBEAT_TIMEOUT_SECONDS)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .env import Env, SettingsError

DEFAULT_GRPC_HOST = "0.0.0.0"  # noqa: S104 - a service in a pod listens on all interfaces
DEFAULT_GRPC_PORT = 50051
DEFAULT_METRICS_PORT = 9464
MAX_WORKERS = 64
# With WORKERS > 1 each worker's event loop writes a heartbeat to the supervisor this often
# (app.workers); a worker silent for longer than WORKER_HEARTBEAT_TIMEOUT_SECONDS is killed.
# The default timeout leaves room for the pauses of a busy, shared machine (about 1 s seen,
# worst gap between heartbeats under overload 0.5 s); the minimum is two heartbeats.
WORKER_HEARTBEAT_SECONDS = 0.5
DEFAULT_WORKER_HEARTBEAT_TIMEOUT_SECONDS = 5.0
MIN_WORKER_HEARTBEAT_TIMEOUT_SECONDS = 2 * WORKER_HEARTBEAT_SECONDS
MAX_WORKER_HEARTBEAT_TIMEOUT_SECONDS = 600.0

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def host_port(host: str, port: int) -> str:
    """host:port for binding and logs; an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Listen:
    grpc_host: str
    metrics_host: str
    grpc_port: int
    metrics_port: int
    health_port: int | None
    workers: int
    worker_heartbeat_timeout_seconds: float = DEFAULT_WORKER_HEARTBEAT_TIMEOUT_SECONDS


def _listen_host(env: Env, name: str, default: str) -> str:
    """An IP address (IPv6 with or without brackets) or a host name; kept bare."""
    value = env.raw(name)
    if value is None:
        return default
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise SettingsError(name, "must be an IP address or a host name") from None
    return host


def listen(env: Env) -> Listen:
    """The hosts, the three ports and the number of workers, checked against each other."""
    grpc_port = env.integer("GRPC_PORT", DEFAULT_GRPC_PORT, 0, 65535)
    metrics_port = env.integer("METRICS_PORT", DEFAULT_METRICS_PORT, 0, 65535)
    if grpc_port and grpc_port == metrics_port:
        raise SettingsError("METRICS_PORT", "must differ from GRPC_PORT")
    health_port = None
    if env.raw("HEALTH_PORT") is not None:
        health_port = env.integer("HEALTH_PORT", 0, 0, 65535)
        if health_port and health_port in (grpc_port, metrics_port):
            raise SettingsError("HEALTH_PORT", "must differ from GRPC_PORT and METRICS_PORT")

    workers = env.integer("WORKERS", 1, 1, MAX_WORKERS)
    if workers > 1 and grpc_port == 0:
        raise SettingsError("WORKERS", "needs a fixed GRPC_PORT: the workers share one port")
    # Each worker serves its own metrics: worker i on METRICS_PORT + i (0: each an ephemeral one).
    last_metrics_port = metrics_port + workers - 1
    if workers > 1 and metrics_port and last_metrics_port > 65535:
        raise SettingsError("METRICS_PORT", "plus WORKERS - 1 must not exceed 65535")
    if workers > 1 and metrics_port and metrics_port <= grpc_port <= last_metrics_port:
        raise SettingsError(
            "METRICS_PORT",
            f"the workers' metrics ports {metrics_port}-{last_metrics_port} include GRPC_PORT",
        )
    if health_port and metrics_port and metrics_port <= health_port <= last_metrics_port:
        raise SettingsError(
            "HEALTH_PORT",
            f"must not be one of the metrics ports {metrics_port}-{last_metrics_port}",
        )
    heartbeat_timeout = env.number(
        "WORKER_HEARTBEAT_TIMEOUT_SECONDS",
        DEFAULT_WORKER_HEARTBEAT_TIMEOUT_SECONDS,
        MIN_WORKER_HEARTBEAT_TIMEOUT_SECONDS,
        MAX_WORKER_HEARTBEAT_TIMEOUT_SECONDS,
    )
    grpc_host = _listen_host(env, "GRPC_HOST", DEFAULT_GRPC_HOST)
    # Metrics need no credentials: they may listen elsewhere (e.g. 127.0.0.1 for a sidecar).
    metrics_host = _listen_host(env, "METRICS_HOST", grpc_host)
    return Listen(
        grpc_host, metrics_host, grpc_port, metrics_port, health_port, workers, heartbeat_timeout
    )
