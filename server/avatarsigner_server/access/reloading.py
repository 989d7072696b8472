"""Re-reading the callers, JWKS and TLS files when they change or on SIGHUP.

Each reloadable keeps its current version when its new file is bad. Calls in flight are
unaffected: each reads the version in force when it started. `reload_if_changed()` notices
a change by (path, inode, size, mtime), following symlinks as Kubernetes swaps them, so a
renewed certificate or an edited ConfigMap takes effect without anyone sending SIGHUP.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger("avatarsigner")

FileState = tuple[str, int, int, int] | None


class Reloadable(Protocol):
    def reload(self) -> bool:
        """Re-read the file; keep the current version when the new one is bad."""
        ...


class FileReloader:
    """Reloads what it tracks on request, or when any of `paths` changed.

    Build it before the files are first read, then `track()` what reads them: a change made
    while they are being read is then seen by the next check.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self._paths = tuple(paths)
        self._reloadables: tuple[Reloadable, ...] = ()
        self._seen = self._states()
        # SIGHUP and the change check may both reload: one at a time, so the newest wins.
        self._lock = threading.Lock()

    def track(self, *reloadables: Reloadable | None) -> None:
        """What to reload (None entries, the features that are off, are left out)."""
        self._reloadables = tuple(r for r in reloadables if r is not None)

    def reload(self, why: str = "SIGHUP") -> None:
        """Re-read every file (each keeps its old version if its new one is bad)."""
        with self._lock:
            log.info("reloading on %s", why)
            self._seen = self._states()  # before reading: a later change is seen later
            for reloadable in self._reloadables:
                reloadable.reload()

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
