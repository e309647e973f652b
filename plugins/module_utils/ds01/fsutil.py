"""Writing state files so that a reader never sees half of one, and taking turns: the one atomic-replace
helper and the one lock-file helper.

Every state file ds01 writes (inventories, lifecycle state, grants, refusals, quota alerts,
dcgm-exporter job mapping, gateway counters) goes through ``atomic_write``: a temp file in the
same directory (its name starts with ``.``, so globbing readers such as dcgm-exporter skip it),
written, optionally fsynced, given its mode (and owner), then renamed over the target. Errors
are ``OSError`` for the caller to handle; the temp file never outlives a failure.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from typing import Any, Optional, Union


def atomic_write(
    path: str,
    content: Union[str, bytes],
    mode: int = 0o644,
    uid: Optional[int] = None,
    fsync: bool = False,
    dir_mode: int = 0o755,
) -> None:
    """Replace ``path`` with ``content``; ``uid`` chowns it (root only); ``fsync`` also syncs the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    import tempfile  # deferred: most ds01 commands write nothing, and every one imports this module

    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if uid is not None and os.geteuid() == 0:
            os.chown(tmp, uid, -1)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync:
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)


def atomic_write_json(path: str, data: Any, mode: int = 0o644, uid: Optional[int] = None, fsync: bool = False) -> None:
    """``atomic_write`` of ``data`` as stable JSON (sorted keys, one trailing newline)."""
    text = json.dumps(data, sort_keys=True, indent=1, default=str) + "\n"
    atomic_write(path, text, mode=mode, uid=uid, fsync=fsync)


class FileLock:
    """An exclusive ``flock`` on a lock file: the one lock helper (allocator, detector, lifecycle and grant sweeps,
    the gateway's tag claims, the event log's drop counters).

    ``acquire(wait_s)``: ``None`` waits as long as it takes, ``0`` tries once, more polls (with jitter, so waiters
    do not wake in step) until ``wait_s`` has passed. It returns whether the lock is held; an error other than
    "someone else holds it" is an ``OSError``. A holder that dies loses the lock with its descriptor (the
    kernel's rule), so nothing is ever left to clean up. ``note`` writes a line into the file (e.g. the holder's
    pid) for readers of ``holder()``. As a context manager it waits ``wait_s`` (given to the constructor) and
    sets ``acquired``.
    """

    def __init__(self, path: str, mode: int = 0o600, dir_mode: int = 0o755, wait_s: Optional[float] = None) -> None:
        self.path = path
        self.mode = mode
        self.dir_mode = dir_mode
        self.wait_s = wait_s
        self.acquired = False
        self._fd: Optional[int] = None

    def acquire(self, wait_s: Optional[float] = None, poll_s: float = 0.01, note: Optional[str] = None) -> bool:
        if self._fd is not None:
            return True
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=self.dir_mode, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
        deadline = None if wait_s is None else time.monotonic() + wait_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK) or deadline is None:
                        raise
                left = deadline - time.monotonic()
                if left <= 0:
                    os.close(fd)
                    return False
                jitter = 0.5 + os.urandom(1)[0] / 255  # 0.5-1.5 x poll_s, so waiters do not wake in step
                time.sleep(min(left, poll_s * jitter))
            if note is not None:
                os.ftruncate(fd, 0)
                os.write(fd, f"{note}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.acquired = True
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self.acquired = False
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> Optional[str]:
        """The note the current (or last) holder wrote, or None."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                return handle.read().strip() or None
        except OSError:
            return None

    def __enter__(self) -> FileLock:
        self.acquire(self.wait_s)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
