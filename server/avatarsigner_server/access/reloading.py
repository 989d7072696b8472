"""Re-reading the callers, JWKS and TLS files when they change or on SIGHUP.

Each reloadable keeps its current version when its new file is bad. Calls in flight are
unaffected: each reads the version in force when it started. A failed reload must not pass
unnoticed, yet it must not take the pod out either (the version in force is a valid one):
`status()` tells the metrics, per reloadable, how many reloads failed and which version
is in force (a SHA-256 of its non-secret files) since when, so an alert can say "this
replica did not take the new callers file". `reload_if_changed()` notices
a change by (path, inode, size, mtime), following symlinks as Kubernetes swaps them, so a
renewed certificate or an edited ConfigMap takes effect without anyone sending SIGHUP.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..telemetry.metrics import LoadedFiles

log = logging.getLogger("avatarsigner")

FileState = tuple[str, int, int, int] | None


class Reloadable(Protocol):
    def reload(self) -> bool:
        """Re-read the file; keep the current version when the new one is bad."""
        ...


def fingerprint(paths: Sequence[str]) -> str:
    """The first 16 hex digits of the SHA-256 of the files' bytes, in order ("" if none).

    Read after a successful load: a file changed in between is a changed file, which the
    next check reloads (and fingerprints) again.
    """
    if not paths:
        return ""
    digest = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as file:
                digest.update(hashlib.sha256(file.read()).digest())
        except OSError:
            return "unreadable"
    return digest.hexdigest()[:16]


@dataclass
class _Tracked:
    name: str
    reloadable: Reloadable
    # Files whose bytes name the version in force: never a secret's (a hash of a weak
    # secret could be brute-forced), so a TLS key or an HS256 secret file is left out.
    fingerprinted: tuple[str, ...]
    version: str = ""
    loaded_at: float = field(default_factory=time.time)
    failures: int = 0


class FileReloader:
    """Reloads what it tracks on request, or when any of `paths` changed.

    Build it before the files are first read, then `track()` what reads them: a change made
    while they are being read is then seen by the next check.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self._paths = tuple(paths)
        self._tracked: list[_Tracked] = []
        self._seen = self._states()
        # SIGHUP and the change check may both reload: one at a time, so the newest wins.
        self._lock = threading.Lock()

    def track(
        self, name: str, reloadable: Reloadable | None, fingerprinted: Sequence[str | None] = ()
    ) -> None:
        """Reload `reloadable` (just loaded; None: the feature is off) with the others; its
        version is the fingerprint of `fingerprinted` (its non-secret files)."""
        if reloadable is None:
            return
        files = tuple(path for path in fingerprinted if path is not None)
        self._tracked.append(_Tracked(name, reloadable, files, fingerprint(files)))

    def status(self) -> dict[str, LoadedFiles]:
        """name -> the version in force, since when, and how many reloads failed."""
        return {
            each.name: LoadedFiles(each.version, each.loaded_at, each.failures)
            for each in self._tracked
        }

    def reload(self, why: str = "SIGHUP") -> None:
        """Re-read every file (each keeps its old version if its new one is bad)."""
        with self._lock:
            log.info("reloading on %s", why)
            self._seen = self._states()  # before reading: a later change is seen later
            for each in self._tracked:
                if each.reloadable.reload():
                    each.version = fingerprint(each.fingerprinted)
                    each.loaded_at = time.time()
                else:
                    each.failures += 1

    def reload_if_changed(self) -> bool:
        """Reload when any file changed since the last (re)load; True if it did."""
        if self._states() == self._seen:
            return False
        self.reload("a changed file")
        return True

    def _states(self) -> tuple[FileState, ...]:
        states: list[FileState] = []
        for path in self._paths:
            try:
                stat = os.stat(path)
            except OSError:
                states.append(None)
                continue
            states.append((path, stat.st_ino, stat.st_size, stat.st_mtime_ns))
        return tuple(states)
