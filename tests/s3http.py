"""Plain HTTP against presigned URLs, with exact control over the headers sent."""

from __future__ import annotations

import http.client
import re
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def s3_code(self) -> str:
        """S3's error <Code>, or "" when the body carries none."""
        found = re.search(rb"<Code>([^<]+)</Code>", self.body)
        return found.group(1).decode() if found else ""


def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Reply:
    """Send exactly `headers` (plus Host, and Content-Length when a body is given)."""
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.hostname == "127.0.0.1", "tests only talk to loopback"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        target = parts.path + ("?" + parts.query if parts.query else "")
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(
            response.status,
            response.read(),
            {k.lower(): v for k, v in response.getheaders()},
        )
    finally:
        connection.close()
