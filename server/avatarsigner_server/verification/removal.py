"""DeleteAvatar: the avatar leaves every URL, and no earlier upload can bring it back.

    1. the reader asks whether the avatar exists (so the answer can say `deleted`)
    2. the verifier writes the user's tombstone: the time of this deletion (Unix
       milliseconds, the upload ids' own resolution). ConfirmUpload
       refuses any upload minted at or before it (reason DELETED), so a staged upload, or
       one confirmed before, cannot republish the picture. Written first: a confirmation
       racing this deletion looks for it again after writing the avatar, and takes the
       avatar back when it is there; when it is not there yet, that write came before
       the delete below.
    3. the verifier deletes the avatar's key (a signed request of its own: no URL is ever
       signed for DELETE)
    4. on a versioned bucket (S3 answers the delete with a delete marker) the old versions
       remain unless DELETE_OLD_VERSIONS is on; then the verifier lists the key's versions
       and deletes each, delete markers included

Steps 1-4 run in a worker thread of the remover's own, at most DELETE_CONCURRENCY at once
per process (threads.py): a deletion waits for one until shortly before its deadline
(RESOURCE_EXHAUSTED, reason BUSY), so an S3 that stops answering holds that many threads
and no more, and never the threads the rest of the server works in.

Staged uploads of the user are not deleted: no identity may list or delete `uploads/*`.
They can no longer be confirmed (step 2), nobody can read them, and the lifecycle rule
removes them within a day. Tombstones live beside the markers and expire with them, after
every staged upload they speak of is gone.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..signing.object_keys import ObjectKeys
from ..storage.objects import ObjectStore, unavailable
from .threads import BoundedThreads

log = logging.getLogger("avatarsigner.verification")

Clock = Callable[[], float]  # Unix seconds, as time.time
# Deletions at once per process: each is a few S3 requests (no decoding), mostly waiting.
DELETE_CONCURRENCY = 4
# How long a deletion may take without a deadline of the caller's.
DELETE_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Removal:
    """What DeleteAvatar did."""

    deleted: bool
    removed_keys: tuple[str, ...]
    old_versions_remain: bool




def read_tombstone(reader: ObjectStore, keys: ObjectKeys, user_id: str) -> int | None:
    """When the user's avatar was last deleted (Unix milliseconds), or None. Blocking."""
    reply = reader.get(keys.deleted_key(user_id), max_bytes=64)
    if reply.status in (403, 404):  # 403: a reader without s3:ListBucket, no tombstone
        return None
    if reply.status != 200:
        raise unavailable("read of the deletion tombstone", reply)
    try:
        return int(reply.body.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        log.warning("unreadable deletion tombstone; treated as absent")
        return None


class Remover:
    """Deletes avatars as the verifier (see the module docstring)."""

    def __init__(
        self,
        keys: ObjectKeys,
        verifier: ObjectStore,
        reader: ObjectStore,
        *,
        delete_old_versions: bool,
        clock: Clock = time.time,
    ) -> None:
        self._keys = keys
        self._verifier = verifier
        self._reader = reader
        self._delete_old_versions = delete_old_versions
        self._clock = clock
        self._threads = BoundedThreads(DELETE_CONCURRENCY, "delete")

    async def remove(self, user_id: str, time_left: float | None = None) -> Removal:
        """Removal, or a ServiceError: Unavailable when S3 did not answer as it must,
        Overloaded (BUSY), DeadlineExceeded. `time_left`: the caller's deadline, in
        seconds from now."""
        budget = DELETE_TIMEOUT_SECONDS
        return await self._threads.run(
            budget if time_left is None else min(budget, time_left),
            functools.partial(self._remove, user_id),
            busy="too many avatars are being deleted right now; retry shortly",
            late="deleting the avatar took too long; delete it again to be sure it is gone",
        )

    def close(self) -> None:
        self._threads.close()

    def _remove(self, user_id: str) -> Removal:
        key = self._keys.key_for(user_id)
        current = self._reader.head(key)
        if current.status not in (200, 403, 404):
            raise unavailable("look-up of the avatar", current)
        exists = current.status == 200
        tombstone = self._verifier.put(
            self._keys.deleted_key(user_id),
            str(int(self._clock() * 1000)).encode("ascii"),
            {"Content-Type": "text/plain"},
        )
        if not 200 <= tombstone.status < 300:
            raise unavailable("write of the deletion tombstone", tombstone)
        gone = self._verifier.delete(key)
        if gone.status not in (200, 204):
            raise unavailable("delete of the avatar", gone)
        removed = [key] if exists else []
        versioned = "x-amz-delete-marker" in gone.headers or "x-amz-version-id" in gone.headers
        if not versioned:
            return Removal(exists, tuple(removed), old_versions_remain=False)
        if not self._delete_old_versions:
            return Removal(exists, tuple(removed), old_versions_remain=True)
        page = None
        while True:  # S3 lists at most 1000 versions per answer
            listing = self._verifier.versions(key, page)
            if listing.reply.status != 200:
                raise unavailable("list of the avatar's versions", listing.reply)
            for version in listing.versions:
                reply = self._verifier.delete(key, version.version_id)
                if reply.status not in (200, 204):
                    raise unavailable("delete of an old version", reply)
                if not version.delete_marker:
                    removed.append(f"{key}?versionId={version.version_id}")
            if listing.next_page is None:
                return Removal(exists, tuple(removed), old_versions_remain=False)
            page = listing.next_page
