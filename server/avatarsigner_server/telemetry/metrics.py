"""Prometheus metrics, served over HTTP on METRICS_HOST:METRICS_PORT (`/metrics`) from the
server's event loop (see metrics_http for the endpoint's bounds).

    avatarsigner_rpcs_total{method, code}                 AvatarSigner calls by final status
    avatarsigner_rpc_duration_seconds{method}             time in the handler (histogram)
    avatarsigner_calls_shed_total{method, reason}         calls refused before any work:
                                                          expired (too little of the
                                                          deadline left), draining
                                                          (shutting down: UNAVAILABLE)
    avatarsigner_call_time_left_seconds{method}           deadline left when the handler
                                                          starts (histogram; calls with a
                                                          deadline): low = calls waited
    avatarsigner_calls_answered_late_total{method}        answered after their deadline:
                                                          work nobody waited for
    avatarsigner_calls_in_flight                          calls in a handler now
    avatarsigner_urls_signed_total{kind, caller}          kind: upload | download | cookies
    avatarsigner_uploads_confirmed_total{caller}          uploads ConfirmUpload published
    avatarsigner_avatars_deleted_total{caller, had_avatar} DeleteAvatar calls that ran
    avatarsigner_denials_total{method, reason}            reason: a fixed word (see audit)
    avatarsigner_credentials_expiry_seconds{identity}     seconds until the identity's
                                                          current credentials expire;
                                                          +Inf for static keys (never)
    avatarsigner_credentials_valid{identity}              1 while S3 accepts the pair in
                                                          force, 0 once it refuses it
    avatarsigner_rate_limit_store_unreachable_total{reason}
                                                          checks the shared store did not
                                                          decide: timeout | connection |
                                                          error | skipped
    avatarsigner_rate_limit_store_reachable               1 while it decides, 0 from a
                                                          failed check to the next good one
                                                          (only with RATE_LIMIT_REDIS_URL)
    avatarsigner_config_reload_failures_total{file}       reloads of the callers, end-user
                                                          key or TLS files that failed (the
                                                          old version stayed in force)
    avatarsigner_config_loaded_timestamp_seconds{file}    when the version in force loaded
    avatarsigner_config_loaded_info{file, sha256}         1, labelled with that version's
                                                          fingerprint (non-secret files)
    avatarsigner_log_lines_dropped_total{class}           log lines this process dropped
                                                          because stderr was not read fast
                                                          enough; class: upload | audit |
                                                          other (see telemetry.logs)
    process_*, python_gc_*, python_info                   the usual process metrics

Health and reflection calls are not counted. Every label value comes from a small fixed set
(RPC names, status codes, reasons) or from the callers file (caller names), never from a
request. Each `Metrics` has its own registry, so several servers can live in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .logs import dropped_lines
from .metrics_http import MetricsEndpoint

# identity name -> seconds until its current credentials expire (math.inf: never; 0: none)
CredentialExpiry = Callable[[], Mapping[str, float]]
# identity name -> whether S3 last accepted its key pair in force
CredentialValidity = Callable[[], Mapping[str, bool]]
# Whether the shared rate-limit store decided the last check.
StoreReachable = Callable[[], bool]


@dataclass(frozen=True)
class LoadedFiles:
    """One reloadable set of files: the version in force, since when, failed reloads."""

    sha256: str  # fingerprint of its non-secret files ("" when it has none)
    loaded_at: float  # Unix time
    reload_failures: int


# file set name (callers, end_user_keys, tls) -> its LoadedFiles
LoadedFilesSource = Callable[[], Mapping[str, LoadedFiles]]

# Deadline left at the handler: a 1 s deadline that arrives with 0.1 s left waited 0.9 s.
TIME_LEFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip

log = logging.getLogger("avatarsigner.metrics")


class _CredentialExpiryCollector(Collector):
    """Asks the callables at scrape time, so the gauges are never stale."""

    def __init__(self) -> None:
        self.source: CredentialExpiry | None = None
        self.validity: CredentialValidity | None = None

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "avatarsigner_credentials_expiry_seconds",
            "Seconds until each identity's current signing credentials expire "
            "(+Inf: static keys that never expire; 0: none usable now).",
            labels=["identity"],
        )
        if self.source is not None:
            try:
                expiries = dict(self.source())
            except Exception as error:  # noqa: BLE001 - a scrape must not fail for this
                log.warning("credential expiry unknown", extra={"exc_type": type(error).__name__})
                expiries = {}
            for identity, seconds in sorted(expiries.items()):
                gauge.add_metric([identity], max(0.0, seconds))
        yield gauge
        if self.validity is not None:
            valid = GaugeMetricFamily(
                "avatarsigner_credentials_valid",
                "1 while S3 accepts the identity's key pair in force, 0 once it refuses it "
                "(revoked, deleted): the identity cannot sign until the pair is replaced.",
                labels=["identity"],
            )
            for identity, accepted in sorted(self.validity().items()):
                valid.add_metric([identity], 1.0 if accepted else 0.0)
            yield valid


class _StoreReachableCollector(Collector):
    """The shared store's reachability, asked at scrape time; nothing without a store."""

    def __init__(self) -> None:
        self.source: StoreReachable | None = None

    def collect(self) -> Iterator[Metric]:
        if self.source is None:
            return
        gauge = GaugeMetricFamily(
            "avatarsigner_rate_limit_store_reachable",
            "1 while the shared rate-limit store decides checks; 0 from a check it did not "
            "decide until the next one it does.",
        )
        gauge.add_metric([], 1.0 if self.source() else 0.0)
        yield gauge


class _LoadedFilesCollector(Collector):
    """The reloadable files' versions and failed reloads, asked at scrape time."""

    def __init__(self) -> None:
        self.source: LoadedFilesSource | None = None

    def collect(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "avatarsigner_config_reload_failures",
            "Reloads of a file set (callers, end_user_keys, tls) that failed; the version "
            "in force stayed.",
            labels=["file"],
        )
        loaded_at = GaugeMetricFamily(
            "avatarsigner_config_loaded_timestamp_seconds",
            "When the version of the file set in force was loaded (Unix time).",
            labels=["file"],
        )
        info = GaugeMetricFamily(
            "avatarsigner_config_loaded_info",
            "1 for the version of each file set in force; sha256: its fingerprint (first 16 "
            "hex digits; secret files left out).",
            labels=["file", "sha256"],
        )
        for name, files in sorted((self.source() if self.source else {}).items()):
            failures.add_metric([name], files.reload_failures)
            loaded_at.add_metric([name], files.loaded_at)
            info.add_metric([name, files.sha256], 1)
        yield failures
        yield loaded_at
        yield info


class _DroppedLinesCollector(Collector):
    """The log lines this process dropped (they are counted by the log handler, per
    process, so several servers in one process report the same figures)."""

    def collect(self) -> Iterator[Metric]:
        dropped = CounterMetricFamily(
            "avatarsigner_log_lines_dropped",
            "Log lines dropped because stderr was not read fast enough, by class (upload: "
            "audit lines for uploads, dropped last; audit: other audit lines; other).",
            labels=["class"],
        )
        for line_class, count in dropped_lines().items():
            dropped.add_metric([line_class], count)
        yield dropped


class Metrics:
    """The service's counters and histograms, and the HTTP endpoint that serves them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._calls = Counter(
            "avatarsigner_rpcs",
            "AvatarSigner calls by RPC and final gRPC status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "avatarsigner_rpc_duration_seconds",
            "Time from the call reaching the server's handlers to its answer, by RPC.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._urls = Counter(
            "avatarsigner_urls_signed",
            "Presigned URLs (and viewer cookie sets) handed out, by kind (upload, download, "
            "cookies) and caller.",
            ["kind", "caller"],
            registry=self.registry,
        )
        self._confirmed = Counter(
            "avatarsigner_uploads_confirmed",
            "Uploads ConfirmUpload verified and published (or confirmed again), by caller.",
            ["caller"],
            registry=self.registry,
        )
        self._deleted = Counter(
            "avatarsigner_avatars_deleted",
            "DeleteAvatar calls that ran, by caller and whether there was an avatar.",
            ["caller", "had_avatar"],
            registry=self.registry,
        )
        self._denials = Counter(
            "avatarsigner_denials",
            "Calls refused, by RPC and reason (unknown_token, rpc_not_allowed, ...).",
            ["method", "reason"],
            registry=self.registry,
        )
        self._shed = Counter(
            "avatarsigner_calls_shed",
            "Calls refused before any work, by RPC and reason: expired (less than "
            "CALL_MIN_TIME_LEFT_MS of the deadline left), draining (shutting down).",
            ["method", "reason"],
            registry=self.registry,
        )
        self._time_left = Histogram(
            "avatarsigner_call_time_left_seconds",
            "Deadline left when the call's handler starts, by RPC (calls with a deadline).",
            ["method"],
            buckets=TIME_LEFT_BUCKETS,
            registry=self.registry,
        )
        self._late = Counter(
            "avatarsigner_calls_answered_late",
            "Calls answered after their deadline had passed (the caller had given up), by RPC.",
            ["method"],
            registry=self.registry,
        )
        self._in_flight = Gauge(
            "avatarsigner_calls_in_flight",
            "AvatarSigner calls in a handler now.",
            registry=self.registry,
        )
        self._per_time_left: dict[str, Any] = {}
        self._expiry = _CredentialExpiryCollector()
        self.registry.register(self._expiry)
        self._store_unreachable = Counter(
            "avatarsigner_rate_limit_store_unreachable",
            "Rate-limit checks the shared store did not decide, by reason (timeout, "
            "connection, error, skipped: waiting to retry after a failure).",
            ["reason"],
            registry=self.registry,
        )
        self._store_reachable = _StoreReachableCollector()
        self.registry.register(self._store_reachable)
        self._files = _LoadedFilesCollector()
        self.registry.register(self._files)
        self.registry.register(_DroppedLinesCollector())
        self._http = MetricsEndpoint(lambda: generate_latest(self.registry), CONTENT_TYPE_LATEST)
        self._per_call: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}
        self._per_url: dict[tuple[str, str], Any] = {}

    # -- what the service reports ----------------------------------------------------------

    def watch_credentials(
        self, source: CredentialExpiry, validity: CredentialValidity | None = None
    ) -> None:
        """Feed the expiry gauge from `source` (and the validity gauge from `validity`),
        asked at every scrape."""
        self._expiry.source = source
        self._expiry.validity = validity

    def watch_store(self, reachable: StoreReachable) -> None:
        """Feed the store reachability gauge from `reachable`, asked at every scrape."""
        self._store_reachable.source = reachable

    def store_unreachable(self, reason: str) -> None:
        """One check the shared store did not decide (called on the event loop; cheap)."""
        self._store_unreachable.labels(reason).inc()

    def watch_files(self, source: LoadedFilesSource) -> None:
        """Report the reloadable files' versions and failures from `source`, at every scrape."""
        self._files.source = source

    def call(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        children = self._per_call.get((method, code))
        if children is None:  # labels() costs a lock and a lookup: once per pair
            children = (self._calls.labels(method, code.name), self._latency.labels(method))
            self._per_call[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)

    def url_signed(self, kind: str, caller: str, count: int = 1) -> None:
        child = self._per_url.get((kind, caller))
        if child is None:
            child = self._per_url[(kind, caller)] = self._urls.labels(kind, caller)
        child.inc(count)

    def upload_confirmed(self, caller: str) -> None:
        self._confirmed.labels(caller).inc()

    def avatar_deleted(self, caller: str, had_avatar: bool) -> None:
        self._deleted.labels(caller, "true" if had_avatar else "false").inc()

    def denied(self, method: str, reason: str) -> None:
        self._denials.labels(method, reason).inc()

    def shed(self, method: str, reason: str) -> None:
        self._shed.labels(method, reason).inc()

    def time_left(self, method: str, seconds: float) -> None:
        child = self._per_time_left.get(method)
        if child is None:
            child = self._per_time_left[method] = self._time_left.labels(method)
        child.observe(seconds)

    def answered_late(self, method: str) -> None:
        self._late.labels(method).inc()

    def watch_in_flight(self, count: Callable[[], int]) -> None:
        """Read the in-flight gauge from `count` at every scrape."""
        self._in_flight.set_function(count)

    # -- the endpoint ----------------------------------------------------------------------

    async def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port from the running loop; the bound port (OSError if busy)."""
        return await self._http.start(host, port)

    async def stop(self) -> None:
        """Stop serving and close the port."""
        await self._http.stop()
