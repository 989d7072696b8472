"""The metrics endpoint: `GET /metrics` over plain HTTP/1.1, served from the event loop.

It answers Prometheus and nothing else, so it is deliberately small and strict, and its
cost is bounded whoever connects (the port needs no credentials):

    no thread per connection   every connection is a few objects on the server's own loop
    MAX_CONNECTIONS            open at once; a new one beyond it closes the oldest that has
                               not yet sent its request (so idle connections cannot lock a
                               scraper out), or is closed itself when all are being answered
    READ_TIMEOUT_SECONDS       for the request head to arrive, then the connection is closed
    WRITE_TIMEOUT_SECONDS      for the answer to be taken, then the connection is dropped
    MAX_HEAD_BYTES             longest request head; no request body is read

One request per connection (`Connection: close`). `GET` or `HEAD` of `/metrics` (or `/`)
gets the text `render()` returns; another path 404, another method 405, a malformed or
oversized head 400. prometheus_client's own `start_http_server` is a thread per
connection with no timeout, so an idle connection there holds a thread for ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("avatarsigner.metrics")

MAX_CONNECTIONS = 16
READ_TIMEOUT_SECONDS = 5.0
WRITE_TIMEOUT_SECONDS = 10.0
MAX_HEAD_BYTES = 8192
PATHS = frozenset({"/metrics", "/"})

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class MetricsEndpoint:
    """Serves `render()` (the exposition text) at /metrics, within the bounds above."""

    def __init__(
        self,
        render: Callable[[], bytes],
        content_type: str,
        *,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        write_timeout: float = WRITE_TIMEOUT_SECONDS,
    ) -> None:
        self._render = render
        self._content_type = content_type
        self._max_connections = max_connections
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._server: asyncio.Server | None = None
        # Open connections in the order they came; True once their request has arrived.
        self._open: dict[asyncio.StreamWriter, bool] = {}

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); the bound port. OSError when it cannot."""
        self._server = await asyncio.start_server(
            self._connection, host, port, limit=MAX_HEAD_BYTES, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and drop every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit(writer):
            return
        try:
            try:
                head = await asyncio.wait_for(
                    reader.readuntil(b"\r\n\r\n"), timeout=self._read_timeout
                )
            except asyncio.LimitOverrunError:
                self._answer(writer, 400, b"request head too large\n")
                return
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return  # idle, closed or evicted: nothing to answer
            self._open[writer] = True
            status, body, head_only = self._route(head)
            self._answer(writer, status, body, head_only)
        finally:
            self._open.pop(writer, None)
            await self._close(writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close after what was written is sent, or at once if the peer will not take it."""
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), timeout=self._write_timeout)
        except (TimeoutError, ConnectionError):
            writer.transport.abort()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Make room for a new connection: evict the oldest still waiting for its request."""
        if len(self._open) >= self._max_connections:
            waiting = next((w for w, answered in self._open.items() if not answered), None)
            if waiting is None:
                writer.transport.abort()
                return False
            del self._open[waiting]
            waiting.transport.abort()
        self._open[writer] = False
        return True

    def _route(self, head: bytes) -> tuple[int, bytes, bool]:
        """(status, body, HEAD?) for a request head."""
        request_line = head.split(b"\r\n", 1)[0]
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, b"bad request\n", False
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target.decode("ascii", "replace") not in PATHS:
            return 404, b"not found: try /metrics\n", False
        if method not in (b"GET", b"HEAD"):
            return 405, b"only GET and HEAD\n", False
        try:
            body = self._render()
        except Exception as error:  # noqa: BLE001 - a failed scrape must not end the server
            log.error("metrics rendering failed", extra={"exc_type": type(error).__name__})
            return 500, b"metrics unavailable\n", method == b"HEAD"
        return 200, body, method == b"HEAD"

    def _answer(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, head_only: bool = False
    ) -> None:
        content_type = self._content_type if status == 200 else "text/plain; charset=utf-8"
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Internal Server Error')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        writer.write(head if head_only else head + body)
