"""What a traced RPC costs the server: the span API as the interceptor calls it, per call.

    python bench/tracing.py

Contenders, in interleaved rounds (median round kept, as in bench/signing.py), timed in
CPU seconds of the whole process, so the export thread's work counts:

    nothing          the loop and the metadata dict alone (subtracted from the others)
    off              tracing off: the shared do-nothing span and a step
    on, new trace    one sampled SERVER span, no traceparent; spans go to a
                     BatchSpanProcessor whose exporter drops them (flushed at the end of
                     each round, inside the timing; the queue holds a whole round)
    on, continued    the same with the caller's traceparent to extract
    on, + a step     continued, with one child step (an upload check)
    on, sampled out  OTEL_TRACES_SAMPLER=always_off: spans made but not recorded
    on, OTLP export  continued, exported for real over OTLP/gRPC to a collector endpoint
                     in another process (protobuf encoding and the gRPC client count)

Not a test: figures vary with the machine; compare them with the server's CPU per call
in BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from avatarsigner_server.telemetry.tracing import Tracing
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

ROUNDS = 15
CALLS = 5_000
# Room for every span of a round: none is dropped for want of space.
QUEUE = 4 * CALLS
SERVICE = "avatarsigner.v1.AvatarSigner"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PLAIN = {"authorization": "Bearer x", "x-request-id": "req-1", "user-agent": "grpc-python"}


Call = Callable[[Tracing, Mapping[str, str]], None]


class Dropping(SpanExporter):
    """Takes every batch and keeps nothing: the export thread's work without a network."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def download(tracing: Tracing, metadata: Mapping[str, str]) -> None:
    """What the interceptor does with the tracing API for one RPC."""
    with tracing.rpc(SERVICE, "CreateDownloadUrl", metadata, "req-1") as span:
        span.caller("profile-service", "token")
        span.count(1)
        span.outcome("OK", "signed")


def upload(tracing: Tracing, metadata: Mapping[str, str]) -> None:
    """The same with one upload check as a child step."""
    with tracing.rpc(SERVICE, "CreateUploadUrl", metadata, "req-1") as span:
        span.caller("profile-service", "token")
        span.count(1)
        with tracing.step("upload_check.rate_limit"):
            pass
        span.outcome("OK", "signed")


def nothing(tracing: Tracing, metadata: Mapping[str, str]) -> None:
    return None


def timed(call: Call, tracing: Tracing, metadata: Mapping[str, str]) -> float:
    """CPU microseconds per call over CALLS calls, the export thread's flush included."""
    started = time.process_time()
    for _ in range(CALLS):
        call(tracing, metadata)
    tracing.flush()
    return (time.process_time() - started) / CALLS * 1e6


COLLECTOR = """
import sys
from concurrent import futures
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc

class Collector(pb_grpc.TraceServiceServicer):
    def Export(self, request, context):
        return pb.ExportTraceServiceResponse()

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
pb_grpc.add_TraceServiceServicer_to_server(Collector(), server)
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
sys.stdin.read()
"""


@contextlib.contextmanager
def collector() -> Iterator[str]:
    """An OTLP/gRPC trace endpoint in a child process that accepts and drops every span."""
    child = subprocess.Popen(
        [sys.executable, "-c", COLLECTOR], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        yield f"http://127.0.0.1:{int(child.stdout.readline())}"
    finally:
        child.kill()
        child.wait()


def main() -> int:
    with collector() as endpoint:
        return measure(endpoint)


def measure(endpoint: str) -> int:
    exporter = Dropping()
    on = Tracing.exporting_to(BatchSpanProcessor(exporter, max_queue_size=QUEUE))
    os.environ["OTEL_TRACES_SAMPLER"] = "always_off"  # read by the SDK when a provider is built
    sampled_out = Tracing.exporting_to(BatchSpanProcessor(Dropping(), max_queue_size=QUEUE))
    del os.environ["OTEL_TRACES_SAMPLER"]
    otlp = Tracing.exporting_to(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True), max_queue_size=QUEUE)
    )
    continued = {**PLAIN, "traceparent": TRACEPARENT}
    contenders: dict[str, tuple[Call, Tracing, Mapping[str, str]]] = {
        "nothing": (nothing, Tracing.off(), PLAIN),
        "off": (upload, Tracing.off(), PLAIN),
        "on, new trace": (download, on, PLAIN),
        "on, continued": (download, on, continued),
        "on, + a step": (upload, on, continued),
        "on, sampled out": (download, sampled_out, continued),
        "on, OTLP export": (download, otlp, continued),
    }
    rounds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(ROUNDS):
        for name, (call, tracing, metadata) in contenders.items():
            rounds[name].append(timed(call, tracing, metadata))
    on.shutdown()
    sampled_out.shutdown()
    otlp.shutdown()
    base = statistics.median(rounds["nothing"])
    print(f"CPU per RPC (median of {ROUNDS} rounds of {CALLS:,} calls), loop subtracted:")
    for name in contenders:
        if name != "nothing":
            print(f"  {name:<16} {statistics.median(rounds[name]) - base:7.2f} µs")
    print(f"  (spans exported: {exporter.spans:,}; the loop itself: {base:.2f} µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
