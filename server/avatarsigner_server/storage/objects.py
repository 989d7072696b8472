"""One identity's own requests to the bucket: read, write, delete, list versions.

The verifier reads staged uploads, writes verified avatars and deletes them; the reader
reads what the service keeps beside the avatars (markers and tombstones) and whether an
avatar exists. No URL leaves the process:
each request is signed with the identity's current credentials by the same SigV4 code as
every URL (query authentication, living `expires_in` seconds) and sent at once.

Blocking (plain http.client): run it in a worker thread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from xml.etree import ElementTree

from ..errors import Unavailable
from ..signing.clock import Clock, utc_now_to_the_second
from ..signing.key_pairs import CredentialSource
from ..signing.url_signers import BucketEndpoint, presign_request
from .s3_http import HTTP_TIMEOUT_SECONDS, Reply, send

DEFAULT_EXPIRES_IN = 60
log = logging.getLogger("avatarsigner.storage")
_S3_NAMESPACE = re.compile(r"^\{[^}]*\}")


def unavailable(what: str, reply: Reply) -> Unavailable:
    """The error for an S3 answer the service cannot work with; the status is logged (never
    a URL), the caller hears UNAVAILABLE (reason STORAGE), worth a retry."""
    log.warning("S3 %s failed", what, extra={"s3_status": reply.status, "s3_code": reply.code})
    return Unavailable("STORAGE", f"the bucket did not answer as expected ({what}); retry")


@dataclass(frozen=True)
class ObjectVersion:
    """One stored version of a key (or a delete marker) in a versioned bucket."""

    key: str
    version_id: str
    delete_marker: bool


@dataclass(frozen=True)
class VersionPage:
    """One answer of ListObjectVersions (S3 gives at most 1000 versions in one): the
    versions of the key in it and, when there are more, where the next answer starts."""

    reply: Reply
    versions: list[ObjectVersion]
    next_page: tuple[str, str] | None = None  # (key marker, version id marker)


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

    def _url(
        self,
        method: str,
        key: str,
        headers: Mapping[str, str],
        query: tuple[tuple[str, str], ...] = (),
    ) -> str:
        signed_at = self._clock().replace(microsecond=0)
        creds = self._credentials.get(signed_at + timedelta(seconds=self._expires_in))
        return presign_request(
            creds,
            self._endpoint,
            self._region,
            method=method,
            key=key,
            signed_at=signed_at,
            expires_in=self._expires_in,
            headers={name.lower(): value for name, value in headers.items()},
            query=query,
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

    def head(self, key: str) -> Reply:
        """Whether the object exists (200) and its headers, without its body."""
        return send("HEAD", self._url("HEAD", key, {}), timeout=self._timeout)

    def delete(self, key: str, version_id: str | None = None) -> Reply:
        """Delete the object (or one version of it, on a versioned bucket)."""
        query = () if version_id is None else (("versionId", version_id),)
        return send("DELETE", self._url("DELETE", key, {}, query), timeout=self._timeout)

    def versions(self, key: str, page: tuple[str, str] | None = None) -> VersionPage:
        """The versions and delete markers of exactly `key` (a versioned bucket's
        ListObjectVersions, by prefix, filtered to the key), from the start or from a
        page's `next_page`; the reply says if refused."""
        query: tuple[tuple[str, str], ...] = (("prefix", key), ("versions", ""))
        if page is not None:
            query += (("key-marker", page[0]), ("version-id-marker", page[1]))
        reply = send(
            "GET", self._url("GET", "", {}, query), max_body=1 << 20, timeout=self._timeout
        )
        found: list[ObjectVersion] = []
        if reply.status != 200:
            return VersionPage(reply, found)
        fields: dict[str, str] = {}
        for element in ElementTree.fromstring(reply.body):  # noqa: S314 - our bucket's XML
            kind = _S3_NAMESPACE.sub("", element.tag)
            if kind not in ("Version", "DeleteMarker"):
                fields[kind] = element.text or ""
                continue
            entry = {_S3_NAMESPACE.sub("", child.tag): child.text or "" for child in element}
            if entry.get("Key") == key and entry.get("VersionId"):
                found.append(ObjectVersion(key, entry["VersionId"], kind == "DeleteMarker"))
        markers = (fields.get("NextKeyMarker", ""), fields.get("NextVersionIdMarker", ""))
        more = fields.get("IsTruncated") == "true" and all(markers)
        return VersionPage(reply, found, markers if more else None)
