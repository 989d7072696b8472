"""Serve the app with uvicorn: in the foreground, or in a background thread.

`Background` binds its socket before starting, so the page's origin (with the port) is
known at once, e.g. for the CORS rule that must name it; port 0 picks a free one.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from .app import create_app
from .settings import WebSettings


def _config(settings: WebSettings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,  # an access log line would carry nothing secret, but is noise here
        lifespan="on",
    )


def serve(settings: WebSettings) -> None:
    """Run until SIGINT/SIGTERM."""
    uvicorn.Server(_config(settings)).run()


class Background:
    """The app on its own event loop in a daemon thread; `stop()` ends it."""

    def __init__(self, settings: WebSettings, start_timeout: float = 20) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((settings.host, settings.port))
        self.port: int = self._socket.getsockname()[1]
        self.origin = f"http://{settings.host}:{self.port}"
        self._server = uvicorn.Server(_config(settings))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the web app did not start on {self.origin}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()
