"""ConfirmUpload: a staged upload becomes the user's avatar only after its bytes are checked.

    0. parse the upload id (what the upload URL signed: length, SHA-256, when)
    1. deleted since? The reader looks for the user's tombstone (removal.py): an upload
       minted at or before the last deletion is refused (DELETED), so no upload made before
       a deletion can bring the picture back
    2. already confirmed? The reader looks for the upload's marker beside the avatars; if
       it is there, the answer stored in it is given again and nothing is written
    3. the verifier reads the staged object, at most MAX_UPLOAD_BYTES of it
       (NOT_UPLOADED when there is none for this user: another user's upload id names an
       object under another user's key, so it is never found)
    4. its length and SHA-256 must be what the URL signed (SIZE_MISMATCH,
       CHECKSUM_MISMATCH: defence in depth, S3 already enforced both)
    5. `images.verify_image`: really an image of the stored (signed) type, within the
       pixel, side and frame limits, decoded in full; its metadata removed losslessly
    6. the verifier writes exactly the verified bytes to `<prefix><user>/avatar`, with
       the headers it chose (type, checksum, and the fixed OBJECT_HEADERS every avatar
       object carries: inline, no content coding, private caching) and nothing the
       uploader sent
    7. deleted meanwhile? The reader looks for the tombstone again: a DeleteAvatar that
       ran entirely between step 1 and the write (its tombstone, then its delete) did not
       see this avatar, so the verifier takes back what it wrote (the version it wrote;
       on an unversioned bucket the key, unless another upload replaced it since) and
       the answer is DELETED. A deletion whose tombstone comes later than this look
       deletes the avatar itself: either way the picture stays deleted
    8. the verifier writes the marker (the answer, as JSON); then the answer

"Last confirmation wins": confirming an older upload after a newer one publishes the
older. Confirming the same upload again is answered from its marker. A confirmation that
runs out of time (DEADLINE_EXCEEDED) may still finish in the background; confirming again
tells.

Cost bounds. Steps 1-8 run in a worker thread, at most `concurrency` at once per process
(`CONFIRM_CONCURRENCY`, default 2: one decode per core); each holds the staged bytes, the
rebuilt copy and the decoded image (see images.py: up to about 16 bytes per pixel for
WebP), so memory is bounded by concurrency x (2 x MAX_UPLOAD_BYTES + 16 x
MAX_IMAGE_PIXELS). A confirmation waits for a slot at most until its deadline
(RESOURCE_EXHAUSTED, reason BUSY); a running one that outlives its deadline keeps its slot
until its thread finishes, so a slow decode never lets more run than the limit
(threads.py).

Traced, each step is a child span of the RPC's (`confirm.read_tombstone`,
`confirm.read_marker`, `confirm.read_staged`, `confirm.verify_image`, `confirm.write_avatar`,
`confirm.recheck_tombstone`, `confirm.write_marker`): the worker thread runs in a copy of
the call's context.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from ..errors import Overloaded, UploadRefused
from ..settings import SettingsError
from ..settings.uploads import UploadSettings
from ..signing.object_keys import ObjectKeys
from ..signing.upload_ids import UploadTicket
from ..signing.url_signers import OBJECT_HEADERS
from ..storage.objects import ObjectStore, unavailable
from ..storage.s3_http import Reply
from ..telemetry.tracing import Tracing
from .images import SUPPORTED_CONTENT_TYPES, Limits, Metadata, Reason, Refusal, verify_image
from .removal import read_tombstone
from .threads import BoundedThreads

log = logging.getLogger("avatarsigner.verification")

_MAX_MARKER_BYTES = 4096


def limits_from(uploads: UploadSettings) -> Limits:
    """The decoding limits the settings ask for, or SettingsError naming the variable."""
    try:
        return Limits(
            max_pixels=uploads.max_image_pixels,
            max_side=uploads.max_image_side,
            max_frames=uploads.max_image_frames,
        )
    except ValueError as error:
        problem = str(error)
        name = {"max_pixels": "MAX_IMAGE_PIXELS", "max_side": "MAX_IMAGE_SIDE"}.get(
            problem.split(" ", 1)[0], "MAX_IMAGE_FRAMES"
        )
        raise SettingsError(name, problem.split(" ", 1)[1]) from None


def require_verifiable(content_types: Iterable[str]) -> None:
    """SettingsError unless every allowed type is one verification can check."""
    for content_type in content_types:
        if content_type not in SUPPORTED_CONTENT_TYPES:
            raise SettingsError(
                "ALLOWED_CONTENT_TYPES",
                f"{content_type} cannot be verified; verified uploads allow only "
                f"{', '.join(SUPPORTED_CONTENT_TYPES)} (or set UPLOAD_MODE=direct)",
            )


@dataclass(frozen=True)
class Confirmation:
    """What ConfirmUpload answers: what is now stored and visible to download URLs."""

    key: str
    content_type: str
    content_length: int
    width: int
    height: int
    checksum_sha256: str
    metadata_removed: tuple[str, ...]
    icc_profile_kept: bool
    version: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Confirmation | None:
        try:
            fields = json.loads(data)
            fields["metadata_removed"] = tuple(fields["metadata_removed"])
            return cls(**fields)
        except (ValueError, TypeError, KeyError):
            return None


def version_of(upload_id: str) -> str:
    """An opaque token per confirmed upload (the same upload always gives the same one)."""
    digest = hashlib.sha256(b"avatar-version:" + upload_id.encode()).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode("ascii")


def _refused(refusal: Refusal) -> UploadRefused | Overloaded:
    if refusal.reason is Reason.OUT_OF_MEMORY:
        return Overloaded("OUT_OF_MEMORY", "the server ran out of memory verifying the image")
    return UploadRefused(refusal.reason.value, f"upload refused: {refusal.detail}")


def _deleted() -> UploadRefused:
    return UploadRefused(
        "DELETED", "the user's avatar was deleted after this upload was made; upload again"
    )


class Confirmer:
    """Verifies staged uploads and publishes them (see the module docstring)."""

    def __init__(
        self,
        keys: ObjectKeys,
        verifier: ObjectStore,
        reader: ObjectStore,
        *,
        limits: Limits,
        max_upload_bytes: int,
        concurrency: int,
        timeout_seconds: float,
        tracing: Tracing | None = None,
    ) -> None:
        self._tracing = tracing or Tracing.off()
        self._keys = keys
        self._verifier = verifier
        self._reader = reader
        self._limits = limits
        self._max_upload_bytes = max_upload_bytes
        self._timeout = timeout_seconds
        self._threads = BoundedThreads(concurrency, "confirm")

    async def confirm(
        self, user_id: str, ticket: UploadTicket, time_left: float | None = None
    ) -> Confirmation:
        """The confirmation, or a ServiceError: UploadRefused, Overloaded, Unavailable,
        DeadlineExceeded. `time_left`: the caller's deadline, in seconds from now."""
        budget = self._timeout if time_left is None else min(self._timeout, time_left)
        return await self._threads.run(
            budget,
            functools.partial(self._confirm, user_id, ticket),
            busy="too many uploads are being verified right now; retry shortly",
            late="verifying the upload took too long; confirm it again to learn the outcome",
        )

    def close(self) -> None:
        self._threads.close()

    # --- the steps, in a worker thread ----------------------------------------------------

    def _confirm(self, user_id: str, ticket: UploadTicket) -> Confirmation:
        upload_id = ticket.upload_id
        step = self._tracing.step
        with step("confirm.read_tombstone"):
            if self._deleted_since(user_id, ticket):
                raise _deleted()
        marker_key = self._keys.confirmed_key(user_id, upload_id)
        with step("confirm.read_marker"):
            earlier = self._earlier(marker_key)
        if earlier is not None:
            return earlier
        with step("confirm.read_staged"):
            staged = self._verifier.get(
                self._keys.staging_key(user_id, upload_id), max_bytes=self._max_upload_bytes
            )
        if staged.status in (403, 404):
            raise UploadRefused(
                "NOT_UPLOADED",
                "no staged upload with this upload_id for this user (never uploaded, "
                "or expired)",
            )
        if staged.truncated:
            raise UploadRefused("TOO_LARGE", "the staged object is larger than MAX_UPLOAD_BYTES")
        if staged.status != 200:
            raise unavailable("read of the staged upload", staged)
        data = staged.body
        if len(data) != ticket.content_length:
            raise UploadRefused(
                "SIZE_MISMATCH",
                f"the staged object is {len(data)} bytes, not the signed "
                f"{ticket.content_length}",
            )
        if ticket.sha256 is not None and hashlib.sha256(data).digest() != ticket.sha256:
            raise UploadRefused(
                "CHECKSUM_MISMATCH", "the staged bytes do not have the signed SHA-256"
            )
        with step("confirm.verify_image"):
            result = verify_image(data, staged.headers.get("content-type", ""), self._limits)
            if isinstance(result, Refusal):
                raise _refused(result)
        key = self._keys.key_for(user_id)
        width, height = result.displayed_size
        confirmation = Confirmation(
            key=key,
            content_type=result.content_type,
            content_length=len(result.data),
            width=width,
            height=height,
            checksum_sha256=result.sha256,
            # In the order Metadata declares the kinds: a fixed order for callers.
            metadata_removed=tuple(k.value for k in Metadata if k in result.metadata_removed),
            icc_profile_kept=result.icc_profile_kept,
            version=version_of(upload_id),
        )
        with step("confirm.write_avatar"):
            published = self._verifier.put(
                key,
                result.data,
                {
                    "Content-Type": result.content_type,
                    **OBJECT_HEADERS,
                    "x-amz-checksum-sha256": result.sha256,
                },
            )
        if not 200 <= published.status < 300:
            raise unavailable("write of the avatar", published)
        with step("confirm.recheck_tombstone"):
            if self._deleted_since(user_id, ticket):
                self._withdraw(key, published)
                raise _deleted()
        with step("confirm.write_marker"):
            marked = self._verifier.put(
                marker_key, confirmation.to_json(), {"Content-Type": "application/json"}
            )
        if not 200 <= marked.status < 300:
            # The avatar is published; only the answer to a repeated confirmation is lost.
            log.warning(
                "confirmed-upload marker not written",
                extra={"s3_status": marked.status, "s3_code": marked.code},
            )
        return confirmation

    def _deleted_since(self, user_id: str, ticket: UploadTicket) -> bool:
        """Whether the user's avatar was deleted at or after this upload was minted."""
        deleted_at = read_tombstone(self._reader, self._keys, user_id)
        return deleted_at is not None and ticket.minted_at_ms <= deleted_at

    def _withdraw(self, key: str, published: Reply) -> None:
        """Take back the avatar this confirmation wrote after a deletion had passed."""
        version = published.headers.get("x-amz-version-id")
        if version:  # exactly what was written; a later upload's version stays
            gone = self._verifier.delete(key, version)
            if gone.status in (200, 204, 404):
                return
            # Not allowed to delete versions (DELETE_OLD_VERSIONS off): a delete marker.
        else:
            current = self._reader.head(key)
            if current.status in (403, 404):
                return  # gone already
            written = published.headers.get("etag")
            if current.status == 200 and current.headers.get("etag") != written:
                return  # another upload, confirmed since, is the avatar now
        gone = self._verifier.delete(key)
        if gone.status not in (200, 204):
            log.error(
                "an avatar published after its deletion could not be taken back; "
                "delete it again",
                extra={"s3_status": gone.status, "s3_code": gone.code},
            )
            raise unavailable("delete of an avatar published after its deletion", gone)

    def _earlier(self, marker_key: str) -> Confirmation | None:
        """The answer given when this upload was confirmed before, or None."""
        marker = self._reader.get(marker_key, max_bytes=_MAX_MARKER_BYTES)
        if marker.status in (403, 404):  # 403: a reader without s3:ListBucket, no marker
            return None
        if marker.status != 200:
            raise unavailable("read of the confirmed-upload marker", marker)
        return Confirmation.from_json(marker.body)
