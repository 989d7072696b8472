"""The audit log: one JSON line per decision, on the `avatarsigner.audit` logger.

    allowed  uploads: one line per signed upload URL: request_id, caller, auth, rpc, reason
             "signed", user_id, key, expires_at; one line per confirmed upload: reason
             "confirmed", user_id, key, version
             downloads: one line per call (CreateDownloadUrl, BatchCreateDownloadUrls):
             reason "signed", count (URLs signed), ttl_seconds, expires_at (the latest of
             them); with AUDIT_DOWNLOAD_IDS=true instead one line per URL, as for uploads
             (user_id, key, expires_at; a batch of n gives n lines, queued together)
             deletions: one line per DeleteAvatar that ran: reason "deleted" or
             "nothing_to_delete", user_id, keys
             viewer cookies: one line per set: reason "signed", the pattern they grant
             (`grant`), expires_at
    denied   one line per refused call: request_id, caller (null when unknown), auth, rpc,
             user_id (when the request names one valid id), code, reason; where the
             caller's refusals are sampled (unidentified callers, per address: see
             access.guard), `left_out` says how many before this one got no line

This is the only place that decides what is logged about a signed URL. Never a URL (its
query string is a bearer credential), a signature, a secret, a bearer token or an end-user
token; `reason` is a fixed snake_case word, never text from the request. Each decision also
moves the matching counter in `Metrics` (URLs signed by kind and caller, denials by reason).

Should stderr's reader fall behind, the lines about uploads (upload URLs, confirmations)
are the last the log drops; the others go first (see `telemetry.logs`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from ..errors import ServiceError
from ..signing.object_keys import is_valid_user_id
from .call_context import ANONYMOUS, Call
from .logs import AUDIT, CLASS, EACH, UPLOAD
from .metrics import Metrics

SignedEntry = tuple[str, str, datetime]  # user_id, key, expires_at

LOGGER_NAME = "avatarsigner.audit"
log = logging.getLogger(LOGGER_NAME)


def _line(
    call: Call, decision: str, reason: str, line_class: str = AUDIT, **fields: object
) -> dict[str, object]:
    """The fields every audit line has, then the decision's own (line_class: how late the
    log may drop it, see telemetry.logs; never printed)."""
    return {
        CLASS: line_class,
        "decision": decision,
        "request_id": call.request_id,
        "caller": call.caller,
        "auth": call.auth,
        "rpc": call.rpc,
        "reason": reason,
        **fields,
    }


class Audit:
    """Writes decision lines and counts them."""

    def __init__(self, metrics: Metrics | None = None, download_ids: bool = False) -> None:
        """download_ids (AUDIT_DOWNLOAD_IDS): one line per download URL, not per call."""
        self._metrics = metrics
        self._download_ids = download_ids

    def signed(self, call: Call, kind: str, urls: Sequence[SignedEntry], ttl_seconds: int) -> None:
        """The line(s) for the URLs one call signed (kind: upload or download).

        urls: (user_id, key, expires_at) each; ttl_seconds: the life the call asked for (or
        the default). Uploads, and downloads with download_ids: one line per URL (a batch's
        lines share one log record). Other downloads: one line for the call.
        """
        if self._metrics is not None:
            self._metrics.url_signed(kind, call.caller or ANONYMOUS, len(urls))
        if not log.isEnabledFor(logging.INFO):
            return
        if kind == "download" and not self._download_ids:
            latest = max(expires_at for _, _, expires_at in urls)
            extra = _line(
                call,
                "allowed",
                "signed",
                count=len(urls),
                ttl_seconds=ttl_seconds,
                expires_at=latest.isoformat(),
            )
            log.info("allowed", extra=extra)
            return
        iso: dict[datetime, str] = {}  # a batch's URLs share their expiry: format it once
        each = [
            {
                "user_id": user_id,
                "key": key,
                "expires_at": iso.get(expires_at)
                or iso.setdefault(expires_at, expires_at.isoformat()),
            }
            for user_id, key, expires_at in urls
        ]
        line_class = UPLOAD if kind == "upload" else AUDIT
        log.info("allowed", extra=_line(call, "allowed", "signed", line_class, **{EACH: each}))

    def confirmed(self, call: Call, user_id: str, key: str, version: str) -> None:
        """The line for an upload published by ConfirmUpload (or confirmed again)."""
        if self._metrics is not None:
            self._metrics.upload_confirmed(call.caller or ANONYMOUS)
        extra = _line(
            call, "allowed", "confirmed", UPLOAD, user_id=user_id, key=key, version=version
        )
        log.info("allowed", extra=extra)

    def cookies_signed(self, call: Call, grant: str, expires_at: datetime) -> None:
        """The line for one set of viewer cookies: the URL pattern they grant, until when."""
        if self._metrics is not None:
            self._metrics.url_signed("cookies", call.caller or ANONYMOUS)
        extra = _line(call, "allowed", "signed", grant=grant, expires_at=expires_at.isoformat())
        log.info("allowed", extra=extra)

    def deleted(self, call: Call, user_id: str, keys: Sequence[str], had_avatar: bool) -> None:
        """The line for a DeleteAvatar that ran: the keys removed and whether there was one."""
        if self._metrics is not None:
            self._metrics.avatar_deleted(call.caller or ANONYMOUS, had_avatar)
        reason = "deleted" if had_avatar else "nothing_to_delete"
        log.info("allowed", extra=_line(call, "allowed", reason, user_id=user_id, keys=list(keys)))

    def denied(
        self, call: Call, error: ServiceError, user_id: object = None, left_out: int = 0
    ) -> None:
        """The line for a refused call. user_id is logged only when it is a valid user id;
        left_out > 0: that many refusals of this kind of caller had no line before it."""
        extra = _line(call, "denied", error.reason, code=error.code)
        if isinstance(user_id, str) and is_valid_user_id(user_id):
            extra["user_id"] = user_id
        if left_out:
            extra["left_out"] = left_out
        log.info("denied", extra=extra)
        self.counted(call, error)

    def counted(self, call: Call, error: ServiceError) -> None:
        """A refused call counted in the metrics, without a line (a sampled-out refusal)."""
        if self._metrics is not None:
            self._metrics.denied(call.rpc, error.reason)
