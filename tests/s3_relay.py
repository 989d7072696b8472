"""A relay in front of the real S3 that can hold chosen requests: S3 slow at one moment.

`S3Relay(upstream)` listens on 127.0.0.1 and forwards every request to `upstream` (the
SeaweedFS endpoint) byte for byte, Host header included, so SigV4 signatures made for the
relay's address verify as they would directly. `hold(method, path_suffix)` makes the next
matching request wait until the test releases it: the test can then run something else
against the real S3 between, say, a read and a write of the service. Each `hold` catches
one request; every other request goes straight through.

`stall(method, path_suffix)` is S3 hanging on every matching request until released, the
way a stuck proxy does: the answer's status line comes at once and then a header line a
second, so no client read timeout ever fires. Released, they are answered 503.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

WAIT_SECONDS = 30.0


class Hold:
    """Requests held: `arrived` is set when one is; `release()` lets them go on."""

    def __init__(self, method: str, path_suffix: str, stall: bool) -> None:
        self.method = method
        self.path_suffix = path_suffix
        self.stall = stall
        self.arrived = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def wait_to_go(self) -> None:
        self.arrived.set()
        if not self._released.wait(WAIT_SECONDS):
            raise AssertionError("a held S3 request was never released")

    def trickle(self, handler: BaseHTTPRequestHandler) -> None:
        """Answer so slowly that the answer never ends before the release."""
        self.arrived.set()
        handler.send_response_only(503, "Slow Down")
        handler.flush_headers()
        deadline = time.monotonic() + WAIT_SECONDS
        while not self._released.wait(1.0) and time.monotonic() < deadline:
            handler.wfile.write(b"x-still-thinking: 1\r\n")
            handler.wfile.flush()
        handler.send_header("Content-Length", "0")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True


class S3Relay:
    """Forwards to `upstream`; `url` is what the service uses as S3_ENDPOINT_URL."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname == "127.0.0.1", "tests only talk to loopback"
        self._upstream = (parts.hostname, parts.port or 80)
        self._holds: list[Hold] = []
        self._lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                relay._forward(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def hold(self, method: str, path_suffix: str) -> Hold:
        """Hold the next `method` request whose path (without the query) ends so."""
        return self._add(Hold(method, path_suffix, stall=False))

    def stall(self, method: str, path_suffix: str) -> Hold:
        """Hang every `method` request whose path ends so, until released."""
        return self._add(Hold(method, path_suffix, stall=True))

    def _add(self, hold: Hold) -> Hold:
        with self._lock:
            self._holds.append(hold)
        return hold

    def close(self) -> None:
        with self._lock:
            holds, self._holds = self._holds, []
        for hold in holds:
            hold.release()
        self._server.shutdown()
        self._server.server_close()

    def _held(self, method: str, path: str) -> Hold | None:
        with self._lock:
            for hold in self._holds:
                if hold.method == method and path.endswith(hold.path_suffix):
                    if not hold.stall:
                        self._holds.remove(hold)
                    return hold
        return None

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        hold = self._held(handler.command, urlsplit(handler.path).path)
        if hold is not None and hold.stall:
            hold.trickle(handler)
            return
        if hold is not None:
            hold.wait_to_go()
        upstream = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            upstream.putrequest(
                handler.command, handler.path, skip_host=True, skip_accept_encoding=True
            )
            for name, value in handler.headers.items():
                upstream.putheader(name, value)
            upstream.endheaders(body)
            response = upstream.getresponse()
            data = response.read()
            handler.send_response_only(response.status, response.reason)
            head = handler.command == "HEAD"  # its Content-Length is the object's: kept
            skipped = {"connection", "transfer-encoding"} | (set() if head else {"content-length"})
            for name, value in response.getheaders():
                if name.lower() not in skipped:
                    handler.send_header(name, value)
            if not head:
                handler.send_header("Content-Length", str(len(data)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            if not head:
                handler.wfile.write(data)
        finally:
            upstream.close()
            handler.close_connection = True
