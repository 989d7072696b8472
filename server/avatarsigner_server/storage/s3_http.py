"""Plain HTTP requests to S3: exactly the given headers, no redirect followed, no exception
for an answer S3 gives (a 403 is a finding, not an error), a bounded body.

Used for the server's own requests (the verifier's reads and writes) and by `avatar-signer
check`. Blocking: call it from a worker thread, never on the event loop."""

from __future__ import annotations

import http.client
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HTTP_TIMEOUT_SECONDS = 15.0
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Reply:
    """What S3 answered (status 0: no answer; `error` says why)."""

    status: int
    body: bytes = field(default=b"", repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""
    # The body was longer than the reader's limit: `body` holds only the first bytes.
    truncated: bool = False

    @property
    def code(self) -> str:
        """The <Code> of S3's XML error body, or ""."""
        found = re.search(rb"<Code>([^<]{1,100})</Code>", self.body)
        return found.group(1).decode(errors="replace") if found else ""

    @property
    def allowed(self) -> bool:
        """S3 let the request through: 2xx, or 404 (authorized, but no such key)."""
        return 200 <= self.status < 300 or self.status == 404

    @property
    def refused(self) -> bool:
        return self.status == 403

    def __str__(self) -> str:
        if self.status == 0:
            return f"no answer ({self.error})"
        return f"{self.status} {self.code}".rstrip()


def send(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    max_body: int = MAX_BODY,
    timeout: float = HTTP_TIMEOUT_SECONDS,
) -> Reply:
    """One HTTP request, exactly these headers, no redirect followed; at most `max_body`
    bytes of the answer are read (`truncated` says there was more)."""
    parts = urlsplit(url)
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read(max_body + 1) if method != "HEAD" else b""
        truncated = len(data) > max_body
        return Reply(
            response.status,
            data[:max_body],
            {k.lower(): v for k, v in response.getheaders()},
            truncated=truncated,
        )
    except (OSError, http.client.HTTPException) as error:
        # The error's type only: its text could carry the URL.
        return Reply(0, error=type(error).__name__)
    finally:
        connection.close()
