"""The load client: a grpc.aio process that runs bounded closed-loop load and counts statuses.

It runs in its own process (so it never shares a GIL with a server) and serves the
benchmark over pipes: one JSON command per stdin line, one JSON result per stdout line.

    {"target": "127.0.0.1:PORT", "rpc": "download" | "batch" | "cookies", "in_flight": 8,
     "duration": 2.0, "max_calls": 100000, "channels": 1, "batch_size": 100}

`in_flight` coroutines each send one call, await it, send the next (closed loop), spread
over `channels` HTTP/2 connections (a local subchannel pool each, so they really are
separate connections, which SO_REUSEPORT workers need). Calls start until `duration`
seconds or `max_calls` calls, whichever comes first; every call has a deadline. Each
call's status is counted (OK and every error code); latencies are kept for OK calls only.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import grpc
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc

CALL_DEADLINE_SECONDS = 10.0
WARMUP_CALLS_PER_CHANNEL = 20
USER_POOL = [f"user{index:05d}" for index in range(10_000)]


def _requests(rpc: str, batch_size: int) -> list[Any]:
    if rpc == "download":
        return [pb.CreateDownloadUrlRequest(user_id=user) for user in USER_POOL[:1000]]
    if rpc == "batch":
        return [
            pb.BatchCreateDownloadUrlsRequest(user_ids=USER_POOL[start : start + batch_size])
            for start in range(0, len(USER_POOL) - batch_size, batch_size)
        ]
    if rpc == "cookies":
        return [pb.CreateViewerCookiesRequest()]
    raise ValueError(f"unknown rpc {rpc!r}")


async def run(command: dict[str, Any]) -> dict[str, Any]:
    target: str = command["target"]
    if not target.startswith("127.0.0.1:"):
        raise ValueError("the load client only talks to 127.0.0.1")
    rpc: str = command["rpc"]
    in_flight: int = command["in_flight"]
    duration: float = command["duration"]
    max_calls: int = command["max_calls"]
    requests = _requests(rpc, command.get("batch_size", 100))
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(target, options=options)
        for _ in range(command.get("channels", 1))
    ]
    try:
        stubs = [pb_grpc.AvatarSignerStub(channel) for channel in channels]
        method_names = {
            "download": "CreateDownloadUrl",
            "batch": "BatchCreateDownloadUrls",
            "cookies": "CreateViewerCookies",
        }
        methods = [getattr(stub, method_names[rpc]) for stub in stubs]
        # Connect and warm up every connection; these calls are not timed (a failure raises).
        warmup = 0
        for method in methods:
            for request in requests[:WARMUP_CALLS_PER_CHANNEL]:
                await method(request, timeout=CALL_DEADLINE_SECONDS)
                warmup += 1

        statuses: Counter[str] = Counter()
        latencies_us: list[int] = []
        started = 0
        begin = time.perf_counter()
        cpu_begin = time.process_time()
        stop_at = begin + duration

        async def caller(index: int) -> None:
            nonlocal started
            method = methods[index % len(methods)]
            position = index * 7919
            perf = time.perf_counter
            while started < max_calls and perf() < stop_at:
                started += 1
                request = requests[position % len(requests)]
                position += 1
                sent = perf()
                try:
                    await method(request, timeout=CALL_DEADLINE_SECONDS)
                except grpc.aio.AioRpcError as error:
                    statuses[error.code().name] += 1
                else:
                    statuses["OK"] += 1
                    latencies_us.append(int((perf() - sent) * 1e6))

        await asyncio.gather(*(caller(index) for index in range(in_flight)))
        elapsed = time.perf_counter() - begin
        return {
            "statuses": dict(statuses),
            "elapsed": elapsed,
            "latencies_us": latencies_us,
            "client_cpu": time.process_time() - cpu_begin,
            "warmup_calls": warmup,
        }
    finally:
        for channel in channels:
            await channel.close()


async def serve_commands() -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        try:
            result = await run(json.loads(line))
        except Exception as error:  # noqa: BLE001 - reported to the benchmark, not hidden
            result = {"error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def main() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve_commands())
    else:
        uvloop.run(serve_commands())


if __name__ == "__main__":
    main()
