"""`make bench`: one table, every figure measured in this run, written to BENCHMARKS.md.

What runs (about three minutes, all on 127.0.0.1):

1. signers, in this process: ours vs boto3 `generate_presigned_url` vs botocore's
   S3SigV4QueryAuth called directly, GET and PUT, in interleaved rounds (median kept);
   and where a URL's time goes inside BatchCreateDownloadUrls (pyinstrument profile);
2. start-up: `avatar-signer serve` (and `--workers 2`) from exec to SERVING, 3 times each;
3. load, from separate client processes (bench/loadgen.py, grpc.aio + uvloop) so a client
   never shares a GIL with a server: the same production command serving CreateDownloadUrl
   vs serving an empty handler (bench/variant_server.py) at 1, 8 and 64 calls in flight;
   BatchCreateDownloadUrls(100) vs a boto3-backed signer; `--workers 2` vs 1. Variants
   alternate in short rounds so machine noise hits both sides of each ratio alike;
4. peak RSS (VmHWM) of every server process of step 3, after all of its load;
5. CloudFront (bench/cloudfront.py in process, and servers with CLOUDFRONT_* set): µs per
   signed URL vs botocore's CloudFrontSigner, BatchCreateDownloadUrls(100) URLs/s with and
   without a reuse window, CreateViewerCookies vs the empty handler, and signatures per
   feed page of 100 avatars in each mode;
6. many replicas: the production command with a per-caller download limit set (never
   refusing, so every call is checked) with its buckets per process vs shared through a
   local redis-server (RATE_LIMIT_REDIS_URL), single URLs and batches; the cost of one
   shared check (bench/shared_limits.py); tracing off vs on (every call a sampled span,
   exported over OTLP/gRPC to a collector in another process that drops them);
7. ConfirmUpload against a real S3 (SeaweedFS): p50 for a 200 KB and a 5 MiB JPEG vs the
   bare GET + PUT of the same bytes, and peak RSS with 16 confirmations of 5 MiB in flight
   (bench/confirm.py);
8. SIGTERM with 64 callers on 1 and 2 workers: calls in flight at SIGTERM, how many of
   those sent before it failed, and what calls sent during the drain got (bench/drain.py).

`bench/run.py --only cloudfront` runs just step 5, `bench/run.py --only replicas` just step
6; each prints its rows (BENCHMARKS.md is written only by the whole run).

Every gRPC status is counted; a non-OK status is shown in the table, never dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import cloudfront
import confirm
import drain
import grpc
import shared_limits
import signing
import tracing
import uvloop
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable

ENV = {
    "S3_UPLOAD_KEY": "UPLOADERKEYID0001",
    "S3_UPLOAD_SECRET": "uploader-secret-0001",
    "S3_READ_KEY": "READERKEYID0000001",
    "S3_READ_SECRET": "reader-secret-00001",
    "S3_VERIFY_KEY": "VERIFIERKEYID00001",
    "S3_VERIFY_SECRET": "verifier-secret-001",
    "AWS_REGION": "eu-west-1",
    "S3_BUCKET": "avatars",
    "GRPC_HOST": "127.0.0.1",
    "METRICS_PORT": "0",
    "LOG_LEVEL": "INFO",
}
IN_FLIGHT = (1, 8, 64)
ROUNDS = 3
# BENCH_ROUND_SECONDS=0.3 makes a quick smoke run of the whole pipeline (figures too noisy).
ROUND_SECONDS = float(os.environ.get("BENCH_ROUND_SECONDS", "2.0"))
MAX_CALLS = 200_000  # per round: a bound besides the time
BATCH = 100
# Per-caller download limits that never refuse: every download call is checked.
CHECKED = {"DOWNLOADS_PER_CALLER_PER_SECOND": "1000000", "DOWNLOADS_PER_CALLER_BURST": "1000000"}
TARGETS = {
    "shared": 0.85,
    "signer": 40.0,
    "single": 0.90,
    "batch": 30.0,
    "batch_urls": 100_000,  # BatchCreateDownloadUrls URLs/s from one process
    "workers": 1.6,
    "startup": 1.0,
    "rss_mb": 80.0,
}


TABLE_HEADER = (
    "| measurement | ours | baseline | ratio | target |",
    "| --- | --- | --- | --- | --- |",
)

# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid:
                    found.append(int(proc.name))
    return sorted(found)


def wait_serving(target: str, timeout: float = 30.0, poll: float = 0.005) -> float:
    """Seconds until health says SERVING."""
    started = time.monotonic()
    # Without these a refused first connection waits out gRPC's 1 s reconnect backoff.
    options = [
        ("grpc.initial_reconnect_backoff_ms", 2),
        ("grpc.min_reconnect_backoff_ms", 2),
        ("grpc.max_reconnect_backoff_ms", 10),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{target} did not become SERVING")
            time.sleep(poll)


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The processes that serve: the workers under a supervisor, else the process."""
        return children(self.process.pid) or [self.process.pid]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_server(name: str, argv: list[str], workdir: Path, **env: str) -> Server:
    port = free_port()
    log = workdir / f"{name}.log"
    process = subprocess.Popen(
        argv,
        env={**os.environ, **ENV, "GRPC_PORT": str(port), **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        cwd=ROOT,
    )
    server = Server(name, process, port, log)
    wait_serving(server.target)
    return server


def serve_command(*args: str) -> list[str]:
    return [PY, "-m", "avatarsigner_server.commands.cli", "serve", *args]


def variant_command(variant: str) -> list[str]:
    return [PY, str(BENCH / "variant_server.py"), variant]


# --------------------------------------------------------------------------- load


@dataclass
class Load:
    """Totals over the rounds of one (server, rpc, in-flight) combination."""

    ok: int = 0
    warmup: int = 0  # untimed calls before the rounds (they sign URLs too)
    elapsed: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_us: list[int] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != "OK")

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies_us)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] / 1000

    @property
    def server_cores(self) -> float:
        return self.server_cpu / self.elapsed if self.elapsed else 0.0

    @property
    def client_cores(self) -> float:
        return self.client_cpu / self.elapsed if self.elapsed else 0.0

    @property
    def server_us_per_call(self) -> float:
        return self.server_cpu / self.ok * 1e6 if self.ok else float("nan")


class LoadClients:
    """Long-lived load client processes (bench/loadgen.py), driven over pipes."""

    def __init__(self, count: int) -> None:
        self._processes = [
            subprocess.Popen(
                [PY, str(BENCH / "loadgen.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for _ in range(count)
        ]

    def run(
        self, server: Server, rpc: str, in_flight: int, channels: int, clients: int, into: Load
    ) -> None:
        """One bounded round: `in_flight` calls spread over `clients` processes."""
        used = self._processes[:clients]
        shares = [in_flight // clients + (index < in_flight % clients) for index in range(clients)]
        cpu_before = server.cpu()
        for process, share in zip(used, shares, strict=True):
            command = {
                "target": server.target,
                "rpc": rpc,
                "in_flight": share,
                "duration": ROUND_SECONDS,
                "max_calls": MAX_CALLS,
                "channels": max(1, channels // clients),
                "batch_size": BATCH,
            }
            assert process.stdin is not None
            process.stdin.write(json.dumps(command) + "\n")
            process.stdin.flush()
        results = []
        for process in used:
            assert process.stdout is not None
            result = json.loads(process.stdout.readline())
            if "error" in result:
                raise RuntimeError(f"load client failed against {server.name}: {result['error']}")
            results.append(result)
        into.server_cpu += server.cpu() - cpu_before
        into.elapsed += max(result["elapsed"] for result in results)
        for result in results:
            into.statuses.update(result["statuses"])
            into.ok += result["statuses"].get("OK", 0)
            into.warmup += result["warmup_calls"]
            into.latencies_us.extend(result["latencies_us"])
            into.client_cpu += result["client_cpu"]

    def close(self) -> None:
        for process in self._processes:
            assert process.stdin is not None
            process.stdin.close()
        for process in self._processes:
            process.wait(10)


def compare(
    clients: LoadClients,
    servers: Mapping[str, Server],
    rpc: str,
    in_flight: int,
    channels: int = 1,
    client_processes: int = 1,
) -> dict[str, Load]:
    """ROUNDS alternating rounds per server (order flipped every round)."""
    loads = {name: Load() for name in servers}
    names = list(servers)
    for round_index in range(ROUNDS):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            clients.run(servers[name], rpc, in_flight, channels, client_processes, loads[name])
    return loads


# --------------------------------------------------------------------------- start-up


def startup_seconds(workdir: Path, workers: int, repeats: int = 3) -> float:
    """Median seconds from exec to SERVING (every worker SERVING, with a supervisor)."""
    times = []
    for index in range(repeats):
        port = free_port()
        log = workdir / f"startup-{workers}-{index}.log"
        started = time.monotonic()
        process = subprocess.Popen(
            serve_command("--workers", str(workers)),
            env={**os.environ, **ENV, "GRPC_PORT": str(port)},
            stdin=subprocess.DEVNULL,
            stderr=log.open("wb"),
            cwd=ROOT,
        )
        try:
            if workers == 1:
                wait_serving(f"127.0.0.1:{port}")
            else:
                while b'"workers serving"' not in log.read_bytes():
                    if process.poll() is not None or time.monotonic() - started > 30:
                        raise RuntimeError(f"--workers {workers} did not start: see {log}")
                    time.sleep(0.005)
            times.append(time.monotonic() - started)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    return statistics.median(times)


# --------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("grpcio", "protobuf", "boto3", "uvloop")
    )
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
        "load": " / ".join(f"{value:.2f}" for value in os.getloadavg()),
    }


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def latency(load: Load) -> str:
    return f"{load.percentile_ms(0.5):.2f} / {load.percentile_ms(0.99):.2f} ms"


def errors_note(*loads: Load) -> str:
    total: Counter[str] = Counter()
    for load in loads:
        total.update({k: v for k, v in load.statuses.items() if k != "OK"})
    return ", ".join(f"{count} {status}" for status, count in sorted(total.items())) or "0"


@contextlib.contextmanager
def servers_running(workdir: Path) -> Iterator[dict[str, Server]]:
    running: dict[str, Server] = {}
    try:
        running["ours"] = start_server("ours", variant_command("real"), workdir)
        running["empty"] = start_server("empty", variant_command("empty"), workdir)
        running["boto3"] = start_server("boto3", variant_command("boto3"), workdir)
        # Diagnosis only (production requires the audit line): ours without it.
        running["no-audit"] = start_server(
            "no-audit", variant_command("real"), workdir, LOG_LEVEL="WARNING"
        )
        running["workers2"] = start_server("workers2", serve_command("--workers", "2"), workdir)
        yield running
    finally:
        for server in running.values():
            server.stop()


# --------------------------------------------------------------------------- CloudFront

CLOUDFRONT_WINDOW = 60  # DOWNLOAD_URL_REUSE_SECONDS of the windowed CloudFront server
COOKIES_IN_FLIGHT = 8


@dataclass
class CloudFrontResults:
    url_us: dict[str, float]  # µs per signed URL, in process (bench/cloudfront.py)
    per_page: dict[str, float]  # signatures per feed page of 100 avatars, per mode
    batch: dict[str, Load] = field(default_factory=dict)  # "window", "no window"
    cookies: dict[str, Load] = field(default_factory=dict)  # "ours", "empty"

    def loads(self) -> list[Load]:
        return [*self.batch.values(), *self.cookies.values()]


def cloudfront_env(workdir: Path) -> dict[str, str]:
    """CLOUDFRONT_* for a server: an RSA-2048 key (the common choice), SHA-1."""
    key = workdir / "cloudfront.pem"
    key.write_bytes(cloudfront.pem(rsa.generate_private_key(65537, 2048)))
    return {
        "CLOUDFRONT_URL": cloudfront.ORIGIN,
        "CLOUDFRONT_KEY_PAIR_ID": cloudfront.KEY_PAIR_ID,
        "CLOUDFRONT_PRIVATE_KEY_FILE": str(key),
    }


def measure_cloudfront(
    workdir: Path, clients: LoadClients, empty: Server | None = None
) -> CloudFrontResults:
    """Step 5: in process, then the CloudFront servers under load (`empty`: reused if given)."""
    print("  CloudFront signers (in process) ...", flush=True)
    results = CloudFrontResults(cloudfront.measure(), cloudfront.signatures_per_page())
    env = cloudfront_env(workdir)
    started: dict[str, Server] = {}
    try:
        started["no window"] = start_server("cloudfront", variant_command("real"), workdir, **env)
        started["window"] = start_server(
            "cloudfront-window",
            variant_command("real"),
            workdir,
            DOWNLOAD_URL_REUSE_SECONDS=str(CLOUDFRONT_WINDOW),
            **env,
        )
        if empty is None:
            empty = started["empty"] = start_server("empty", variant_command("empty"), workdir)
        print(f"  BatchCreateDownloadUrls({BATCH}), CloudFront URLs ...", flush=True)
        pair = {"window": started["window"], "no window": started["no window"]}
        results.batch = compare(clients, pair, "batch", 2)
        print("  CreateViewerCookies ...", flush=True)
        pair = {"ours": started["no window"], "empty": empty}
        results.cookies = compare(clients, pair, "cookies", COOKIES_IN_FLIGHT)
    finally:
        for server in started.values():
            server.stop()
    return results


def cloudfront_notes(c: CloudFrontResults) -> list[str]:
    """What the CloudFront rows mean, from this run's figures."""
    windowed, no_window = c.batch["window"], c.batch["no window"]
    return [
        f"- CloudFront: an RSA-2048 signature is the cost ({c.url_us['ours RSA-2048 SHA-1']:.0f}"
        " µs; botocore pays the same RSA operation, hence a ratio near 1). Without a window a "
        f"batch of {BATCH} costs the server {no_window.server_us_per_call / BATCH:.0f} µs per "
        f"URL; with a {CLOUDFRONT_WINDOW} s window, {windowed.server_us_per_call / BATCH:.1f} "
        "µs, including the first pass of each window over the load client's 9,900 users, "
        "which signs each once (they fit the 10,000 URLs the signer keeps per window). "
        "CreateViewerCookies signs at most once per second (calls in the same second share "
        "the cookies): what it costs beyond the empty handler is the call's own work and "
        "its answer (the cookies twice, as values and as Set-Cookie lines, about 1.6 KB "
        "with an RSA key).",
    ]


def cloudfront_rows(c: CloudFrontResults) -> list[str]:
    """The CloudFront rows of the table."""
    url = c.url_us
    botocore, ours = url["botocore RSA-2048 SHA-1"], url["ours RSA-2048 SHA-1"]
    window_name = next(name for name in url if "window" in name)
    windowed, no_window = c.batch["window"], c.batch["no window"]
    cookies, empty = c.cookies["ours"], c.cookies["empty"]
    page = c.per_page
    windowed_page = page[f"CloudFront URLs, {cloudfront.REUSE_SECONDS} s window"]
    return [
        f"| CloudFront signed URL (RSA-2048, SHA-1): µs per URL | {ours:.0f} µs "
        f"| botocore CloudFrontSigner {botocore:.0f} µs | {ratio_of(botocore, ours):.2f}x | — |",
        f"| CloudFront signed URL, other keys and the window: µs per URL "
        f"| ECDSA P-256 {url['ours ECDSA P-256 SHA-1']:.1f} µs, RSA SHA-256 "
        f"{url['ours RSA-2048 SHA-256']:.0f} µs, RSA within a {cloudfront.REUSE_SECONDS} s "
        f"window (URL asked again) {url[window_name]:.1f} µs "
        f"| botocore RSA {botocore:.0f} µs | {ratio_of(botocore, url[window_name]):.0f}x "
        "(window) | — |",
        f"| BatchCreateDownloadUrls({BATCH}), CloudFront URLs (RSA-2048), 2 in flight: URLs/s "
        f"(p50 / p99 per call) | {CLOUDFRONT_WINDOW} s window: "
        f"{fmt_int(windowed.rps * BATCH)} URLs/s ({latency(windowed)}) "
        f"| no window: {fmt_int(no_window.rps * BATCH)} URLs/s ({latency(no_window)}) "
        f"| {ratio_of(windowed.rps, no_window.rps):.0f}x | — |",
        f"| CreateViewerCookies, {COOKIES_IN_FLIGHT} in flight: RPS, p50 / p99 "
        f"| {fmt_int(cookies.rps)} RPS, {latency(cookies)} "
        f"| empty handler {fmt_int(empty.rps)} RPS, {latency(empty)} "
        f"| {ratio_of(cookies.rps, empty.rps):.0%} | — |",
        f"| signatures per feed page of 100 avatars ({cloudfront.FEED_PAGES_PER_SECOND} pages/s "
        f"from {fmt_int(cloudfront.ACTIVE_USERS)} users) "
        f"| CloudFront URLs, {cloudfront.REUSE_SECONDS} s window: {windowed_page:.2f}; "
        f"cookies: {page['CloudFront cookies']:.0f} "
        f"| S3 URLs: {page['S3 URLs']:.0f} (with a window too: "
        f"{page[f'S3 URLs, {cloudfront.REUSE_SECONDS} s window']:.0f}); CloudFront URLs "
        f"without a window: {page['CloudFront URLs']:.0f} | — | — |",
    ]


@dataclass
class Replicas:
    """Shared rate limits on vs off, the cost of one shared check, tracing on vs off."""

    single: dict[str, Load] = field(default_factory=dict)
    batch: dict[str, Load] = field(default_factory=dict)
    traced: dict[str, Load] = field(default_factory=dict)
    checks: shared_limits.CheckCosts | None = None

    def loads(self) -> list[Load]:
        return [*self.single.values(), *self.batch.values(), *self.traced.values()]


def measure_replicas(clients: LoadClients, workdir: Path) -> Replicas:
    """Step 6: shared rate limits and tracing, each pair of servers under the same load."""
    result = Replicas()
    with shared_limits.redis_server() as store, tracing.collector() as endpoint:
        real = variant_command("real")
        servers: dict[str, Server] = {}
        try:
            servers["local"] = start_server("limits-local", real, workdir, **CHECKED)
            servers["shared"] = start_server(
                "limits-shared", real, workdir, RATE_LIMIT_REDIS_URL=store, **CHECKED
            )
            servers["off"] = start_server("tracing-off", real, workdir)
            servers["on"] = start_server(
                "tracing-on", real, workdir, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint
            )
            limits = {"local": servers["local"], "shared": servers["shared"]}
            print("  shared rate limits: CreateDownloadUrl, 8 in flight ...", flush=True)
            result.single = compare(clients, limits, "download", 8)
            print(f"  shared rate limits: BatchCreateDownloadUrls({BATCH}) ...", flush=True)
            result.batch = compare(clients, limits, "batch", 2)
            print("  tracing: CreateDownloadUrl, 8 in flight ...", flush=True)
            result.traced = compare(
                clients, {"off": servers["off"], "on": servers["on"]}, "download", 8
            )
        finally:
            for server in servers.values():
                server.stop()
        print("  one shared check (in process) ...", flush=True)
        result.checks = uvloop.run(shared_limits.measure(store))
    return result


def render_replicas(r: Replicas) -> list[str]:
    """The rows of the many-replicas part (after the table's header)."""
    local, shared = r.single["local"], r.single["shared"]
    ratio = ratio_of(shared.rps, local.rps)
    rows = [
        f"| shared rate limits: CreateDownloadUrl, 8 in flight (a per-caller download limit "
        f"checked on every call): RPS, p50 / p99 | store {fmt_int(shared.rps)} RPS, "
        f"{latency(shared)} | per process {fmt_int(local.rps)} RPS, {latency(local)} "
        f"| {ratio:.0%} | ≥ {TARGETS['shared']:.0%}: {verdict(ratio >= TARGETS['shared'])} |"
    ]
    local, shared = r.batch["local"], r.batch["shared"]
    rows.append(
        f"| shared rate limits: BatchCreateDownloadUrls({BATCH}), 2 in flight: URLs/s "
        f"| store {fmt_int(shared.rps * BATCH)} URLs/s ({latency(shared)}) "
        f"| per process {fmt_int(local.rps * BATCH)} URLs/s ({latency(local)}) "
        f"| {ratio_of(shared.rps, local.rps):.0%} | — |"
    )
    if r.checks is not None:
        checks = r.checks.per_check
        rows.append(
            f"| one shared check, one at a time ({r.checks.server}, 127.0.0.1): wall / CPU "
            f"| {checks['shared'][0]:.0f} / {checks['shared'][1]:.0f} µs (PING alone "
            f"{checks['PING'][0]:.0f} / {checks['PING'][1]:.0f} µs) "
            f"| per process {checks['per-process'][1]:.1f} µs | — | — |"
        )
    off, on = r.traced["off"], r.traced["on"]
    rows.append(
        f"| tracing on (every call sampled, OTLP/gRPC export): CreateDownloadUrl, 8 in "
        f"flight: RPS, p50 / p99 | on {fmt_int(on.rps)} RPS, {latency(on)} "
        f"| off {fmt_int(off.rps)} RPS, {latency(off)} | {ratio_of(on.rps, off.rps):.0%} "
        "| reported |"
    )
    return rows


def summary_replicas(r: Replicas) -> list[str]:
    """Server CPU per call for the many-replicas rows."""
    local, shared = r.single["local"], r.single["shared"]
    off, on = r.traced["off"], r.traced["on"]
    return [
        f"- shared rate limits, CreateDownloadUrl: {shared.server_us_per_call:.0f} µs of "
        f"server CPU per call with the store, {local.server_us_per_call:.0f} µs per process "
        f"(+{shared.server_us_per_call - local.server_us_per_call:.0f} µs; the store's own "
        "CPU, on the same two cores, is not counted here but takes from them)",
        f"- tracing, CreateDownloadUrl: {on.server_us_per_call:.0f} µs per call on, "
        f"{off.server_us_per_call:.0f} µs off "
        f"(+{on.server_us_per_call - off.server_us_per_call:.0f} µs: the span, its "
        "attributes, the trace id on the audit line, and the export thread)",
    ]


@dataclass
class Results:
    host: dict[str, str]
    signers: dict[str, signing.Timing]
    breakdown: dict[str, float]
    startup_1: float = 0.0
    startup_2: float = 0.0
    single: dict[int, dict[str, Load]] = field(default_factory=dict)
    batch: dict[str, Load] = field(default_factory=dict)
    workers_single: dict[str, Load] = field(default_factory=dict)
    workers_batch: dict[str, Load] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)
    replicas: Replicas = field(default_factory=Replicas)
    logged: int = 0
    confirm: confirm.ConfirmFigures | None = None
    drain: list[drain.DrainFigures] = field(default_factory=list)
    took: float = 0.0
    cloudfront: CloudFrontResults | None = None


# What a step run alone gives: its table rows, its notes, and its loads (for the statuses).
Alone = tuple[list[str], list[str], list[Load]]


def cloudfront_alone(workdir: Path, clients: LoadClients) -> Alone:
    figures = measure_cloudfront(workdir, clients)
    return cloudfront_rows(figures), cloudfront_notes(figures), figures.loads()


def replicas_alone(workdir: Path, clients: LoadClients) -> Alone:
    replicas = measure_replicas(clients, workdir)
    return render_replicas(replicas), summary_replicas(replicas), replicas.loads()


ONLY: dict[str, tuple[str, Callable[[Path, LoadClients], Alone]]] = {
    "cloudfront": ("CloudFront", cloudfront_alone),  # step 5
    "replicas": ("many replicas", replicas_alone),  # step 6
}


def run_alone(step: str) -> int:
    """`--only STEP`: that step alone, printed, BENCHMARKS.md untouched."""
    title, measure = ONLY[step]
    host = machine()
    print(f"avatar-signer bench ({title} only): {host['nproc']} cores, {host['cpu']}")
    with tempfile.TemporaryDirectory(prefix="avatar-bench-") as tmp:
        clients = LoadClients(1)
        try:
            rows, notes, loads = measure(Path(tmp), clients)
        finally:
            clients.close()
    print("\n".join(["", *TABLE_HEADER, *rows, "", *notes]))
    print(f"\nNon-OK gRPC statuses: {errors_note(*loads)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--only" and args[1] in ONLY:
        return run_alone(args[1])
    if args:
        print(f"usage: bench/run.py [--only {'|'.join(ONLY)}]", file=sys.stderr)
        return 2
    started = time.monotonic()
    host = machine()
    print(f"avatar-signer bench: {host['nproc']} cores, {host['cpu']}, {host['python']}")
    print("  signers (in process) ...", flush=True)
    results = Results(host, signing.compare_signers(ENV), signing.url_breakdown(ENV, BATCH))

    with tempfile.TemporaryDirectory(prefix="avatar-bench-") as tmp:
        workdir = Path(tmp)
        print("  start-up ...", flush=True)
        results.startup_1 = startup_seconds(workdir, 1)
        results.startup_2 = startup_seconds(workdir, 2)

        clients = LoadClients(1)
        try:
            with servers_running(workdir) as servers:
                for in_flight in IN_FLIGHT:
                    print(f"  CreateDownloadUrl, {in_flight} in flight ...", flush=True)
                    names = ["ours", "empty"] + (["no-audit"] if in_flight == 8 else [])
                    results.single[in_flight] = compare(
                        clients, {name: servers[name] for name in names}, "download", in_flight
                    )
                print(f"  BatchCreateDownloadUrls({BATCH}) ...", flush=True)
                results.batch = compare(
                    clients, {"ours": servers["ours"], "boto3": servers["boto3"]}, "batch", 2
                )
                print("  --workers 2 vs 1 ...", flush=True)
                pair = {"workers1": servers["ours"], "workers2": servers["workers2"]}
                results.workers_single = compare(clients, pair, "download", 64, channels=16)
                results.workers_batch = compare(clients, pair, "batch", 8, channels=8)
                results.rss = {
                    "single": max(peak_rss_mb(pid) for pid in servers["ours"].pids()),
                    "workers": max(peak_rss_mb(pid) for pid in servers["workers2"].pids()),
                    "supervisor": peak_rss_mb(servers["workers2"].process.pid),
                }
                # One audit line per download call (per upload URL), each with its
                # expires_at (never the URL).
                results.logged = servers["ours"].log.read_bytes().count(b'"expires_at"')
                results.cloudfront = measure_cloudfront(workdir, clients, servers["empty"])
            results.replicas = measure_replicas(clients, workdir)
        finally:
            clients.close()
        print("  ConfirmUpload on a real S3 ...", flush=True)
        results.confirm = confirm.measure(workdir)
        print("  SIGTERM with calls in flight ...", flush=True)
        results.drain = drain.measure(workdir)

    results.took = time.monotonic() - started
    host["load_after"] = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    report = render(results)
    print()
    print(report)
    write_benchmarks_md(host, report)
    return 0


def ratio_of(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def render(r: Results) -> str:
    rows = list(TABLE_HEADER)
    for method in ("GET", "PUT"):
        own, sdk, direct = (r.signers[f"{who} {method}"] for who in ("ours", "boto3", "botocore"))
        ratio = ratio_of(sdk.microseconds, own.microseconds)
        rows.append(
            f"| signer {method}: µs per URL (URLs/s) | {own.microseconds:.1f} µs "
            f"({fmt_int(own.per_second)}/s) | boto3 generate_presigned_url "
            f"{sdk.microseconds:.0f} µs ({fmt_int(sdk.per_second)}/s) | {ratio:.0f}x "
            f"| ≥ {TARGETS['signer']:.0f}x: {verdict(ratio >= TARGETS['signer'])} |"
        )
        rows.append(
            f"| signer {method} vs botocore S3SigV4QueryAuth called directly "
            f"| {own.microseconds:.1f} µs "
            f"| {direct.microseconds:.0f} µs ({fmt_int(direct.per_second)}/s) "
            f"| {ratio_of(direct.microseconds, own.microseconds):.0f}x | — |"
        )
    for in_flight, loads in r.single.items():
        ours, empty = loads["ours"], loads["empty"]
        ratio = ratio_of(ours.rps, empty.rps)
        rows.append(
            f"| CreateDownloadUrl, {in_flight} in flight: RPS, p50 / p99 "
            f"| {fmt_int(ours.rps)} RPS, {latency(ours)} "
            f"| empty handler {fmt_int(empty.rps)} RPS, {latency(empty)} "
            f"| {ratio:.0%} | ≥ {TARGETS['single']:.0%}: {verdict(ratio >= TARGETS['single'])} |"
        )
    ours, sdk_batch = r.batch["ours"], r.batch["boto3"]
    ratio = ratio_of(ours.rps, sdk_batch.rps)
    rows.append(
        f"| BatchCreateDownloadUrls({BATCH}), 2 in flight: URLs/s (p50 / p99 per call) "
        f"| {fmt_int(ours.rps * BATCH)} URLs/s ({latency(ours)}) "
        f"| boto3-backed signer {fmt_int(sdk_batch.rps * BATCH)} URLs/s ({latency(sdk_batch)}) "
        f"| {ratio:.1f}x | ≥ {TARGETS['batch']:.0f}x: {verdict(ratio >= TARGETS['batch'])} |"
    )
    urls = ours.rps * BATCH
    rows.append(
        f"| BatchCreateDownloadUrls({BATCH}): URLs/s from one process | {fmt_int(urls)} URLs/s "
        f"| — | — | ≥ {fmt_int(TARGETS['batch_urls'])}: {verdict(urls >= TARGETS['batch_urls'])} |"
    )
    for label, loads, unit, scale in (
        ("CreateDownloadUrl, 64 in flight, 16 connections", r.workers_single, "RPS", 1),
        (f"BatchCreateDownloadUrls({BATCH}), 8 in flight, 8 connections", r.workers_batch,
         "URLs/s", BATCH),
    ):  # fmt: skip
        two, one = loads["workers2"], loads["workers1"]
        ratio = ratio_of(two.rps, one.rps)
        rows.append(
            f"| `--workers 2` vs 1: {label} | {fmt_int(two.rps * scale)} {unit} "
            f"(servers busy {two.server_cores:.2f} cores) | {fmt_int(one.rps * scale)} {unit} "
            f"({one.server_cores:.2f} cores) | {ratio:.2f}x "
            f"| ≥ {TARGETS['workers']}x: {verdict(ratio >= TARGETS['workers'])} |"
        )
    rows.extend(render_replicas(r.replicas))
    rows.append(
        f"| start-up, exec to SERVING (median of 3) | {r.startup_1 * 1000:.0f} ms "
        f"| `--workers 2`, all workers SERVING: {r.startup_2 * 1000:.0f} ms | — "
        f"| < {TARGETS['startup']:.0f} s: "
        f"{verdict(max(r.startup_1, r.startup_2) < TARGETS['startup'])} |"
    )
    rows.append(
        f"| peak RSS per process (VmHWM, after all the load) | {r.rss['single']:.0f} MB "
        f"| `--workers 2`: each worker ≤ {r.rss['workers']:.0f} MB, supervisor "
        f"{r.rss['supervisor']:.0f} MB | — "
        f"| < {TARGETS['rss_mb']:.0f} MB: {verdict(max(r.rss.values()) < TARGETS['rss_mb'])} |"
    )
    if r.confirm is not None:
        rows += confirm.rows(r.confirm)
    rows += drain.rows(r.drain)
    if r.cloudfront is not None:
        rows += cloudfront_rows(r.cloudfront)
    return "\n".join([*rows, "", *summary(r), "", *analysis(r)])


def summary(r: Results) -> list[str]:
    all_loads = [load for loads in r.single.values() for load in loads.values()]
    all_loads += [*r.batch.values(), *r.workers_single.values(), *r.workers_batch.values()]
    all_loads += r.replicas.loads()
    if r.cloudfront is not None:
        all_loads += r.cloudfront.loads()
    ours_urls = sum(loads["ours"].ok + loads["ours"].warmup for loads in r.single.values())
    ours_urls += r.workers_single["workers1"].ok + r.workers_single["workers1"].warmup
    for load in (r.batch["ours"], r.workers_batch["workers1"]):
        ours_urls += (load.ok + load.warmup) * BATCH
    lines = [
        f"Cores: {r.host['nproc']}. Non-OK gRPC statuses over all "
        f"{fmt_int(sum(load.ok + load.errors for load in all_loads))} timed calls: "
        f"{errors_note(*all_loads)}. The single-process server signed {fmt_int(ours_urls)} "
        f"URLs (warm-up included) and wrote {fmt_int(r.logged)} audit lines. Whole run: "
        f"{r.took:.0f} s.",
        "",
        "Server CPU per call (from /proc, the same rounds):",
        "",
    ]
    for in_flight, loads in r.single.items():
        ours, empty = loads["ours"], loads["empty"]
        lines.append(
            f"- CreateDownloadUrl, {in_flight} in flight: ours {ours.server_us_per_call:.0f} µs "
            f"({ours.server_cores:.2f} cores busy), empty handler "
            f"{empty.server_us_per_call:.0f} µs ({empty.server_cores:.2f} cores); the load "
            f"client {ours.client_cpu / ours.elapsed:.2f} cores, "
            f"{ours.client_cpu / ours.ok * 1e6:.0f} µs per call"
        )
    lines.append(
        f"- BatchCreateDownloadUrls({BATCH}): ours "
        f"{r.batch['ours'].server_us_per_call / BATCH:.1f} µs per URL, boto3-backed "
        f"{r.batch['boto3'].server_us_per_call / BATCH:.1f} µs per URL"
    )
    lines.extend(summary_replicas(r.replicas))
    b = r.breakdown
    lines.append(
        f"- profile of that handler in process (no gRPC; pyinstrument, {b['handler']:.1f} µs "
        f"per URL): signing {b['sign']:.1f} µs, the audit log line {b['log']:.1f} µs, the "
        f"rest (validation, key, response messages) {b['rest']:.1f} µs"
    )
    return lines


def analysis(r: Results) -> list[str]:
    """What bounds each missed target, from this run's own figures."""
    lines = ["What bounds the targets (figures from this run):", ""]
    own, sdk = r.signers["ours GET"], r.signers["boto3 GET"]
    core = r.signers["sigv4 core GET"]
    lines.append(
        f"- Signer: our GET URL costs {own.microseconds:.1f} µs, of which the SigV4 "
        f"computation (`sigv4.presign`) is {core.microseconds:.1f} µs; the rest is the "
        "signer's clock, expiry, credential check and result object. boto3 takes "
        f"{sdk.microseconds:.0f} µs per URL on this machine (the target assumed ~490 µs, "
        "measured on another machine), so 40x would need "
        f"{sdk.microseconds / TARGETS['signer']:.1f} µs per URL all in: the ratio is bounded "
        "by how fast boto3 is here."
    )
    eight = r.single.get(8, {})
    if {"ours", "empty", "no-audit"} <= eight.keys():
        ours, empty, quiet = eight["ours"], eight["empty"], eight["no-audit"]
        budget = empty.server_us_per_call * (1 / TARGETS["single"] - 1)
        extra = ours.server_us_per_call - empty.server_us_per_call
        lines.append(
            f"- Single URL: a call costs the server {extra:.0f} µs of CPU more than the empty "
            f"handler ({ours.server_us_per_call:.0f} vs {empty.server_us_per_call:.0f} µs per "
            f"call); {TARGETS['single']:.0%} of the ceiling leaves {budget:.0f} µs for "
            "everything the handler does. The same server without the audit line "
            "(LOG_LEVEL=WARNING, a diagnosis, not allowed in production) needs "
            f"{quiet.server_us_per_call:.0f} µs per call and reaches "
            f"{ratio_of(quiet.rps, empty.rps):.0%} of the ceiling: the one JSON line per call "
            f"costs {ours.server_us_per_call - quiet.server_us_per_call:.0f} µs of the "
            "difference, and validation, signing, the call context and the response "
            f"{quiet.server_us_per_call - empty.server_us_per_call:.0f} µs. In the server this "
            "Python work runs slower than in the in-process profile (cold caches between "
            "calls, a core shared with the load client)."
        )
    ours_url = r.batch["ours"].server_us_per_call / BATCH
    sdk_url = r.batch["boto3"].server_us_per_call / BATCH
    b = r.breakdown
    with_log = ratio_of(sdk.microseconds + b["log"] + b["rest"], b["handler"])
    no_log = ratio_of(sdk.microseconds + b["rest"], b["sign"] + b["rest"])
    lines.append(
        f"- Batch: a URL costs {ours_url:.1f} µs of server CPU with our signer and "
        f"{sdk_url:.1f} µs with boto3's. Per URL in process: boto3 {sdk.microseconds:.0f} µs "
        f"vs our signing {b['sign']:.1f} µs, but both sides also pay the audit line "
        f"({b['log']:.1f} µs) and the rest ({b['rest']:.1f} µs), so the handler ratio is "
        f"about {with_log:.0f}x; without any log line it would be about {no_log:.0f}x. "
        "So even with no log line at all the ratio stays below 30x: what bounds it is boto3's "
        "own speed on this machine (the target assumed ~490 µs per URL) plus the "
        "per-URL response messages; a batch's audit line is already one line per call."
    )
    two = r.workers_single["workers2"]
    batch_scaling = ratio_of(r.workers_batch["workers2"].rps, r.workers_batch["workers1"].rps)
    lines.append(
        "- Workers, CreateDownloadUrl: with two workers the servers kept "
        f"{two.server_cores:.2f} cores busy and the load client {two.client_cores:.2f} "
        f"(one worker: {r.workers_single['workers1'].server_cores:.2f} + "
        f"{r.workers_single['workers1'].client_cores:.2f}) on a {r.host['nproc']}-core "
        "machine: the load client takes the core a second worker would need, so this row "
        "measures the machine. The batch row (client nearly idle) shows the workers "
        f"themselves scale {batch_scaling:.2f}x."
    )
    if r.cloudfront is not None:
        lines += cloudfront_notes(r.cloudfront)
    return lines


NOTES = """\
How to read it. Every ratio compares two things measured in the same run, in alternating
rounds (3 of 2 s each, order flipped every round), so noise from other work on the shared
machine falls on both sides; absolute figures move from run to run, ratios much less.
"ours" is the production command (`avatar-signer serve`: grpc.aio on uvloop, one JSON audit
line per download call, here to a file); "empty handler" is that same server (same options,
interceptors, health, reflection, logging) with every AvatarSigner method answering an
empty message at once, i.e. the gRPC ceiling of this configuration; "boto3-backed" is that
server with boto3's `generate_presigned_url` behind the download signer.

Fairness on a 2-core machine. The load client (bench/loadgen.py: grpc.aio on uvloop, a
closed loop of N calls in flight, every status counted, time- and count-bounded, 127.0.0.1
only) is a separate process, so it never shares a GIL with a server; it does share the
cores, and a Python gRPC client costs about half as much CPU per call as the server. With
one server process the server gets a core and the client the other: the single-URL rows
measure the server (see "cores busy"). `--workers 2` wants both cores for servers while the
client still needs most of one, so its CreateDownloadUrl row measures the machine; its
batch row (one client call per 100 URLs) is the fair measure of how workers scale.

ConfirmUpload. Its rows compare a whole confirmation (read the staged object, check it,
decode it in full, write the avatar, and the marker and tombstone requests) with the two
transfers alone, on a local SeaweedFS where a 5 MiB transfer takes tens of milliseconds.
The decode is the cost: a full decode of a 5 MiB photo-like JPEG takes about as long as
both local transfers together, so the ratio here is far above 1.25 and says what
verification costs in CPU rather than what a caller waits for against real S3, where the
same transfers cross a network. The decode is not shortened on purpose: only a full decode
shows that every byte of the image is what it claims to be.
"""


def write_benchmarks_md(host: Mapping[str, str], report: str) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""# Benchmarks

Written by `make bench` (bench/run.py); each run replaces this file. All figures below come
from one run; the notes say what each is and what bounds the ones that miss their target.

- Date: {now}
- Machine: `nproc` = {host["nproc"]}, {host["cpu"]}; {host["python"]}
- Libraries: {host["versions"]}
- Load average (1/5/15 min) before → after: {host["load"]} → {host["load_after"]}

{report}

{NOTES}"""
    (ROOT / "BENCHMARKS.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
