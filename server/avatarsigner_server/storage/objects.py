"""One identity's own requests to the bucket: read an object, write an object.

The verifier reads staged uploads and writes verified avatars; the reader reads what the
service keeps beside the avatars (the confirmed-upload markers). No URL leaves the process:
each request is signed with the identity's current credentials by the same SigV4 code as
every URL (query authentication, living `expires_in` seconds) and sent at once.

Blocking (plain http.client): run it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from ..signing import sigv4
from ..signing.clock import Clock, utc_now_to_the_second
from ..signing.key_pairs import CredentialSource
from ..signing.url_signers import BucketEndpoint
from .s3_http import HTTP_TIMEOUT_SECONDS, Reply, send

DEFAULT_EXPIRES_IN = 60


class ObjectStore:
    """GET and PUT of single objects as one identity."""

    def __init__(
        self,
        credentials: CredentialSource,
        endpoint: BucketEndpoint,
        region: str,
        *,
        clock: Clock = utc_now_to_the_second,
        expires_in: int = DEFAULT_EXPIRES_IN,
        timeout: float = HTTP_TIMEOUT_SECONDS,
    ) -> None:
        self._credentials = credentials
        self._endpoint = endpoint
        self._region = region
        self._clock = clock
        self._expires_in = expires_in
        self._timeout = timeout

    def _url(self, method: str, key: str, headers: Mapping[str, str]) -> str:
        signed_at = self._clock().replace(microsecond=0)
        creds = self._credentials.get(signed_at + timedelta(seconds=self._expires_in))
        return sigv4.presign(
            method=method,
            origin=self._endpoint.origin,
            host=self._endpoint.host,
            path=self._endpoint.path(key),
            access_key_id=creds.access_key_id,
            secret_access_key=creds.secret_access_key,
            session_token=creds.session_token,
            region=self._region,
            signed_at=signed_at,
            expires_in=self._expires_in,
            headers={name.lower(): value for name, value in headers.items()},
        )

    def get(self, key: str, *, max_bytes: int) -> Reply:
        """The object (at most max_bytes of it: `truncated` says when there is more)."""
        return send(
            "GET", self._url("GET", key, {}), max_body=max_bytes, timeout=self._timeout
        )

    def put(self, key: str, data: bytes, headers: Mapping[str, str]) -> Reply:
        """Write `data` at key with exactly these headers (all signed), Content-Length too."""
        sent = {**headers, "Content-Length": str(len(data))}
        return send("PUT", self._url("PUT", key, sent), data, sent, timeout=self._timeout)
