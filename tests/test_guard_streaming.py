"""A streaming RPC under the service's prefix never runs unguarded (real server).

The service has only unary RPCs and the guard checks unary calls; a streaming handler
added later under `/avatarsigner.v1.AvatarSigner/` is refused with UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from avatarsigner.contract import METHOD_PREFIX
from guarded import caller, write_callers
from servers import ServerThread, settings_from

FEED = caller("feed-service", ["CreateDownloadUrl"])


async def _stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for _ in request_iterator:
        yield b"unguarded data"


class AddsAStreamingRpc(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Stands for a streaming RPC added to the service later: /AvatarSigner/Watch."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        if details.method in (METHOD_PREFIX + "Watch", "/other.v1.Service/Watch"):
            return grpc.stream_stream_rpc_method_handler(_stream)
        return await continuation(details)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[str]:
    running = ServerThread(
        settings_from(CALLERS_FILE=str(write_callers(tmp_path / "callers.toml", [FEED]))),
        interceptors=[AddsAStreamingRpc()],
    )
    yield running.target
    running.stop()


def _watch(target: str, method: str) -> list[bytes]:
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(method)
        return list(call(iter([b"x", b"y"]), timeout=10))


def test_streaming_rpc_under_the_service_prefix_is_refused(target: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _watch(target, METHOD_PREFIX + "Watch")
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_streaming_rpc_of_another_service_is_left_alone(target: str) -> None:
    assert _watch(target, "/other.v1.Service/Watch") == [b"unguarded data", b"unguarded data"]
