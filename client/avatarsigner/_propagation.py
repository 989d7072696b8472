"""The caller's trace context on every call, when the caller uses OpenTelemetry.

OpenTelemetry is not a dependency of this distribution: when `opentelemetry-api` is
installed (a traced service has it), each call carries the current context as the
configured propagators write it (W3C `traceparent`, `tracestate`, `baggage` by default),
so the server's span joins the caller's trace. Without it, or with OTEL_PROPAGATORS naming
a propagator that is not installed, calls carry nothing extra.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping

Inject = Callable[[MutableMapping[str, str]], None]
_inject: Inject | None = None
_looked_up = False


def _injector() -> Inject | None:
    """opentelemetry.propagate.inject, imported on first use (it reads OTEL_PROPAGATORS)."""
    global _inject, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            from opentelemetry.propagate import inject
        except (ImportError, ValueError):  # not installed, or a propagator that is not
            return None
        _inject = inject
    return _inject


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC metadata pairs; () outside a trace or without
    OpenTelemetry."""
    inject = _injector()
    if inject is None:
        return ()
    carrier: dict[str, str] = {}
    inject(carrier)
    return tuple((key.lower(), value) for key, value in carrier.items())
